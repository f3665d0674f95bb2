"""The second check of a near-duplicate candidate, against the keeper itself.

A hash collision says little on low-structure images, so a keeper claims a candidate
unit only if their embeddings (what is in the picture) and their colour layouts (where
the colours are) agree too, and their grey layouts (where the edges are) are at least
loosely alike. A grey layout that matches closely stands in for the embedding and the
strict colour angle: a re-encoded or rescaled small crop can move its embedding, never
its pixels. `explain_pair` says which check a pair fails (the benchmarks' diagnostic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.dedup.config import DedupConfig
from pipeline.dedup.rows import Rows, prepare_rows

# What `explain_pair` names as the first check a pair fails.
FAILS_GREY, FAILS_EMBEDDING, FAILS_COLOUR = "grey layout", "embedding", "colour layout"


@dataclass
class Measures:
    """One row against others: the signals the checks compare, and the verdict."""

    similarity: np.ndarray  # embedding cosine
    colour: np.ndarray  # colour-layout cosine
    min_colour: np.ndarray  # the cosine each pair needs (strict on low hash stability)
    grey: np.ndarray | None  # grey-layout correlation, nan where a pair lacks one
    grey_matched: np.ndarray | None  # a close grey match stands in for the other checks
    passed: np.ndarray


class Verifier:
    """Checks candidates against a keeper. Rows of one unit (sha256) share their pixels
    and so their signals: one row per unit stands for it."""

    def __init__(self, rows: Rows, cfg: DedupConfig):
        assert rows.embedding is not None and rows.colour is not None
        self.embedding, self.colour = rows.embedding, rows.colour
        self.min_similarity = cfg.min_embedding_similarity
        self.min_colour_cosine = math.cos(math.radians(cfg.max_colour_angle))
        self.strict_colour_cosine = math.cos(math.radians(cfg.strict_colour_angle))
        self.strict = rows.strict
        self.grey, self.has_grey = rows.grey, rows.has_grey
        from pipeline.embed import grey_correlation  # PIL with it: lazily

        self.grey_correlation = grey_correlation
        self.min_grey = cfg.min_grey_correlation
        self.grey_match = cfg.grey_match_correlation
        self.unit_row = np.zeros(int(rows.sha_code.max(initial=-1)) + 1, dtype=np.int64)
        self.unit_row[rows.sha_code[::-1]] = np.arange(rows.count)[::-1]  # first row wins
        self.rejected = 0

    def __call__(self, row: int, units: list[int]) -> list[int]:
        """The candidate units that pass the checks against `row`."""
        passed, _ = self.check(row, self.unit_row[units])
        return [u for u, ok in zip(units, passed.tolist(), strict=True) if ok]

    def closest(self, row: int, keepers: list[int]) -> int:
        """Of the `keepers` that pass the checks against `row`, the one whose colour
        layout is closest (the first listed on a tie); -1 if none passes. The colour
        layout, not the embedding, ranks them: on plain sky it is what tells two clips
        apart, while every small dark object embeds alike."""
        passed, colour = self.check(row, np.asarray(keepers, dtype=np.int64))
        if not passed.any():
            return -1
        return keepers[int(np.argmax(np.where(passed, colour, -np.inf)))]

    def check(self, row: int, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of the rows `others` pass the checks against `row`, and the cosine of
        their colour layouts with row's."""
        measures = self.measure(row, others)
        self.rejected += int(measures.passed.size - measures.passed.sum())
        return measures.passed, measures.colour

    def measure(self, row: int, others: np.ndarray) -> Measures:
        """The checks of the rows `others` against `row`, every signal kept."""
        similarity = self.embedding[others].astype(np.float32) @ self.embedding[row].astype(
            np.float32
        )
        colour = self.colour[others] @ self.colour[row]
        strict = self.strict[others] | self.strict[row]
        min_colour = np.where(strict, self.strict_colour_cosine, self.min_colour_cosine)
        passed = (similarity >= self.min_similarity) & (colour >= min_colour)
        grey = matched = None
        if self.grey is not None and self.has_grey[row] and others.size:
            correlation = self.grey_correlation(self.grey[row], self.grey[others])
            grey = np.where(self.has_grey[others], correlation, np.nan)
            with np.errstate(invalid="ignore"):  # nan: a pair without both grey layouts
                matched = (grey >= self.grey_match) & (colour >= self.min_colour_cosine)
                passed = ~(grey < self.min_grey) & (passed | matched)
        return Measures(similarity, colour, min_colour, grey, matched, passed)


def explain_pair(keeper: dict[str, Any], candidate: dict[str, Any], cfg: DedupConfig) -> str | None:
    """The first check (grey layout, embedding, colour layout) that `candidate` fails
    against `keeper`, or None when it passes: the job's own verification on two rows of
    deduplicate()'s input (each with embedding and colour_layout; verification on)."""
    if not cfg.verified:
        raise ValueError("explain_pair needs verification on (embedding_weights not 'none')")
    rows = prepare_rows(None, pa.Table.from_pylist([keeper, candidate]), cfg)
    m = Verifier(rows.with_vectors(rows.vectors), cfg).measure(0, np.array([1]))
    if m.passed[0]:
        return None
    if m.grey is not None and m.grey[0] < cfg.min_grey_correlation:
        return FAILS_GREY
    if m.similarity[0] < cfg.min_embedding_similarity:
        return FAILS_EMBEDDING
    return FAILS_COLOUR

"""Decisions: `deduplicate` runs the steps (rows, search, candidates, then clustering and
keep decisions per part in Ray tasks) and merges the parts' decisions and counts.

The driver holds the rows' arrays and the near pairs; the per-row work of clustering and
deciding (Python loops and lists, in the single pass this replaced) runs in the tasks
(`pipeline.dedup.parts`, `pipeline.dedup.keep`), which return Arrow tables and counts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup.candidates import (
    apply_strict_distance,
    grey_simhashes,
    search_hashes,
    search_units,
    simhashes,
    with_simhash_candidates,
)
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.keep import DECISION_SCHEMA, REASONS, PartResult, decide_part, merge
from pipeline.dedup.parts import split_parts
from pipeline.dedup.rows import Rows, prepare_rows
from pipeline.dedup.search import NearPairs

__all__ = ["DECISION_SCHEMA", "DedupResult", "deduplicate"]

# New rows (with the old ones in their components) per clustering task: about 3 KB a row
# with verification's vectors, so a task's arrays stay around 300 MB.
ROWS_PER_TASK = 100_000


@dataclass
class DedupResult:
    decisions: pa.Table  # DECISION_SCHEMA: one row per new row, in the input's order
    summary: dict[str, Any]


def deduplicate(new: pa.Table, cfg: DedupConfig, existing: pa.Table | None = None) -> DedupResult:
    """Decide which `new` rows to keep; `existing` rows (kept earlier) stay kept.

    A full run passes existing=None. The candidate search, the components and the
    clustering with its decisions run as Ray tasks (Ray must be initialised).
    """
    started = time.perf_counter()
    rows = prepare_rows(existing, new, cfg)
    nodes, node_of = np.unique(rows.hashes[rows.searchable], return_inverse=True)
    node_of_row = np.full(rows.count, -1, dtype=np.int64)
    node_of_row[rows.searchable] = node_of
    is_query = None
    if existing is not None:
        is_query = np.zeros(nodes.size, dtype=bool)
        is_query[node_of_row[rows.n_existing :][rows.searchable[rows.n_existing :]]] = True
    pairs = search_hashes(nodes, cfg.search_distance, is_query, cfg, cfg.hash_bands)
    if cfg.verified:
        if cfg.embedding_hash_distance:
            units = search_units(rows, node_of_row)
            hashes = simhashes(rows.embedding[units])
            pairs = with_simhash_candidates(
                pairs, units, hashes, cfg.embedding_hash_distance, node_of_row, nodes, is_query, cfg
            )
        if cfg.grey_hash_distance and rows.grey is not None:
            units = search_units(rows, node_of_row, rows.has_grey)
            hashes = grey_simhashes(rows.grey[units])
            pairs = with_simhash_candidates(
                pairs, units, hashes, cfg.grey_hash_distance, node_of_row, nodes, is_query, cfg
            )
    else:
        pairs = apply_strict_distance(pairs, rows, node_of_row, nodes.size, cfg)
    results = _decide_parts(rows, node_of_row, pairs, _kept_by_override(new), cfg)
    decisions, summary = _summary(rows, results, cfg)
    rejected = summary.pop("failed_verification")
    summary["search"] = {
        "distinct_hashes": int(nodes.size),
        "band_bits": list(pairs.plan.widths),
        "band_radius": pairs.plan.radius,
        "candidate_pairs": int(pairs.candidates),
        "near_pairs": int(pairs.i.size),
        "embedding_hash_distance": cfg.embedding_hash_distance if cfg.verified else 0,
        "grey_hash_distance": cfg.grey_hash_distance if cfg.verified else 0,
        "verified": cfg.verified,
        "failed_verification": rejected,
        "crowded_buckets": int(pairs.giant_buckets),
        "seconds": round(pairs.seconds, 3),
    }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return DedupResult(decisions, summary)


def _kept_by_override(new: pa.Table) -> np.ndarray:
    """New rows a person decided to keep (`override` "keep", see `pipeline.overrides`):
    never dropped as a copy; they stay kept, in their cluster."""
    if "override" not in new.column_names:
        return np.zeros(new.num_rows, dtype=bool)
    return np.asarray(pc.fill_null(pc.equal(new["override"], "keep"), False), dtype=bool)


def _decide_parts(
    rows: Rows, node_of_row: np.ndarray, pairs: NearPairs, forced: np.ndarray, cfg: DedupConfig
) -> list[PartResult]:
    """One Ray task per part; each part is sliced and handed over before the next is cut,
    so the driver holds one part's copies at a time."""
    import ray

    task = _remote_decide()
    refs = [
        task.remote(part, cfg)
        for part in split_parts(rows, node_of_row, pairs, forced, ROWS_PER_TASK)
    ]
    return ray.get(refs)


@cache
def _remote_decide() -> Any:
    import ray

    return ray.remote(decide_part)


def _summary(
    rows: Rows, results: list[PartResult], cfg: DedupConfig
) -> tuple[pa.Table, dict[str, Any]]:
    """The merged decisions, and the summary in the shape (and key order) it always had."""
    decisions, counts = merge(results, rows)
    summary = {
        "rows": counts["rows"],
        "existing_rows": rows.n_existing,
        "kept": counts["kept"],
        "dropped": {r: counts[f"dropped:{r}"] for r in REASONS},
        "clusters": counts["clusters"],
        "duplicate_clusters": counts["duplicate_clusters"],
        "largest_cluster": counts["largest_cluster"],
        "low_detail_rows": counts["low_detail_rows"],
        "degenerate_hash_rows": counts["degenerate_hash_rows"],
        "label_conflicts": counts["label_conflicts"],
        "hash_kind": cfg.hash_kind,
        "max_hash_distance": cfg.search_distance,
        "kept_by_override": counts["kept_by_override"],
        "failed_verification": counts["failed_verification"],
    }
    return decisions, summary

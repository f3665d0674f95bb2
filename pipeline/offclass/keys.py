"""Each row's content key (its sha256, else its URI) as the numbers scoring uses.

Scoring needs two things of a key: equality (a query's own row and its byte copies are
left out of its neighbours: `probe.neighbour_votes`) and its fixed pseudo-random rank
(`probe.uri_rank`: which fold a row falls in for each fold split, and which rows set a
class's typical confidence). The driver held every key as a Python string (~120 bytes
a row) and hashed each in Python once per fold split; here a key is a code (equal
keys, equal codes), its rank of split 0 and its fold in each split (~20 bytes a row),
the ranks computed a block of rows at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup.codes import first_seen_codes
from pipeline.offclass.probe import uri_rank

BLOCK_ROWS = 65_536  # keys that are Python strings at once


@dataclass
class Keys:
    """Per row: `codes` (int64, equal keys equal codes), `rank` (`uri_rank(key)`) and
    `folds` ((rows, splits) uint8: `uri_rank(key, split) % folds`)."""

    codes: np.ndarray
    rank: np.ndarray
    folds: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: np.ndarray | slice) -> Keys:
        return Keys(self.codes[index], self.rank[index], self.folds[index])

    def fold(self, split: int) -> np.ndarray:
        """Each row's fold in fold split `split`."""
        return self.folds[:, split].astype(np.int64)

    @staticmethod
    def concat(parts: list[Keys]) -> Keys:
        return Keys(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("codes", "rank", "folds")


def _ranks(
    keys: pa.Array | pa.ChunkedArray, splits: int, folds: int
) -> tuple[np.ndarray, np.ndarray]:
    """`uri_rank` of a block of keys, and their fold in each split."""
    values = np.asarray(keys.to_pylist(), dtype=object)
    rank = uri_rank(values)
    fold = np.empty((len(values), splits), np.uint8)
    for split in range(splits):
        fold[:, split] = (rank if split == 0 else uri_rank(values, split)) % folds
    return rank, fold


def keys_of(keys: pa.ChunkedArray | pa.Array | np.ndarray | list, splits: int, folds: int) -> Keys:
    """`Keys` of string keys (one per row, none null), hashed a block of rows at a time:
    only a block's keys are Python strings at once. (Hashed in Ray tasks, the blocks
    would be written to the object store, whose pages the driver then maps: +340 MB
    for 1M keys, against ~20 MB of `Keys`.)"""
    column = keys if isinstance(keys, pa.ChunkedArray | pa.Array) else pa.array(keys, pa.string())
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    if folds > 255:
        raise ValueError(f"at most 255 folds (got {folds})")
    rank = np.zeros(len(column), np.uint64)
    fold = np.zeros((len(column), splits), np.uint8)
    for a in range(0, len(column), BLOCK_ROWS):
        block = column.slice(a, BLOCK_ROWS)
        rank[a : a + len(block)], fold[a : a + len(block)] = _ranks(block, splits, folds)
    return Keys(first_seen_codes(column), rank, fold)


def content_keys(table: pa.Table) -> pa.ChunkedArray:
    """What the probe knows an image by: its content digest (the source URI where there
    is none). Folds and samples drawn from it stay the same wherever the lake is copied
    to, and byte copies share a key and a fold, so no copy vouches for its twin."""
    return pc.coalesce(table["sha256"], table["source_uri"])

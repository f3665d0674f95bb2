"""The version's duplicate clusters counted in tasks: how many hold more than one file,
and the largest (a null or empty id is none), exactly.

Why not a shuffle of the ids: every task result small enough for Ray to return inline
(under 100 KB) is kept in its owner's memory, the driver's, so a hash-partitioned
shuffle of a 10M-file version's ids went through the driver (+1.3 GB). Instead, two
passes over the shards, each a task per group of shards (`pipeline.report_parts`):

1. each group's distinct ids as 64-bit fingerprints (`split_units.fingerprints`), and
   those it holds more than once: the report task sorts the fingerprints (8 bytes a
   distinct id in a group) and keeps those seen twice, the possible multi-file clusters;
2. each group's files per id, for the ids with one of those fingerprints only: the
   report task adds them up by id, so a fingerprint two ids share never merges them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.storage import StorageConfig
from pipeline import split_units as units
from pipeline.output import read_shards


def _ids(column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray]:
    """The rows' cluster ids that name a cluster (a null or empty id is none), as
    strings, and their fingerprints."""
    ids = units.strings(column)
    ids = ids.filter(pc.not_equal(ids, ""))  # null rows go too
    marks = np.concatenate([np.zeros(0, np.uint64)] + [units.fingerprints(c) for c in ids.chunks])
    return ids, marks


def shard_marks(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1, in a task: its shards' distinct fingerprints, and those held twice."""
    _, marks = _ids(column)
    values, files = np.unique(marks, return_counts=True)
    return values, values[files > 1]


def shared_marks(found: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """In the report task: the fingerprints held by more than one file over all shards."""
    every = np.concatenate([np.zeros(0, np.uint64)] + [distinct for distinct, _ in found])
    every.sort()
    across = every[1:][every[1:] == every[:-1]]
    del every
    within = [twice for _, twice in found]
    return np.unique(np.concatenate([across, *within]))


def shard_files(column: pa.ChunkedArray, shared: np.ndarray) -> pa.Table:
    """Pass 2, in a task: (cluster_id, n: its shards' files) of the ids whose
    fingerprint is in `shared`."""
    ids, marks = _ids(column)
    ids = ids.filter(pa.array(_among(marks, shared)))
    table = pa.table({"cluster_id": ids}).group_by("cluster_id").aggregate([([], "count_all")])
    return table.rename_columns({"count_all": "n"})


def _among(marks: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """Which `marks` are in `shared` (sorted, as `shared_marks` returns it): a binary
    search per mark (`np.isin` sorted the whole of `shared` again in every task)."""
    if not shared.size:
        return np.zeros(marks.size, bool)
    at = np.minimum(np.searchsorted(shared, marks), shared.size - 1)
    return shared[at] == marks


def cluster_sizes(tables: list[pa.Table]) -> tuple[int, int]:
    """In the report task, from pass 2: clusters of more than one file, and the largest."""
    table = pa.concat_tables([t for t in tables if t.num_rows] or [_no_files()])
    if table.num_rows == 0:
        return 0, 0
    sizes = table.group_by("cluster_id").aggregate([("n", "sum")])["n_sum"].to_numpy()
    sizes = sizes[sizes > 1]
    return int(sizes.size), int(sizes.max(initial=0))


def _no_files() -> pa.Table:
    return pa.table({"cluster_id": pa.array([], pa.string()), "n": pa.array([], pa.int64())})


def files_task(uris: list[str], storage: StorageConfig, shared: np.ndarray) -> pa.Table:
    """Pass 2's task for a group of shards (their cluster_id column only)."""
    return shard_files(read_shards(uris, storage, ["cluster_id"])["cluster_id"], shared)

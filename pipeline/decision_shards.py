"""The decisions on this run's candidates, staged beside them: one Parquet file per
candidate shard, which the finalize tasks (`pipeline.finalize`) and the task writing
the hash index read, instead of the driver serialising them and handing them over.

Why: at 1M candidates the driver held the decisions four times over to hand them out
(sorted by shard, as IPC bytes per shard, as the blocks `ray.data.from_items` put into
the object store, and the candidates' shard names, ~100 bytes a row), then filtered the
candidates' metadata into the index and wrote it itself. Now it builds and writes one shard's
decisions at a time from the numbers it holds (`pipeline.decide.Decisions`) and names
each candidate's shard by position (`ShardRows`): the shards' row counts are known from
their writes.
The index is written by one task, a candidate shard at a time (`write_index`), with the
same rows, values and columns as before, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from common.storage import StorageConfig, ensure_parent, filesystem, join
from pipeline.finalize import DECISION_COLUMNS
from pipeline.output import read_shards
from pipeline.sink import ShardWrite, write_parquet
from pipeline.tables import CANDIDATES, INDEX, INDEX_COLUMNS, schema_of
from pipeline.vectors import VECTOR_COLUMNS

DECISIONS = "decisions"  # the staged decisions' folder (an intermediate, never published)
# What the index takes from the decisions; the rest of its columns are the candidates'.
_FROM_DECISIONS = ["cluster_id", "split"]


@dataclass(frozen=True)
class ShardRows:
    """The candidate shards in the order `read_shards` reads them (the run's candidate
    rows are their rows, one shard after the other) and how many rows each holds."""

    uris: list[str]
    rows: np.ndarray  # int64, per shard

    @classmethod
    def of(cls, writes: list[ShardWrite]) -> ShardRows:
        found = sorted((w.uri, w.rows) for w in writes if w.folder == CANDIDATES)
        return cls([u for u, _ in found], np.array([r for _, r in found], dtype=np.int64))

    def check(self, rows_read: int) -> None:
        if int(self.rows.sum()) != rows_read:
            raise RuntimeError(
                f"the candidate shards' writes count {int(self.rows.sum())} rows, "
                f"{rows_read} were read back"
            )


def stage_decisions(
    decisions_of: Callable[[int, int], pa.Table],
    shards: ShardRows,
    stage: str,
    storage: StorageConfig,
) -> list[dict[str, Any]]:
    """Write each candidate shard's decisions (every decision column, whatever the
    further ones, e.g. off-class scores) next to it; one finalize item per shard with
    decisions: {"shard": its URI, "decisions": theirs}. `decisions_of(start, stop)`:
    the decisions on candidate rows `start` to `stop` (in read order), built one shard
    at a time (`pipeline.decide.Decisions.rows`)."""
    bounds = np.concatenate([[0], np.cumsum(shards.rows)])
    items = []
    for k, uri in enumerate(shards.uris):
        part = decisions_of(int(bounds[k]), int(bounds[k + 1]))
        if part.num_rows:
            extra = [c for c in part.column_names if c not in DECISION_COLUMNS]
            target = join(stage, DECISIONS, f"{DECISIONS}-{k:06d}.parquet")
            write_parquet(part.select(DECISION_COLUMNS + extra), target, storage)
            items.append({"shard": uri, "decisions": target})
    return items


def write_index(
    items: list[dict[str, Any]],
    kept: int,
    stage: str,
    run_id: str,
    storage: StorageConfig,
    with_vectors: bool,
) -> list[ShardWrite]:
    """This run's rows of the hash index (`kept` of them), written by one task from the
    staged shards; with verification (`with_vectors`) it reads their vectors too, else
    they are null. No file when nothing is kept."""
    if kept == 0:
        return []
    uri = join(stage, INDEX, f"index-{run_id}.parquet")
    size = ray.get(_remote_index.remote(items, uri, storage, with_vectors))
    return [ShardWrite(INDEX, uri, kept, size)]


def _index_rows(item: dict[str, Any], storage: StorageConfig, with_vectors: bool) -> pa.Table:
    """One candidate shard's kept rows, as the index holds them: the candidates' index
    columns (their vectors, or nulls) with the decisions' cluster and split."""
    own = [c for c in INDEX_COLUMNS if c not in (*_FROM_DECISIONS, *VECTOR_COLUMNS)]
    columns = own + list(VECTOR_COLUMNS) if with_vectors else own
    rows = read_shards([item["shard"]], storage, columns)
    decided = read_shards([item["decisions"]], storage, ["source_uri", "keep", *_FROM_DECISIONS])
    kept = decided.filter(decided["keep"])
    chosen = pc.is_in(rows["source_uri"], value_set=kept["source_uri"])
    rows = rows.filter(chosen)
    outcome = pc.index_in(rows["source_uri"], value_set=kept["source_uri"])
    for name in _FROM_DECISIONS:
        rows = rows.append_column(name, pc.take(kept[name], outcome))
    if not with_vectors:
        for field in schema_of(list(VECTOR_COLUMNS)):
            rows = rows.append_column(field.name, pa.nulls(rows.num_rows, field.type))
    return rows.select(INDEX_COLUMNS)


def _write_index(
    items: list[dict[str, Any]], uri: str, storage: StorageConfig, with_vectors: bool
) -> int:
    """Ray task: the index file, a candidate shard at a time (its memory: one shard's
    rows, not the run's); its size."""
    pa.set_memory_pool(pa.system_memory_pool())  # as `pipeline.vectors`' reading tasks
    fs, path = filesystem(uri, storage)
    ensure_parent(fs, path)
    writer = None
    with fs.open(path, "wb") as f:
        for item in items:
            rows = _index_rows(item, storage, with_vectors)
            if rows.num_rows == 0:
                continue
            if writer is None:
                writer = pq.ParquetWriter(f, rows.schema, compression="zstd")
            writer.write_table(rows.cast(writer.schema))
        if writer is not None:
            writer.close()
    return fs.size(path)


_remote_index = ray.remote(num_cpus=1)(_write_index)

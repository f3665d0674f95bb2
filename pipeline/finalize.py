"""Stage: apply the de-duplication and split decisions to the staged candidates.

The decisions are made on the driver from metadata alone; this pass goes back to
the candidate shards (with their pixels) in Ray tasks, one shard per task, and
routes each row to `images/split=<split>/` or `rejected/`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from common.storage import StorageConfig, join
from pipeline.output import read_shards
from pipeline.sink import Shards, ShardSink, ShardWrite, write_parquet
from pipeline.tables import INDEX, INDEX_COLUMNS, KEPT, REJECTED, route_final, schema_of
from pipeline.vectors import VECTOR_COLUMNS, VectorRows

DECISION_COLUMNS = ["source_uri", "keep", "reason", "duplicate_of", "distance", "cluster_id",
                    "split"]  # fmt: skip


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def work_items(candidates: pa.Table, decisions: pa.Table) -> list[dict[str, Any]]:
    """One item per candidate shard, carrying the decisions for that shard's rows (and
    any further decision columns, e.g. the off-class scores, copied onto the rows)."""
    owner = pc.take(
        candidates["_shard"],
        pc.index_in(decisions["source_uri"], value_set=candidates["source_uri"]),
    )
    extra = [c for c in decisions.column_names if c not in DECISION_COLUMNS]
    # One stable sort by shard, then slices: Arrow columns on the driver, no dict per file.
    order = pc.sort_indices(owner)
    rows = decisions.select(DECISION_COLUMNS + extra).take(order)
    shards = pc.take(owner, order)
    items, start = [], 0
    for group in pc.value_counts(shards).to_pylist():
        items.append((group["values"], rows.slice(start, group["counts"])))
        start += group["counts"]
    return [{"shard": shard, "decisions": _to_ipc(part)} for shard, part in items]


def apply_decisions(shard: pa.Table, decisions: pa.Table) -> pa.Table:
    """Set status/reason/cluster/split on a candidate shard's rows from their decisions;
    further decision columns the shard has (e.g. off-class scores) are copied where set.
    Whole columns at once (Arrow), not a Python dict per row."""
    at = pc.index_in(shard["source_uri"], value_set=decisions["source_uri"])
    if at.null_count:
        missing = shard["source_uri"].filter(pc.is_null(at))[0].as_py()
        raise KeyError(f"no decision for {missing}")
    d = decisions.take(at)
    keep = pc.fill_null(d["keep"], False)
    copy = pc.fill_null(pc.not_equal(d["duplicate_of"], ""), False)
    distance = pc.fill_null(pc.cast(d["distance"], pa.string()), "None")
    said = pc.binary_join_element_wise("distance ", distance, " to ", d["duplicate_of"], "")
    none = pa.scalar(None, pa.string())
    new = {
        "cluster_id": d["cluster_id"],
        "split": d["split"],
        "duplicate_of": d["duplicate_of"],
        "distance": d["distance"],
        "status": pc.if_else(keep, KEPT, REJECTED),
        "reason": pc.if_else(keep, none, d["reason"]),
    }
    if "detail" in shard.column_names:
        new["detail"] = pc.if_else(
            keep, shard["detail"], pc.if_else(copy, said, d["reason"].cast(pa.string()))
        )
    types = {f.name: f.type for f in shard.schema}
    for name in decisions.column_names:
        if name not in DECISION_COLUMNS and name in types:
            new[name] = pc.coalesce(d[name].cast(types[name]), shard[name])
    return pa.table(
        [new[f.name].cast(f.type) if f.name in new else shard[f.name] for f in shard.schema],
        schema=shard.schema,
    )


def finalize_batch(batch: pa.Table, storage: StorageConfig) -> pa.Table:
    tables = []
    for item in batch.to_pylist():
        shard = read_shards([item["shard"]], storage)
        tables.append(apply_decisions(shard, _from_ipc(item["decisions"])))
    return pa.concat_tables(tables)


def finalize_stage(items: list[dict[str, Any]], stage_uri: str, storage: StorageConfig) -> Shards:
    sink = ShardSink(stage_uri, route_final, storage, name_prefix="final")
    if items:
        (
            ray.data.from_items(items, override_num_blocks=len(items))
            .map_batches(
                partial(finalize_batch, storage=storage), batch_format="pyarrow", batch_size=1
            )
            .write_datasink(sink)
        )
    return sink.result


def index_shard(
    candidates: pa.Table,
    vectors: VectorRows | None,
    decisions: pa.Table,
    stage: str,
    run_id: str,
    storage: StorageConfig,
) -> Shards:
    """This run's rows of the hash index: kept images' metadata, cluster and split, and
    their vectors (`vectors`: the candidates'), which the task writing it reads. None:
    no verification, so the vectors are null, and the driver writes it."""
    kept = decisions.filter(decisions["keep"])
    if kept.num_rows == 0:
        return Shards()
    chosen = pc.is_in(candidates["source_uri"], value_set=kept["source_uri"])
    rows = candidates.filter(chosen)
    outcome = pc.index_in(rows["source_uri"], value_set=kept["source_uri"])
    table = (
        rows.drop_columns([c for c in ("cluster_id", "split") if c in rows.column_names])
        .append_column("cluster_id", pc.take(kept["cluster_id"], outcome))
        .append_column("split", pc.take(kept["split"], outcome))
    )
    uri = join(stage, INDEX, f"index-{run_id}.parquet")
    if vectors is None:
        size = _write_index(table, None, uri, storage)
    else:
        found = vectors.take(np.flatnonzero(chosen.to_numpy(zero_copy_only=False)))
        size = ray.get(_remote_write_index.remote(table, found, uri, storage))
    return Shards([ShardWrite(INDEX, uri, table.num_rows, size)])


def _write_index(
    table: pa.Table, vectors: VectorRows | None, uri: str, storage: StorageConfig
) -> int:
    """The index rows with their vectors (None: null ones), written; its size."""
    found = None if vectors is None else vectors.read(list(VECTOR_COLUMNS))
    for field in schema_of(list(VECTOR_COLUMNS)):
        column = pa.nulls(table.num_rows, field.type) if found is None else found[field.name]
        table = table.append_column(field.name, column)
    return write_parquet(table.select(INDEX_COLUMNS), uri, storage)


_remote_write_index = ray.remote(num_cpus=1)(_write_index)

"""Stage: apply the de-duplication and split decisions to the staged candidates.

The decisions are made on the driver from metadata alone; this pass goes back to
the candidate shards (with their pixels) in Ray tasks, one shard per task, and
routes each row to `images/split=<split>/` or `rejected/`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from common.storage import StorageConfig
from pipeline.output import read_shards
from pipeline.sink import Shards, ShardSink
from pipeline.tables import KEPT, REJECTED, route_final

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
    """Set status/reason/cluster/split on a candidate shard's rows from their decisions."""
    by_uri = {d["source_uri"]: d for d in decisions.to_pylist()}
    rows = []
    for row in shard.to_pylist():
        d = by_uri[row["source_uri"]]
        row.update(
            cluster_id=d["cluster_id"],
            split=d["split"],
            duplicate_of=d["duplicate_of"],
            distance=d["distance"],
        )
        if d["keep"]:
            row.update(status=KEPT, reason=None)
        else:
            row.update(
                status=REJECTED,
                reason=d["reason"],
                detail=f"distance {d['distance']} to {d['duplicate_of']}"
                if d["duplicate_of"]
                else d["reason"],
            )
        row.update({k: v for k, v in d.items() if k not in DECISION_COLUMNS and v is not None})
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=shard.schema)


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

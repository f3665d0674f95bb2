"""Stage: apply the de-duplication and split decisions to the staged candidates.

The decisions are made on the driver from metadata alone and staged beside the
candidate shards (`pipeline.decision_shards`); this pass goes back to the candidate
shards (with their pixels) in Ray tasks, one shard and its decisions per task, and
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
    """Ray task: each item's candidate shard with its decisions applied (`item`: the
    URIs of a shard and of its decisions, `pipeline.decision_shards`)."""
    tables = []
    for item in batch.to_pylist():
        shard = read_shards([item["shard"]], storage)
        tables.append(apply_decisions(shard, read_shards([item["decisions"]], storage)))
    return pa.concat_tables(tables)


def finalize_stage(items: list[dict[str, Any]], stage_uri: str, storage: StorageConfig) -> Shards:
    """Ray Data: one task per item, which writes its rows."""
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

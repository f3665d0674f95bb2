"""The decisions staged per candidate shard (`pipeline.decision_shards`): each shard's
file holds exactly its rows' decisions, and the hash index written from the staged
files is the one the driver used to build from the candidates and decisions it held."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.storage import StorageConfig
from devkit import synthetic_rows as synth
from pipeline.decision_shards import ShardRows, _write_index, stage_decisions
from pipeline.output import read_shards
from pipeline.sink import ShardWrite, write_parquet
from pipeline.tables import CANDIDATES, INDEX_COLUMNS, schema_of
from pipeline.vectors import VECTOR_COLUMNS


def _lake(tmp_path, sizes: list[int]) -> tuple[ShardRows, pa.Table, pa.Table]:
    """Candidate shards of `sizes` rows, and decisions for their rows (shuffled, with an
    extra column, as the off-class stage adds), as the driver would hold them."""
    storage, writes, start = StorageConfig(), [], 0
    for k, size in enumerate(sizes):
        uri = f"file://{tmp_path}/stage/candidates/part-{k}.parquet"
        table = synth.candidate_rows("file:///lake", start, start + size, seed=1, dup_rate=0.3)
        writes.append(ShardWrite(CANDIDATES, uri, size, write_parquet(table, uri, storage)))
        start += size
    writes.append(ShardWrite("rejected", f"file://{tmp_path}/stage/rejected/r.parquet", 9, 1))
    shards = ShardRows.of(writes[::-1])
    candidates = read_shards(shards.uris, storage)
    rng = np.random.default_rng(0)
    n = candidates.num_rows
    keep = rng.random(n) < 0.8
    decisions = pa.table(
        {
            "source_uri": candidates["source_uri"],
            "cluster_id": candidates["sha256"],
            "keep": pa.array(keep),
            "reason": pa.array(np.where(keep, None, "near_duplicate").tolist(), pa.string()),
            "duplicate_of": pa.nulls(n, pa.string()),
            "distance": pa.array(rng.integers(0, 9, n), pa.int32()),
            "split": pa.array(np.where(keep, "train", None).tolist(), pa.string()),
            "score": pa.array(rng.random(n)),
        }
    ).take(pa.array(rng.permutation(n)))
    return shards, candidates, decisions


def _in_candidate_order(candidates: pa.Table, decisions: pa.Table):
    """`decisions_of` for `stage_decisions`: the decisions on candidate rows a to b."""
    at = pc.index_in(candidates["source_uri"], value_set=decisions["source_uri"])
    ordered = decisions.take(at)
    return lambda a, b: ordered.slice(a, b - a)


def test_each_shard_gets_exactly_its_rows_decisions(tmp_path):
    shards, candidates, decisions = _lake(tmp_path, [70, 1, 130])
    shards.check(candidates.num_rows)
    assert shards.uris == sorted(shards.uris) and shards.rows.tolist() == [70, 1, 130]
    decisions_of = _in_candidate_order(candidates, decisions)
    stage = f"file://{tmp_path}/stage"
    items = stage_decisions(decisions_of, shards, stage, StorageConfig())
    assert [i["shard"] for i in items] == shards.uris
    for item in items:
        own = read_shards([item["shard"]], StorageConfig(), ["source_uri"])["source_uri"]
        staged = read_shards([item["decisions"]], StorageConfig())
        assert staged["source_uri"].to_pylist() == own.to_pylist()  # in the shard's order
        expected = decisions.filter(pc.is_in(decisions["source_uri"], value_set=own))
        expected = expected.take(pc.index_in(own, value_set=expected["source_uri"]))
        assert staged.select(expected.column_names).equals(expected)
    staged = read_shards([i["decisions"] for i in items], StorageConfig())
    assert staged.select(decisions.column_names).equals(decisions_of(0, candidates.num_rows))


def test_the_index_is_the_candidates_kept_rows_with_their_cluster_and_split(tmp_path):
    shards, candidates, decisions = _lake(tmp_path, [50, 80])
    stage = f"file://{tmp_path}/stage"
    items = stage_decisions(
        _in_candidate_order(candidates, decisions), shards, stage, StorageConfig()
    )
    uri = f"{stage}/index/index-run.parquet"
    _write_index(items, uri, StorageConfig(), with_vectors=False)
    # What the driver wrote before: the kept candidates, in order, with their decisions.
    kept = decisions.filter(decisions["keep"])
    rows = candidates.filter(pc.is_in(candidates["source_uri"], value_set=kept["source_uri"]))
    outcome = pc.index_in(rows["source_uri"], value_set=kept["source_uri"])
    expected = (
        rows.drop_columns(["cluster_id", "split", *VECTOR_COLUMNS])
        .append_column("cluster_id", pc.take(kept["cluster_id"], outcome))
        .append_column("split", pc.take(kept["split"], outcome))
    )
    for field in schema_of(list(VECTOR_COLUMNS)):
        expected = expected.append_column(field.name, pa.nulls(expected.num_rows, field.type))
    found = pq.read_table(uri.removeprefix("file://"))
    assert found.equals(expected.select(INDEX_COLUMNS))

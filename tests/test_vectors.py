"""The vectors read by the tasks that use them (`pipeline.vectors`): the off-class stage and
de-duplication decide the same, to the bit, whether the vectors come with the tables the
driver holds or from the Parquet shards the driver read without them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dedup_cases import synthetic_rows, table
from test_offclass import planted_lake

from common.storage import StorageConfig
from pipeline import dedup
from pipeline.offclass import OffClassConfig, off_class_stage
from pipeline.vectors import VECTOR_COLUMNS, of_shards

pytestmark = pytest.mark.usefixtures("ray_session")


def shards(tables: list[pa.Table], folder: Path, per_shard: int = 37) -> list[str]:
    """The tables' rows in Parquet shards of `per_shard` rows, in order."""
    uris = []
    for t in tables:
        for start in range(0, t.num_rows, per_shard):
            uri = str(folder / f"part-{len(uris):03d}.parquet")
            pq.write_table(t.slice(start, per_shard), uri)
            uris.append(uri)
    return uris


def without_vectors(t: pa.Table) -> pa.Table:
    return t.drop_columns([c for c in VECTOR_COLUMNS if c in t.column_names])


def test_off_class_scores_from_the_shards_equal_those_from_the_table(tmp_path):
    candidates, _ = planted_lake()
    cfg = OffClassConfig()
    uris = shards([candidates], tmp_path)
    vectors = of_shards(uris, StorageConfig(), candidates.num_rows)
    from_shards = off_class_stage(without_vectors(candidates), pa.table({}), cfg, vectors)
    assert from_shards.equals(off_class_stage(candidates, pa.table({}), cfg))
    assert from_shards["off_class_reject"].to_pylist().count(True) >= 1


@pytest.mark.parametrize("incremental", [False, True])
def test_dedup_decisions_from_the_shards_equal_those_from_the_tables(tmp_path, incremental):
    cfg = dedup.DedupConfig(embedding_weights="default", grey_hash_distance=6)
    rows = synthetic_rows(seed=2)
    existing = None
    if incremental:
        half = len(rows) // 2
        existing, rows = table(rows[:half]), rows[half:]
    new = table(rows)
    given = [t for t in (existing, new) if t is not None]
    vectors = of_shards(shards(given, tmp_path), StorageConfig(), sum(t.num_rows for t in given))
    expected = dedup.deduplicate(new, cfg, existing)
    old = None if existing is None else without_vectors(existing)
    found = dedup.deduplicate(without_vectors(new), cfg, old, vectors)
    assert found.decisions.equals(expected.decisions)
    for summary in (found.summary, expected.summary):
        summary.pop("seconds")
        summary["search"].pop("seconds")
    assert found.summary == expected.summary
    assert expected.summary["search"]["near_pairs"] > 0

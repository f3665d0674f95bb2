"""Incremental planning: only new and changed objects are processed."""

from __future__ import annotations

import pyarrow as pa

from pipeline.incremental import plan_run
from pipeline.listing import SNAPSHOT_SCHEMA


def snapshot(rows: list[tuple[str, str, int]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"source_uri": u, "class_name": "a", "label": 0, "size": s, "etag": e, "mtime": ""}
            for u, e, s in rows
        ],
        schema=SNAPSHOT_SCHEMA,
    )


def test_first_run_does_everything():
    now = snapshot([("a/1", "e1", 10), ("a/2", "e2", 20)])
    plan = plan_run(now, None)
    assert plan.todo.num_rows == 2 and not plan.removed


def test_only_new_changed_and_retried_files_are_processed():
    before = snapshot([("a/1", "e1", 10), ("a/2", "e2", 20), ("a/3", "e3", 30), ("a/4", "e4", 4)])
    now = snapshot([("a/1", "e1", 10), ("a/2", "e2b", 21), ("a/5", "e5", 50), ("a/4", "e4", 4)])
    plan = plan_run(now, before, retry={"a/4"})
    assert sorted(plan.todo["source_uri"].to_pylist()) == ["a/2", "a/4", "a/5"]
    assert plan.removed == {"a/2", "a/3", "a/4"}
    assert plan.carried == 1 and plan.has_work


def test_no_changes_no_work():
    rows = [("a/1", "e1", 10)]
    plan = plan_run(snapshot(rows), snapshot(rows))
    assert not plan.has_work and plan.carried == 1


def test_a_rewritten_carried_shard_stays_in_its_table():
    """A carried shard that loses rows is rewritten under this run's folder in the same
    table and partition, whichever run's folder (or the legacy root) it came from."""
    from pipeline.incremental import table_folder

    assert table_folder("runs/r1/images/split=train/a.parquet", "images") == "images/split=train"
    assert table_folder("runs/r1/rejected/b.parquet", "rejected") == "rejected"
    assert table_folder("images/split=test/c.parquet", "images") == "images/split=test"

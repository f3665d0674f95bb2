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


def _reference_plan(now: pa.Table, before: pa.Table, retry: set[str]) -> tuple:
    """The planning as it was written with a dict per listing (the reference)."""

    def fingerprints(t: pa.Table) -> dict:
        rows = zip(t["etag"].to_pylist(), t["size"].to_pylist(), strict=True)
        return dict(zip(t["source_uri"].to_pylist(), rows, strict=True))

    b, n = fingerprints(before), fingerprints(now)
    changed = {u for u, fp in n.items() if u in b and b[u] != fp} | {u for u in retry if u in n}
    new = {u for u in n if u not in b}
    gone = {u for u in b if u not in n}
    todo = [u for u in now["source_uri"].to_pylist() if u in new | changed]
    return todo, gone | changed, len(n) - len(new) - len(changed)


def test_planning_matches_the_dict_reference_on_random_listings():
    """Arrow columns instead of a dict per file: the same plan, nulls included."""
    import random

    rng = random.Random(7)

    def listing(names: list[str]) -> pa.Table:
        rows = [(u, rng.choice([None, "e1", "e2"]), rng.choice([1, 2])) for u in names]
        table = snapshot([(u, e or "", s) for u, e, s in rows])
        return table.set_column(4, "etag", pa.array([e for _, e, _ in rows], pa.string()))

    for _ in range(30):
        uris = [f"a/{i}" for i in rng.sample(range(60), 40)]
        before = listing(uris[:30])
        now = listing(uris[10:])
        retry = set(rng.sample(uris, 8)) | {"a/none"}
        plan = plan_run(now, before, retry)
        todo, removed, carried = _reference_plan(now, before, retry)
        assert plan.todo["source_uri"].to_pylist() == todo
        assert plan.removed == removed and plan.carried == carried

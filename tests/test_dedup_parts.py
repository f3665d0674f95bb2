"""De-duplication's clustering in Ray tasks: the components against a plain union-find,
and the decisions cut into many small parts against the pinned ones (the same bits as
the single pass gave, tests/data/dedup_golden.json)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dedup_cases import CASES, GOLDEN, run_case, synthetic_rows, table

from pipeline import dedup
from pipeline.dedup import components, decide
from pipeline.dedup.parts import split_parts
from pipeline.dedup.rows import prepare_rows
from pipeline.dedup.search import BandPlan, NearPairs

pytestmark = pytest.mark.usefixtures("ray_session")


def union_find(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Each vertex's smallest component member, the obvious way."""
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        rx, ry = root(x), root(y)
        parent[max(rx, ry)] = min(rx, ry)
    return np.array([root(x) for x in range(n)])


@pytest.mark.parametrize("shape", ["random", "chain", "reversed-chain", "star", "empty"])
def test_components_equal_a_union_find(shape):
    rng = np.random.default_rng(7)
    n = 600
    if shape == "random":
        a, b = rng.integers(0, n, 500), rng.integers(0, n, 500)
    elif shape in ("chain", "reversed-chain"):  # the most rounds: a long path
        perm = rng.permutation(n) if shape == "chain" else np.arange(n)[::-1]
        a, b = perm[:-1], perm[1:]
    elif shape == "star":
        a, b = np.full(n - 1, n - 1), np.arange(n - 1)
    else:
        a = b = np.zeros(0, np.int64)
    units = n // 2  # labels only for the first vertices, as de-duplication asks
    found = components.unit_labels(a, b, units, edges_per_task=400)  # 3 tasks a step
    assert (found == union_find(a, b, n)[:units]).all()


@pytest.mark.parametrize("name", list(CASES))
def test_many_small_parts_give_the_pinned_decisions(name, monkeypatch):
    monkeypatch.setattr(decide, "ROWS_PER_TASK", 9)
    monkeypatch.setattr(components, "EDGES_PER_TASK", 60)
    monkeypatch.setattr(decide, "_in_flight", lambda: 2)  # parts wait for results
    expected = json.loads(GOLDEN.read_text())[name]
    assert run_case(dedup, name) == expected


@pytest.mark.parametrize("changes", [CASES["unverified"][0], CASES["verified"][0]])
def test_the_summary_is_the_same_in_one_part_or_many(changes, monkeypatch):
    """The whole summary, the label conflicts' listing and order included."""
    rows = table(synthetic_rows(seed=5, groups=90))
    cfg = dedup.DedupConfig(**changes)

    def summary() -> dict:
        found = dedup.deduplicate(rows, cfg).summary
        found.pop("seconds")
        found["search"].pop("seconds")
        return found

    whole = summary()
    monkeypatch.setattr(decide, "ROWS_PER_TASK", 7)
    monkeypatch.setattr(decide, "_in_flight", lambda: 2)
    assert len(whole["label_conflicts"]) > 3
    assert summary() == whole


def test_parts_hold_whole_components_and_every_new_row_once():
    rows_list = synthetic_rows(seed=3, groups=40)
    half = len(rows_list) // 2
    cfg = dedup.DedupConfig(embedding_weights="none")
    rows = prepare_rows(table(rows_list[:half]), table(rows_list[half:]), cfg)
    nodes, node_of = np.unique(rows.hashes[rows.searchable], return_inverse=True)
    node_of_row = np.full(rows.count, -1, dtype=np.int64)
    node_of_row[rows.searchable] = node_of
    d = np.bitwise_count(nodes[:, None] ^ nodes[None, :])
    i, j = np.nonzero(np.triu(d <= cfg.search_distance, k=1))
    pairs = NearPairs(i, j, d[i, j].astype(np.uint8), 0, BandPlan.even(4, 8), 0, 0.0)
    forced = np.zeros(rows.count - rows.n_existing, dtype=bool)
    parts = list(split_parts(rows, node_of_row, pairs, forced, rows_per_task=10))
    assert len(parts) > 3
    positions = np.concatenate([p.positions for p in parts])
    assert sorted(positions.tolist()) == list(range(rows.count - rows.n_existing))
    owner = {}
    for k, part in enumerate(parts):
        assert (np.diff(part.row_ids) > 0).all()  # global order kept
        for sha in rows.sha_code[part.row_ids].tolist():
            assert owner.setdefault(sha, k) == k  # a unit never spans two parts
        linked = node_of_row[part.row_ids]
        for a, b in zip(i.tolist(), j.tolist(), strict=True):  # nor does a near pair
            assert (a in linked) == (b in linked)


def test_no_new_rows_decides_nothing():
    empty = table([]).select(dedup.REQUIRED_COLUMNS)
    result = dedup.deduplicate(empty, dedup.DedupConfig(embedding_weights="none"))
    assert result.decisions.num_rows == 0
    assert result.decisions.schema == dedup.DECISION_SCHEMA
    assert result.summary["kept"] == 0 and result.summary["label_conflicts"] == []
    assert isinstance(result.decisions, pa.Table)


def test_any_rows_decisions_are_the_whole_tables_rows():
    """`Decided.table(start, stop)` (a shard's decisions, as the job builds them) is that
    slice of the whole table; the input in many chunks, with existing rows whose
    clusters new copies join."""
    rows = synthetic_rows(seed=11, groups=60)
    cfg = dedup.DedupConfig(embedding_weights="none")
    half = len(rows) // 2
    first = dedup.deduplicate(table(rows[:half]), cfg).decisions
    kept = first.filter(first["keep"])
    existing = table(
        [r for r in rows[:half] if r["source_uri"] in set(kept["source_uri"].to_pylist())]
    )
    existing = existing.append_column("cluster_id", kept["cluster_id"])
    new = table(rows[half:])
    chunked = pa.Table.from_batches(new.to_batches(max_chunksize=17))
    result = dedup.deduplicate(chunked, cfg, existing)
    whole = result.decisions
    assert whole.equals(dedup.deduplicate(new, cfg, existing).decisions)
    assert pc.sum(pc.is_valid(whole["duplicate_of"])).as_py() > 10  # copies to name
    rng = np.random.default_rng(0)
    for start, stop in [
        (0, whole.num_rows),
        (0, 1),
        (5, 40),
        *rng.integers(0, whole.num_rows + 1, (8, 2)),
    ]:
        start, stop = sorted((int(start), int(stop)))
        assert result.decided.table(start, stop).equals(whole.slice(start, stop - start))

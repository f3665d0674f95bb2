"""The run's decisions as the driver holds them (`pipeline.decide.Decisions`: numbers
in the candidates' order) give each candidate shard the table it got when the driver
held the whole decisions table: off-class rejections merged in, then sorted by shard."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dedup_cases import synthetic_rows, table

from pipeline import dedup, offclass
from pipeline.decide import Decisions

pytestmark = pytest.mark.usefixtures("ray_session")


def _off(candidates: pa.Table, reject: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """The off-class stage's columns for each candidate, `reject` rejected."""
    n = candidates.num_rows
    return pa.table(
        {
            "source_uri": candidates["source_uri"],
            offclass.SCORE: pa.array(rng.random(n) * 3),
            offclass.LIKE: pa.array(rng.choice(["Birds", "Drones"], n)),
            offclass.LIKE_PROBABILITY: pa.array(rng.random(n), pa.float32()),
            offclass.NEIGHBOUR_SHARE: pa.array(rng.random(n), pa.float32()),
            offclass.REJECT: pa.array(reject),
        }
    )


def _whole_table_then_sorted(decisions: Decisions, shard_rows: list[int]) -> list[pa.Table]:
    """What the staging did before: the whole table, the off-class rejections merged in
    (they come last), sorted by shard (stable)."""
    split = decisions.split
    whole = decisions.decided.table().append_column(
        "split",
        pa.array(decisions.split_names, pa.string()).take(pa.array(split, mask=split < 0)),
    )
    merged = offclass.decisions_with_off_class(whole, decisions.off)
    at = pc.index_in(merged["source_uri"], value_set=decisions.off["source_uri"]).to_numpy()
    shard = np.searchsorted(np.cumsum(shard_rows), at, side="right")
    merged = merged.take(pa.array(np.argsort(shard, kind="stable")))
    bounds = np.searchsorted(np.sort(shard), np.arange(len(shard_rows) + 1))
    return [merged.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.mark.parametrize("rejected_share", [0.0, 0.2])
def test_each_shards_decisions_are_what_the_whole_table_gave(rejected_share):
    rng = np.random.default_rng(4)
    candidates = table(synthetic_rows(seed=9, groups=50))
    n = candidates.num_rows
    reject = rng.random(n) < rejected_share
    offered = ~reject
    decided = dedup.deduplicate(
        candidates.filter(pa.array(offered)), dedup.DedupConfig(embedding_weights="none")
    ).decided
    split = np.where(decided.keep, rng.integers(0, 2, decided.num_rows), -1).astype(np.int8)
    decisions = Decisions(
        decided,
        split,
        ["train", "test"],
        _off(candidates, reject, rng),
        np.concatenate([[0], np.cumsum(offered)]),
    )
    assert decisions.kept == int(decided.keep.sum()) > 0
    shard_rows = [40, 1, 0, n - 41 - 17, 17]
    bounds = np.concatenate([[0], np.cumsum(shard_rows)])
    expected = _whole_table_then_sorted(decisions, shard_rows)
    for k in range(len(shard_rows)):
        found = decisions.rows(int(bounds[k]), int(bounds[k + 1]))
        assert found.num_rows == shard_rows[k]
        assert found.equals(expected[k])
    if rejected_share:
        assert pc.sum(pc.equal(found["reason"], "off_class")).as_py() > 0


def test_every_candidate_rejected_as_off_class_leaves_only_rejections():
    """Nothing offered to de-duplication (`dedup.Decided.none`): each shard's table is
    its off-class rejections, with the columns the other rows would have had."""
    rng = np.random.default_rng(5)
    candidates = table(synthetic_rows(seed=2, groups=5))
    n = candidates.num_rows
    decisions = Decisions(
        dedup.Decided.none(),
        np.zeros(0, np.int8),
        [],
        _off(candidates, np.ones(n, bool), rng),
        np.zeros(n + 1, np.int64),
    )
    assert decisions.kept == 0
    found = decisions.rows(3, n)
    assert found.num_rows == n - 3
    assert found["reason"].to_pylist() == ["off_class"] * (n - 3)
    assert found["source_uri"].equals(candidates["source_uri"].slice(3))
    empty = decisions.rows(0, 0)
    assert empty.num_rows == 0 and empty.schema.equals(found.schema)

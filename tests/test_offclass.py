"""The off-class stage (`pipeline.offclass`) on embeddings made here, through real Ray.

Three classes are three tight clusters of unit vectors in 64 dimensions; an "off-class
photo" is a vector of another cluster filed under the wrong class, or a vector of no
cluster at all.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from pipeline import offclass
from pipeline.cli import main
from pipeline.offclass import OffClassConfig, References, off_class_stage, score_rows

pytestmark = pytest.mark.usefixtures("ray_session")

DIM = 64
CLASSES = ["Birds", "Large_QuadCopters", "Winged_Drones"]


def cluster_vectors(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), DIM))
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class).astype(np.int32)
    vectors = centres[labels] + rng.normal(scale=0.6, size=(len(labels), DIM))
    return unit(vectors), labels


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


def work_table(vectors: np.ndarray, labels: np.ndarray, prefix: str = "s3://lake/raw") -> pa.Table:
    uris = [f"{prefix}/{CLASSES[c]}/{i:04d}.jpg" for i, c in enumerate(labels)]
    # Each image's content digest: the same wherever the lake lies (prefix).
    digests = [hashlib.sha256(v.tobytes()).hexdigest() for v in vectors]
    return pa.table(
        {
            "source_uri": pa.array(uris, pa.string()),
            "sha256": pa.array(digests, pa.string()),
            "class_name": pa.array([CLASSES[c] for c in labels], pa.string()),
            "label": pa.array(labels, pa.int32()),
            "embedding": pa.array(list(vectors), pa.list_(pa.float16())),
            "override": pa.nulls(len(labels), pa.string()),
        }
    )


def planted_lake(seed: int = 0) -> tuple[pa.Table, int]:
    """30 images per class; row `planted` is a Birds-cluster vector filed as a drone."""
    vectors, labels = cluster_vectors(30, seed)
    planted = 45  # a Large_QuadCopters row
    vectors[planted] = vectors[3]  # the look of a bird...
    vectors[planted] = unit(vectors[planted : planted + 1].astype(np.float32) + 0.05)[0]
    return work_table(vectors, labels), planted


def test_a_photo_of_another_class_gets_the_highest_score_and_is_rejected():
    table, planted = planted_lake()
    off = off_class_stage(table, pa.table({}), OffClassConfig())
    scores = off[offclass.SCORE].to_numpy()
    assert int(np.argmax(scores)) == planted
    assert off[offclass.LIKE][planted].as_py() == "Birds"
    assert off[offclass.REJECT][planted].as_py() is True
    assert off[offclass.REJECT].to_numpy(zero_copy_only=False).sum() == 1
    typical = np.delete(scores, planted)
    assert np.median(typical) < 0.1


def test_a_photo_of_no_class_scores_above_every_class_photo():
    vectors, labels = cluster_vectors(30, seed=1)
    stray = 10  # a Birds row that looks like nothing in the lake
    vectors[stray] = unit(np.random.default_rng(9).normal(size=(1, DIM)))[0]
    off = off_class_stage(work_table(vectors, labels), pa.table({}), OffClassConfig())
    scores = off[offclass.SCORE].to_numpy()
    assert int(np.argmax(scores)) == stray


def test_report_policy_scores_but_never_rejects():
    table, planted = planted_lake()
    off = off_class_stage(table, pa.table({}), OffClassConfig(off_class_policy="report"))
    assert off[offclass.SCORE][planted].as_py() >= OffClassConfig().max_off_class
    assert not off[offclass.REJECT].to_numpy(zero_copy_only=False).any()


def test_a_person_s_keep_is_scored_but_never_rejected():
    table, planted = planted_lake()
    overrides = [None] * table.num_rows
    overrides[planted] = "keep"
    table = table.set_column(
        table.schema.get_field_index("override"), "override", pa.array(overrides, pa.string())
    )
    off = off_class_stage(table, pa.table({}), OffClassConfig())
    assert off[offclass.SCORE][planted].as_py() >= OffClassConfig().max_off_class
    assert off[offclass.REJECT][planted].as_py() is False


def test_scores_do_not_depend_on_row_order():
    table, _ = planted_lake()
    order = np.random.default_rng(3).permutation(table.num_rows)
    shuffled = table.take(pa.array(order))
    a = off_class_stage(table, pa.table({}), OffClassConfig())
    b = off_class_stage(shuffled, pa.table({}), OffClassConfig())
    by_uri = dict(zip(b["source_uri"].to_pylist(), b[offclass.SCORE].to_pylist(), strict=True))
    for uri, score in zip(a["source_uri"].to_pylist(), a[offclass.SCORE].to_pylist(), strict=True):
        assert by_uri[uri] == pytest.approx(score, abs=1e-6)


def test_few_and_many_references_fit_the_same_probes(monkeypatch: pytest.MonkeyPatch):
    """Few references: one task per fold split, every split at once; many: a task per
    fold, a split at a time. The same scores to the bit."""
    from pipeline.offclass import fit

    table, _ = planted_lake()
    few = off_class_stage(table, pa.table({}), OffClassConfig())
    monkeypatch.setattr(fit, "ONE_TASK_ROWS", 0)
    many = off_class_stage(table, pa.table({}), OffClassConfig())
    assert few[offclass.SCORE].to_pylist() == many[offclass.SCORE].to_pylist()
    assert few.equals(many)


def test_the_neighbours_are_searched_among_a_fixed_sample_of_the_images():
    """With fewer references allowed than the lake has, the neighbour votes come from a
    sample fixed by content hash (the same in every run and row order); the probe's
    scores still use every image; the planted bird among drones still has birds for
    neighbours."""
    table, planted = planted_lake()
    sampled = OffClassConfig(off_class_neighbour_sample=45)
    a = off_class_stage(table, pa.table({}), sampled)
    shuffled = table.take(pa.array(np.random.default_rng(5).permutation(table.num_rows)))
    b = off_class_stage(shuffled, pa.table({}), sampled)
    full = off_class_stage(table, pa.table({}), OffClassConfig())
    shares = a[offclass.NEIGHBOUR_SHARE].to_pylist()
    by_uri = dict(
        zip(b["source_uri"].to_pylist(), b[offclass.NEIGHBOUR_SHARE].to_pylist(), strict=True)
    )
    assert [by_uri[u] for u in a["source_uri"].to_pylist()] == shares
    assert a[offclass.SCORE].to_pylist() == full[offclass.SCORE].to_pylist()
    assert shares != full[offclass.NEIGHBOUR_SHARE].to_pylist()
    assert a[offclass.NEIGHBOUR_CLASS][planted].as_py() == "Birds"


def copies_lake() -> References:
    """Clustered vectors with exact copies: in their class (another key: near copies,
    left out), across classes (exact ties in similarity, where the k-th place goes to
    the lower reference), and two images of one content key (each other's own row)."""
    vectors, labels = cluster_vectors(20, seed=7)
    vectors[11] = vectors[4]
    vectors[[50, 51, 25, 26]] = vectors[8]
    vectors[[45, 30]] = vectors[12]
    codes = np.arange(len(labels))
    codes[30] = codes[31]
    return References(vectors, labels, codes)


@pytest.mark.parametrize(("step", "k"), [(7, 3), (16, 10), (1000, 10), (2, 10), (5, 100)])
def test_every_pair_compared_once_gives_every_query_s_votes(
    monkeypatch: pytest.MonkeyPatch, step: int, k: int
):
    """A first run's votes (the queries are the references): each block compared with
    the blocks from it on, the nearest merged from rows and columns; the same votes as
    every query against every reference, copies and own rows left out alike."""
    from pipeline.offclass import neighbours, probe

    for module in (neighbours, probe):  # chunks of 3 rows: their offsets exercised
        monkeypatch.setattr(module, "VOTE_ROWS", 3)
    refs = copies_lake()
    n, copy = len(refs.labels), 0.99
    starts = list(range(0, n, step))
    parts = [neighbours.upper_nearest(refs, lo, min(lo + step, n), k, copy) for lo in starts]
    found = neighbours.triangle_nearest(parts, starts, n, k)
    votes = probe.counted(found, refs.labels, len(CLASSES))
    expected = probe.neighbour_votes(refs.vectors, refs.uris, refs, len(CLASSES), k, copy)
    np.testing.assert_array_equal(votes, expected)


def test_a_tie_at_the_k_th_place_goes_to_the_lower_column_however_split():
    from pipeline.offclass.neighbours import merged
    from pipeline.offclass.probe import nearest

    # numpy's partition alone picks columns 5, 1 and 3 here
    sims = np.array([[0.1, 0.5, 0.5, 0.5, 0.5, 0.9, 0.5, 0.5]], np.float32)
    assert sorted(nearest(sims, 3)[1][0].tolist()) == [1, 2, 5]
    # the columns in two parts, the later part merged first: the same three
    late, early = nearest(sims[:, 3:], 3, first=3), nearest(sims[:, :3], 3)
    assert sorted(merged(late, early, 3)[1][0].tolist()) == [1, 2, 5]


def test_the_stage_votes_alike_on_both_neighbour_searches(monkeypatch: pytest.MonkeyPatch):
    """The whole stage with half the products (a first run, its rows in any order) and
    with every query against every reference: the same table. Not taken when the
    neighbours are searched among a sample or the queries are only the new images."""
    from pipeline.offclass import score

    table, _ = planted_lake()
    table = table.take(pa.array(np.random.default_rng(11).permutation(table.num_rows)))
    cfg = OffClassConfig(off_class_block_rows=16)
    calls, triangle = [], score.triangle_votes
    monkeypatch.setattr(score, "triangle_votes", lambda *a: calls.append(1) or triangle(*a))
    once = off_class_stage(table, pa.table({}), cfg)
    assert calls == [1]
    off_class_stage(table, pa.table({}), OffClassConfig(off_class_neighbour_sample=45))
    off_class_stage(table.slice(0, 5), table.slice(5), cfg)  # an incremental run
    assert calls == [1]
    monkeypatch.setattr(score, "_queries_are_references", lambda *a: False)
    every = off_class_stage(table, pa.table({}), cfg)
    assert once.equals(every)
    assert once[offclass.NEIGHBOUR_SHARE].null_count < once.num_rows


def test_incremental_new_images_are_scored_against_the_kept_ones():
    vectors, labels = cluster_vectors(30, seed=4)
    kept = work_table(vectors, labels, prefix="s3://lake/old")
    new_vectors = np.stack([vectors[5], vectors[70]])  # a bird, and a winged drone ...
    new = work_table(new_vectors, np.array([0, 0], np.int32), prefix="s3://lake/new")
    off = off_class_stage(new, kept, OffClassConfig())  # ... both filed as Birds
    scores = off[offclass.SCORE].to_numpy()
    assert scores[0] < OffClassConfig().max_off_class <= scores[1]
    assert off[offclass.LIKE][1].as_py() == "Winged_Drones"


def test_too_few_images_per_class_are_not_scored():
    vectors, labels = cluster_vectors(5)
    off = off_class_stage(work_table(vectors, labels), pa.table({}), OffClassConfig())
    assert np.isnan(off[offclass.SCORE].to_numpy()).all()
    assert not off[offclass.REJECT].to_numpy(zero_copy_only=False).any()


def test_a_small_class_is_left_unscored_and_the_others_still_are():
    vectors, labels = cluster_vectors(30, seed=6)
    keep = (labels != 2) | (np.arange(len(labels)) % 10 == 0)  # 3 Winged_Drones left
    off = off_class_stage(work_table(vectors[keep], labels[keep]), pa.table({}), OffClassConfig())
    scores = off[offclass.SCORE].to_numpy(zero_copy_only=False)
    small = labels[keep] == 2
    assert np.isnan(scores[small]).all() and np.isfinite(scores[~small]).all()


def test_rows_without_an_embedding_are_left_unscored():
    table, _ = planted_lake()
    embeddings = table["embedding"].to_pylist()
    embeddings[0] = None
    table = table.set_column(
        table.schema.get_field_index("embedding"),
        "embedding",
        pa.array(embeddings, pa.list_(pa.float16())),
    )
    off = off_class_stage(table, pa.table({}), OffClassConfig())
    assert off[offclass.SCORE][0].as_py() is None  # null: not scored
    assert np.isfinite(off[offclass.SCORE].to_numpy()[1:]).all()


def test_label_issues_name_the_neighbours_class():
    vectors, labels = cluster_vectors(30, seed=5)
    refs = References(vectors, labels, np.array([f"u{i}" for i in range(len(labels))], object))
    queries = vectors[[2]]  # a bird, asked about as if it were a winged drone
    got = score_rows(queries, np.array([2], np.int32), np.array(["q"], object), refs, 3,
                     OffClassConfig())  # fmt: skip
    assert got.neighbour_class[0] == 0 and got.neighbour_share[0] >= 0.9


def test_decisions_carry_off_class_rejections_and_scores():
    table, planted = planted_lake()
    off = off_class_stage(table, pa.table({}), OffClassConfig())
    kept = [u for i, u in enumerate(table["source_uri"].to_pylist()) if i != planted]
    decisions = pa.table(
        {
            "source_uri": pa.array(kept, pa.string()),
            "cluster_id": pa.array(kept, pa.string()),
            "keep": pa.array([True] * len(kept)),
            "reason": pa.nulls(len(kept), pa.string()),
            "duplicate_of": pa.nulls(len(kept), pa.string()),
            "distance": pa.nulls(len(kept), pa.int32()),
            "split": pa.array(["train"] * len(kept), pa.string()),
        }
    )
    merged = offclass.decisions_with_off_class(decisions, off).to_pylist()
    by_uri = {r["source_uri"]: r for r in merged}
    assert len(merged) == table.num_rows
    row = by_uri[table["source_uri"][planted].as_py()]
    assert (row["keep"], row["reason"]) == (False, "off_class")
    assert "looks like Birds" in row["detail"] and row["score"] >= OffClassConfig().max_off_class
    assert all(r[offclass.SCORE] is not None for r in merged)


def test_summary_lists_label_issues():
    table, planted = planted_lake()
    cfg = OffClassConfig(off_class_policy="report")
    summary = offclass.summary(off_class_stage(table, pa.table({}), cfg), cfg)
    assert summary["flagged"] >= 1 and summary["rejected"] == 0
    listed = [i["source_uri"] for i in summary["possible_label_issues"]]
    assert table["source_uri"][planted].as_py() in listed


def test_label_issues_do_not_depend_on_the_candidates_order():
    """Ties in neighbour share go by URI: the candidates come in their shards' order,
    whose names differ per run (149 tied issues after a lower one, 100 listed)."""
    from pipeline.offclass.config import MAX_LABEL_ISSUES, NEIGHBOUR_CLASS, NEIGHBOUR_SHARE

    n = 150
    off = pa.table(
        {
            "source_uri": [f"s3://b/a/{i:03d}.jpg" for i in range(n)],
            "class_name": ["a"] * n,
            offclass.SCORE: pa.array([1.0] * n, pa.float32()),
            NEIGHBOUR_SHARE: pa.array([0.95] + [1.0] * (n - 1), pa.float32()),
            NEIGHBOUR_CLASS: ["b"] * n,
            offclass.REJECT: [False] * n,
        }
    )
    cfg = OffClassConfig(off_class_policy="report")
    shuffled = off.take(np.random.default_rng(0).permutation(n))
    listed = offclass.summary(off, cfg)["possible_label_issues"]
    assert offclass.summary(shuffled, cfg)["possible_label_issues"] == listed
    uris = off["source_uri"].to_pylist()
    assert [i["source_uri"] for i in listed] == uris[1 : MAX_LABEL_ISSUES + 1]


@pytest.mark.parametrize(
    "bad",
    [
        {"off_class_policy": "drop"},
        {"off_class_folds": 1},
        {"off_class_shrinkage": 0.0},
        {"off_class_max_own": 1.5},
    ],
)
def test_bad_settings_are_refused_before_any_work(bad, capsys):
    flag, value = next(iter(bad.items()))
    args = ["clean", "in/", "out/", f"--{flag.replace('_', '-')}", str(value)]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    assert code == 2  # the CLI stops before any work
    assert flag.replace("_", "-") in capsys.readouterr().err.replace("_", "-")


def test_scores_do_not_depend_on_where_the_lake_lies():
    """Folds are drawn from each image's content digest, not its URI: a lake copied to
    another bucket or a benchmark's temporary folder gets the same verdicts."""
    vectors, labels = cluster_vectors(30, 0)
    here = off_class_stage(work_table(vectors, labels), pa.table({}), OffClassConfig())
    there = off_class_stage(
        work_table(vectors, labels, prefix="file:///tmp/elsewhere"), pa.table({}), OffClassConfig()
    )
    assert here[offclass.SCORE].to_pylist() == there[offclass.SCORE].to_pylist()
    assert here[offclass.NEIGHBOUR_SHARE].to_pylist() == there[offclass.NEIGHBOUR_SHARE].to_pylist()

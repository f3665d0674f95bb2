"""Duplicate removal: the search against brute force, the clustering rules, the API.

Hashes are synthetic (exact control over distances) except in the last tests, which
hash real PIL images.
"""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from common.backbone import NO_WEIGHTS, WeightsUnavailable, mobilenet_v2_backbone
from common.config import add_config_args, load_config
from devkit.weights import local_embedding_weights
from pipeline.dedup import (
    DECISION_SCHEMA,
    EXACT_DUPLICATE,
    LABEL_CONFLICT,
    NEAR_DUPLICATE,
    BandPlan,
    DedupConfig,
    compute_hashes,
    deduplicate,
    degenerate_hashes,
    find_near_pairs,
    grey_simhashes,
    hash_signals,
    hash_stability,
    hashes_to_uint64,
)
from pipeline.dedup.search import _build_band_index, _search_range
from pipeline.dedup.verify import FAILS_COLOUR, FAILS_EMBEDDING, FAILS_GREY, explain_pair
from pipeline.embed import (
    Embedder,
    colour_layout,
    embedder,
    embedding_input,
    grey_correlation,
    grey_layout,
)

pytestmark = pytest.mark.usefixtures("ray_session")

T = DedupConfig().max_hash_distance
BASE = 0x0123456789ABCDEF  # 32 bits set, like a real pHash


def flip(h: int, bits: range | list[int]) -> int:
    for b in bits:
        h ^= 1 << b
    return h


def row(uri: str, phash: int | None, **kw) -> dict:
    return {
        "source_uri": uri,
        "class_name": kw.get("cls", "cat"),
        "sha256": kw.get("sha", "sha-" + uri),
        "phash": None if phash is None else f"{phash:016x}",
        "width": kw.get("w", 100),
        "height": kw.get("h", 100),
        "source_format": kw.get("fmt", "JPEG"),
        "seen_order": kw.get("seen", 0),
        "low_detail": kw.get("low", False),
        "hash_stability": kw.get("stability"),
    }


def run(rows: list[dict], existing: list[dict] | None = None, **cfg) -> tuple[dict, dict]:
    """Decisions by source_uri, and the summary."""
    old = pa.Table.from_pylist(existing) if existing is not None else None
    cfg.setdefault("embedding_weights", NO_WEIGHTS)  # pHash alone unless a test verifies
    result = deduplicate(pa.Table.from_pylist(rows), DedupConfig(**cfg), old)
    assert result.decisions.schema == DECISION_SCHEMA
    assert result.decisions["source_uri"].to_pylist() == [r["source_uri"] for r in rows]
    return {d["source_uri"]: d for d in result.decisions.to_pylist()}, result.summary


# --- The search finds exactly the pairs brute force finds ---------------------------------


def lake(rng: np.random.Generator) -> np.ndarray:
    """~2k distinct hashes: random ones, planted near copies, and a crowded band value."""
    hashes = rng.integers(0, 2**64, 2000, dtype=np.uint64)
    sources = rng.integers(0, 2000, 400)
    for src in sources:
        bits = rng.choice(64, int(rng.integers(1, 12)), replace=False)
        hashes = np.append(hashes, np.uint64(flip(int(hashes[src]), bits.tolist())))
    crowd = (np.uint64(0xABCDEF) << np.uint64(40)) | rng.integers(0, 2**40, 60, dtype=np.uint64)
    return np.unique(np.concatenate([hashes, crowd]))


def brute_force(hashes: np.ndarray, t: int) -> dict[tuple[int, int], int]:
    d = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(d <= t, k=1))
    return {(a, b): int(d[a, b]) for a, b in zip(i.tolist(), j.tolist(), strict=True)}


@pytest.mark.parametrize(
    "bands,cap",
    [(0, 4096), (3, 4096), (5, 4096), (9, 4096), (3, 8), (5, 2)],
    ids=["auto", "3-bands", "5-bands", "9-bands", "3-bands-crowded", "5-bands-crowded"],
)
def test_search_finds_exactly_the_brute_force_pairs(bands, cap):
    hashes = lake(np.random.default_rng(7))
    pairs = find_near_pairs(hashes, T, bands=bands, max_bucket_hashes=cap, hashes_per_task=700)
    triples = zip(pairs.i.tolist(), pairs.j.tolist(), pairs.distance.tolist(), strict=True)
    found = {(i, j): d for i, j, d in triples}
    expected = brute_force(hashes, T)
    assert len(expected) > 250  # mostly the planted copies
    assert found == expected
    assert pairs.i.size == len(expected)  # each pair once, crowded buckets' too: no merge
    assert pairs.candidates < hashes.size**2 / 2
    if cap < 10:
        assert pairs.giant_buckets > 0


@pytest.mark.parametrize("is_query", [False, True], ids=["full", "incremental"])
def test_one_task_reports_each_pair_once_from_its_first_band(is_query):
    """Tasks return nothing to merge: a pair within radius in several bands comes back
    from the first of them only, so a task's output is as large as its pairs."""
    hashes = lake(np.random.default_rng(10))
    plan = BandPlan.even(7, 12)  # narrow bands: most close pairs qualify in several
    queries = np.random.default_rng(11).random(hashes.size) < 0.3 if is_query else None
    indexes = [_build_band_index(hashes, plan, band, 4096) for band in range(7)]
    i, j, d, candidates = _search_range(hashes, queries, plan, 0, hashes.size, 12, *indexes)
    keys = i * hashes.size + j
    assert np.unique(keys).size == keys.size
    expected = {
        pair: dist
        for pair, dist in brute_force(hashes, 12).items()
        if queries is None or queries[pair[0]] or queries[pair[1]]
    }
    pairs = zip(i.tolist(), j.tolist(), strict=True)
    assert dict(zip(pairs, d.tolist(), strict=True)) == expected
    assert candidates >= len(expected)


@pytest.mark.parametrize("bands,cap", [(0, 4096), (3, 8)])
def test_incremental_search_finds_the_pairs_touching_a_query(bands, cap):
    hashes = lake(np.random.default_rng(8))
    is_query = np.random.default_rng(9).random(hashes.size) < 0.2
    pairs = find_near_pairs(hashes, T, is_query=is_query, bands=bands, max_bucket_hashes=cap)
    found = set(zip(pairs.i.tolist(), pairs.j.tolist(), strict=True))
    expected = {(a, b) for a, b in brute_force(hashes, T) if is_query[a] or is_query[b]}
    assert found == expected
    assert pairs.i.size == len(expected)


@pytest.mark.parametrize("t", range(0, 13))
def test_every_band_plan_covers_the_threshold(t):
    for bands in range(3, t + 2):
        plan = BandPlan.even(bands, t)
        assert sum(plan.widths) == 64
        # Pigeonhole: all bands differing by radius+1 would exceed the threshold.
        assert bands * (plan.radius + 1) > t
        assert plan.masks(0).size == sum(
            math.comb(plan.widths[0], k) for k in range(plan.radius + 1)
        )


# --- Clustering rules -----------------------------------------------------------------------

A = BASE
B = flip(A, range(0, 6))  # A-B: 6
C = flip(B, range(6, 12))  # B-C: 6, A-C: 12


def test_a_chain_is_not_merged_through_its_middle():
    out, summary = run([row("a", A, w=300), row("b", B, w=200), row("c", C)])
    assert out["a"]["keep"] and out["c"]["keep"]
    assert out["b"] | {"source_uri": "x"} == {
        "source_uri": "x",
        "cluster_id": "sha-a",
        "keep": False,
        "reason": NEAR_DUPLICATE,
        "duplicate_of": "a",
        "distance": 6,
    }
    assert out["c"]["cluster_id"] == "sha-c" != out["a"]["cluster_id"]
    assert summary["largest_cluster"] == 2


def test_the_middle_of_a_chain_may_keep_both_ends():
    out, _ = run([row("a", A), row("b", B, w=300), row("c", C)])
    assert out["b"]["keep"]
    assert [out[u]["duplicate_of"] for u in "ac"] == ["b", "b"]
    assert [out[u]["distance"] for u in "ac"] == [6, 6]


def chained_lake(seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    hashes = [int(h) for h in rng.integers(0, 2**64, 300, dtype=np.uint64)]
    for _ in range(700):  # random walks: long chains of copies of copies
        hashes.append(flip(hashes[int(rng.integers(len(hashes)))], rng.choice(64, 3).tolist()))
    return [row(f"r{i}", h, w=int(rng.integers(50, 60))) for i, h in enumerate(hashes)]


@pytest.mark.parametrize("assign", ["closest", "first"])
def test_every_dropped_copy_is_within_the_threshold_of_its_keeper(assign):
    rows = chained_lake()
    out, summary = run(rows, assign_to=assign)
    by_uri = {r["source_uri"]: int(r["phash"], 16) for r in rows}
    kept = [u for u, d in out.items() if d["keep"]]
    for uri, d in out.items():
        if not d["keep"]:
            keeper = out[d["duplicate_of"]]
            assert keeper["keep"] and keeper["cluster_id"] == d["cluster_id"]
            assert d["distance"] == (by_uri[uri] ^ by_uri[d["duplicate_of"]]).bit_count() <= T
    kept_hashes = np.array([by_uri[u] for u in kept], dtype=np.uint64)
    assert not brute_force(kept_hashes, T)  # no two kept images are near each other
    assert summary["kept"] == len(kept) < len(rows) - 300


def test_both_assign_modes_keep_the_same_rows_and_closest_is_never_further():
    """A row is kept when no keeper chosen before it reaches it, in both modes; only
    the keeper a copy is dropped for differs, and with 'closest' it is never further."""
    rows = chained_lake(seed=4)
    closest, _ = run(rows)
    first, _ = run(rows, assign_to="first")
    assert [d["keep"] for d in closest.values()] == [d["keep"] for d in first.values()]
    dropped = [u for u, d in first.items() if not d["keep"]]
    assert all(closest[u]["distance"] <= first[u]["distance"] for u in dropped)
    assert any(closest[u]["distance"] < first[u]["distance"] for u in dropped)


@pytest.mark.parametrize(
    "copies,policy,winner",
    [
        ([dict(w=200, fmt="JPEG"), dict(w=100, fmt="PNG")], None, 0),  # resolution first
        ([dict(fmt="JPEG", seen=0), dict(fmt="PNG", seen=5)], None, 1),  # then lossless
        ([dict(fmt="WEBP", seen=0), dict(fmt="BMP", seen=5)], None, 1),  # WEBP counts lossy
        ([dict(fmt="WEBP", seen=3), dict(fmt="JPEG", seen=2)], None, 1),  # then earliest
        ([dict(seen=None), dict(seen=9)], None, 1),  # never seen sorts last
        ([dict(), dict()], None, 0),  # then source_uri
        ([dict(w=200, seen=4), dict(w=100, seen=1)], ["earliest"], 1),
        ([dict(w=200, fmt="JPEG"), dict(w=100, fmt="PNG")], ["lossless", "resolution"], 1),
    ],
)
def test_keep_policy_picks_the_keeper(copies, policy, winner):
    rows = [row(f"copy{i}", flip(BASE, [i]), **kw) for i, kw in enumerate(copies)]
    cfg = {"keep_policy": policy} if policy else {}
    out, _ = run(rows, **cfg)
    assert [out[f"copy{i}"]["keep"] for i in range(2)] == [i == winner for i in range(2)]
    assert out[f"copy{1 - winner}"]["duplicate_of"] == f"copy{winner}"


def test_exact_duplicates_are_one_cluster_whatever_their_flags():
    rows = [
        row("a", A, sha="same", w=50),
        row("b", A, sha="same", low=True),  # exact copies match even when low detail
        row("c", None, sha="same"),  # ... or without a hash
        row("d", flip(A, [3]), sha="other"),  # near a, but "same" is not searched
        row("e", ~A & (2**64 - 1), sha="e1"),
        row("f", ~A & (2**64 - 1), sha="e2"),  # same hash, other pixels: a near duplicate at 0
    ]
    out, summary = run(rows)
    assert out["b"]["keep"] and out["d"]["keep"] and out["e"]["keep"]
    assert {u: out[u]["reason"] for u in "acf"} == {
        "a": EXACT_DUPLICATE,
        "c": EXACT_DUPLICATE,
        "f": NEAR_DUPLICATE,
    }
    assert {out[u]["cluster_id"] for u in "abc"} == {"same"}
    assert {out[u]["distance"] for u in "acf"} == {0}
    assert summary["dropped"] == {EXACT_DUPLICATE: 2, NEAR_DUPLICATE: 1, LABEL_CONFLICT: 0}


def test_near_copies_in_another_class_are_not_a_conflict_by_default():
    # Look-alike skies share pHashes across classes; only identical pixels prove a clash.
    rows = [row("cat1", A, w=200), row("dog1", B, cls="dog"), row("cat2", flip(A, [40]))]
    out, summary = run(rows)
    assert out["cat1"]["keep"] and out["dog1"]["keep"]
    assert out["cat2"]["reason"] == NEAR_DUPLICATE and out["cat2"]["duplicate_of"] == "cat1"
    assert summary["label_conflicts"] == []


def test_identical_pixels_in_two_classes_are_a_conflict_by_default():
    rows = [row("cat1", A, sha="same"), row("dog1", A, cls="dog", sha="same"), row("c", B)]
    out, summary = run(rows)
    assert out["cat1"]["reason"] == out["dog1"]["reason"] == LABEL_CONFLICT
    assert out["c"]["keep"] and len(summary["label_conflicts"]) == 1


def test_a_cluster_with_two_labels_is_dropped_and_reported():
    rows = [
        row("cat1", A, w=200),
        row("dog1", B, cls="dog"),
        row("cat2", flip(A, [40])),
        row("lone", BASE ^ (2**64 - 1)),
    ]
    out, summary = run(rows, conflict_matching="near")
    assert [out[u]["reason"] for u in ("cat1", "dog1", "cat2")] == [LABEL_CONFLICT] * 3
    assert not any(out[u]["keep"] for u in ("cat1", "dog1", "cat2"))
    assert out["dog1"]["duplicate_of"] == "cat1" and out["cat1"]["duplicate_of"] is None
    assert out["lone"]["keep"]
    [conflict] = summary["label_conflicts"]
    assert conflict["keeper"] == "cat1" and conflict["classes"] == {"cat": 2, "dog": 1}
    assert conflict["size"] == 3 and set(conflict["members"]) == {"cat1", "dog1", "cat2"}


def test_a_label_conflict_can_keep_its_keeper():
    rows = [row("cat1", A, w=200), row("dog1", B, cls="dog"), row("cat2", flip(A, [40]))]
    out, summary = run(rows, drop_label_conflicts=False, conflict_matching="near")
    assert out["cat1"]["keep"]
    assert out["dog1"]["reason"] == LABEL_CONFLICT and out["cat2"]["reason"] == NEAR_DUPLICATE
    assert len(summary["label_conflicts"]) == 1


def test_low_structure_hashes_need_the_stricter_distance():
    # A plain-sky crop's pHash bits are unstable: 4 bits apart is a look-alike, not a copy.
    sky = {"stability": 120.0}
    rows = [
        row("sky1", A, w=200, **sky),
        row("sky2", flip(A, [1, 2, 3, 4]), **sky),  # 4 bits: kept
        row("sky3", flip(A, [5, 6]), **sky),  # 2 bits: a copy
        row("photo", flip(A, [7, 8, 9]), stability=2000.0),  # near a strict one: 3 > 2
    ]
    out, _ = run(rows)
    assert out["sky1"]["keep"] and out["sky2"]["keep"] and out["photo"]["keep"]
    assert out["sky3"]["reason"] == NEAR_DUPLICATE and out["sky3"]["distance"] == 2
    loose, _ = run(rows, min_hash_stability=0.0)
    assert not loose["sky2"]["keep"] and not loose["photo"]["keep"]


def test_hash_stability_separates_structure_from_plain_sky():
    photo = blobs(5).resize((256, 256))
    sky = Image.new("L", (256, 256))
    sky.putdata([120 + y // 16 for y in range(256) for _ in range(256)])
    assert hash_stability(photo) > DedupConfig().min_hash_stability > hash_stability(sky)
    for image in (photo, sky.convert("RGB")):  # one DCT gives what the two calls give
        assert hash_signals(image) == (compute_hashes(image), hash_stability(image))


def test_low_detail_rows_do_not_swallow_others():
    rows = [
        row("blank", A, w=1000, low=True),  # best by policy, hash near everything below
        row("y", flip(A, [1, 2])),
        row("z", flip(A, [1, 2, 3, 4]), seen=1),
        row("blank2", flip(A, [9]), low=True),  # low detail with low detail: not near
    ]
    out, summary = run(rows)
    assert out["blank"]["keep"] and out["blank2"]["keep"] and out["y"]["keep"]
    assert out["z"]["duplicate_of"] == "y"  # the others still cluster among themselves
    assert summary["low_detail_rows"] == 2


def test_degenerate_hashes_are_flagged():
    hashes = np.array([0, 1, 2**64 - 1, BASE, BASE, BASE, A ^ 3], dtype=np.uint64)
    assert degenerate_hashes(hashes, min_bits=4).tolist() == [True, True, True] + [False] * 4
    shared = degenerate_hashes(hashes, 4, np.array([0, 1, 2, 3, 4, 5, 6]), max_collisions=2)
    assert shared.tolist() == [True, True, True, True, True, True, False]


def test_degenerate_hashes_are_matched_exactly_only():
    rows = [
        row("zero", 0, w=500),
        row("one", 1),
        row("three", 3),
        row("zero-copy", 0, sha="sha-zero"),
    ]
    out, summary = run(rows)
    assert out["one"]["keep"] and out["three"]["keep"] and out["zero"]["keep"]
    assert out["zero-copy"]["reason"] == EXACT_DUPLICATE
    assert summary["degenerate_hash_rows"] == 4


def test_incremental_run_keeps_old_rows_and_decides_new_ones():
    far = BASE ^ (2**64 - 1)
    existing = [
        row("old1", A, w=200),
        row("old2", far, cls="dog") | {"cluster_id": "cluster-of-old2"},
        row("old3", flip(A, [50])),  # near old1: both stay kept, nothing to decide
    ]
    new = [
        row("n-exact", A, sha="sha-old1", w=200),
        row("n-bigger", flip(A, [20, 21]), w=4000),  # better than old1, still a copy of it
        row("n-near-old2", flip(far, [5]), cls="dog"),
        row("n-pair1", flip(BASE, range(30, 62, 2)), w=300),
        row("n-pair2", flip(BASE, [*range(30, 62, 2), 0])),
        row("n-alone", flip(BASE, range(0, 64, 2))),
    ]
    existing[0]["cluster_id"] = None
    out, summary = run(new, existing=existing)
    assert set(out) == {r["source_uri"] for r in new}
    assert (out["n-exact"]["reason"], out["n-exact"]["duplicate_of"]) == (EXACT_DUPLICATE, "old1")
    assert (out["n-bigger"]["reason"], out["n-bigger"]["duplicate_of"]) == (NEAR_DUPLICATE, "old1")
    assert out["n-near-old2"]["cluster_id"] == "cluster-of-old2"
    assert out["n-exact"]["cluster_id"] == "sha-old1"  # null cluster_id: the keeper's sha256
    assert out["n-pair1"]["keep"] and out["n-pair2"]["duplicate_of"] == "n-pair1"
    assert out["n-alone"]["keep"]
    assert summary["rows"] == 6 and summary["existing_rows"] == 3 and summary["kept"] == 2


def test_incremental_label_conflict_never_drops_an_old_row():
    existing = [row("old", A, w=50)]
    new = [row("new-dog", B, cls="dog", w=500)]
    out, summary = run(new, existing=existing, conflict_matching="near")
    assert out["new-dog"]["reason"] == LABEL_CONFLICT
    assert summary["label_conflicts"][0]["keeper"] == "old"


def test_nothing_to_search_still_decides_every_row():
    out, summary = run([row("a", None), row("b", 0), row("c", A, low=True)])
    assert all(d["keep"] for d in out.values())
    assert summary["search"]["distinct_hashes"] == 0
    empty = pa.Table.from_pylist([row("a", A)]).slice(0, 0)
    result = deduplicate(empty, DedupConfig(embedding_weights=NO_WEIGHTS))
    assert result.decisions.num_rows == 0 and result.summary["clusters"] == 0


# --- Verification: a second signal for every candidate ---------------------------------------

VERIFIED = {"embedding_weights": "any-weights"}  # deduplicate() only checks it is not 'none'


def unit(v: np.ndarray) -> list[float]:
    return (v / np.linalg.norm(v)).tolist()


def signals(seed: int, nudge: int = 0, sky: tuple[float, float, float] = (0.5, 0.6, 0.8)) -> dict:
    """An embedding (16-d stands in for 1280) and a uniform 4x4 colour layout; `nudge`
    moves the embedding a little (a re-encode or a slight crop of the same picture)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=16)
    if nudge:
        base += 0.1 * np.random.default_rng(1000 + nudge).normal(size=16)
    return {"embedding": unit(base), "colour_layout": list(sky) * 16}


def test_a_hash_collision_with_another_picture_is_not_merged():
    same_hash = [row("a", A) | signals(1), row("b", A, seen=1) | signals(2)]
    out, summary = run(same_hash, **VERIFIED)
    assert out["a"]["keep"] and out["b"]["keep"]
    assert summary["search"]["failed_verification"] == 1
    out, _ = run([row("a", A) | signals(1), row("b", A, seen=1) | signals(1, nudge=1)], **VERIFIED)
    assert out["b"]["reason"] == NEAR_DUPLICATE and out["b"]["distance"] == 0


def test_verification_reaches_past_the_unverified_distance():
    far = flip(A, range(T + 2))  # beyond max_hash_distance, within verify_hash_distance
    assert T < T + 2 <= DedupConfig().verify_hash_distance
    rows = [row("a", A) | signals(1), row("b", far, seen=1) | signals(1, nudge=1)]
    out, _ = run(rows, **VERIFIED)
    assert out["b"]["reason"] == NEAR_DUPLICATE and out["b"]["distance"] == T + 2
    out, _ = run(
        [{k: v for k, v in r.items() if k not in ("embedding", "colour_layout")} for r in rows]
    )
    assert out["b"]["keep"]  # pHash alone stops at max_hash_distance


def test_the_embedding_hash_reaches_a_copy_whose_phash_moved_too_far():
    """Strong JPEG on a small image can move its pHash past verify_hash_distance: the
    embedding's SimHash still makes it a candidate, and the same checks decide."""
    far = flip(A, range(0, 40, 2))  # 20 bits away
    assert DedupConfig().verify_hash_distance < 20
    rng = np.random.default_rng(3)
    others = [
        row(f"u{k}", int(rng.integers(0, 2**63)), seen=2 + k) | signals(10 + k) for k in range(5)
    ]
    rows = [row("a", A) | signals(1), row("b", far, seen=1) | signals(1, nudge=1), *others]
    out, summary = run(rows, **VERIFIED, embedding_hash_distance=8)
    assert out["b"]["reason"] == NEAR_DUPLICATE and out["b"]["duplicate_of"] == "a"
    assert out["b"]["distance"] == 20  # the pHash distance, as for every near duplicate
    assert all(out[f"u{k}"]["keep"] for k in range(5))
    assert summary["search"]["embedding_hash_distance"] == 8
    out, _ = run(rows, **VERIFIED, embedding_hash_distance=0)
    assert out["b"]["keep"]
    out, _ = run(rows[1:2], existing=rows[:1], **VERIFIED, embedding_hash_distance=8)
    assert out["b"]["duplicate_of"] == "a"  # incremental: new against kept


def test_colours_must_agree_and_more_so_on_plain_sky():
    blue, greyer = (0.50, 0.60, 0.80), (0.52, 0.60, 0.78)  # about 1.6 degrees apart
    rows = [row("a", A) | signals(1, sky=blue), row("b", A, seen=1) | signals(1, 1, sky=greyer)]
    out, _ = run(rows, **VERIFIED)
    assert out["b"]["reason"] == NEAR_DUPLICATE
    out, _ = run(rows, **VERIFIED, max_colour_angle=1.0)
    assert out["b"]["keep"]
    low = [r | {"hash_stability": 100.0} for r in rows]  # low structure: strict_colour_angle
    out, _ = run(low, **VERIFIED)
    assert out["b"]["keep"]


def test_explain_pair_names_the_check_deduplicate_fails_on():
    """The benchmarks' diagnostic is the job's own check: it passes exactly the pairs
    deduplicate merges and names the first check that fails otherwise."""
    cfg = DedupConfig(**VERIFIED)
    blue, greyer = (0.50, 0.60, 0.80), (0.52, 0.60, 0.78)
    kept = row("a", A) | signals(1, sky=blue)
    copy = row("b", A, seen=1) | signals(1, 1, sky=greyer)
    cases = [
        (None, kept, copy),
        (FAILS_EMBEDDING, kept, copy | signals(2, sky=greyer)),
        (FAILS_COLOUR, kept, copy | signals(1, 1, sky=(0.8, 0.6, 0.5))),
        (
            FAILS_GREY,
            kept | {"grey_layout": grey().tolist()},
            copy | {"grey_layout": grey(16).tolist()},
        ),
    ]
    for expected, keeper, candidate in cases:
        assert explain_pair(keeper, candidate, cfg) == expected
        out, _ = run([keeper, candidate], **VERIFIED)
        assert out["b"]["keep"] == (expected is not None), expected
    with pytest.raises(ValueError, match="verification"):
        explain_pair(kept, kept, DedupConfig(embedding_weights=NO_WEIGHTS))


GREY_FIELD = np.random.default_rng(0).integers(0, 256, size=(24, 40))


def grey(moved: int = 0) -> np.ndarray:
    """A 24x24 grey layout cut from a fixed random field, `moved` cells to the right."""
    return GREY_FIELD[:, moved : moved + 24].ravel()


def test_grey_correlation_sees_through_a_one_cell_shift_and_contrast_not_a_move():
    brighter = np.clip(grey() * 0.8 + 30, 0, 255)
    flat = np.full(24 * 24, 128)
    c = grey_correlation(grey(), np.stack([grey(), grey(1), brighter, grey(6), flat]))
    assert c[:3] == pytest.approx(1.0, abs=1e-3)  # same pixels, one cell off, re-exposed
    assert abs(c[3]) < 0.3 and c[4] == 0  # the object moved; nothing to correlate
    assert grey_correlation(grey(1), grey()[None])[0] == pytest.approx(c[1])  # symmetric


def test_a_moved_object_is_not_a_copy_and_unchanged_pixels_are():
    """Frames of one clip: same embedding and sky, the object moved (grey floor). A
    strong re-encode: the embedding moved, the pixels did not (grey match)."""
    frames = [
        row("a", A) | signals(1) | {"grey_layout": grey().tolist()},
        row("b", A, seen=1) | signals(1, nudge=1) | {"grey_layout": grey(6).tolist()},
    ]
    out, _ = run(frames, **VERIFIED)
    assert out["a"]["keep"] and out["b"]["keep"]
    out, _ = run(frames, **VERIFIED, min_grey_correlation=0.0)
    assert out["b"]["reason"] == NEAR_DUPLICATE
    recoded = [
        row("a", A) | signals(1) | {"grey_layout": grey().tolist()},
        row("b", A, seen=1) | signals(2) | {"grey_layout": grey(1).tolist()},
    ]
    out, _ = run(recoded, **VERIFIED)
    assert out["b"]["reason"] == NEAR_DUPLICATE
    out, _ = run(recoded, **VERIFIED, grey_match_correlation=1.01)
    assert out["b"]["keep"]  # without the grey match the embeddings decide
    blue, greyer = (0.50, 0.60, 0.80), (0.52, 0.60, 0.78)  # within 3 degrees, beyond 0.5
    low = [
        recoded[0] | signals(1, sky=blue) | {"hash_stability": 100.0},
        recoded[1] | signals(1, 1, sky=greyer) | {"hash_stability": 100.0},
    ]
    out, _ = run(low, **VERIFIED)
    assert out["b"]["reason"] == NEAR_DUPLICATE  # the match waives strict_colour_angle
    out, _ = run(low[1:], existing=[low[0]], **VERIFIED)
    assert out["b"]["duplicate_of"] == "a"  # incremental: against the kept row's layout


def test_the_grey_hash_reaches_a_copy_whose_phash_and_embedding_both_moved():
    """A strong re-encode of a small crop: pHash 20 bits off, the embedding another
    picture's, the pixels (re-exposed) the same. Only the grey layout's SimHash makes it
    a candidate; the grey match then decides, as it would for any candidate."""
    far = flip(A, range(0, 40, 2))
    re_exposed = np.round(grey() * 0.8 + 30).astype(np.uint8)
    h = grey_simhashes(np.stack([grey(), re_exposed, grey(6)]))
    assert int(h[0] ^ h[1]).bit_count() <= 4  # the hash is of the centred layout
    assert int(h[0] ^ h[2]).bit_count() > 16  # a moved object: another hash
    rng = np.random.default_rng(4)
    others = [
        row(f"u{k}", int(rng.integers(0, 2**63)), seen=2 + k)
        | signals(10 + k)
        | {"grey_layout": grey(3 + 2 * k).tolist()}
        for k in range(5)
    ]
    rows = [
        row("a", A) | signals(1) | {"grey_layout": grey().tolist()},
        row("b", far, seen=1) | signals(2) | {"grey_layout": re_exposed.tolist()},
        *others,
    ]
    out, summary = run(rows, **VERIFIED, embedding_hash_distance=8)
    assert out["b"]["keep"]  # no candidate: pHash and the embedding's SimHash are far
    out, summary = run(rows, **VERIFIED, embedding_hash_distance=8, grey_hash_distance=8)
    assert out["b"]["reason"] == NEAR_DUPLICATE and out["b"]["duplicate_of"] == "a"
    assert all(out[f"u{k}"]["keep"] for k in range(5))  # moved objects: other pictures
    assert summary["search"]["grey_hash_distance"] == 8
    out, _ = run(rows[1:2], existing=rows[:1], **VERIFIED, grey_hash_distance=8)
    assert out["b"]["duplicate_of"] == "a"  # incremental: new against kept
    no_grey = [{k: v for k, v in r.items() if k != "grey_layout"} for r in rows]
    out, _ = run(no_grey, **VERIFIED, grey_hash_distance=8)
    assert out["b"]["keep"]  # an index without grey layouts: the source is skipped


def colour_angle(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    cosine = np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)
    return math.degrees(math.acos(min(1.0, cosine)))


def test_a_copy_goes_to_the_verified_keeper_it_is_closest_to():
    """Small crops of two clips against similar skies: the larger crop of another clip
    verifies the copy too and comes first in keep-policy order, but the copy's own
    original (kept as well: too far from the other clip) is the closer one."""
    other_sky, own_sky, copy_sky = (0.50, 0.60, 0.80), (0.55, 0.60, 0.74), (0.535, 0.60, 0.758)
    assert colour_angle(other_sky, own_sky) > 3.0  # max_colour_angle: both are kept
    assert colour_angle(copy_sky, own_sky) < colour_angle(copy_sky, other_sky) < 3.0
    rows = [
        row("other", A, w=150, h=150) | signals(1, sky=other_sky),
        row("own", flip(A, [1, 2]), seen=1) | signals(1, nudge=1, sky=own_sky),
        row("copy", flip(A, [3, 4]), w=90, h=90, seen=2) | signals(1, nudge=2, sky=copy_sky),
    ]
    out, _ = run(rows, **VERIFIED)
    assert out["other"]["keep"] and out["own"]["keep"]
    assert out["copy"]["duplicate_of"] == "own"
    out, _ = run(rows, **VERIFIED, assign_to="first")
    assert out["copy"]["duplicate_of"] == "other"  # the previous rule: first keeper wins
    out, _ = run(rows[2:], existing=rows[:2], **VERIFIED)
    assert out["copy"]["duplicate_of"] == "own"  # incremental: the same choice


def test_without_verification_a_copy_goes_to_the_nearest_hash():
    far = flip(A, range(10))  # beyond max_hash_distance of A: both are kept
    copy = flip(A, range(8))  # within T of A, 2 bits from far
    rows = [row("big", A, w=200, h=200), row("own", far, seen=1), row("c", copy, w=50, seen=2)]
    out, _ = run(rows)
    assert out["big"]["keep"] and out["own"]["keep"]
    assert out["c"]["duplicate_of"] == "own" and out["c"]["distance"] == 2
    out, _ = run(rows, assign_to="first")
    assert out["c"]["duplicate_of"] == "big"


def test_rows_without_signals_are_matched_exactly_only():
    bare = row("c", A, seen=2) | {"embedding": None, "colour_layout": None}
    copy = row("d", A, sha="sha-a", seen=3) | {"embedding": None, "colour_layout": None}
    out, _ = run([row("a", A) | signals(1), bare, copy], **VERIFIED)
    assert out["c"]["keep"]
    assert out["d"]["reason"] == EXACT_DUPLICATE
    with pytest.raises(ValueError, match="lack"):
        run([row("a", A)], **VERIFIED)


def test_incremental_runs_verify_against_the_kept_rows():
    old = [row("old", A, w=500, h=500) | signals(1)]
    new = [
        row("copy", flip(A, [1, 2]), seen=5) | signals(1, 1),
        row("other", A, seen=6) | signals(7),
    ]
    out, _ = run(new, existing=old, **VERIFIED)
    assert out["copy"]["duplicate_of"] == "old"
    assert out["other"]["keep"]


# --- Real perceptual hashes -------------------------------------------------------------------


def blobs(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A photo-like image: soft coloured blobs and sensor noise, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32) + rng.uniform(40, 200, 3)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(15, 80)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-120, 120, 3)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def reencoded(image: Image.Image, quality: int = 70) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_real_copies_of_an_image_are_near_duplicates():
    original = blobs(3)
    w, h = original.size
    dx, dy = round(w * 0.025), round(h * 0.025)  # 5% of each side cut off
    images = {
        "original.png": original,
        "reencoded.jpg": reencoded(original),
        "half.jpg": original.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "cropped.jpg": original.crop((dx, dy, w - dx, h - dy)),
        "unrelated.jpg": blobs(103),
    }
    rows = [
        row(name, int(compute_hashes(im), 16), w=im.width, h=im.height, fmt=name[-3:].upper())
        for name, im in images.items()
    ]
    out, _ = run(rows)
    assert out["original.png"]["keep"] and out["unrelated.jpg"]["keep"]
    for name in ("reencoded.jpg", "half.jpg", "cropped.jpg"):
        assert out[name]["reason"] == NEAR_DUPLICATE
        assert out[name]["duplicate_of"] == "original.png"


def real_row(name: str, image: Image.Image, weights: str, **kw) -> dict:
    """A row with the signals the normalise stage computes for `image`."""
    phash, stability = hash_signals(image)
    side = DedupConfig().embedding_side
    vector = embedder(weights)([embedding_input(image, side)])[0]
    return row(name, int(phash, 16), w=image.width, h=image.height, **kw) | {
        "hash_stability": stability,
        "embedding": vector.astype(np.float32).tolist(),
        "colour_layout": colour_layout(image),
        "grey_layout": grey_layout(image),
    }


@pytest.mark.skipif(local_embedding_weights() == NO_WEIGHTS, reason="no local MobileNetV2 weights")
def test_a_slight_crop_is_found_and_a_colliding_picture_is_not():
    weights = local_embedding_weights()
    original = blobs(4)
    w, h = original.size
    dx, dy = round(w * 0.025), round(h * 0.025)
    cropped = original.crop((dx, dy, w - dx, h - dy))  # 5% of each side cut off
    rows = [
        real_row("original.png", original, weights, fmt="PNG"),
        real_row("cropped.jpg", reencoded(cropped), weights, seen=1),
        real_row("other.jpg", blobs(103), weights, seen=2),
    ]
    rows[2]["phash"] = rows[0]["phash"]  # a hash collision: pHash alone would merge it
    out, _ = run(rows, embedding_weights=weights)
    assert out["cropped.jpg"]["reason"] == NEAR_DUPLICATE
    assert out["cropped.jpg"]["duplicate_of"] == "original.png"
    assert out["cropped.jpg"]["distance"] > T  # beyond what pHash alone accepts
    assert out["other.jpg"]["keep"]


def test_embedder_mechanics_on_random_weights():
    from torchvision.models import mobilenet_v2

    embed = Embedder(mobilenet_v2(weights=None).features.eval())
    a, b = (embedding_input(blobs(seed), 64) for seed in (1, 2))
    vectors = embed([a, a, b]).astype(np.float32)
    assert vectors.shape == (3, 1280)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-2)
    assert np.array_equal(vectors[0], vectors[1]) and not np.array_equal(vectors[0], vectors[2])
    assert len(colour_layout(blobs(1))) == 3 * 16
    assert len(grey_layout(blobs(1))) == 24 * 24


def test_weights_load_from_a_local_file_or_fail_clearly(tmp_path):
    import torch
    from torchvision.models import mobilenet_v2

    with pytest.raises(WeightsUnavailable, match="local state-dict path"):
        mobilenet_v2_backbone(str(tmp_path / "missing.pth"))
    state = mobilenet_v2(weights=None).state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, tmp_path / "w.pth")
    _, report = mobilenet_v2_backbone(str(tmp_path / "w.pth"))
    assert report.missing == [] and report.unexpected == []
    with pytest.raises(ValueError, match="off"):
        embedder(NO_WEIGHTS)


def test_hash_helpers():
    photo, blank = blobs(5), Image.new("RGB", (64, 48), (250, 250, 250))
    for kind in ("phash", "dhash", "whash", "ahash"):
        assert len(compute_hashes(photo, kind)) == 16
    with pytest.raises(ValueError, match="hash kind"):
        compute_hashes(photo, "md5")
    assert degenerate_hashes(hashes_to_uint64(pa.array([compute_hashes(blank)]))[0], 4)[0]
    strings = ["8000000000000000", None, "0123456789abcdef", "ffffffffffffffff"]
    values, valid = hashes_to_uint64(pa.array(strings))
    assert values.tolist() == [int(s or "0", 16) for s in strings]
    assert valid.tolist() == [True, False, True, True]


# --- Configuration and input checks ------------------------------------------------------------


def test_config_is_one_flag_per_field_with_help():
    parser = argparse.ArgumentParser()
    add_config_args(parser, DedupConfig)
    args = parser.parse_args(["--max-hash-distance", "10", "--keep-policy", "earliest,resolution"])
    assert args.max_hash_distance == 10 and args.keep_policy == ["earliest", "resolution"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--hash-kind", "md5"])
    assert load_config(DedupConfig, drop_label_conflicts=False).drop_label_conflicts is False


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda rows: [{k: v for k, v in r.items() if k != "low_detail"} for r in rows], "lacks"),
        (lambda rows: rows + [rows[0]], "unique"),
        (lambda rows: [rows[0] | {"phash": "abc"}], "16 hex"),
    ],
)
def test_bad_input_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        run(change([row("a", A), row("b", B)]))
    with pytest.raises(ValueError, match="keep_policy"):
        run([row("a", A)], keep_policy=["sharpest"])

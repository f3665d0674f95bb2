"""Near-duplicate search benchmark: `find_near_pairs` on 100k and 1M 64-bit hashes.

    .venv/bin/python scripts/bench/dedup_search.py [--sizes 100000 1000000] [--num-cpus 2]

Two kinds of lake:
- random: uniform 64-bit hashes (the search's best case: buckets are even).
- realistic: pHash-like hashes of a lake with many look-alike images plus near copies.
  Each image's 8x8 low-frequency DCT block is drawn with a 1/f spectrum (std of
  coefficient (u, v) ~ 1 / (1 + u + v)), shares 60% of its variance with one of n/100
  "scenes", and sits around a mean block the whole lake shares (which biases the bits
  as real pHash bits are biased); it is then thresholded at its median like
  imagehash.phash: the DC bit is always 1, every hash has 32 bits set, bits are biased
  and correlated. 30% of the rows are copies of another row with 1-6 bits flipped;
  copies per copied image follow Zipf(2) up to 100 (most have one or two, a few many).

Printed per run: distinct hashes, band plan, candidate pairs verified, near pairs found,
seconds, whether every planted copy within the threshold was found, and the driver's
peak resident memory so far (where every pair lands; a peak, so it only grows). Ray worker
start-up is excluded (a warm-up search runs first).

    .venv/bin/python scripts/bench/dedup_search.py --kernel [--against GIT_REV]

times one task's search (`_search_range`, one core, no Ray) on a probe-bound lake
(random 1M, t=8) and a candidate-bound one (realistic 100k, t=12), and solves the two
for the cost of one probe and of one candidate check: their ratio is
`pipeline.dedup.search.PROBE_COST`. `--against` times the search as it was at GIT_REV
in the same run, on the same plans.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from _common import REPO

from common.backbone import NO_WEIGHTS
from pipeline.dedup import DedupConfig, deduplicate, find_near_pairs, search

SCENE_SIZE = 100  # images per scene (look-alikes)
SCENE_SHARE = 0.6  # correlation of an image's coefficients with its scene's
LAKE_BIAS = 0.5  # mean coefficients shared by the whole lake, relative to their spread
COPY_FRACTION = 0.3
MAX_FLIPS = 6
MAX_COPIES = 100  # copies of one image, at most


def random_hashes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    return hashes, np.zeros((0, 2), np.int64), np.arange(n)


def _bits_to_uint64(bits: np.ndarray) -> np.ndarray:
    """(n, 64) bools, most significant first (imagehash's order), to uint64."""
    packed = np.packbits(bits, axis=1)
    return packed.view(">u8").ravel().astype(np.uint64)


def phash_like(
    n: int, rng: np.random.Generator, chunk: int = 100_000
) -> tuple[np.ndarray, np.ndarray]:
    """pHashes of n different images (see the module docstring), and their scenes."""
    u, v = np.mgrid[0:8, 0:8]
    scale = (1.0 / (1.0 + u + v)).ravel()
    scenes = rng.normal(size=(max(1, n // SCENE_SIZE), 64)) * scale
    typical = rng.normal(size=64) * scale * LAKE_BIAS  # what every photo shares (sky on top...)
    out = np.empty(n, dtype=np.uint64)
    scene_of = rng.integers(0, scenes.shape[0], n)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        own = rng.normal(size=(m, 64)) * scale
        scene = scenes[scene_of[a : a + m]]
        coeffs = typical + np.sqrt(SCENE_SHARE) * scene + np.sqrt(1 - SCENE_SHARE) * own
        coeffs[:, 0] = 1e9  # DC: always above the median
        median = np.median(coeffs, axis=1, keepdims=True)
        out[a : a + m] = _bits_to_uint64(coeffs > median)
    return out, scene_of


def realistic_hashes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes, the planted (original, copy) index pairs, and each row's scene."""
    copies = int(n * COPY_FRACTION)
    originals, scene = phash_like(n - copies, rng)
    # Zipf-like popularity: most copied images have one or two copies, a few up to 100.
    per_source = np.minimum(rng.zipf(2.0, copies), MAX_COPIES)
    used = int(np.searchsorted(np.cumsum(per_source), copies)) + 1
    per_source = per_source[:used]
    per_source[-1] -= per_source.sum() - copies
    source = np.repeat(rng.choice(originals.size, used, replace=False), per_source)
    flips = rng.integers(1, MAX_FLIPS + 1, copies)
    noise = np.zeros(copies, dtype=np.uint64)
    for k in range(MAX_FLIPS):
        bit = rng.integers(0, 63, copies).astype(np.uint64)  # never the DC bit (63)
        noise ^= np.where(k < flips, np.uint64(1) << bit, np.uint64(0))
    hashes = np.concatenate([originals, originals[source] ^ noise])
    planted = np.stack([source, originals.size + np.arange(copies)], axis=1)
    return hashes, planted, np.concatenate([scene, scene[source]])


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (the driver, where the pairs land)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_one(kind: str, n: int, threshold: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    hashes, planted, _ = (random_hashes if kind == "random" else realistic_hashes)(n, rng)
    distinct, index = np.unique(hashes, return_inverse=True)
    started = time.perf_counter()
    pairs = find_near_pairs(distinct, threshold)
    seconds = time.perf_counter() - started
    pair_count, max_rss = pairs.i.size, peak_rss_gb()
    a, b = index[planted[:, 0]], index[planted[:, 1]]
    want = (a != b) & (np.bitwise_count(distinct[a] ^ distinct[b]) <= threshold)
    keys = np.minimum(a, b)[want] * distinct.size + np.maximum(a, b)[want]
    missed = int((~np.isin(keys, pairs.i * distinct.size + pairs.j)).sum())  # sorts, no set
    bits = np.unpackbits(distinct.astype(">u8").view(np.uint8)).reshape(-1, 64).mean(axis=0)
    return {
        "kind": kind,
        "n": n,
        "distinct": distinct.size,
        "plan": "/".join(map(str, pairs.plan.widths)) + f" r{pairs.plan.radius}",
        "candidates": pairs.candidates,
        "near_pairs": pair_count,
        "seconds": seconds,
        "peak_rss_gb": max_rss,
        "planted_ok": f"{int(want.sum()) - missed}/{int(want.sum())}",
        "bit_bias": f"{bits[1:].min():.2f}-{bits[1:].max():.2f}",
    }


def lake_table(hashes: np.ndarray, scene: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """Rows for `deduplicate`: 10 classes (look-alikes share one, but 1% of rows are
    mislabelled), 5% exact copies (same sha256), random sizes and formats."""
    n = hashes.size
    label = scene % 10
    wrong = rng.random(n) < 0.01
    label[wrong] = rng.integers(0, 10, int(wrong.sum()))
    image = np.arange(n)
    exact = rng.random(n) < 0.05
    image[exact] = rng.integers(0, n, int(exact.sum()))
    hashes, label = hashes[image], label[image]
    return pa.table(
        {
            "source_uri": [f"s3://lake/{i}.jpg" for i in range(n)],
            "class_name": [f"class{c}" for c in label.tolist()],
            "sha256": [f"{i:064x}" for i in image.tolist()],
            "phash": [f"{h:016x}" for h in hashes.tolist()],
            "width": rng.integers(100, 1000, n),
            "height": rng.integers(100, 1000, n),
            "source_format": rng.choice(["JPEG", "PNG", "WEBP"], n),
            "seen_order": np.arange(n),
            "low_detail": rng.random(n) < 0.01,
        }
    )


def end_to_end(n: int, threshold: int, seed: int) -> dict:
    """deduplicate() on a realistic lake: search plus the driver's clustering pass. The
    synthetic rows have no embeddings, so this is pHash alone within `threshold`."""
    rng = np.random.default_rng(seed)
    hashes, _, scene = realistic_hashes(n, rng)
    table = lake_table(hashes, scene, rng)
    started = time.perf_counter()
    cfg = DedupConfig(max_hash_distance=threshold, embedding_weights=NO_WEIGHTS)
    result = deduplicate(table, cfg)
    seconds = time.perf_counter() - started
    summary = result.summary
    return {
        "seconds": seconds,
        "search_seconds": summary["search"]["seconds"],
        "kept": summary["kept"],
        "dropped": summary["dropped"],
        "largest": summary["largest_cluster"],
        "conflicts": len(summary["label_conflicts"]),
    }


def dedup_at(rev: str) -> object:
    """The search as it was at git revision `rev` (pipeline/dedup/search.py, or the
    single pipeline/dedup.py before the package), loaded as its own module."""
    for rel in ("pipeline/dedup/search.py", "pipeline/dedup.py"):
        shown = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=REPO, capture_output=True)
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"no pipeline/dedup search at git revision {rev}")
    source = shown.stdout
    path = Path(tempfile.mkdtemp()) / f"dedup_{rev}.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def time_task(module: object, hashes: np.ndarray, plan: object, threshold: int) -> float:
    """Seconds for one task searching every hash (best of two), after a warm-up."""
    indexes = [module._build_band_index(hashes, plan, b, 4096) for b in range(len(plan.widths))]
    module._search_range(hashes, None, plan, 0, 1000, threshold, *indexes)  # compile
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        module._search_range(hashes, None, plan, 0, hashes.size, threshold, *indexes)
        best = min(best, time.perf_counter() - started)
    return best


def kernel(against: str | None) -> None:
    """Cost of a probe and of a candidate check, one core (see the module docstring)."""
    lakes = [("random", 1_000_000, 8), ("realistic", 100_000, 12)]
    modules = [("current", search)] + ([(against, dedup_at(against))] if against else [])
    print("one task, one core, no Ray; best of 2")
    print(
        f"{'lake':<22} {'plan':>16} {'probes':>13} {'candidates':>14} "
        + "".join(f"{name:>12}" for name, _ in modules)
    )
    rows = []
    for kind, n, threshold in lakes:
        rng = np.random.default_rng(0)
        hashes = np.unique((random_hashes if kind == "random" else realistic_hashes)(n, rng)[0])
        plan = search.plan_bands(hashes, threshold)
        probes = hashes.size * sum(plan.masks(b).size for b in range(len(plan.widths)))
        indexes = [search._build_band_index(hashes, plan, b, 4096) for b in range(len(plan.widths))]
        candidates = search._search_range(hashes, None, plan, 0, hashes.size, threshold, *indexes)[
            3
        ]
        seconds = [time_task(m, hashes, plan, threshold) for _, m in modules]
        rows.append((probes, candidates, seconds))
        plan_text = "/".join(map(str, plan.widths)) + f" r{plan.radius}"
        print(
            f"{kind + f' {n:,} t={threshold}':<22} {plan_text:>16} {probes:>13,} {candidates:>14,} "
            + "".join(f"{s:>11.2f}s" for s in seconds),
            flush=True,
        )
    for k, (name, _) in enumerate(modules):
        a = np.array([[p, c] for p, c, _ in rows], dtype=float)
        probe, check = np.linalg.solve(a, np.array([s[k] for *_, s in rows]))
        print(
            f"{name}: {probe * 1e9:.2f} ns per probe, {check * 1e9:.2f} ns per candidate, "
            f"ratio {probe / check:.1f}"
        )
    print(f"pipeline.dedup.search.PROBE_COST is {search.PROBE_COST}")
    if against:
        for (_, _, seconds), (kind, n, t) in zip(rows, lakes, strict=True):
            print(f"{kind} {n:,} t={t}: {against} / current = x{seconds[1] / seconds[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["random", "realistic"])
    parser.add_argument("--threshold", type=int, default=8)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; best is shown")
    parser.add_argument(
        "--end-to-end", action="store_true", help="also time deduplicate() on realistic rows"
    )
    parser.add_argument(
        "--kernel", action="store_true", help="cost of a probe and a candidate, one core"
    )
    parser.add_argument("--against", help="with --kernel: also time dedup.py at this git rev")
    args = parser.parse_args()
    if args.kernel:
        kernel(args.against)
        return

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    find_near_pairs(np.arange(1000, dtype=np.uint64), args.threshold)  # start the workers

    print(f"near-duplicate search, threshold {args.threshold}, local Ray num_cpus={args.num_cpus}")
    header = (
        f"{'kind':<10} {'hashes':>9} {'distinct':>9} {'bands':>14} {'candidates':>13} "
        f"{'cand/hash':>9} {'near pairs':>10} {'seconds':>8} {'planted found':>14} "
        f"{'bit p(1)':>9} {'peak GB':>7}"
    )
    print(header)
    results = []
    for kind in args.kinds:
        for n in args.sizes:
            r = min(
                (run_one(kind, n, args.threshold, args.seed) for _ in range(args.repeat)),
                key=lambda r: r["seconds"],
            )
            results.append(r)
            print(
                f"{r['kind']:<10} {r['n']:>9,} {r['distinct']:>9,} {r['plan']:>14} "
                f"{r['candidates']:>13,} {r['candidates'] / r['distinct']:>9.1f} "
                f"{r['near_pairs']:>10,} {r['seconds']:>8.1f} {r['planted_ok']:>14} "
                f"{r['bit_bias']:>9} {r['peak_rss_gb']:>7.2f}",
                flush=True,
            )
    for kind in args.kinds:
        runs = sorted((r for r in results if r["kind"] == kind), key=lambda r: r["n"])
        if len(runs) >= 2:
            small, large = runs[0], runs[-1]
            print(
                f"{kind}: {large['n']:,}/{small['n']:,} hashes -> time x"
                f"{large['seconds'] / small['seconds']:.1f}, candidates x"
                f"{large['candidates'] / max(1, small['candidates']):.1f} "
                f"(quadratic would be x{(large['n'] / small['n']) ** 2:.0f})"
            )
    if args.end_to_end:
        print("deduplicate() end to end on realistic rows (10 classes, 1% mislabelled, 5% exact):")
        for n in args.sizes:
            e = end_to_end(n, args.threshold, args.seed)
            print(
                f"  {n:>9,} rows: {e['seconds']:.1f} s (search {e['search_seconds']:.1f} s), "
                f"kept {e['kept']:,}, dropped {e['dropped']}, largest cluster {e['largest']}, "
                f"{e['conflicts']:,} label conflicts",
                flush=True,
            )
    ray.shutdown()


if __name__ == "__main__":
    main()

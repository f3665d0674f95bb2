"""Candidate search, distributed on Ray: multi-index hashing.

The 64 bits are cut into m bands; two hashes within distance t differ by at most t // m
bits in at least one band (pigeonhole), so probing every band value within that radius
finds every pair. Probes are table lookups, candidates are verified with an exact
popcount in a compiled loop (`pipeline.hamming`); the work grows like
n * probes + candidates, not n^2.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from pipeline.dedup.config import HASH_BITS

log = logging.getLogger(__name__)

# A band's lookup table has 2**bits entries; 24 bits keeps it at 64 MiB at most.
MAX_BAND_BITS = 24
GIANT_BLOCK = (512, 8192)
# A probe (one random read of a band's table, larger than the cache) costs about as much
# as this many candidate checks (contiguous reads): scripts/bench/dedup_search.py --kernel.
PROBE_COST = 9.0
# Plans probing more band values than this per hash are never worth it (and never built).
MAX_PROBES = 20_000


@dataclass(frozen=True)
class BandPlan:
    """How the 64 bits are cut: band widths from the most significant bit, and the radius
    each band is probed with. Any pair within `max_distance` differs by at most `radius`
    bits in some band, since m bands each differing by radius+1 would add up to more."""

    widths: tuple[int, ...]
    radius: int

    @classmethod
    def even(cls, bands: int, max_distance: int) -> BandPlan:
        base, extra = divmod(HASH_BITS, bands)
        widths = tuple(base + 1 if i < extra else base for i in range(bands))
        if max(widths) > MAX_BAND_BITS:
            raise ValueError(f"{bands} bands are wider than {MAX_BAND_BITS} bits; use more")
        return cls(widths, max_distance // bands)

    def values(self, hashes: np.ndarray, band: int) -> np.ndarray:
        """Each hash's value in `band`, as int32 (a table index: bands are <= 24 bits)."""
        shift = HASH_BITS - sum(self.widths[: band + 1])
        mask = (1 << self.widths[band]) - 1
        return ((hashes >> np.uint64(shift)) & np.uint64(mask)).astype(np.int32)

    def probes(self) -> int:
        """Table lookups per hash and band (the widest band's)."""
        return sum(math.comb(max(self.widths), k) for k in range(self.radius + 1))

    def masks(self, band: int) -> np.ndarray:
        """Every XOR mask of at most `radius` bits within the band: the probe offsets."""
        return _probe_masks(self.widths[band], self.radius)

    def band_masks(self) -> np.ndarray:
        """Each band's bits as a uint64 mask of the whole hash."""
        ends = np.cumsum(self.widths)
        return np.array(
            [((1 << w) - 1) << (HASH_BITS - e) for w, e in zip(self.widths, ends, strict=True)],
            dtype=np.uint64,
        )


@cache
def _probe_masks(width: int, radius: int) -> np.ndarray:
    masks = [
        sum(1 << b for b in bits)
        for k in range(radius + 1)
        for bits in itertools.combinations(range(width), k)
    ]
    return np.array(masks, dtype=np.int32)


def plan_bands(hashes: np.ndarray, max_distance: int, bands: int = 0) -> BandPlan:
    """The band split the search uses: `bands` if given, else the cheapest on these hashes.

    Few wide bands mean many probes per hash (large radius); many narrow bands mean
    crowded buckets (many candidates). Real hashes are biased, so the candidate count is
    measured on a sample rather than assumed uniform.
    """
    if bands:
        return BandPlan.even(bands, max_distance)
    fewest = math.ceil(HASH_BITS / MAX_BAND_BITS)
    plans = [
        BandPlan.even(m, max_distance) for m in range(fewest, max(fewest, max_distance + 1) + 1)
    ]
    affordable = [p for p in plans if p.probes() <= MAX_PROBES] or plans[-1:]
    return min(affordable, key=lambda plan: _estimated_work(plan, hashes))


def _estimated_work(plan: BandPlan, hashes: np.ndarray, sample: int = 1 << 20) -> float:
    """Probes plus candidate pairs the plan would cost on `hashes` (bucket sizes sampled)."""
    n = hashes.size
    rng = np.random.default_rng(0)
    table_sample = hashes if n <= sample else rng.choice(hashes, sample, replace=False)
    queries = rng.choice(table_sample, min(4096, max(64, 2_000_000 // plan.probes())))
    scale = n / max(1, table_sample.size)
    work = 0.0
    for band in range(len(plan.widths)):
        counts = np.bincount(plan.values(table_sample, band), minlength=1 << plan.widths[band])
        masks = plan.masks(band)
        probes = plan.values(queries, band)[:, None] ^ masks[None, :]
        per_query = counts[probes].sum(axis=1).mean() * scale
        work += PROBE_COST * n * masks.size + n * per_query / 2
    return work


@dataclass
class NearPairs:
    """Verified pairs among distinct hashes: i < j (indexes into the hashes searched)."""

    i: np.ndarray
    j: np.ndarray
    distance: np.ndarray
    candidates: int  # candidate pairs verified: the search's work
    plan: BandPlan
    giant_buckets: int
    seconds: float


@dataclass
class _BandIndex:
    """One band's table. Bucket v holds the ids order[begin:begin + size], in ascending id
    order, with (begin, size) = buckets[v]; a crowded bucket's size is stored negated, so
    the search skips it in the same read. `hashes` is `order`'s hashes, so a bucket is
    read contiguously."""

    order: np.ndarray
    position: np.ndarray  # where each hash sits in `order`
    buckets: np.ndarray  # int32 (2**width, 2): begin, size (< 0: crowded)
    hashes: np.ndarray
    giants: np.ndarray  # band values holding more than the bucket cap

    def bucket(self, value: int) -> np.ndarray:
        begin, size = self.buckets[value]
        return self.order[begin : begin + abs(size)]


def _build_band_index(hashes: np.ndarray, plan: BandPlan, band: int, cap: int) -> _BandIndex:
    if hashes.size >= 2**31:
        raise ValueError("a band index holds fewer than 2**31 hashes; split the search")
    values = plan.values(hashes, band)
    counts = np.bincount(values, minlength=1 << plan.widths[band]).astype(np.int32)
    buckets = np.empty((counts.size, 2), dtype=np.int32)
    buckets[0, 0] = 0
    np.cumsum(counts[:-1], out=buckets[1:, 0])
    giants = np.flatnonzero(counts > cap)
    buckets[:, 1] = counts
    buckets[giants, 1] *= -1
    order = np.argsort(values, kind="stable").astype(np.int32)
    position = np.empty_like(order)
    position[order] = np.arange(order.size, dtype=np.int32)
    return _BandIndex(order, position, buckets, hashes[order], giants)


def _search_range(
    hashes: np.ndarray,
    is_query: np.ndarray | None,
    plan: BandPlan,
    start: int,
    stop: int,
    max_distance: int,
    *indexes: _BandIndex,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Ray task: near pairs of the query hashes in [start, stop), from every band's table.

    Each pair is reported by the first band it qualifies in; pairs touching a crowded
    bucket are left to `_search_giant`.
    """
    from pipeline.hamming import scan_band  # compiles on first use, in the worker

    nodes = np.arange(start, stop, dtype=np.int64)
    if is_query is not None:
        nodes = nodes[is_query[start:stop]]
    queries = np.zeros(0, bool) if is_query is None else is_query
    found: list[tuple[np.ndarray, ...]] = []
    candidates = 0
    for band, index in enumerate(indexes):
        *pairs, checked = scan_band(
            hashes,
            plan.values(hashes, band),
            nodes,
            plan.masks(band),
            index.buckets,
            index.order,
            index.hashes,
            index.position,
            queries,
            plan.band_masks()[:band],
            plan.radius,
            max_distance,
        )
        found.append(tuple(pairs))
        candidates += checked
    i, j, d = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return i, j, d, candidates


def _search_giant(
    hashes: np.ndarray,
    is_query: np.ndarray | None,
    plan: BandPlan,
    band: int,
    value: int,
    max_distance: int,
    index: _BandIndex,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Ray task: every pair with a hash in one crowded bucket, verified block by block."""
    sources = index.bucket(value)
    targets = np.concatenate([index.bucket(p) for p in value ^ plan.masks(band)])
    if is_query is not None and not (is_query[sources].any() or is_query[targets].any()):
        return (*_unique_pairs([], hashes.size), 0)
    found: list[tuple[np.ndarray, ...]] = []
    rows, cols = GIANT_BLOCK
    for a in range(0, sources.size, rows):
        s_block = sources[a : a + rows]
        for b in range(0, targets.size, cols):
            t_block = targets[b : b + cols]
            d = np.bitwise_count(hashes[s_block][:, None] ^ hashes[t_block][None, :])
            si, ti = np.nonzero(d <= max_distance)
            s, t = s_block[si], t_block[ti]
            keep = s != t
            if is_query is not None:
                keep &= is_query[s] | is_query[t]
            s, t, d = s[keep], t[keep], d[si[keep], ti[keep]]
            keep = _first_met_in(hashes[s] ^ hashes[t], plan, band)
            s, t, d = s[keep], t[keep], d[keep]
            found.append((np.minimum(s, t), np.maximum(s, t), d.astype(np.uint8)))
    return (*_unique_pairs(found, hashes.size), sources.size * targets.size)


def _first_met_in(differences: np.ndarray, plan: BandPlan, band: int) -> np.ndarray:
    """Whether `band` is the first band each pair (by its hashes' XOR) qualifies in: the
    rule `scan_band` reports by, so a crowded bucket's pairs that an earlier band
    already met (from a scan or another crowded bucket) are not reported twice."""
    first = np.ones(differences.size, dtype=bool)
    for mask in plan.band_masks()[:band]:
        first &= np.bitwise_count(differences & mask) > plan.radius
    return first


def _unique_pairs(
    found: list[tuple[np.ndarray, ...]], n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    i, j, d = (np.concatenate(parts) for parts in zip(*found, strict=True))
    _, first = np.unique(i.astype(np.int64) * n + j, return_index=True)
    return i[first].astype(np.int64), j[first].astype(np.int64), d[first]


@cache
def _remote(fn: Any) -> Any:
    import ray

    return ray.remote(fn)


def find_near_pairs(
    hashes: np.ndarray,
    max_distance: int,
    *,
    is_query: np.ndarray | None = None,
    bands: int = 0,
    max_bucket_hashes: int = 4096,
    hashes_per_task: int = 131_072,
) -> NearPairs:
    """Every pair of `hashes` (distinct uint64 values) within `max_distance`, on Ray.

    The hashes and one lookup table per band go to the object store once; each task
    probes the tables for a range of hashes and returns only verified pairs, so tasks
    spread over the nodes of a cluster. With `is_query`, only pairs touching at least
    one query hash are searched (incremental runs: new hashes against old and new).
    Memory per worker: about 8 + 4 * bands bytes per hash plus the tables. The driver
    holds the pairs once (17 bytes each) plus their concatenation: every pair comes back
    from exactly one task, so there is nothing to merge globally.
    """
    import ray

    started = time.perf_counter()
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    if hashes.size < 2:
        plan = BandPlan.even(bands or math.ceil(HASH_BITS / MAX_BAND_BITS), max_distance)
        return NearPairs(*_unique_pairs([], hashes.size), 0, plan, 0, 0.0)
    plan = plan_bands(hashes, max_distance, bands)
    hashes_ref = ray.put(hashes)
    query_ref = ray.put(is_query) if is_query is not None else None
    build = _remote(_build_band_index)
    indexes = [
        build.remote(hashes_ref, plan, band, max_bucket_hashes) for band in range(len(plan.widths))
    ]
    search, giant = _remote(_search_range), _remote(_search_giant)
    step = max(1, hashes_per_task)
    scans = [
        search.remote(
            hashes_ref, query_ref, plan, a, min(a + step, hashes.size), max_distance, *indexes
        )
        for a in range(0, hashes.size, step)
    ]
    crowded_tasks = []
    giants = ray.get([_remote(_giants_of).remote(index) for index in indexes])
    for band, values in enumerate(giants):
        if values.size:
            log.warning(
                "dedup: %d crowded bucket(s) in band %d searched blockwise (degenerate "
                "hashes? flag such images low_detail)",
                values.size,
                band,
            )
        crowded_tasks += [
            giant.remote(hashes_ref, query_ref, plan, band, int(v), max_distance, indexes[band])
            for v in values
        ]
    results = ray.get(scans + crowded_tasks)
    scanned, blockwise = results[: len(scans)], results[len(scans) :]
    # Scans report each pair once (its first band) and crowded buckets pairs first met
    # in their band, so only crowded buckets of one band can repeat a pair (when both
    # ends sit in crowded buckets): only their few pairs need a unique, never all pairs.
    crowded = _unique_pairs([r[:3] for r in blockwise], hashes.size)
    i, j, d = (
        np.concatenate(parts) for parts in zip(*(r[:3] for r in scanned), crowded, strict=True)
    )
    candidates = sum(r[3] for r in results)
    giant_count = sum(v.size for v in giants)
    return NearPairs(i, j, d, candidates, plan, giant_count, time.perf_counter() - started)


def _giants_of(index: _BandIndex) -> np.ndarray:
    return index.giants

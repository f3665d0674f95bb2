"""Whole-lake duplicate removal: exact and near-duplicate clusters, one keeper each.

Why: a scraped lake holds the same photo many times (re-encodes, resizes, light crops).
Copies inflate training, leak across the train/test split, and sometimes carry two
different labels. This stage decides, for every normalised image, whether it is kept,
and gives every image a `cluster_id` so the split can keep a cluster on one side.

How, top-down (`deduplicate` runs these steps):

1. Units. Rows with the same `sha256` (identical normalised pixels) form one unit, so
   exact duplicates always end up in one cluster.
2. Searchable hashes. Rows the caller flags `low_detail`, and rows whose hash is
   degenerate (`degenerate_hashes`), take part in exact matching only: a blank image's
   pHash has at most one bit set and would otherwise be "near" every plain image.
3. Candidate search, distributed on Ray (`find_near_pairs`): multi-index hashing. The
   64 bits are cut into m bands; two hashes within distance t differ by at most t // m
   bits in at least one band (pigeonhole), so probing every band value within that
   radius finds every pair. Probes are table lookups, candidates are verified with an
   exact popcount in a compiled loop (`pipeline.hamming`); the work grows like
   n * probes + candidates, not n^2.
4. Clustering on the driver (`_Clusterer`): keepers are picked greedily in keep-policy
   order; a copy goes to a keeper it is within the threshold *of*, so a chain A~B~C
   never merges A and C through B. When several keepers could take it, the closest
   one does (`assign_to`): on small crops against plain sky, the first one in
   keep-policy order was often a larger crop of another clip. The verified pairs are
   small (a few per duplicate), which is why this pass needs no cluster.
   With verification on (the default, `embedding_weights`), the search radius is the
   looser `verify_hash_distance` and a keeper claims a candidate only if their
   MobileNetV2 embeddings and colour layouts (`pipeline.embed`) agree too (`_Verifier`):
   the looser radius catches slight crops, the second signal rejects unrelated images
   whose hashes collide (low-structure images: a small object against plain sky).
5. Label conflicts: a cluster whose copies carry two classes is reported and, by
   default, dropped entirely.

What the caller passes (`REQUIRED_COLUMNS`), one row per normalised image:
    source_uri (str, unique), class_name (str), sha256 (str: hex of the normalised
    pixels), phash (str: 16 hex chars, `compute_hashes(image, cfg.hash_kind)` of the
    normalised image, whatever the kind; null if it could not be computed), width and
    height (int: the SOURCE's size, which the keep policy's "resolution" ranks: the
    normalised images of large sources all share the same 512 px side), source_format
    (str, as `common.decode` names it),
    seen_order (int: lower = seen earlier; may be null), low_detail (bool:
    `pipeline.junk.is_low_detail` of the image's scores; null counts as False).

Incremental runs pass `existing` (rows kept by earlier runs, same columns, optionally
`cluster_id`): those rows stay kept, and only the new rows get decisions.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.backbone import NO_WEIGHTS
from common.config import option

if TYPE_CHECKING:  # Ray and imagehash load lazily: the CLI imports this module for --help
    from collections.abc import Callable

    from PIL import Image

log = logging.getLogger(__name__)

# Reasons a duplicate is dropped (the values of the output's `reason` column).
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
LABEL_CONFLICT = "label_conflict"

HASH_KINDS = ("phash", "dhash", "whash", "ahash")
KEEP_KEYS = ("resolution", "lossless", "earliest")
ASSIGN_CLOSEST, ASSIGN_FIRST = "closest", "first"
ASSIGN_MODES = (ASSIGN_CLOSEST, ASSIGN_FIRST)
HASH_BITS = 64

# Optional: hash_stability (float; null or absent counts as stable); with verification
# (cfg.verified) also embedding (list of floats, L2-normalised: `pipeline.embed`) and
# colour_layout (list of floats): a row without them is matched exactly only; and
# grey_layout (list of uint8): a pair where either lacks it skips the grey checks (hash
# indexes written before it existed stay usable).
REQUIRED_COLUMNS = (
    "source_uri",
    "class_name",
    "sha256",
    "phash",
    "width",
    "height",
    "source_format",
    "seen_order",
    "low_detail",
)

DECISION_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("cluster_id", pa.string()),
        ("keep", pa.bool_()),
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),
        ("distance", pa.int32()),
    ]
)


@dataclass
class DedupConfig:
    hash_kind: str = option(
        "phash",
        "Perceptual hash (64-bit, imagehash) compared for near duplicates; the `phash` "
        "column holds this kind",
        choices=HASH_KINDS,
    )
    max_hash_distance: int = option(
        8,
        "Without embedding verification (--embedding-weights none): a near duplicate's "
        "hash differs in at most this many of 64 bits from the image kept in its place",
    )
    embedding_weights: str = option(
        "default",
        "MobileNetV2 weights that embed each image to verify near-duplicate candidates: "
        "'default' = torchvision's IMAGENET1K_V2 (downloaded once into the torch cache; "
        "the job stops with an error when it cannot be), a local state-dict path (a "
        "backbone-only `features.*` dict is fine), or 'none' = no verification (pHash "
        "alone, within max_hash_distance)",
    )
    embedding_side: int = option(
        112, "Side of the square the image is squashed to before it is embedded"
    )
    verify_hash_distance: int = option(
        12,
        "With verification: hashes within this many bits are candidates, and a candidate "
        "is a near duplicate only if it also passes the checks below against the image "
        "kept in its place",
    )
    embedding_hash_distance: int = option(
        8,
        "With verification, a second candidate source: images whose embeddings' 64-bit "
        "SimHashes (sides of fixed random hyperplanes through the lake's mean embedding) "
        "differ in at most this many bits are candidates too, verified the same way. It "
        "reaches copies whose pHash moved beyond verify_hash_distance (strong JPEG or WEBP "
        "on small images); 0 turns it off",
    )
    grey_hash_distance: int = option(
        0,
        "With verification, a third candidate source: images whose grey layouts' 64-bit "
        "SimHashes (each layout centred on its own mean, so the angle between two is their "
        "correlation) differ in at most this many bits are candidates too, verified the "
        "same way. It reaches re-encoded copies whose pHash and embedding both moved; 0 "
        "turns it off",
    )
    min_embedding_similarity: float = option(
        0.9, "Verification: cosine similarity of the two images' embeddings at least this"
    )
    max_colour_angle: float = option(
        3.0,
        "Verification: angle in degrees between the two images' colour layouts (mean RGB "
        "of a 4x4 grid; a brightness change does not move it) at most this",
    )
    assign_to: str = option(
        "closest",
        "Which kept image a near copy is dropped in favour of, when several verify it: "
        "'closest' = the one whose colour layout is closest (with verification; else the "
        "nearest hash), among those kept before it (the keep policy's order); 'first' = the "
        "first kept one to reach it (keep-policy order). On small crops against plain sky, "
        "'first' lets a larger crop of another clip take a copy before its own original",
        choices=ASSIGN_MODES,
    )
    keep_policy: list[str] = option(
        ["resolution", "lossless", "earliest"],
        "Which copy of a cluster is kept, by these keys in order: resolution (more pixels), "
        "lossless (lossless source format), earliest (lower seen_order); source_uri breaks ties",
    )
    lossless_formats: list[str] = option(
        ["PNG", "BMP", "TIFF", "PPM", "PGM", "PBM", "GIF", "TGA", "QOI", "ICO", "SVG"],
        "Source formats the keep policy counts as lossless (WEBP is not: its lossless mode "
        "cannot be told from the format name)",
    )
    min_hash_stability: float = option(
        500.0,
        "Low-structure images (a small object against plain sky, soft gradients) have pHash "
        "bits that sit near the median that sets them, so unrelated pictures collide: an "
        "image whose hash_stability is below this is matched only within "
        "strict_hash_distance",
    )
    strict_hash_distance: int = option(
        2,
        "Without verification: the stricter near-duplicate distance for images of low "
        "hash stability",
    )
    min_grey_correlation: float = option(
        0.7,
        "Verification: correlation of the two images' grey layouts (24x24 grey "
        "thumbnails; the best over shifts of one cell) at least this, whatever the other "
        "signals say: frames of one clip seconds apart embed alike and share their sky, "
        "but the object has moved (0 turns the floor off)",
    )
    grey_match_correlation: float = option(
        0.95,
        "Verification: a candidate whose grey layout correlates at least this much is a "
        "near duplicate if its colour layout is within max_colour_angle, whatever its "
        "embedding and strict_colour_angle say: strong JPEG or WEBP on a small crop moves "
        "the embedding but not the pixels (above 1 turns this off)",
    )
    strict_colour_angle: float = option(
        0.5,
        "With verification: the stricter colour-layout angle (degrees) for images of low "
        "hash stability: on plain sky the colours are most of what tells two clips apart",
    )
    conflict_matching: str = option(
        "exact",
        "Copies in two classes form a label conflict when they are exact (identical pixels) "
        "or also when near (within max_hash_distance). 'exact' by default: on low-structure "
        "images (objects against plain sky) unrelated pictures share pHashes, and a near "
        "conflict would drop both",
        choices=("exact", "near"),
    )
    drop_label_conflicts: bool = option(
        True,
        "A cluster whose copies carry different classes drops every copy (label_conflict); "
        "--no-drop-label-conflicts keeps its keeper and drops the rest",
    )
    min_hash_bits: int = option(
        4,
        "A hash with fewer than this many 1 bits, or 0 bits, is degenerate (a blank "
        "image's pHash is 8000000000000000) and is matched exactly only",
    )
    max_hash_collisions: int = option(
        10_000,
        "A hash value shared by more distinct images (sha256) than this is degenerate and "
        "matched exactly only (0: no limit)",
    )
    hash_bands: int = option(
        0, "Bands the 64 hash bits are cut into for the search; 0 picks the cheapest for the lake"
    )
    max_bucket_hashes: int = option(
        4096,
        "A band value shared by more distinct hashes than this is searched on its own, "
        "blockwise, so one degenerate bucket cannot exhaust a task's memory",
    )
    hashes_per_task: int = option(
        131_072, "Distinct hashes whose near neighbours one Ray search task looks up"
    )

    @property
    def verified(self) -> bool:
        """Candidates are verified with the embedding and colour layout."""
        return self.embedding_weights != NO_WEIGHTS

    @property
    def search_distance(self) -> int:
        """The Hamming radius the candidate search uses."""
        return self.verify_hash_distance if self.verified else self.max_hash_distance


# --- Hashing (called by the normalise stage) ---------------------------------------------


def compute_hashes(image: Image.Image, kind: str = "phash") -> str:
    """The image's 64-bit perceptual hash as 16 hex chars (imagehash's `str(hash)`)."""
    import imagehash

    functions = {
        "phash": imagehash.phash,
        "dhash": imagehash.dhash,
        "whash": imagehash.whash,
        "ahash": imagehash.average_hash,
    }
    if kind not in functions:
        raise ValueError(f"unknown hash kind {kind!r}; choose one of {', '.join(HASH_KINDS)}")
    return str(functions[kind](image, hash_size=8))


def _phash_dct(image: Image.Image) -> np.ndarray:
    """The 8x8 low-frequency DCT block pHash thresholds, computed as imagehash.phash does."""
    from PIL import Image as PILImage
    from scipy.fftpack import dct

    pixels = np.asarray(
        image.convert("L").resize((32, 32), PILImage.Resampling.LANCZOS), dtype=np.float64
    )
    return dct(dct(pixels, axis=0), axis=1)[:8, :8]


def _stability(low: np.ndarray) -> float:
    deviation = np.abs(low - np.median(low)).ravel()[1:]  # DC excluded
    return float(np.median(deviation))


def hash_stability(image: Image.Image) -> float:
    """How firmly pHash's bits are set: the median distance of the 8x8 low-frequency DCT
    coefficients (DC excluded) from the median that thresholds them. Photos score in the
    thousands; a small bird against a plain sky scores a few hundred, and its bits flip
    with the sky's gradient."""
    return _stability(_phash_dct(image))


def hash_signals(image: Image.Image, kind: str = "phash") -> tuple[str, float]:
    """The hash and its stability; for pHash both come from one DCT (the per-image path)."""
    if kind != "phash":
        return compute_hashes(image, kind), hash_stability(image)
    import imagehash

    low = _phash_dct(image)
    return str(imagehash.ImageHash(low > np.median(low))), _stability(low)


def hashes_to_uint64(hex_hashes: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """16-hex-char strings to uint64 (as `int(h, 16)`), plus a mask of the non-null ones."""
    valid = np.asarray(pc.is_valid(hex_hashes), dtype=bool)
    filled = pc.fill_null(hex_hashes, "0" * 16)
    lengths = np.asarray(pc.utf8_length(filled))
    if lengths.size and (lengths != 16).any():
        bad = filled[int(np.flatnonzero(lengths != 16)[0])].as_py()
        raise ValueError(f"a hash must be 16 hex characters (64 bits), got {bad!r}")
    raw = bytes.fromhex("".join(filled.to_pylist()))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64), valid


def degenerate_hashes(
    hashes: np.ndarray,
    min_bits: int,
    image_ids: np.ndarray | None = None,
    max_collisions: int = 0,
) -> np.ndarray:
    """True where a hash says too little about its image to call anything "near" it.

    Two signs: an extreme popcount (a blank image's pHash has 0 or 1 bit set, where a
    real photo's has 32), and a value shared by more than `max_collisions` distinct
    images (`image_ids`, e.g. sha256 codes), as featureless images all hash alike.
    """
    bits = np.bitwise_count(hashes)
    mask = (bits < min_bits) | (bits > HASH_BITS - min_bits)
    if max_collisions and image_ids is not None and hashes.size:
        pairs = np.unique(np.stack([hashes.view(np.int64), image_ids.astype(np.int64)]), axis=1)
        values, images = np.unique(pairs[0], return_counts=True)
        crowded = values[images > max_collisions]
        if crowded.size:
            mask |= np.isin(hashes.view(np.int64), crowded)
    return mask


# --- Candidate search: multi-index hashing on Ray ----------------------------------------

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


# --- Rows: the caller's tables as arrays ---------------------------------------------------

_INPUT_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("class_name", pa.string()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("source_format", pa.string()),
        ("seen_order", pa.int64()),
        ("low_detail", pa.bool_()),
        ("hash_stability", pa.float64()),
        ("embedding", pa.list_(pa.float16())),
        ("colour_layout", pa.list_(pa.float32())),
        ("grey_layout", pa.list_(pa.uint8())),
    ]
)
OPTIONAL_COLUMNS = {
    "hash_stability": pa.float64(),
    "embedding": pa.list_(pa.float16()),
    "colour_layout": pa.list_(pa.float32()),
    "grey_layout": pa.list_(pa.uint8()),
}


@dataclass
class _Rows:
    """Existing rows first, then new ones, as the arrays the decisions need."""

    n_existing: int
    uri: np.ndarray  # object (str)
    classes: list[str]
    class_code: np.ndarray
    sha_code: np.ndarray  # equal pixels, equal code
    hashes: np.ndarray  # uint64
    low_detail: np.ndarray
    degenerate: np.ndarray
    strict: np.ndarray  # low hash stability: matched within strict_hash_distance only
    searchable: np.ndarray  # takes part in the near-duplicate search
    rank: np.ndarray  # position in keep-policy order, 0 = best
    cluster_id: np.ndarray  # object: the id a cluster kept by this row gets
    embedding: np.ndarray | None  # (rows, dim) float16, L2-normalised; None: no verification
    colour: np.ndarray | None  # (rows, cells) float32, L2-normalised
    grey: np.ndarray | None  # (rows, cells) uint8, zeros where has_grey is False
    has_grey: np.ndarray | None

    @property
    def count(self) -> int:
        return self.uri.size


def _checked(table: pa.Table, what: str) -> pa.Table:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{what} table lacks column(s): {', '.join(missing)}")
    for name, kind in OPTIONAL_COLUMNS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, kind))
    out = table.select([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]).cast(_INPUT_SCHEMA)
    if out["sha256"].null_count or out["source_uri"].null_count:
        raise ValueError(f"{what} table has rows without source_uri or sha256")
    return out


def policy_rank(table: pa.Table, keep_policy: list[str], lossless: list[str]) -> np.ndarray:
    """Each row's position when sorted best-first by the keep policy (source_uri last)."""
    unknown = set(keep_policy) - set(KEEP_KEYS)
    if unknown:
        raise ValueError(f"unknown keep_policy key(s) {sorted(unknown)}; use {KEEP_KEYS}")
    formats = pc.utf8_upper(pc.fill_null(table["source_format"], ""))
    keys = pa.table(
        {
            "resolution": pc.negate(pc.multiply(table["width"], table["height"])),
            "lossless": pc.invert(pc.is_in(formats, pa.array([f.upper() for f in lossless]))),
            "earliest": table["seen_order"],
            "source_uri": table["source_uri"],
        }
    )
    sort_keys = [(k, "ascending", "at_end") for k in [*keep_policy, "source_uri"]]
    order = np.asarray(pc.sort_indices(keys, sort_keys=sort_keys))
    rank = np.empty(table.num_rows, dtype=np.int64)
    rank[order] = np.arange(table.num_rows)
    return rank


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    encoded = pc.dictionary_encode(pc.fill_null(column, "")).combine_chunks()
    return np.asarray(encoded.indices, dtype=np.int64), encoded.dictionary.to_pylist()


def _rows(existing: pa.Table | None, new: pa.Table, cfg: DedupConfig) -> _Rows:
    missing = {"embedding", "colour_layout"} - set(new.column_names)
    if cfg.verified and missing:
        raise ValueError(
            f"verification is on (embedding_weights {cfg.embedding_weights!r}) but the new "
            f"rows lack {', '.join(sorted(missing))}; embedding_weights 'none' turns it off"
        )
    tables = [_checked(new, "new")]
    if existing is not None:
        tables.insert(0, _checked(existing, "existing"))
    table = pa.concat_tables(tables)
    uri = table["source_uri"].to_numpy()
    if pc.count_distinct(table["source_uri"]).as_py() != uri.size:
        raise ValueError("source_uri must be unique across the existing and new rows")
    n_existing = 0 if existing is None else existing.num_rows
    sha_code, _ = _codes(table["sha256"])
    class_code, classes = _codes(table["class_name"])
    hashes, has_hash = hashes_to_uint64(table["phash"])
    low_detail = np.asarray(pc.fill_null(table["low_detail"], False), dtype=bool)
    degenerate = has_hash & degenerate_hashes(
        hashes, cfg.min_hash_bits, sha_code, cfg.max_hash_collisions
    )
    searchable = has_hash & ~low_detail & ~degenerate
    embedding = colour = grey = has_grey = None
    if cfg.verified:
        grey, has_grey = vectors(table["grey_layout"], np.uint8)
        embedding, has_embedding = vectors(table["embedding"], np.float16)
        colour, has_colour = vectors(table["colour_layout"], np.float32)
        colour /= np.maximum(np.linalg.norm(colour, axis=1, keepdims=True), 1e-12)
        searchable &= has_embedding & has_colour
    # A unit (the new rows of one sha256) is searched only if all its rows can be.
    new_codes = sha_code[n_existing:]
    blocked = np.bincount(new_codes, weights=~searchable[n_existing:], minlength=1) > 0
    searchable[n_existing:] &= ~blocked[new_codes]
    cluster_id = table["sha256"].to_numpy()
    if existing is not None and "cluster_id" in existing.column_names:
        given = pc.coalesce(existing["cluster_id"].cast(pa.string()), existing["sha256"])
        cluster_id[:n_existing] = given.to_numpy()
    return _Rows(
        n_existing=n_existing,
        uri=uri,
        classes=classes,
        class_code=class_code,
        sha_code=sha_code,
        hashes=hashes,
        low_detail=low_detail,
        degenerate=degenerate,
        strict=np.asarray(
            pc.fill_null(pc.less(table["hash_stability"], cfg.min_hash_stability), False),
            dtype=bool,
        ),
        searchable=searchable,
        rank=policy_rank(table, cfg.keep_policy, cfg.lossless_formats),
        cluster_id=cluster_id,
        embedding=embedding,
        colour=colour,
        grey=grey,
        has_grey=has_grey,
    )


def vectors(column: pa.ChunkedArray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A list column as a (rows, dim) matrix (zeros where null), and the non-null mask."""
    lists = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    valid = np.asarray(lists.is_valid(), dtype=bool)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(lists), 0))
    dim = int(lengths.max(initial=0))
    if (lengths[valid] != dim).any():
        raise ValueError(f"rows hold vectors of different lengths: {sorted(set(lengths))}")
    out = np.zeros((len(lists), dim), dtype=dtype)
    if dim:  # else every row is null or empty: nothing to copy
        flat = np.asarray(pc.list_flatten(lists.filter(pa.array(valid))), dtype=dtype)
        out[valid] = flat.reshape(-1, dim)
    return out, valid & (lengths > 0)


# --- Clustering: greedy keepers, bounded by the distance to the keeper ----------------------


def _csr(keys: np.ndarray, values: np.ndarray, size: int) -> tuple[list[int], np.ndarray]:
    """Group `values` by `keys` in 0..size-1: members of k are values[ptr[k]:ptr[k+1]].
    The members stay an array: as a Python list each would cost ~36 bytes, not 4-8,
    and there are two per near pair (hundreds of millions at 1M images and t=14)."""
    order = np.argsort(keys, kind="stable")
    ptr = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=size), out=ptr[1:])
    return ptr.tolist(), values[order]


class _Verifier:
    """The second check of a near-duplicate candidate, against the keeper itself.

    A hash collision says little on low-structure images, so a keeper claims a
    candidate unit only if their embeddings (what is in the picture) and their colour
    layouts (where the colours are) agree too, and their grey layouts (where the edges
    are) are at least loosely alike. A grey layout that matches closely stands in for
    the embedding and the strict colour angle: a re-encoded or rescaled small crop can
    move its embedding, never its pixels. Rows of one unit share their pixels and so
    their signals: one row per unit stands for it.
    """

    def __init__(self, rows: _Rows, cfg: DedupConfig):
        assert rows.embedding is not None and rows.colour is not None
        self.embedding, self.colour = rows.embedding, rows.colour
        self.min_similarity = cfg.min_embedding_similarity
        self.min_colour_cosine = math.cos(math.radians(cfg.max_colour_angle))
        self.strict_colour_cosine = math.cos(math.radians(cfg.strict_colour_angle))
        self.strict = rows.strict
        self.grey, self.has_grey = rows.grey, rows.has_grey
        from pipeline.embed import grey_correlation  # PIL with it: lazily, as above

        self.grey_correlation = grey_correlation
        self.min_grey = cfg.min_grey_correlation
        self.grey_match = cfg.grey_match_correlation
        self.unit_row = np.zeros(int(rows.sha_code.max(initial=-1)) + 1, dtype=np.int64)
        self.unit_row[rows.sha_code[::-1]] = np.arange(rows.count)[::-1]  # first row wins
        self.rejected = 0

    def __call__(self, row: int, units: list[int]) -> list[int]:
        """The candidate units that pass the checks against `row`."""
        passed, _ = self.check(row, self.unit_row[units])
        return [u for u, ok in zip(units, passed.tolist(), strict=True) if ok]

    def closest(self, row: int, keepers: list[int]) -> int:
        """Of the `keepers` that pass the checks against `row`, the one whose colour
        layout is closest (the first listed on a tie); -1 if none passes. The colour
        layout, not the embedding, ranks them: on plain sky it is what tells two clips
        apart, while every small dark object embeds alike."""
        passed, colour = self.check(row, np.asarray(keepers, dtype=np.int64))
        if not passed.any():
            return -1
        return keepers[int(np.argmax(np.where(passed, colour, -np.inf)))]

    def check(self, row: int, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of the rows `others` pass the checks against `row`, and the cosine of
        their colour layouts with row's."""
        similarity = self.embedding[others].astype(np.float32) @ self.embedding[row].astype(
            np.float32
        )
        colour = self.colour[others] @ self.colour[row]
        strict = self.strict[others] | self.strict[row]
        min_colour = np.where(strict, self.strict_colour_cosine, self.min_colour_cosine)
        passed = (similarity >= self.min_similarity) & (colour >= min_colour)
        if self.grey is not None and self.has_grey[row] and others.size:
            correlation = self.grey_correlation(self.grey[row], self.grey[others])
            grey = np.where(self.has_grey[others], correlation, np.nan)
            with np.errstate(invalid="ignore"):  # nan: a pair without both grey layouts
                matched = (grey >= self.grey_match) & (colour >= self.min_colour_cosine)
                passed = ~(grey < self.min_grey) & (passed | matched)
        self.rejected += int(passed.size - passed.sum())
        return passed, colour


class _Clusterer:
    """Assigns every new row the row it is kept in place of (itself, for a keeper).

    Rows are visited best-first (keep-policy order); existing rows are keepers and are
    never claimed, so rows kept by earlier runs stay kept. A copy is always within the
    threshold (and verified) of its keeper *itself*, so chains never merge. Exact copies
    (same sha256) go as one unit. Which keeper a near copy goes to (`assign`):

    - 'closest': every keeper offers itself to the undecided units in its own and the
      neighbouring hash nodes; at its turn a unit joins the offer that verifies it and is
      most alike (`_closest_keeper`), or, if none does, becomes a keeper.
    - 'first' (push): each keeper claims every still-unclaimed unit it verifies, so the
      first keeper in keep-policy order wins, however much closer a later one is.
    Both keep the same rows: a unit is kept exactly when no keeper chosen before it
    (existing ones first, then by rank) verifies it, so by induction the keepers are the
    same; only which keeper a copy is dropped for (its cluster) differs.
    """

    def __init__(
        self,
        rows: _Rows,
        node_of: np.ndarray,
        pairs: NearPairs,
        n_nodes: int,
        near_across_classes: bool,
        verifier: _Verifier | None = None,
        assign: str = ASSIGN_CLOSEST,
    ):
        if assign not in ASSIGN_MODES:
            raise ValueError(f"unknown assign_to {assign!r}; choose one of {ASSIGN_MODES}")
        self.assign = assign
        self.rows = rows
        self.verifier = verifier
        self.node_of = node_of
        self.near_across_classes = near_across_classes
        self.unit_class = _unit_classes(rows)
        self.row_class = rows.class_code.tolist()
        self.row_unit = rows.sha_code.tolist()
        new = np.arange(rows.n_existing, rows.count)
        searchable_new = new[rows.searchable[new]]
        node_unit = np.unique(
            np.stack([node_of[searchable_new], rows.sha_code[searchable_new]]), axis=1
        )
        self.unit_ptr, units = _csr(node_unit[0], node_unit[1], n_nodes)
        self.units = units.tolist()  # one per row: plain list, read in the inner loop
        ids = np.int32 if n_nodes < 2**31 else np.int64

        def both(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts, dtype=ids)

        self.nbr_ptr, self.nbrs = _csr(both([pairs.i, pairs.j]), both([pairs.j, pairs.i]), n_nodes)
        self.units_in_node = np.diff(self.unit_ptr)
        self.degree = np.diff(self.nbr_ptr)
        existing_nodes = node_of[: rows.n_existing]
        self.existing_in_node = np.bincount(existing_nodes[existing_nodes >= 0], minlength=n_nodes)
        self.node_list = node_of.tolist()  # plain lists: the loops below are Python
        # The nearest hash ranks keepers only without verification (see _closest_keeper).
        self.hash_list = rows.hashes.tolist() if verifier is None else []

    def run(self) -> np.ndarray:
        """Per new row, the row kept in its place (itself if it is a keeper)."""
        rows, e = self.rows, self.rows.n_existing
        keeper = np.full(int(rows.sha_code.max(initial=-1)) + 1, -1, dtype=np.int64)
        by_rank = np.argsort(rows.rank[:e])
        codes, first = np.unique(rows.sha_code[by_rank], return_index=True)
        keeper[codes] = by_rank[first]  # exact copies of existing rows, before any near one
        unit_keeper: list[int] = keeper.tolist()  # by sha code
        reaching = by_rank[self._touches_new(by_rank)].tolist()
        new = np.arange(e, rows.count)
        alone = self._alone(new, unit_keeper)
        order = new[~alone][np.argsort(rows.rank[new[~alone]])].tolist()
        if self.assign == ASSIGN_FIRST:
            self._push(reaching, order, unit_keeper)
        else:
            self._pull(reaching, order, unit_keeper)
        result = np.asarray(unit_keeper, dtype=np.int64)[rows.sha_code[new]]
        result[alone] = new[alone]
        return result

    def _push(self, existing: list[int], order: list[int], unit_keeper: list[int]) -> None:
        """'first': existing keepers, then each new keeper in `order`, claim their copies."""
        for row in existing:
            self._claim_near(row, unit_keeper)
        codes_of = self.row_unit
        for row in order:
            if unit_keeper[codes_of[row]] < 0:
                unit_keeper[codes_of[row]] = row
                self._claim_near(row, unit_keeper)

    def _pull(self, existing: list[int], order: list[int], unit_keeper: list[int]) -> None:
        """'closest': a keeper offers itself to every undecided unit it could take; each
        unit, at its best row's turn in `order`, joins the closest verified offer, or
        becomes a keeper. Offers are made by keepers (far fewer than rows), so this
        pass walks the neighbour lists as often as 'first' does."""
        offers: dict[int, list[int]] = {}  # unit -> keepers, in the order they were chosen
        for row in existing:
            self._offer(row, unit_keeper, offers)
        codes_of = self.row_unit
        for row in order:
            unit = codes_of[row]
            if unit_keeper[unit] >= 0:
                continue
            keeper = self._closest_keeper(row, offers.pop(unit, []))
            unit_keeper[unit] = row if keeper < 0 else keeper
            if keeper < 0:
                self._offer(row, unit_keeper, offers)

    def _offer(self, row: int, keeper: list[int], offers: dict[int, list[int]]) -> None:
        for unit in self._reachable(row, keeper):
            offers.setdefault(unit, []).append(row)

    def _closest_keeper(self, row: int, keepers: list[int]) -> int:
        """Of the `keepers` that reached `row`'s unit, the one it is dropped in favour of,
        or -1: the verified one with the closest colour layout, or without verification
        the nearest hash. Ties go to the keeper chosen first (listed first)."""
        if not keepers:
            return -1
        if self.verifier is not None:
            return self.verifier.closest(row, keepers)
        if len(keepers) == 1:  # within the threshold: it reached this unit
            return keepers[0]
        hashes, own = self.hash_list, self.hash_list[row]
        return min(keepers, key=lambda k: (hashes[k] ^ own).bit_count())  # first on a tie

    def _claim_near(self, row: int, keeper: list[int]) -> None:
        """`row` keeps in place of every unclaimed unit it reaches that it verifies."""
        found = self._reachable(row, keeper)
        if self.verifier is not None and found:
            found = self.verifier(row, found)
        for unit in found:
            keeper[unit] = row

    def _reachable(self, row: int, keeper: list[int]) -> list[int]:
        """The undecided units whose hash is within the threshold of keeper `row` (of its
        own class only, unless near copies may conflict across classes)."""
        node = self.node_list[row]
        if node < 0:
            return []
        own_unit, own_class = self.row_unit[row], self.row_class[row]
        found = []
        for near in [node, *self.nbrs[self.nbr_ptr[node] : self.nbr_ptr[node + 1]].tolist()]:
            for unit in self.units[self.unit_ptr[near] : self.unit_ptr[near + 1]]:
                if keeper[unit] >= 0 or unit == own_unit:  # own unit: decided by the caller
                    continue
                if self.near_across_classes or self.unit_class[unit] == own_class:
                    found.append(unit)
        return found

    def _touches_new(self, rows: np.ndarray) -> np.ndarray:
        """Existing rows whose node could reach a new unit (the others claim nothing)."""
        reaches = (self.units_in_node > 0) | (self.degree > 0)
        return _at(reaches, self.node_of[rows], False)

    def _alone(self, new: np.ndarray, keeper: list[int]) -> np.ndarray:
        """New rows no one can claim and that claim no one: their own keepers, no loop."""
        code = self.rows.sha_code[new]
        unit_size = np.bincount(code, minlength=len(keeper))
        lonely = (self.units_in_node == 1) & (self.degree == 0) & (self.existing_in_node == 0)
        unclaimed = np.asarray(keeper, dtype=np.int64)[code] < 0
        return (unit_size[code] == 1) & unclaimed & _at(lonely, self.node_of[new], True)


def _unit_classes(rows: _Rows) -> list[int]:
    """Per exact-copy unit (sha code), its class code, or -1 if its copies span classes."""
    n_units = int(rows.sha_code.max(initial=-1)) + 1
    pairs = np.unique(np.stack([rows.sha_code, rows.class_code]), axis=1)
    classes_per_unit = np.bincount(pairs[0], minlength=n_units)
    unit_class = np.full(n_units, -1, dtype=np.int64)
    single = classes_per_unit[pairs[0]] == 1
    unit_class[pairs[0][single]] = pairs[1][single]
    return unit_class.tolist()


def _at(per_node: np.ndarray, node: np.ndarray, missing: bool) -> np.ndarray:
    """per_node[node], and `missing` where node is -1 (a row left out of the search)."""
    return np.append(per_node, missing)[node]


# --- Decisions ---------------------------------------------------------------------------


@dataclass
class DedupResult:
    decisions: pa.Table  # DECISION_SCHEMA: one row per new row, in the input's order
    summary: dict[str, Any]


def deduplicate(new: pa.Table, cfg: DedupConfig, existing: pa.Table | None = None) -> DedupResult:
    """Decide which `new` rows to keep; `existing` rows (kept earlier) stay kept.

    A full run passes existing=None. The candidate search runs as Ray tasks (Ray must be
    initialised); the clustering pass runs here on the driver over the verified pairs.
    """
    started = time.perf_counter()
    rows = _rows(existing, new, cfg)
    nodes, node_of = np.unique(rows.hashes[rows.searchable], return_inverse=True)
    node_of_row = np.full(rows.count, -1, dtype=np.int64)
    node_of_row[rows.searchable] = node_of
    is_query = None
    if existing is not None:
        is_query = np.zeros(nodes.size, dtype=bool)
        is_query[node_of_row[rows.n_existing :][rows.searchable[rows.n_existing :]]] = True
    pairs = _search(nodes, cfg.search_distance, is_query, cfg, cfg.hash_bands)
    verifier = None
    if cfg.verified:
        verifier = _Verifier(rows, cfg)
        if cfg.embedding_hash_distance:
            units = _search_units(rows, node_of_row)
            hashes = simhashes(rows.embedding[units])
            pairs = _with_simhash_candidates(
                pairs, units, hashes, cfg.embedding_hash_distance, node_of_row, nodes, is_query, cfg
            )
        if cfg.grey_hash_distance and rows.grey is not None:
            units = _search_units(rows, node_of_row, rows.has_grey)
            hashes = grey_simhashes(rows.grey[units])
            pairs = _with_simhash_candidates(
                pairs, units, hashes, cfg.grey_hash_distance, node_of_row, nodes, is_query, cfg
            )
    else:
        pairs = _apply_strict_distance(pairs, rows, node_of_row, nodes.size, cfg)
    near_across = cfg.conflict_matching == "near"
    keeper = _Clusterer(
        rows, node_of_row, pairs, nodes.size, near_across, verifier, cfg.assign_to
    ).run()
    decisions, summary = _decisions(rows, keeper, cfg)
    summary["search"] = {
        "distinct_hashes": int(nodes.size),
        "band_bits": list(pairs.plan.widths),
        "band_radius": pairs.plan.radius,
        "candidate_pairs": int(pairs.candidates),
        "near_pairs": int(pairs.i.size),
        "embedding_hash_distance": cfg.embedding_hash_distance if cfg.verified else 0,
        "grey_hash_distance": cfg.grey_hash_distance if cfg.verified else 0,
        "verified": cfg.verified,
        "failed_verification": verifier.rejected if verifier else 0,
        "crowded_buckets": int(pairs.giant_buckets),
        "seconds": round(pairs.seconds, 3),
    }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return DedupResult(decisions, summary)


# The SimHash hyperplanes: the same in every run, so incremental runs compare alike.
SIMHASH_SEED = 0
SIMHASH_CHUNK = 65_536  # embeddings projected at once (float32 copies stay small)
# The centre is the mean shrunk towards the origin as if this many more embeddings sat
# there: in a small set the mean falls between the copies themselves (two copies alone
# would be centred into opposite directions).
SIMHASH_CENTRE_PRIOR = 100
GREY_SIMHASH_SEED = 1  # other planes than the embedding's (another dimension anyway)


def simhashes(embedding: np.ndarray) -> np.ndarray:
    """Each embedding's side of 64 fixed random hyperplanes through the set's mean
    direction, as uint64. Bits differ with probability angle / 180 degrees, so the Hamming
    distance tracks the angle; centring spreads features that are all non-negative (and
    all alike on plain sky), so unrelated images land far apart."""
    chunks = [slice(a, a + SIMHASH_CHUNK) for a in range(0, len(embedding), SIMHASH_CHUNK)]
    centre = sum(_unit_rows(embedding[c]).sum(axis=0) for c in chunks)
    centre = centre / (len(embedding) + SIMHASH_CENTRE_PRIOR)
    return _hyperplane_sides(embedding, SIMHASH_SEED, lambda rows: _unit_rows(rows) - centre)


def grey_simhashes(layouts: np.ndarray) -> np.ndarray:
    """Each grey layout's side of 64 fixed random hyperplanes through the origin, as
    uint64, after centring the layout on its own mean grey: the angle between two centred
    layouts is the arccos of their Pearson correlation, so, as for the embedding, the
    Hamming distance tracks it (no shift here: crops move it, re-encodes barely do)."""

    def centred(rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(np.float32)
        return rows - rows.mean(axis=1, keepdims=True)

    return _hyperplane_sides(layouts, GREY_SIMHASH_SEED, centred)


def _hyperplane_sides(
    vectors: np.ndarray, seed: int, prepare: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """uint64 of the signs of each prepared row against 64 random hyperplanes (fixed by
    `seed`, so incremental runs compare alike), a chunk of rows at a time so the float32
    copies stay small."""
    planes = np.random.default_rng(seed).standard_normal((vectors.shape[1], HASH_BITS))
    planes = planes.astype(np.float32)
    out = np.empty(len(vectors), dtype=np.uint64)
    for a in range(0, len(vectors), SIMHASH_CHUNK):
        chunk = slice(a, a + SIMHASH_CHUNK)
        out[chunk] = _bits_to_uint64(prepare(vectors[chunk]) @ planes > 0)
    return out


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    unit = vectors.astype(np.float32)
    return unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)


def _bits_to_uint64(bits: np.ndarray) -> np.ndarray:
    """(n, 64) bools, most significant first, as uint64."""
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _search_units(
    rows: _Rows, node_of_row: np.ndarray, usable: np.ndarray | None = None
) -> np.ndarray:
    """One searched row per exact-copy unit (its copies share pixels, so any one speaks
    for all), among the `usable` rows when given."""
    searched = node_of_row >= 0
    if usable is not None:
        searched &= usable
    searched = np.flatnonzero(searched)
    _, first = np.unique(rows.sha_code[searched], return_index=True)
    return searched[first]


def _with_simhash_candidates(
    pairs: NearPairs,
    unit_rows: np.ndarray,
    unit_hashes: np.ndarray,
    distance: int,
    node_of_row: np.ndarray,
    nodes: np.ndarray,
    is_query: np.ndarray | None,
    cfg: DedupConfig,
) -> NearPairs:
    """`pairs` plus the pHash-node pairs whose units' SimHashes (one per row of
    `unit_rows`) are within `distance`, found by the same search over the SimHashes."""
    if unit_rows.size < 2:
        return pairs
    values, sim_node = np.unique(unit_hashes, return_inverse=True)
    query = None
    if is_query is not None:
        query = np.zeros(values.size, dtype=bool)
        query[sim_node[is_query[node_of_row[unit_rows]]]] = True
    found = _search(values, distance, query, cfg)
    # Units sharing one SimHash pair up too: the value meets itself.
    shared = np.flatnonzero(np.bincount(sim_node, minlength=values.size) > 1)
    a, b = _member_pairs(
        sim_node,
        node_of_row[unit_rows],
        np.concatenate([found.i, shared]),
        np.concatenate([found.j, shared]),
    )
    i = np.concatenate([pairs.i, np.minimum(a, b)])
    j = np.concatenate([pairs.j, np.maximum(a, b)])
    keep = i != j
    key = np.unique(i[keep] * nodes.size + j[keep])
    i, j = key // nodes.size, key % nodes.size
    return dataclasses.replace(
        pairs,
        i=i,
        j=j,
        distance=np.bitwise_count(nodes[i] ^ nodes[j]).astype(np.uint8),
        candidates=pairs.candidates + found.candidates,
        giant_buckets=pairs.giant_buckets + found.giant_buckets,
        seconds=pairs.seconds + found.seconds,
    )


def _member_pairs(
    group: np.ndarray, member: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every (x, y) with x a member of group a[k] and y one of group b[k], for each k."""
    order = np.argsort(group, kind="stable")
    members = member[order]
    counts = np.bincount(group, minlength=int(group.max(initial=-1)) + 1)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per_pair = counts[a] * counts[b]
    total = int(per_pair.sum())
    k = np.arange(total) - np.repeat(np.cumsum(per_pair) - per_pair, per_pair)
    width = np.repeat(counts[b], per_pair)
    x = members[np.repeat(start[a], per_pair) + k // width]
    y = members[np.repeat(start[b], per_pair) + k % width]
    return x, y


def _search(
    hashes: np.ndarray, distance: int, is_query: np.ndarray | None, cfg: DedupConfig, bands: int = 0
) -> NearPairs:
    return find_near_pairs(
        hashes,
        distance,
        is_query=is_query,
        bands=bands,
        max_bucket_hashes=cfg.max_bucket_hashes,
        hashes_per_task=cfg.hashes_per_task,
    )


def _apply_strict_distance(
    pairs: NearPairs, rows: _Rows, node_of_row: np.ndarray, n_nodes: int, cfg: DedupConfig
) -> NearPairs:
    """Drop pairs that involve a low-stability hash and exceed the stricter distance."""
    strict_node = np.zeros(n_nodes, dtype=bool)
    searched = node_of_row >= 0
    strict_node[node_of_row[searched & rows.strict]] = True
    loose = (strict_node[pairs.i] | strict_node[pairs.j]) & (
        pairs.distance > cfg.strict_hash_distance
    )
    if not loose.any():
        return pairs
    keep = ~loose
    return dataclasses.replace(
        pairs, i=pairs.i[keep], j=pairs.j[keep], distance=pairs.distance[keep]
    )


def _conflicting(rows: _Rows, keeper: np.ndarray) -> np.ndarray:
    """Keepers whose cluster (new members plus an existing keeper) spans two classes."""
    new = np.arange(rows.n_existing, rows.count)
    members = np.concatenate([keeper, np.unique(keeper[keeper < rows.n_existing])])
    member_rows = np.concatenate([new, np.unique(keeper[keeper < rows.n_existing])])
    pairs = np.unique(np.stack([members, rows.class_code[member_rows]]), axis=1)
    clusters, classes = np.unique(pairs[0], return_counts=True)
    return clusters[classes > 1]


def _decisions(rows: _Rows, keeper: np.ndarray, cfg: DedupConfig) -> tuple[pa.Table, dict]:
    new = np.arange(rows.n_existing, rows.count)
    is_keeper = keeper == new
    exact = ~is_keeper & (rows.sha_code[new] == rows.sha_code[keeper])
    distance = np.bitwise_count(rows.hashes[new] ^ rows.hashes[keeper]).astype(np.int64)
    distance[exact] = 0
    reason = np.where(is_keeper, None, np.where(exact, EXACT_DUPLICATE, NEAR_DUPLICATE))
    conflicts = _conflicting(rows, keeper)
    in_conflict = np.isin(keeper, conflicts)
    if cfg.drop_label_conflicts:
        dropped_for_label = in_conflict
    else:
        dropped_for_label = in_conflict & (rows.class_code[new] != rows.class_code[keeper])
    reason[dropped_for_label] = LABEL_CONFLICT
    keep = is_keeper & ~dropped_for_label
    decisions = pa.table(
        {
            "source_uri": pa.array(rows.uri[new], pa.string()),
            "cluster_id": pa.array(rows.cluster_id[keeper], pa.string()),
            "keep": pa.array(keep),
            "reason": pa.array(reason, pa.string()),
            "duplicate_of": pa.array(rows.uri[keeper], pa.string(), mask=is_keeper),
            "distance": pa.array(distance, pa.int32(), mask=is_keeper),
        },
        schema=DECISION_SCHEMA,
    )
    return decisions, _summary(rows, keeper, reason, keep, conflicts, cfg)


def _summary(
    rows: _Rows,
    keeper: np.ndarray,
    reason: np.ndarray,
    keep: np.ndarray,
    conflicts: np.ndarray,
    cfg: DedupConfig,
) -> dict[str, Any]:
    new = np.arange(rows.n_existing, rows.count)
    clusters, sizes = np.unique(keeper, return_counts=True)
    sizes = sizes + (clusters < rows.n_existing)  # the existing keeper is a member too
    dropped = reason[~keep]
    return {
        "rows": int(new.size),
        "existing_rows": rows.n_existing,
        "kept": int(keep.sum()),
        "dropped": {
            r: int((dropped == r).sum()) for r in (EXACT_DUPLICATE, NEAR_DUPLICATE, LABEL_CONFLICT)
        },
        "clusters": int(clusters.size),
        "duplicate_clusters": int((sizes > 1).sum()),
        "largest_cluster": int(sizes.max(initial=0)),
        "low_detail_rows": int(rows.low_detail[new].sum()),
        "degenerate_hash_rows": int(rows.degenerate[new].sum()),
        "label_conflicts": _conflicts(rows, keeper, conflicts),
        "hash_kind": cfg.hash_kind,
        "max_hash_distance": cfg.search_distance,
    }


def _conflicts(
    rows: _Rows, keeper: np.ndarray, conflicts: np.ndarray, listed: int = 20
) -> list[dict[str, Any]]:
    """The label conflicts as the report shows them: classes and (some of) the copies."""
    by_cluster = np.argsort(keeper, kind="stable")
    sorted_keeper = keeper[by_cluster]
    out = []
    for cluster in conflicts.tolist():
        a, b = np.searchsorted(sorted_keeper, [cluster, cluster + 1])
        members = rows.n_existing + by_cluster[a:b]
        if cluster < rows.n_existing:
            members = np.concatenate([[cluster], members])
        names = [rows.classes[c] for c in rows.class_code[members]]
        out.append(
            {
                "cluster_id": str(rows.cluster_id[cluster]),
                "keeper": str(rows.uri[cluster]),
                "size": int(members.size),
                "classes": {name: names.count(name) for name in sorted(set(names))},
                "members": [str(u) for u in rows.uri[members[:listed]]],
            }
        )
    return sorted(out, key=lambda c: -c["size"])

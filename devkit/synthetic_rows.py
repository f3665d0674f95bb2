"""Synthetic per-image results at any scale, for measuring the cleaning job's driver-side
stages (planning, de-duplication, split, finalize, report, publish) without images.

Every row is a pure function of (seed, index), so a shard can be generated anywhere (in a
Ray task) and two shards agree on a planted pair without talking to each other:

- pHash: 64 random bits (a real pHash is close to uniform over the lake);
- duplicates: a share `dup_rate` of rows copies an earlier row of the same class, half
  exactly (same sha256 and pHash), half near (1-4 pHash bits flipped, own sha256); one
  in 50 copies takes a row of another class (a label conflict);
- hash stability: 400-4000 (a few below the 500 that narrows near matching);
- sizes: source bytes log-normal around 120 KB, source sides 320-4000 px, normalised
  JPEG bytes around 40 KB (only the numbers: the stored image is one tiny JPEG);
- channel moments: uniform in a plausible range.

No embeddings: the measured runs use pHash-only de-duplication (`embedding_weights
none`), which also leaves the off-class stage idle; see scripts/bench/scale.py.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from pipeline.tables import KEPT, work_schema

CLASSES = ("airplane", "bird", "drone", "helicopter")
EXACT, NEAR = 0, 1
_SNAPSHOT_TYPES = [
    ("source_uri", pa.string()),
    ("class_name", pa.string()),
    ("label", pa.int32()),
    ("size", pa.int64()),
    ("etag", pa.string()),
    ("mtime", pa.string()),
]


def _mix(seed: int, index: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (seed, index, salt): independent uint64 streams per purpose."""
    z = (index.astype(np.uint64) + np.uint64((seed * 1_000_003 + salt) & 0xFFFFFFFF)) * np.uint64(
        0x9E3779B97F4A7C15
    )
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _unit(seed: int, index: np.ndarray, salt: int) -> np.ndarray:
    return (_mix(seed, index, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def uri_of(root: str, index: np.ndarray) -> list[str]:
    base = root.rstrip("/")
    return [f"{base}/{CLASSES[i % len(CLASSES)]}/img{i:09d}.jpg" for i in index.tolist()]


def planted(seed: int, index: np.ndarray, dup_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(original index or -1, kind) per row: which rows are planted copies of which."""
    is_dup = _unit(seed, index, 1) < dup_rate
    back = 1 + (_mix(seed, index, 2) % np.uint64(1000)).astype(np.int64)
    conflict = _unit(seed, index, 3) < 0.02
    step = np.where(conflict, 1, len(CLASSES))
    original = index - back * step
    is_dup &= original >= 0
    is_dup &= _unit(seed, np.maximum(original, 0), 1) >= dup_rate  # originals are no copies
    kind = np.where(_unit(seed, index, 4) < 0.5, EXACT, NEAR)
    return np.where(is_dup, original, -1), kind


def _hashes(seed: int, index: np.ndarray, dup_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(pHash as uint64, sha256 id as uint64) per row, copies derived from originals."""
    original, kind = planted(seed, index, dup_rate)
    source = np.where(original >= 0, original, index)
    phash = _mix(seed, source, 10)
    flips = np.zeros(index.size, dtype=np.uint64)
    for b in range(4):  # 1-4 distinct-ish bits
        bit = _mix(seed, index, 20 + b) % np.uint64(64)
        take = (original >= 0) & (kind == NEAR) & ((b == 0) | (_unit(seed, index, 30 + b) < 0.5))
        flips |= np.where(take, np.uint64(1) << bit, np.uint64(0))
    phash = phash ^ flips
    sha = np.where((original >= 0) & (kind == EXACT), source, index).astype(np.uint64)
    return phash, _mix(seed, sha, 40)


def snapshot_rows(root: str, start: int, stop: int, seed: int = 0) -> pa.Table:
    """The listing's rows [start, stop) (`pipeline.listing.SNAPSHOT_SCHEMA`)."""
    index = np.arange(start, stop, dtype=np.int64)
    label = (index % len(CLASSES)).astype(np.int32)
    size = np.exp(np.log(120_000) + 0.8 * _unit(seed, index, 5)).astype(np.int64)
    etag = [f"{x:016x}" for x in _mix(seed, index, 6).tolist()]
    mtime = [f"2026-01-01T00:00:{i % 60:02d}+00:00" for i in index.tolist()]
    return pa.table(
        [
            pa.array(uri_of(root, index), pa.string()),
            pa.array([CLASSES[i] for i in label.tolist()], pa.string()),
            pa.array(label, pa.int32()),
            pa.array(size, pa.int64()),
            pa.array(etag, pa.string()),
            pa.array(mtime, pa.string()),
        ],
        schema=pa.schema(_SNAPSHOT_TYPES),
    )


def tiny_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 130, 140)).save(out, "JPEG", quality=80)
    return out.getvalue()


def candidate_rows(
    root: str, start: int, stop: int, seed: int = 0, dup_rate: float = 0.1
) -> pa.Table:
    """What the normalise stage would have written for rows [start, stop) as candidates
    (`pipeline.tables.work_schema`, status kept), with planted duplicates."""
    index = np.arange(start, stop, dtype=np.int64)
    n = index.size
    phash, sha = _hashes(seed, index, dup_rate)
    label = (index % len(CLASSES)).astype(np.int32)
    width = (320 + _unit(seed, index, 7) * 3680).astype(np.int32)
    height = (width * (0.5 + _unit(seed, index, 8))).astype(np.int32)
    picture = tiny_jpeg()
    mean = _unit(seed, index, 9).astype(np.float32) * 0.3 + 0.35
    columns = {
        "source_uri": pa.array(uri_of(root, index), pa.string()),
        "class_name": pa.array([CLASSES[i] for i in label.tolist()], pa.string()),
        "label": pa.array(label, pa.int32()),
        "source_etag": pa.array([f"{x:016x}" for x in _mix(seed, index, 6).tolist()]),
        "source_bytes": pa.array(
            np.exp(np.log(120_000) + 0.8 * _unit(seed, index, 5)).astype(np.int64)
        ),
        "source_format": pa.array(["JPEG"] * n, pa.string()),
        "source_width": pa.array(width, pa.int32()),
        "source_height": pa.array(height, pa.int32()),
        "frames": pa.array(np.ones(n, np.int32)),
        "seen_order": pa.array(index, pa.int64()),
        "status": pa.array([KEPT] * n, pa.string()),
        "image": pa.array([picture] * n, pa.binary()),
        "thumbnail": pa.array([picture] * n, pa.binary()),
        "sha256": pa.array([f"{x:016x}" * 4 for x in sha.tolist()], pa.string()),
        "phash": pa.array([f"{x:016x}" for x in phash.tolist()], pa.string()),
        "width": pa.array(np.minimum(width, 512), pa.int32()),
        "height": pa.array(np.minimum(height, 512), pa.int32()),
        "image_bytes": pa.array((30_000 + _unit(seed, index, 11) * 20_000).astype(np.int64)),
        "channel_mean": pa.FixedSizeListArray.from_arrays(np.repeat(mean, 3), 3),
        "channel_sqmean": pa.FixedSizeListArray.from_arrays(np.repeat(mean * mean + 0.05, 3), 3),
        "low_detail": pa.array(np.zeros(n, bool)),
        "hash_stability": pa.array((400 + _unit(seed, index, 12) * 3600).astype(np.float32)),
    }
    schema = work_schema([])
    arrays = [
        columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema
    ]
    return pa.table(arrays, schema=schema)


def expected_copies(n: int, seed: int = 0, dup_rate: float = 0.1) -> int:
    """How many rows of [0, n) are planted copies (an upper bound on what is dropped)."""
    original, _ = planted(seed, np.arange(n, dtype=np.int64), dup_rate)
    return int((original >= 0).sum())

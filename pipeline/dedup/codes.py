"""String columns as numbers on the driver, without a hash table of every string.

Why: de-duplication's rows arrive as string columns (hex pHashes and SHA-256s, URIs).
Arrow's hash kernels (`dictionary_encode`, `count_distinct`) keep a copy of every
distinct string in their memo table: at 3M rows +510 MB for the SHA-256 codes and
+270 MB for the URIs' uniqueness check, on top of the columns (the driver's peak at
scale, `scripts/bench/scale.py`). Here the strings' bytes are read in place, a chunk
at a time, into 64-bit numbers that numpy sorts; only rows whose numbers collide are
compared as strings, so the results are exactly the hash kernels'.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.chunked import take
from pipeline.split_units import fingerprints

_STEP = 65_536  # strings decoded per step: the step's byte matrix stays a few MB

_HEX_VALUE = np.full(256, 255, np.uint8)  # an ASCII byte's value as a hex digit
for _digits, _first in (("0123456789", 0), ("abcdef", 10), ("ABCDEF", 10)):
    _HEX_VALUE[[ord(c) for c in _digits]] = np.arange(_first, _first + len(_digits))


def _chunks(column: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return list(column.chunks) if isinstance(column, pa.ChunkedArray) else [column]


def _layout(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string chunk's offsets (one past the last included) and its bytes, in place."""
    wide = np.int64 if chunk.type == pa.large_string() else np.int32
    offsets = np.frombuffer(chunk.buffers()[1], wide)[chunk.offset : chunk.offset + len(chunk) + 1]
    given = chunk.buffers()[2]
    return offsets.astype(np.int64), (
        np.frombuffer(given, np.uint8) if given is not None else np.zeros(0, np.uint8)
    )


def leading_hex(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The first 16 bytes of each string read as 16 hex digits (a 64-bit number), and
    where that worked: False for nulls, shorter strings and other characters."""
    n = len(chunk)
    value, ok = np.zeros(n, np.uint64), np.zeros(n, bool)
    if n == 0 or chunk.null_count == n:
        return value, ok
    offsets, data = _layout(chunk)
    usable = np.diff(offsets) >= 16
    if chunk.null_count:
        usable &= np.asarray(chunk.is_valid().to_numpy(zero_copy_only=False), bool)
    for lo in range(0, n, _STEP):
        rows = lo + np.flatnonzero(usable[lo : lo + _STEP])
        nibbles = _HEX_VALUE[data[offsets[rows][:, None] + np.arange(16)]]
        raw = np.ascontiguousarray((nibbles[:, 0::2] << 4) | nibbles[:, 1::2])
        value[rows] = raw.view(">u8").ravel()
        ok[rows] = (nibbles <= 15).all(axis=1)
    return value, ok


def hashes_to_uint64(hex_hashes: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """16-hex-char strings to uint64 (as `int(h, 16)`; 0 where null), plus a mask of the
    non-null ones. Read from the strings' bytes in place: no Python string per row."""
    valid = np.asarray(pc.is_valid(hex_hashes), dtype=bool)
    lengths = np.asarray(pc.fill_null(pc.utf8_length(hex_hashes), 16))
    if lengths.size and (lengths != 16).any():
        bad = hex_hashes[int(np.flatnonzero(lengths != 16)[0])].as_py()
        raise ValueError(f"a hash must be 16 hex characters (64 bits), got {bad!r}")
    pieces = [leading_hex(c) for c in _chunks(hex_hashes)]
    value = np.concatenate([p[0] for p in pieces] or [np.zeros(0, np.uint64)])
    ok = np.concatenate([p[1] for p in pieces] or [np.zeros(0, bool)])
    # 16 characters that are not 16 bytes (not ASCII), or not hex digits
    bytes_ = np.concatenate([np.diff(_layout(c)[0]) for c in _chunks(hex_hashes)] or [[]])
    if (valid & (~ok | (bytes_ != 16))).any():
        raise ValueError("a hash must be 16 hex characters (64 bits): found other characters")
    return value, valid


def first_seen_codes(column: pa.ChunkedArray) -> np.ndarray:
    """Each row's code, numbered by first appearance (`dictionary_encode`'s codes), for a
    column of hex digests such as SHA-256s: rows are sorted by their first 16 hex
    digits and rows sharing those are compared whole. Any other column (nulls, other
    characters, two different strings with the same first 64 bits) is encoded by Arrow."""
    if len(column) == 0:
        return np.zeros(0, np.int64)
    pieces = [leading_hex(c) for c in _chunks(column)]
    lead = np.concatenate([p[0] for p in pieces] or [np.zeros(0, np.uint64)])
    if column.null_count or not all(p[1].all() for p in pieces):
        return _arrow_codes(column)
    del pieces
    order = np.argsort(lead, kind="stable")  # stable: the first row of a run comes first
    ordered = lead[order]
    del lead
    same = ordered[1:] == ordered[:-1]  # position p+1 holds the value of position p
    del ordered
    if same.any() and not _all_equal(column, order[:-1][same], order[1:][same]):
        return _arrow_codes(column)
    change = np.r_[True, ~same]
    del same
    group = np.cumsum(change) - 1  # per sorted position, its run
    first = order[change]  # each run's first row
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    codes = np.empty(order.size, np.int64)
    codes[order] = rank[group]
    return codes


def _arrow_codes(column: pa.ChunkedArray) -> np.ndarray:
    encoded = pc.dictionary_encode(pc.fill_null(column, "")).combine_chunks()
    return np.asarray(encoded.indices, dtype=np.int64)


def _all_equal(column: pa.ChunkedArray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether rows `a` and `b` hold equal strings, pair by pair (a step at a time)."""
    for lo in range(0, a.size, _STEP):
        left, right = take(column, a[lo : lo + _STEP]), take(column, b[lo : lo + _STEP])
        if not pc.all(pc.equal(left, right)).as_py():
            return False
    return True


def all_distinct(column: pa.ChunkedArray) -> bool:
    """Whether no string occurs twice and none is null, as `count_distinct` says: 64-bit
    fingerprints sorted, and the rows sharing one counted as strings."""
    if column.null_count:
        return False
    marks = [fingerprints(c) for c in _chunks(column)]
    value = np.concatenate(marks or [np.zeros(0, np.uint64)])
    order = np.argsort(value, kind="stable")
    ordered = value[order]
    del value
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return True
    shared = order[np.r_[same, False] | np.r_[False, same]]  # every row of a shared value
    return pc.count_distinct(take(column, shared)).as_py() == shared.size

"""The split's units on whole columns: integer ids for key values, and the units as
connected components of the rows, in integer arrays (numpy over Arrow buffers).

Why: the split runs on the driver over every kept file of the lake, old and new. A
union-find, dicts and Counters per row cost about 1 KB a file there (1 GB at 1M files),
and even Arrow's dictionary encoding copies every distinct key (cluster ids are 64-byte
SHA-256 digests: the column once more). Here a key costs a 64-bit fingerprint of its
bytes, checked against the key itself so that the grouping stays exact.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.chunked import take

CHUNK = 65_536  # rows handled per step where a step copies strings or makes Python objects
ID = np.int32  # row, unit and value ids: half the memory of int64 (a driver holds < 2**31 rows)

_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_SEED = np.uint64(0x9E3779B97F4A7C15)


def strings(column: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """The column as strings, chunks as they are (the keys' text is what groups them)."""
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    return column if column.type == pa.string() else column.cast(pa.string())


def codes(column: pa.ChunkedArray, null: bool = False) -> tuple[np.ndarray, pa.Array]:
    """For a column of few distinct values (classes, split names): an id per row (ids in
    order of first appearance) and the values; null rows get -1, or an id with `null`."""
    encoded = pc.dictionary_encode(column, null_encoding="encode" if null else "mask")
    ids = [c.indices.fill_null(-1).to_numpy(zero_copy_only=False) for c in encoded.chunks]
    dictionary = encoded.chunk(0).dictionary if encoded.num_chunks else pa.array([], pa.string())
    return np.concatenate(ids or [np.zeros(0, ID)]).astype(ID, copy=False), dictionary


def keys(column: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """A key column as `key_groups` takes it: integers as they are, the rest as strings."""
    if pa.types.is_integer(column.type):
        return column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
    return strings(column)


def key_groups(column: pa.ChunkedArray) -> tuple[np.ndarray | None, np.ndarray, int]:
    """The rows with a key (None: all), an id for each one's key, and the number of ids:
    rows share an id exactly when their keys are equal. Integer keys are numbered as
    they are; string keys by fingerprints, and a fingerprint two different keys share
    (found by comparing each row's key with its group's first) is resolved by
    dictionary-encoding the rows of those groups only."""
    n = len(column)
    if column.null_count == n:
        return np.zeros(0, ID), np.zeros(0, ID), 0
    if pa.types.is_integer(column.type):
        return _integer_groups(column)
    rows = None
    fingerprint = np.concatenate(
        [np.zeros(0, np.uint64)] + [fingerprints(c) for c in column.chunks]
    )
    if column.null_count:
        rows = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False)).astype(ID)
        fingerprint = fingerprint[rows]
    order = np.argsort(fingerprint, kind="stable")
    fingerprint = fingerprint[order]
    starts = run_starts(fingerprint)
    del fingerprint
    ids = np.zeros(order.size, ID)
    ids[starts[1:]] = 1
    group = np.empty(order.size, ID)
    group[order] = np.cumsum(ids, out=ids)
    first = order[starts] if rows is None else rows[order[starts]]  # stable: first rows
    groups = starts.size
    del ids, order, starts
    clash = np.zeros(groups, bool)
    for lo in range(0, group.size, CHUNK):
        part = np.arange(lo, min(lo + CHUNK, group.size)) if rows is None else rows[lo : lo + CHUNK]
        mine = group[lo : lo + CHUNK]
        same = pc.equal(take(column, part), take(column, first[mine]))
        clash[mine[~same.to_numpy(zero_copy_only=False)]] = True
    if clash.any():
        redo = np.flatnonzero(clash[group])
        clashing = take(column, redo if rows is None else rows[redo])
        again, distinct = codes(pa.chunked_array([clashing]))
        group[redo] = groups + again
        groups += len(distinct)
    return rows, group, groups


def _integer_groups(column: pa.ChunkedArray) -> tuple[np.ndarray | None, np.ndarray, int]:
    rows = None
    values = column.fill_null(0).to_numpy()  # null rows are left out by `rows` below
    if column.null_count:
        rows = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False)).astype(ID)
        values = values[rows]
    distinct, group = np.unique(values, return_inverse=True)
    return rows, group.astype(ID, copy=False), int(distinct.size)


def fingerprints(chunk: pa.Array) -> np.ndarray:
    """A 64-bit fingerprint of each string's bytes: its 8-byte words, each mixed with its
    position (splitmix64's finaliser), summed, and mixed with the length."""
    out = np.zeros(len(chunk), np.uint64)
    if len(chunk) == 0 or chunk.null_count == len(chunk):
        return out
    wide = np.int64 if chunk.type == pa.large_string() else np.int32
    offsets = np.frombuffer(chunk.buffers()[1], wide)[chunk.offset : chunk.offset + len(chunk) + 1]
    given = chunk.buffers()[2]
    data = np.frombuffer(given, np.uint8) if given is not None else np.zeros(0, np.uint8)
    step = CHUNK // 16  # strings per step: their words' arrays stay a few MB
    for lo in range(0, len(chunk), step):
        edges = offsets[lo : lo + step + 1].astype(np.int64)
        start, length = edges[:-1] - edges[0], np.diff(edges)
        padded = np.zeros(int(edges[-1] - edges[0]) + 8, np.uint8)  # a word read past the end
        padded[: padded.size - 8] = data[edges[0] : edges[-1]]
        # Every byte offset as the start of a little-endian 64-bit word (unaligned view).
        words = np.ndarray((padded.size - 7,), "<u8", padded, strides=(1,))
        count = (length + 7) // 8
        first = np.r_[0, np.cumsum(count)]
        of = np.repeat(np.arange(start.size), count)
        nth = np.arange(first[-1]) - first[of]
        left = length[of] - 8 * nth  # bytes of the string from this word on
        bits = (8 * np.minimum(left, 8)).astype(np.uint64)
        mask = np.where(bits == 64, ~np.uint64(0), (np.uint64(1) << (bits % 64)) - np.uint64(1))
        term = _mix((words[start[of] + 8 * nth] & mask) ^ _mix(nth.astype(np.uint64) + _SEED))
        total = np.r_[np.uint64(0), np.cumsum(term, dtype=np.uint64)]
        out[lo : lo + start.size] = _mix((total[first[1:]] - total[first[:-1]]) ^ _mix(length))
    return out


def _mix(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64, copy=False)
    z = (z ^ (z >> np.uint64(30))) * _MIX[0]
    z = (z ^ (z >> np.uint64(27))) * _MIX[1]
    return z ^ (z >> np.uint64(31))


def units_of(
    keys: list[pa.ChunkedArray],
    uris: pa.ChunkedArray | None,
    links: Iterable[tuple[str, str]],
    n: int | None = None,
) -> np.ndarray:
    """Per row its unit: rows sharing a non-null value of one key column, or joined by a
    link (pair of URIs; a URI held by several rows stands for its last row), are one unit.
    Units are numbered in the order of their first row. `uris`: the rows' URIs (None:
    no links, and `n` rows)."""
    n = len(uris) if uris is not None else int(n or 0)
    edges = [key_groups(column) for column in keys]
    a, b = _link_rows(uris, links) if uris is not None else (np.zeros(0, np.int64),) * 2
    if a.size:
        joined = np.arange(a.size, dtype=ID)
        edges.append((np.r_[a, b].astype(ID), np.r_[joined, joined], a.size))
    root = _components(n, edges)
    rank = np.cumsum(root == np.arange(n, dtype=ID), dtype=ID) - 1  # a root is a first row
    return rank[root]


def _components(n: int, edges: list[tuple[np.ndarray | None, np.ndarray, int]]) -> np.ndarray:
    """Per row the smallest row of its component, where each (rows or None for all,
    group, groups) joins the rows of each group. Min-label hooking of roots with full
    path compression, in numpy: repeated until no group spans two roots (a few rounds
    for real keys)."""
    parent = np.arange(n, dtype=ID)
    changed = True
    while changed:
        changed = False
        for rows, group, groups in edges:
            root = parent if rows is None else parent[rows]
            low = np.full(groups, n, ID)
            np.minimum.at(low, group, root)
            target = low[group]
            move = target < root
            if move.any():
                np.minimum.at(parent, root[move], target[move])  # both taken before
                changed = True
                while True:
                    grand = parent[parent]
                    if np.array_equal(grand, parent):
                        break
                    parent = grand
    return parent


def _link_rows(uris: pa.ChunkedArray, links: Iterable[tuple[str, str]]) -> tuple[np.ndarray, ...]:
    """The rows of both ends of each link whose URIs are both in `uris`."""
    pairs = list(links)
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    backwards = uris.take(np.arange(len(uris))[::-1])  # index_in finds the first match
    ends = []
    for side in (0, 1):
        found = pc.index_in(pa.array([p[side] for p in pairs], pa.string()), backwards)
        ends.append(found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64))
    both = (ends[0] >= 0) & (ends[1] >= 0)
    return len(uris) - 1 - ends[0][both], len(uris) - 1 - ends[1][both]


def run_starts(values: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts in a sorted array."""
    return np.flatnonzero(np.r_[values.size > 0, values[1:] != values[:-1]])


class Pairs:
    """The distinct (unit, value) pairs of some rows, sorted by unit then value, with
    how many rows hold each and the first of them."""

    def __init__(self, unit: np.ndarray, value: np.ndarray, values: int, rows: np.ndarray):
        width = max(values, 1)
        key = unit[rows].astype(np.int64) * width + value[rows]
        uniq, first, count = np.unique(key, return_index=True, return_counts=True)
        del key
        self.unit, self.value = (uniq // width).astype(ID), (uniq % width).astype(ID)
        self.count, self.first = count.astype(ID), rows[first].astype(ID)

    def mode(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The units, each one's most frequent value (a tie goes to the value whose first
        row comes first, as `Counter.most_common` has it) and its number of values."""
        order = np.lexsort((self.first, -self.count, self.unit))
        unit = self.unit[order]
        head = run_starts(unit)
        return unit[head], self.value[order][head], np.diff(np.r_[head, unit.size])

    def starts(self, units: int) -> np.ndarray:
        """Where each unit 0..units-1 starts in the pairs (the last entry: their count)."""
        return np.searchsorted(self.unit, np.arange(units + 1))

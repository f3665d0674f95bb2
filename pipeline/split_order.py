"""The order new split units are assigned in, and the per-class balancing, on integer
arrays: each new unit is named by its smallest path relative to the lake's root, and
units are taken in the order of that path's SHA-256 (deterministic, independent of the
input order and of where the lake lies).

Why here: finding a unit's smallest path sorts row numbers (Arrow compares the strings
in place) instead of copying every path without its root; digests are made a chunk of
units at a time. Only the balancing walks the new units one by one (each pick depends on
the counts the earlier picks left), a chunk of plain ints at a time.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.chunked import take
from pipeline.split_units import CHUNK, ID, Pairs, run_starts


def relative(uris: pa.Array | pa.ChunkedArray, root: str) -> pa.Array | pa.ChunkedArray:
    """`common.storage.relative_to` on a column: the path below `root`, or the URI."""
    if not root:
        return uris
    prefix = root.rstrip("/") + "/"
    cut = pc.utf8_slice_codeunits(uris, len(prefix))  # code points, as Python slices
    return pc.if_else(pc.starts_with(uris, prefix), cut, uris)


def first_rows(local: np.ndarray, units: int, uris: pa.ChunkedArray, root: str) -> np.ndarray:
    """The row of each new unit 0..units-1 (`local`: a row's new unit, -1 for none; every
    unit has a row) whose path relative to `root` is the smallest. A unit of one row is
    that row; only the rows of larger units (copies, groups: a few in ten) are sorted,
    so the sort holds a fraction of the rows (sorting every row cost ~46 bytes a row)."""
    held = np.flatnonzero(local >= 0)
    sizes = np.bincount(local[held], minlength=units)
    alone = held[sizes[local[held]] == 1]
    first = np.empty(units, np.int64)
    first[local[alone]] = alone
    shared = held[sizes[local[held]] > 1]
    if shared.size:
        many = np.flatnonzero(sizes > 1)  # ascending: the units' order kept
        sub = np.searchsorted(many, local[shared]).astype(local.dtype)
        first[many] = shared[_sorted_first(sub, many.size, take(uris, shared), root)]
    return first


def _sorted_first(local: np.ndarray, units: int, uris: pa.Array, root: str) -> np.ndarray:
    """`first_rows` by sorting (every row has a unit here). Arrow orders strings by their
    UTF-8 bytes, which is Python's order of code points. Rows are sorted by unit, whether
    they lie below `root`, then URI: below the root the URI orders as the relative path
    does; a unit with rows on both sides compares its two candidates' paths."""
    n = local.size
    # Rows of no new unit sort last, each alone, so that no string compares for them.
    key = np.where(local >= 0, local, units + np.arange(n))
    below = pc.starts_with(uris, root.rstrip("/") + "/") if root else pa.nulls(n, pa.bool_())
    below = below.fill_null(False)
    table = pa.table({"key": key, "below": below, "uri": uris})
    sort = [("key", "ascending"), ("below", "descending"), ("uri", "ascending")]
    order = pc.sort_indices(table, sort).to_numpy()[: int((local >= 0).sum())]
    del table, key
    unit = local[order]
    head = run_starts(unit)
    first = order[head]
    side = below.take(pa.array(order)).to_numpy(zero_copy_only=False).astype(np.int64)
    runs = run_starts(unit.astype(np.int64) * 2 + (1 - side))  # below first, then the rest
    both = np.flatnonzero(np.diff(np.r_[np.searchsorted(runs, head), runs.size]) > 1)
    if both.size:  # below the root and elsewhere: the smaller of the two candidates
        inside, outside = order[head[both]], order[runs[np.searchsorted(runs, head[both]) + 1]]
        ours = relative(uris.take(pa.array(inside)), root)
        swap = pc.less(uris.take(pa.array(outside)), ours).to_numpy(zero_copy_only=False)
        first[both[swap]] = outside[swap]
    return first


def stable_order(uris: pa.ChunkedArray, rows: np.ndarray, root: str) -> np.ndarray:
    """Indices that sort `rows` by the SHA-256 of their paths relative to `root` (bytes
    sort as their hex digests do), ties by position. Sorted by the digests' first 8 bytes;
    rows that share those are sorted again by whole digests."""
    head = np.empty(rows.size, np.uint64)
    for lo in range(0, rows.size, CHUNK):
        head[lo : lo + CHUNK] = _digests(uris, rows[lo : lo + CHUNK], root)[:, 0]
    order = np.argsort(head, kind="stable")
    head = head[order]
    tied = np.flatnonzero(np.r_[head[1:] == head[:-1], False] | np.r_[False, head[1:] == head[:-1]])
    if tied.size:  # same first bytes (the same path, mostly): whole digests, then position
        words = _digests(uris, rows[order[tied]], root)
        order[tied] = order[tied][np.lexsort((order[tied], *words[:, ::-1].T))]
    return order


def _digests(uris: pa.ChunkedArray, rows: np.ndarray, root: str) -> np.ndarray:
    """The SHA-256 of each row's path relative to `root`, as four big-endian words."""
    paths = relative(take(uris, rows), root).cast(pa.binary()).to_pylist()
    digests = b"".join(hashlib.sha256(path).digest() for path in paths)
    return np.frombuffer(digests, ">u8").reshape(-1, 4)


def balance(
    order: np.ndarray,
    label: np.ndarray,
    classes: Pairs,
    counts: np.ndarray,
    targets: list[tuple[int, float]],
) -> np.ndarray:
    """The split of each new unit, taken in `order`: the target split of the unit's label
    furthest below its share once the unit is added (`targets`: split id and share, in
    the order that wins ties); then every row of the unit counts for its own class.
    `counts`: rows per class and split id so far."""
    cur = counts.tolist()
    total = counts.sum(axis=1).tolist()
    starts = classes.starts(label.size)
    rows_before = np.r_[0, np.cumsum(classes.count)]
    size = rows_before[starts[1:]] - rows_before[starts[:-1]]
    mixed = np.diff(starts) > 1
    side = np.empty(label.size, ID)
    for lo in range(0, order.size, CHUNK):
        units = order[lo : lo + CHUNK]
        picked = []
        chunk = (label[units].tolist(), size[units].tolist(), mixed[units].tolist())
        for u, lab, n, mix in zip(units.tolist(), *chunk, strict=True):
            row, grown = cur[lab], total[lab] + n
            best, best_key = -1, None
            for split, share in targets:
                key = (share * grown - row[split], share)
                if best_key is None or key > best_key:
                    best, best_key = split, key
            picked.append(best)
            if mix:
                for j in range(int(starts[u]), int(starts[u + 1])):
                    cls, k = int(classes.value[j]), int(classes.count[j])
                    cur[cls][best] += k
                    total[cls] += k
            else:
                row[best] += n
                total[lab] += n
        side[units] = picked
    return side

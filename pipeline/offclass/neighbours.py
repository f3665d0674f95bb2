"""Neighbour votes when the queries are the references themselves (a first run: every
candidate with an embedding is a reference), with about half the products.

`probe.neighbour_votes` compares each query with every reference: n x n products when
the queries are the n references. But the similarity of a to b is that of b to a, so a
block of references is compared with itself and the references after it only
(`upper_nearest`: the blocks' upper triangle, the diagonal blocks whole), and each
image's nearest come from two places: its own block's row (the references from its
block on) and the columns of the blocks before it (`merged`). At 20,000 crops the votes
took ~23 CPU-s this way round and take ~13 now. The same votes as `neighbour_votes`: a
tie at the k-th place goes to the reference first in URI order in both
(`probe.nearest`), up to BLAS rounding a product of one or two rows differently.
"""

from __future__ import annotations

import numpy as np

from pipeline.offclass.probe import VOTE_ROWS, Nearest, References, left_out, nearest


def upper_nearest(
    refs: References, lo: int, hi: int, k: int, copy_similarity: float
) -> tuple[Nearest, Nearest]:
    """References lo:hi compared with lo:n: (their `k` nearest among lo:n; each of the
    references hi:n's `k` nearest among lo:hi), columns counted from 0."""
    block = refs.vectors[lo:hi].astype(np.float32)
    sims = block @ refs.vectors[lo:].astype(np.float32).T
    rows = []
    # In chunks, as in neighbour_votes: the masks and the partition's copy stay small.
    # Masked in place: the columns below read the same masked similarities.
    for i in range(0, hi - lo, VOTE_ROWS):
        chunk = sims[i : i + VOTE_ROWS]
        own = refs.uris[lo + i : min(lo + i + VOTE_ROWS, hi)]
        left_out(chunk, own, refs.uris[lo:], copy_similarity)
        rows.append(nearest(chunk, k, lo))
    later = sims[:, hi - lo :]  # the block's columns of the references after it
    columns = [
        nearest(later[:, j : j + VOTE_ROWS].T, k, lo) for j in range(0, later.shape[1], VOTE_ROWS)
    ]
    return _stacked(rows, k), _stacked(columns, k)


def _stacked(parts: list[Nearest], k: int) -> Nearest:
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def merged(best: Nearest | None, more: Nearest, k: int) -> Nearest:
    """The `k` nearest of each row among both lists (`best`: None for none yet), a tie
    going to the lower column as in `probe.nearest`."""
    if best is None:
        return more
    values = np.concatenate([best[0], more[0]], axis=1)
    columns = np.concatenate([best[1], more[1]], axis=1)
    order = np.lexsort((columns, -values), axis=1)[:, :k]
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(columns, order, axis=1)


def triangle_nearest(
    parts: list[tuple[Nearest, Nearest]], starts: list[int], n: int, k: int
) -> Nearest:
    """Every reference's `k` nearest from `upper_nearest`'s results, one per block
    starting at `starts` (in order), merged in block order."""
    bounds = [*starts, n]
    best: list[Nearest | None] = [None] * len(starts)
    for b, (rows, columns) in enumerate(parts):
        best[b] = merged(best[b], rows, k)
        after = bounds[b + 1]  # the column part's first reference
        for c in range(b + 1, len(starts)):  # the later blocks' rows among b's columns
            first, stop = bounds[c] - after, bounds[c + 1] - after
            best[c] = merged(best[c], (columns[0][first:stop], columns[1][first:stop]), k)
    done = [found for found in best if found is not None]
    return _stacked(done, k)

"""Connected components of a sparse graph in Ray tasks: the alternating large-star /
small-star algorithm (Kiveris et al., "Connected Components in MapReduce and Beyond",
2014).

Why: de-duplication must cut its rows into independent pieces before the keep decisions
can run in tasks, and the pieces are the components of the graph that links exact-copy
units to hash nodes and hash nodes to their near pairs. A driver-side union-find would
hold every edge and a Python object per vertex; here each task owns the vertices
`v % parts == p` and sees only their edges, and the driver only sums counts per round.

Each step rewires edges towards the smallest vertex of their neighbourhood without
changing connectivity; alternating the two steps turns every component into a star
around its smallest vertex in O(log^2 n) rounds. The graph is a forest of such stars
exactly when no vertex has a smaller neighbour and a larger one, or two smaller ones:
the large-star tasks count those vertices, and a round whose input has none is the last.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np

# Directed edges a task holds at most (each undirected edge is held twice), so that one
# round's arrays stay around 100 MB per task.
EDGES_PER_TASK = 4_000_000
MAX_ROUNDS = 200  # O(log^2 n): 200 is far beyond any real graph; a bug, not a lake


def _scatter(u: np.ndarray, v: np.ndarray, parts: int) -> list[np.ndarray]:
    """Directed edges (u, v) as one (2, k) int64 array per owner of u (u % parts)."""
    owner = u % parts
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(parts + 1))
    edges = np.stack([u[order], v[order]])
    return [edges[:, bounds[p] : bounds[p + 1]] for p in range(parts)]


def _both_ways(u: np.ndarray, v: np.ndarray, parts: int) -> list[np.ndarray]:
    """Undirected edges, each sent to the owners of both its ends (self-loops dropped)."""
    keep = u != v
    u, v = u[keep], v[keep]
    return _scatter(np.concatenate([u, v]), np.concatenate([v, u]), parts)


def _adjacency(pieces: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct edges (u, v) sorted by u then v, and where each u's run starts."""
    edges = np.concatenate(pieces, axis=1) if pieces else np.zeros((2, 0), np.int64)
    if edges.shape[1] == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    key = np.unique((edges[0] << 32) | edges[1])  # vertex ids < 2**31: sorted by (u, v)
    u, v = key >> 32, key & 0xFFFFFFFF
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    return u, v, starts


def _large_star(parts: int, units: int, *pieces: np.ndarray) -> list[Any]:
    """Ray task: each owned u links its larger neighbours to the smallest of u and its
    neighbours. Also returns how many owned vertices break the star shape, and each
    owned unit's (< `units`) smallest neighbour-or-self: its label once that count is 0."""
    u, v, starts = _adjacency(pieces)
    if u.size == 0:
        empty = np.zeros(0, np.int64)
        return [*_both_ways(empty, empty, parts), 0, np.zeros((2, 0), np.int64)]
    owners = u[starts]
    smallest = np.minimum(owners, np.minimum.reduceat(v, starts))
    smaller = np.add.reduceat((v < u).astype(np.int64), starts)
    larger = np.add.reduceat((v > u).astype(np.int64), starts)
    broken = int(((smaller > 1) | ((smaller > 0) & (larger > 0))).sum())
    m = np.repeat(smallest, np.diff(np.r_[starts, u.size]))
    up = v > u
    is_unit = owners < units
    labels = np.stack([owners[is_unit], smallest[is_unit]])
    return [*_both_ways(v[up], m[up], parts), broken, labels]


def _small_star(parts: int, *pieces: np.ndarray) -> list[Any]:
    """Ray task: each owned u links itself and its smaller neighbours to the smallest
    of them. Also returns the number of edges it held (so there are always two returns:
    Ray hands a single return back as one object)."""
    u, v, starts = _adjacency(pieces)
    if u.size == 0:
        empty = np.zeros(0, np.int64)
        return [*_both_ways(empty, empty, parts), 0]
    owners = u[starts]
    smallest = np.minimum(owners, np.minimum.reduceat(v, starts))
    m = np.repeat(smallest, np.diff(np.r_[starts, u.size]))
    down = v < u
    ends = np.concatenate([v[down], owners]), np.concatenate([m[down], smallest])
    return [*_both_ways(*ends, parts), int(u.size)]


@cache
def _remote(fn: Any, returns: int) -> Any:
    import ray

    return ray.remote(num_returns=returns)(fn)


def unit_labels(a: np.ndarray, b: np.ndarray, units: int, edges_per_task: int = 0) -> np.ndarray:
    """Per vertex 0..units-1, the smallest vertex of its component in the graph of the
    undirected edges (a, b); a vertex without edges is its own label. Vertices from
    `units` on may appear in edges but get no label (every component must hold one of
    the first `units` vertices, which the de-duplication graph guarantees)."""
    labels = np.arange(units, dtype=np.int64)
    if a.size == 0:
        return labels
    import ray

    per_task = edges_per_task or EDGES_PER_TASK
    parts = max(1, math.ceil(2 * a.size / per_task))
    if max(int(a.max()), int(b.max())) >= 2**31:
        raise ValueError("vertex ids must stay below 2**31")
    pieces = _both_ways(a.astype(np.int64), b.astype(np.int64), parts)
    inputs = [[ray.put(piece)] for piece in pieces]
    large, small = _remote(_large_star, parts + 2), _remote(_small_star, parts + 1)
    for _ in range(MAX_ROUNDS):
        outs = [large.remote(parts, units, *pieces) for pieces in inputs]
        if sum(ray.get([out[parts] for out in outs])) == 0:
            for owned in ray.get([out[parts + 1] for out in outs]):
                labels[owned[0]] = owned[1]
            return labels
        inputs = _transpose([out[:parts] for out in outs], parts)
        outs = [small.remote(parts, *pieces) for pieces in inputs]
        inputs = _transpose([out[:parts] for out in outs], parts)
    raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")


def _transpose(outs: list[list[Any]], parts: int) -> list[list[Any]]:
    """Task q's bucket p, for every q, as the next step's input of task p."""
    return [[out[p] for out in outs] for p in range(parts)]

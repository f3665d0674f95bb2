"""More candidate sources for the verified search: SimHashes of the embeddings and of the
grey layouts, searched like the pHashes (`pipeline.dedup.search`) and added to their
pairs; and, without verification, the stricter distance for low-stability hashes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from pipeline.dedup.config import HASH_BITS, DedupConfig
from pipeline.dedup.rows import Rows, RowVectors
from pipeline.dedup.search import NearPairs, find_near_pairs

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


def stored_simhashes(vectors: RowVectors, units: np.ndarray, grey: bool) -> np.ndarray:
    """Ray task: the SimHashes of the `units`' grey layouts (`grey`) or embeddings, from
    the rows' vectors in the object store. Its projection runs one BLAS thread where the
    driver's ran two: the same bits (sgemm splits the rows between threads, never a
    sum), checked on the 20,000 halmstad candidates."""
    if grey:
        return grey_simhashes(vectors.grey[units])
    return simhashes(vectors.embedding[units])


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


def search_units(
    rows: Rows, node_of_row: np.ndarray, usable: np.ndarray | None = None
) -> np.ndarray:
    """One searched row per exact-copy unit (its copies share pixels, so any one speaks
    for all), among the `usable` rows when given."""
    searched = node_of_row >= 0
    if usable is not None:
        searched &= usable
    searched = np.flatnonzero(searched)
    _, first = np.unique(rows.sha_code[searched], return_index=True)
    return searched[first]


def with_simhash_candidates(
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
    found = search_hashes(values, distance, query, cfg)
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


def search_hashes(
    hashes: np.ndarray, distance: int, is_query: np.ndarray | None, cfg: DedupConfig, bands: int = 0
) -> NearPairs:
    """`find_near_pairs` with the config's memory and task-size limits."""
    return find_near_pairs(
        hashes,
        distance,
        is_query=is_query,
        bands=bands,
        max_bucket_hashes=cfg.max_bucket_hashes,
        hashes_per_task=cfg.hashes_per_task,
    )


def apply_strict_distance(
    pairs: NearPairs, rows: Rows, node_of_row: np.ndarray, n_nodes: int, cfg: DedupConfig
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

"""The off-class maths, in plain numpy: the out-of-fold linear discriminant probe, the
nearest-neighbour votes and each class's typical confidence (`pipeline.offclass.score`
runs them on Ray)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


def uri_rank(uris: np.ndarray, repeat: int = 0) -> np.ndarray:
    """A fixed pseudo-random 64-bit rank per URI (or content key): folds and caps never
    depend on order. Each `repeat` draws another fixed ranking (another fold split)."""
    salt = f"{repeat}:" if repeat else ""
    return np.array(
        [int.from_bytes(hashlib.sha1(f"{salt}{u}".encode()).digest()[:8], "big") for u in uris],
        np.uint64,
    )


# --- the probe: linear discriminant analysis, out of fold -----------------------------
# LDA rather than a logistic regression: it needs only per-class sums and one scatter
# matrix, which add up over blocks and folds, so every fold's probe costs one d x d solve
# whatever the lake's size (a logistic fit costs about 20 ms per image on this lake).


@dataclass
class FoldStats:
    """Sufficient statistics of the references, per fold: class sums and counts, X'X."""

    sums: np.ndarray  # (folds, classes, d)
    counts: np.ndarray  # (folds, classes)
    scatter: np.ndarray  # (folds, d, d)


def fold_stats(
    vectors: np.ndarray, labels: np.ndarray, folds: np.ndarray, n_folds: int, n_classes: int
) -> FoldStats:
    x = vectors.astype(np.float64)
    d = x.shape[1]
    stats = FoldStats(
        np.zeros((n_folds, n_classes, d)),
        np.zeros((n_folds, n_classes)),
        np.zeros((n_folds, d, d)),
    )
    for f in range(n_folds):
        rows = folds == f
        held = x[rows]
        stats.scatter[f] = gram(held)
        np.add.at(stats.sums[f], labels[rows], held)
        np.add.at(stats.counts[f], labels[rows], 1)
    return stats


def gram(x: np.ndarray) -> np.ndarray:
    """x'x through one array: numpy then calls BLAS's symmetric product (syrk), half
    the multiplications of two operands' general product (gemm); 2-3x less CPU for the
    probe's statistics. The same matrix to the bit as gemm gave on the real float16
    embeddings with this OpenBLAS (every product is exact in float64, and both added
    them in the same order): an observation, not a guarantee."""
    return x.T @ x


def one_fold_stats(
    vectors: np.ndarray, labels: np.ndarray, folds: np.ndarray, fold: int, n_classes: int,
    step: int,
) -> FoldStats:  # fmt: skip
    """`fold_stats` of every block of `step` rows added up (`summed_stats`), at `fold`
    only ((classes, d) sums, (classes,) counts, (d, d) X'X), the same to the bit."""
    return summed_stats(
        _fold_part(vectors[i : i + step], labels[i : i + step], folds[i : i + step] == fold,
                   n_classes)
        for i in range(0, len(labels), step)
    )  # fmt: skip


def _fold_part(vectors: np.ndarray, labels: np.ndarray, rows: np.ndarray, n: int) -> FoldStats:
    """`fold_stats` of one block at one fold (`rows`: the block's rows in it)."""
    x = vectors[rows].astype(np.float64)  # the fold's rows only: the same values
    part = FoldStats(np.zeros((n, x.shape[1])), np.zeros(n), gram(x))
    np.add.at(part.sums, labels[rows], x)
    np.add.at(part.counts, labels[rows], 1)
    return part


def summed_stats(parts: Iterator[FoldStats]) -> FoldStats:
    """The blocks' statistics added up in block order, one block held at a time. The
    same sum to the bit as `sum()` over a list of them: 0 + the first, then each next
    one added in place."""
    total = None
    for part in parts:
        if total is None:
            total = FoldStats(0 + part.sums, 0 + part.counts, 0 + part.scatter)
        else:
            total.sums += part.sums
            total.counts += part.counts
            total.scatter += part.scatter
    if total is None:
        raise ValueError("no reference rows to fit the probe on")
    return total


def discriminants(stats: FoldStats, fold: int, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """(d x classes weights, class offsets) of the LDA fitted without `fold`: shared
    within-class covariance shrunk towards a multiple of the identity, class priors."""
    keep = np.arange(len(stats.counts)) != fold
    sums, counts = stats.sums[keep].sum(axis=0), stats.counts[keep].sum(axis=0)
    scatter = stats.scatter[keep].sum(axis=0)
    present = counts > 0
    means = np.zeros_like(sums)
    means[present] = sums[present] / counts[present, None]
    total, d = counts.sum(), scatter.shape[0]
    within = (scatter - (sums[present].T / counts[present]) @ sums[present]) / max(
        total - present.sum(), 1
    )
    target = np.trace(within) / d
    within = (1 - shrinkage) * within + shrinkage * max(target, 1e-12) * np.eye(d)
    weights = np.linalg.solve(within, means.T)
    with np.errstate(divide="ignore"):
        offsets = -0.5 * np.sum(means * weights.T, axis=1) + np.log(counts / max(total, 1))
    return weights, offsets


def posterior(queries: np.ndarray, weights: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    z = queries.astype(np.float64) @ weights + offsets
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def capped(labels: np.ndarray, ranks: np.ndarray, cap: int) -> np.ndarray:
    """Indices of at most `cap` rows per class: the lowest URI ranks."""
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep.append(members[np.argsort(ranks[members], kind="stable")[:cap]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


# --- nearest neighbours (label issues) --------------------------------------------------


@dataclass
class References:
    """Every image a query is compared with: unit embeddings, class ids and URIs."""

    vectors: np.ndarray  # (n, d) float16, L2-normalised
    labels: np.ndarray  # (n,) int32 class index
    uris: np.ndarray  # (n,) str: the query's own row is left out by URI


def neighbour_votes(
    queries: np.ndarray, query_uris: np.ndarray, refs: References, n_classes: int, k: int,
    copy_similarity: float,
) -> np.ndarray:  # fmt: skip
    """(m, n_classes): share of each query's k most similar references in each class,
    leaving out the query itself and its near copies."""
    sims = queries.astype(np.float32) @ refs.vectors.astype(np.float32).T
    kk = min(k, sims.shape[1])
    if kk == 0:
        return np.zeros((len(queries), n_classes), np.float32)
    # Row by row the same result; in chunks, the masks and the partition's copy and
    # indices (12 bytes per query and reference) stay small on a large lake.
    chunks = [slice(i, i + VOTE_ROWS) for i in range(0, max(len(queries), 1), VOTE_ROWS)]
    return np.concatenate(
        [_votes(sims[c], query_uris[c], refs, n_classes, kk, copy_similarity) for c in chunks]
    )


VOTE_ROWS = 128  # queries per chunk of `neighbour_votes` after its one matrix product


def _votes(
    sims: np.ndarray, query_uris: np.ndarray, refs: References, n_classes: int, kk: int,
    copy_similarity: float,
) -> np.ndarray:  # fmt: skip
    """`neighbour_votes` of a chunk of queries from their similarities (changed in place)."""
    left_out(sims, query_uris, refs.uris, copy_similarity)
    return counted(nearest(sims, kk), refs.labels, n_classes)


def left_out(sims: np.ndarray, query_uris: np.ndarray, uris: np.ndarray, copy: float) -> None:
    """Set to -inf, in place, each query's own row (its URI or key code) and its near
    copies (similarity at least `copy`): they are no neighbours to vote."""
    sims[query_uris[:, None] == uris[None, :]] = -np.inf
    sims[sims >= copy] = -np.inf


# Each row's most similar references: (similarities (m, j) float32, their columns (m, j)).
Nearest = tuple[np.ndarray, np.ndarray]


def nearest(sims: np.ndarray, k: int, first: int = 0) -> Nearest:
    """Each row's `k` largest similarities (fewer if `sims` has fewer columns), in no
    particular order, and their columns counted from `first`. A tie at the k-th place
    goes to the lower column, so the neighbours do not depend on how the references
    were split into blocks (copies in a lake tie exactly). The rows with such a tie
    are sorted on their own: among their candidates only (at least the k-th value)."""
    kk = min(k, sims.shape[1])
    if kk == 0:
        return np.zeros((len(sims), 0), sims.dtype), np.zeros((len(sims), 0), np.int64)
    picked = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    values = np.take_along_axis(sims, picked, axis=1)
    kth = values.min(axis=1)
    at_least = sims >= kth[:, None]
    # -inf at the k-th place: fewer than k to vote, every finite one already picked.
    for r in np.flatnonzero(np.isfinite(kth) & (at_least.sum(axis=1) > kk)):
        candidates = np.flatnonzero(at_least[r])  # ascending: lexsort keeps the lower
        order = np.lexsort((candidates, -sims[r, candidates]))[:kk]
        picked[r], values[r] = candidates[order], sims[r, candidates[order]]
    return values, picked + first


def counted(found: Nearest, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(m, n_classes): the share of each row's nearest in each class (`labels`: the
    columns' classes), counting only those not left out (finite similarity)."""
    values, columns = found
    valid = np.isfinite(values)
    votes = np.zeros((len(values), n_classes), np.float32)
    for j in range(columns.shape[1]):
        np.add.at(votes, (np.arange(len(values)), labels[columns[:, j]]), valid[:, j])
    return votes / np.maximum(valid.sum(axis=1, keepdims=True), 1)


MIN_SPREAD = 0.5  # logit units: a class of near-certain members still has some spread
LOGIT_CLIP = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p / (1 - p))


def typical_confidence(own_logit: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, 2): each class's median logit P(own) and its spread (scaled MAD)."""
    stats = np.full((n_classes, 2), np.nan)
    for c in range(n_classes):
        values = own_logit[labels == c]
        if values.size:
            median = float(np.median(values))
            spread = 1.4826 * float(np.median(np.abs(values - median)))
            stats[c] = (median, max(spread, MIN_SPREAD))
    return stats

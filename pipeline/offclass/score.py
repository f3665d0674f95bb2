"""Off-class scores on Ray: the probe's folds and the neighbour search run as Ray tasks
over blocks of rows (the maths is `pipeline.offclass.probe`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray

from pipeline.offclass.config import OffClassConfig
from pipeline.offclass.fit import Shared, fold_probes, share
from pipeline.offclass.probe import (
    References,
    capped,
    logit,
    neighbour_votes,
    posterior,
    typical_confidence,
    uri_rank,
)


@ray.remote(num_cpus=1)
def _posterior_task(queries: np.ndarray, weights: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return posterior(queries, weights, offsets)


def out_of_fold(
    queries: np.ndarray, query_uris: np.ndarray, refs: References, n_classes: int,
    cfg: OffClassConfig, shared: Shared | None = None, repeat: int = 0,
) -> np.ndarray:  # fmt: skip
    """(m, n_classes): each query's class probabilities from the probe fitted on every
    reference outside the query's fold (folds fixed by a hash of the key and `repeat`)."""
    k = cfg.off_class_folds
    ref_folds = (uri_rank(refs.uris, repeat) % k).astype(np.int64)
    shared = share(refs) if shared is None else shared
    step = cfg.off_class_block_rows
    query_folds = uri_rank(query_uris, repeat) % k
    wanted = np.unique(query_folds)
    probes = fold_probes(shared, ref_folds, k, n_classes, step, wanted, cfg.off_class_shrinkage)
    probabilities = np.zeros((len(queries), n_classes))
    futures, owners = [], []
    for fold, (weights, offsets) in probes.items():
        rows = np.flatnonzero(query_folds == fold)
        for i in range(0, rows.size, step):
            block = rows[i : i + step]
            futures.append(_posterior_task.remote(queries[block], weights, offsets))
            owners.append(block)
    for block, result in zip(owners, ray.get(futures), strict=True):
        probabilities[block] = result
    return probabilities


def bagged_out_of_fold(
    queries: np.ndarray, query_uris: np.ndarray, refs: References, n_classes: int,
    cfg: OffClassConfig, shared: Shared,
) -> np.ndarray:  # fmt: skip
    """`out_of_fold` averaged over `off_class_repeats` fold splits. One split decides
    borderline images by where their look-alikes happened to fall: on the web-scraped
    benchmark three single splits flagged 8, 10 and 11 of 1,208 real photos, three
    averages of five splits 6 each (and 59-60 of 91 planted off-class photos each)."""
    total = np.zeros((len(queries), n_classes))
    for repeat in range(cfg.off_class_repeats):
        total += out_of_fold(queries, query_uris, refs, n_classes, cfg, shared, repeat)
    return total / cfg.off_class_repeats


@ray.remote(num_cpus=1)
def _neighbour_task(
    queries: np.ndarray, uris: np.ndarray, refs: References, n_classes: int, k: int, copy: float
) -> np.ndarray:
    return neighbour_votes(queries, uris, refs, n_classes, k, copy)


def distributed_votes(
    queries: np.ndarray, uris: np.ndarray, refs: References, n_classes: int,
    cfg: OffClassConfig, shared: Shared | None = None,
) -> np.ndarray:  # fmt: skip
    """`neighbour_votes` over blocks of queries in Ray tasks; references put once."""
    refs_ref = (share(refs) if shared is None else shared).refs
    step = cfg.off_class_block_rows
    futures = [
        _neighbour_task.remote(
            queries[i : i + step],
            uris[i : i + step],
            refs_ref,
            n_classes,
            cfg.off_class_k,
            cfg.off_class_copy_similarity,
        )  # fmt: skip
        for i in range(0, len(queries), step)
    ]
    parts = ray.get(futures)
    return np.concatenate(parts) if parts else np.zeros((0, n_classes), np.float32)


# --- scores ----------------------------------------------------------------------------


@dataclass
class OffClassScores:
    """Per query row, in the order given; NaN / None where not scored."""

    score: np.ndarray
    like: np.ndarray  # int class index, -1: none
    like_probability: np.ndarray
    neighbour_share: np.ndarray
    neighbour_class: np.ndarray  # int class index


def score_rows(
    queries: np.ndarray,
    labels: np.ndarray,
    uris: np.ndarray,
    refs: References,
    n_classes: int,
    cfg: OffClassConfig,
) -> OffClassScores:
    """Off-class scores of the query rows against the references (see the module doc)."""
    m = len(queries)
    sizes = np.bincount(refs.labels, minlength=n_classes)
    big = sizes >= cfg.off_class_min_class  # enough images to say what belongs
    if m == 0 or big.sum() < 2:
        nan = np.full(m, np.nan)
        return OffClassScores(nan, np.full(m, -1), nan, nan, np.full(m, -1))
    sample = capped(refs.labels, uri_rank(refs.uris), cfg.off_class_sample)
    shared = share(refs)  # once for both searches
    probabilities = bagged_out_of_fold(
        np.concatenate([queries, refs.vectors[sample]]),
        np.concatenate([uris, refs.uris[sample]]),
        refs,
        n_classes,
        cfg,
        shared,
    )
    rows = np.arange(len(probabilities))
    own = probabilities[rows, np.concatenate([labels, refs.labels[sample]])]
    stats = typical_confidence(logit(own[m:]), refs.labels[sample], n_classes)
    probabilities, own = probabilities[:m], own[:m]
    atypical = (stats[labels, 0] - logit(own)) / stats[labels, 1]
    score = np.where(own <= cfg.off_class_max_own, np.maximum(atypical, 0.0), 0.0)
    score = np.where(big[labels], score, np.nan)
    others = probabilities.copy()
    others[np.arange(m), labels] = -1.0
    like = others.argmax(axis=1)
    votes = distributed_votes(queries, uris, refs, n_classes, cfg, shared)
    votes[np.arange(m), labels] = 0.0
    return OffClassScores(
        score, like, others[np.arange(m), like], votes.max(axis=1), votes.argmax(axis=1)
    )

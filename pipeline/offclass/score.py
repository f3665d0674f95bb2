"""Off-class scores on Ray: the probe's folds and the neighbour search run as Ray tasks
over blocks of rows (the maths is `pipeline.offclass.probe`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray

from pipeline.offclass.config import OffClassConfig
from pipeline.offclass.fit import Shared, fold_probes, in_one_task, share
from pipeline.offclass.keys import Keys, keys_of
from pipeline.offclass.neighbours import triangle_nearest, upper_nearest
from pipeline.offclass.probe import (
    Nearest,
    References,
    capped,
    counted,
    logit,
    neighbour_votes,
    posterior,
    typical_confidence,
)


@dataclass
class Stored:
    """References left in the object store, and what the driver keeps of them: their
    labels and keys (`Keys`), not their vectors. Queries are rows of `pool`: the
    references themselves (`refs`, a `References` whose `uris` are the keys' codes) or
    an array whose row `offset` is reference 0."""

    refs: ray.ObjectRef
    labels: np.ndarray
    keys: Keys
    pool: ray.ObjectRef
    offset: int = 0


def _rows_of(pool: References | np.ndarray, rows: np.ndarray) -> np.ndarray:
    return (pool.vectors if isinstance(pool, References) else pool)[rows]


@ray.remote(num_cpus=1)
def _posterior_task(
    pool: References | np.ndarray, rows: np.ndarray, weights: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    return posterior(_rows_of(pool, rows), weights, offsets)


def out_of_fold(
    stored: Stored, rows: np.ndarray, query_keys: Keys, n_classes: int,
    cfg: OffClassConfig, shared: Shared, repeat: int = 0,
) -> np.ndarray:  # fmt: skip
    """(len(rows), n_classes): the class probabilities of the queries (`rows` of the
    pool) from the probe fitted on every reference outside the query's fold (folds
    fixed by a hash of the key and `repeat`: `Keys.fold`)."""
    fitted = _fit(stored, query_keys, n_classes, cfg, shared, repeat)
    return _probabilities(*fitted, stored, rows, n_classes, cfg)


def _fit(
    stored: Stored, query_keys: Keys, n_classes: int, cfg: OffClassConfig, shared: Shared,
    repeat: int,
) -> tuple[np.ndarray, np.ndarray, ray.ObjectRef]:  # fmt: skip
    """(the queries' folds at `repeat`, the folds wanted, their probes being fitted)."""
    query_folds = query_keys.fold(repeat)
    wanted = np.unique(query_folds)
    probes = fold_probes(
        shared, stored.keys.fold(repeat), cfg.off_class_folds, n_classes,
        cfg.off_class_block_rows, wanted, cfg.off_class_shrinkage,
    )  # fmt: skip
    return query_folds, wanted, probes


def _probabilities(
    query_folds: np.ndarray, wanted: np.ndarray, probes: ray.ObjectRef, stored: Stored,
    rows: np.ndarray, n_classes: int, cfg: OffClassConfig,
) -> np.ndarray:  # fmt: skip
    """The queries' probabilities from their own fold's probe, in Ray tasks."""
    step = cfg.off_class_block_rows
    probabilities = np.zeros((len(rows), n_classes))
    futures, owners = [], []
    for fold, (weights, offsets) in zip(wanted.tolist(), ray.get(probes), strict=True):
        members = np.flatnonzero(query_folds == fold)
        for i in range(0, members.size, step):
            block = members[i : i + step]
            futures.append(_posterior_task.remote(stored.pool, rows[block], weights, offsets))
            owners.append(block)
    for block, result in zip(owners, ray.get(futures), strict=True):
        probabilities[block] = result
    return probabilities


def bagged_out_of_fold(
    stored: Stored, rows: np.ndarray, query_keys: Keys, n_classes: int,
    cfg: OffClassConfig, shared: Shared,
) -> np.ndarray:  # fmt: skip
    """`out_of_fold` averaged over `off_class_repeats` fold splits. One split decides
    borderline images by where their look-alikes happened to fall: on the web-scraped
    benchmark three single splits flagged 8, 10 and 11 of 1,208 real photos, three
    averages of five splits 6 each (and 59-60 of 91 planted off-class photos each).
    Few references (`fit.in_one_task`): every split's probes are fitted at once (each
    task returns its probes, ~250 KiB); more: one split at a time (its folds'
    statistics pass through the object store, 13 MB each). The average adds them in
    split order."""
    repeats = range(cfg.off_class_repeats)
    fits = (_fit(stored, query_keys, n_classes, cfg, shared, r) for r in repeats)
    if in_one_task(len(stored.keys)):
        fits = list(fits)  # every split's fit submitted now
    total = np.zeros((len(rows), n_classes))
    for fit in fits:
        total += _probabilities(*fit, stored, rows, n_classes, cfg)
    return total / cfg.off_class_repeats


@ray.remote(num_cpus=1)
def _neighbour_task(
    pool: References | np.ndarray, rows: np.ndarray, uris: np.ndarray, refs: References,
    n_classes: int, k: int, copy: float,
) -> np.ndarray:  # fmt: skip
    return neighbour_votes(_rows_of(pool, rows), uris, refs, n_classes, k, copy)


def distributed_votes(
    stored: Stored, rows: np.ndarray, codes: np.ndarray, n_classes: int, cfg: OffClassConfig
) -> np.ndarray:
    """`neighbour_votes` of the queries (`rows` of the pool, `codes` their keys' codes)
    over blocks in Ray tasks, among `neighbour_pool`'s references; when the queries are
    every reference (a first run), with half the products (`pipeline.offclass.neighbours`)."""
    step = cfg.off_class_block_rows
    pool = neighbour_pool(stored, cfg.off_class_neighbour_sample)
    if pool is stored.refs and _queries_are_references(stored, rows, codes):
        return triangle_votes(stored, n_classes, cfg)[rows]
    futures = [
        _neighbour_task.remote(
            stored.pool,
            rows[i : i + step],
            codes[i : i + step],
            pool,
            n_classes,
            cfg.off_class_k,
            cfg.off_class_copy_similarity,
        )  # fmt: skip
        for i in range(0, len(rows), step)
    ]
    parts = ray.get(futures)
    return np.concatenate(parts) if parts else np.zeros((0, n_classes), np.float32)


# The most references the pairwise search takes on: its tasks' results, every image's
# nearest in each block, reach the merging process at once (~12 bytes x k per image and
# block: ~22 MB at 20,000 images, ~600 MB at 100,000); more go query by query.
PAIRWISE_MAX = 20_000


def _queries_are_references(stored: Stored, rows: np.ndarray, codes: np.ndarray) -> bool:
    """Whether the queries are every reference, in some order (`rows` of a pool that is
    the references; their keys' codes the references' own), and few enough for
    `triangle_votes`."""
    n = len(stored.labels)
    return (
        stored.pool is stored.refs
        and len(rows) == n <= PAIRWISE_MAX
        and np.array_equal(np.sort(rows), np.arange(n))
        and np.array_equal(codes, stored.keys.codes[rows])
    )


@ray.remote(num_cpus=1)
def _upper_task(refs: References, lo: int, hi: int, k: int, copy: float) -> tuple[Nearest, Nearest]:
    return upper_nearest(refs, lo, hi, k, copy)


def triangle_votes(stored: Stored, n_classes: int, cfg: OffClassConfig) -> np.ndarray:
    """`neighbour_votes` of every reference among the references, in reference order,
    a task per block of `off_class_block_rows` comparing it with the blocks from it on
    (the largest first), their results merged here (`PAIRWISE_MAX`)."""
    n, step, k = len(stored.labels), cfg.off_class_block_rows, cfg.off_class_k
    starts = list(range(0, n, step))
    copy = cfg.off_class_copy_similarity
    futures = [_upper_task.remote(stored.refs, lo, min(lo + step, n), k, copy) for lo in starts]
    found = triangle_nearest(ray.get(futures), starts, n, k)
    return counted(found, stored.labels, n_classes)


def neighbour_pool(stored: Stored, size: int) -> ray.ObjectRef:
    """The references the neighbour search looks among: every one, or the `size` with
    the lowest hash rank of their content key (the same sample in every run, whatever
    the order). Every query then costs `size` products, not one per reference: on a
    large lake the search would otherwise grow with the square of its size."""
    if len(stored.keys) <= size:
        return stored.refs
    keep = np.sort(np.argsort(stored.keys.rank, kind="stable")[:size])
    return _sampled.remote(stored.refs, keep)


@ray.remote(num_cpus=1)
def _sampled(refs: References, keep: np.ndarray) -> References:
    return References(refs.vectors[keep], refs.labels[keep], refs.uris[keep])


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
    """Off-class scores of the query rows against the references (see the module doc),
    both held in memory (`score_stored`: the references in the object store)."""
    m = len(queries)
    if not _scorable(refs.labels, m, n_classes, cfg):
        return _unscored(m)
    pool = ray.put(np.concatenate([queries, refs.vectors]))
    keys = keys_of(np.concatenate([uris, refs.uris]), cfg.off_class_repeats, cfg.off_class_folds)
    coded = References(refs.vectors, refs.labels, keys.codes[m:])
    stored = Stored(ray.put(coded), refs.labels, keys[m:], pool, offset=m)
    return score_stored(np.arange(m), labels, keys[:m], stored, n_classes, cfg)


def _scorable(ref_labels: np.ndarray, m: int, n_classes: int, cfg: OffClassConfig) -> bool:
    """Queries, and at least two classes with enough images to say what belongs."""
    sizes = np.bincount(ref_labels, minlength=n_classes)
    return m > 0 and (sizes >= cfg.off_class_min_class).sum() >= 2


def _unscored(m: int) -> OffClassScores:
    nan = np.full(m, np.nan)
    return OffClassScores(nan, np.full(m, -1), nan, nan, np.full(m, -1))


def score_stored(
    rows: np.ndarray,
    labels: np.ndarray,
    keys: Keys,
    stored: Stored,
    n_classes: int,
    cfg: OffClassConfig,
) -> OffClassScores:
    """Off-class scores of the queries, `rows` of the pool (with their labels and keys,
    coded with the references' own: `keys_of`), against the references in the object
    store; the driver never holds a vector."""
    m = len(rows)
    if not _scorable(stored.labels, m, n_classes, cfg):
        return _unscored(m)
    big = np.bincount(stored.labels, minlength=n_classes) >= cfg.off_class_min_class
    sample = capped(stored.labels, stored.keys.rank, cfg.off_class_sample)
    shared = share(stored.refs)  # once for every fold split
    probabilities = bagged_out_of_fold(
        stored,
        np.concatenate([rows, stored.offset + sample]),
        Keys.concat([keys, stored.keys[sample]]),
        n_classes,
        cfg,
        shared,
    )
    every = np.arange(len(probabilities))
    own = probabilities[every, np.concatenate([labels, stored.labels[sample]])]
    stats = typical_confidence(logit(own[m:]), stored.labels[sample], n_classes)
    probabilities, own = probabilities[:m], own[:m]
    atypical = (stats[labels, 0] - logit(own)) / stats[labels, 1]
    score = np.where(own <= cfg.off_class_max_own, np.maximum(atypical, 0.0), 0.0)
    score = np.where(big[labels], score, np.nan)
    others = probabilities.copy()
    others[np.arange(m), labels] = -1.0
    like = others.argmax(axis=1)
    votes = distributed_votes(stored, rows, keys.codes, n_classes, cfg)
    votes[np.arange(m), labels] = 0.0
    return OffClassScores(
        score, like, others[np.arange(m), like], votes.max(axis=1), votes.argmax(axis=1)
    )

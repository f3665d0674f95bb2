"""Off-class photos: real photographs whose content does not belong to their folder's class.

A web search for "quadcopter" also returns aerial views taken by one, a search for
"airliner" cockpits, cabins and toys, and any folder can hold a portrait or a cat. They
are photos, so the junk filter rightly keeps them, yet they teach the classifier the
wrong thing. What they show, the MobileNetV2 embedding every kept image already
carries (`pipeline.embed`), says they sit apart from their class.

An out-of-fold linear probe, as cleanlab does: a linear discriminant analysis (shared
within-class covariance, shrunk; `off_class_shrinkage`) over the embeddings of the images
that may be kept (the previous version's kept images, from its index, plus this run's
candidates), fitted `off_class_folds` times, each time without the fold (fixed by a hash
of the URI) the scored images sit in, so no image vouches for itself. It gives each image
P(folder's class). How low that is only means something against the class's own images:
on a lake of clear photos nearly every member is near-certain, while on small crops
against the sky (halmstad) many real birds are not, because a distant bird and a distant
drone look alike. So

    off_class_score = (median logit P(own) over the class - logit P(own)) / spread,

spread being the class's scaled median absolute deviation of that logit (both taken on
a fixed sample of the class, `off_class_sample`, scored the same way), and 0 unless the
probe gives the image's own class at most `off_class_max_own`. An image of another class
scores high (a bird among drones); so, often, does one of no class at all (a cat among
drones), which the probe must still place in one of the lake's classes. `off_class_like`
names the other class the probe prefers.

Separately, `off_class_neighbour_share` is the share of the image's `off_class_k` most
similar images (cosine; itself and near copies left out) that carry one other class:
report.json lists images where most do as possible label issues.

Distributed and deterministic: each fold's probe is one Ray task (training rows capped
per class, chosen by URI hash), the neighbour search runs over blocks of query rows in
Ray tasks with the reference embeddings put in the object store once, and nothing loops
over images on the driver. An incremental run scores its new images against everything
that will be kept.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from common.config import option

log = logging.getLogger(__name__)

SCORE = "off_class_score"
LIKE = "off_class_like"  # the other class the probe finds likeliest
LIKE_PROBABILITY = "off_class_like_probability"
NEIGHBOUR_SHARE = "off_class_neighbour_share"  # share of the k nearest in one other class
COLUMNS = (SCORE, LIKE, LIKE_PROBABILITY, NEIGHBOUR_SHARE)
REJECT = "off_class_reject"  # stage output only: the policy's verdict per candidate
NEIGHBOUR_CLASS = "off_class_neighbour_class"  # stage output only: for report.json
POLICIES = ("reject", "report")
MAX_LABEL_ISSUES = 100


@dataclass
class OffClassConfig:
    off_class_policy: str = option(
        "reject",
        "Off-class photos (content of another class or none): 'reject' drops those "
        "scoring at least max_off_class with reason off_class; 'report' only scores them",
        choices=POLICIES,
    )
    max_off_class: float = option(
        8.0,
        "off_class: flag a kept image whose off_class_score (how many class spreads its "
        "out-of-fold probe confidence sits below its class's typical one) reaches this",
        min=0,
    )
    off_class_max_own: float = option(
        0.05,
        "off_class: an image is scored only when the probe gives its own class at most "
        "this probability (otherwise its score is 0)",
        above=0,
        max=1,
    )
    off_class_shrinkage: float = option(
        0.3,
        "off_class: how far the probe's within-class covariance is shrunk towards a "
        "multiple of the identity (more: steadier on small or confusable classes)",
        above=0,
        max=1,
    )
    off_class_folds: int = option(5, "off_class: folds of the out-of-fold probe", min=2)
    off_class_sample: int = option(
        300,
        "off_class: images per class (fixed by URI hash) that set its typical confidence",
        min=1,
    )
    off_class_min_class: int = option(
        20,
        "off_class: images of a class with fewer kept images are not scored (nothing to "
        "compare with); nor is anything while fewer than two classes have that many",
        min=1,
    )
    off_class_k: int = option(
        10, "off_class: nearest neighbours behind the label-issue list", min=1
    )
    off_class_copy_similarity: float = option(
        0.95, "off_class: neighbours at least this similar are near copies, left out", min=0, max=1
    )
    label_issue_share: float = option(
        0.7,
        "report.json lists a kept image as a possible label issue when at least this "
        "share of its off_class_k nearest neighbours carry one other class",
        above=0,
        max=1,
    )
    off_class_block_rows: int = option(
        1024, "off_class: images per Ray task of the probe and the neighbour search", min=1
    )


def uri_rank(uris: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random 64-bit rank per URI: folds and caps never depend on order."""
    return np.array(
        [int.from_bytes(hashlib.sha1(str(u).encode()).digest()[:8], "big") for u in uris],
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
        stats.scatter[f] = x[rows].T @ x[rows]
        np.add.at(stats.sums[f], labels[rows], x[rows])
        np.add.at(stats.counts[f], labels[rows], 1)
    return stats


@ray.remote(num_cpus=1)
def _stats_task(
    refs: References, start: int, stop: int, folds: np.ndarray, n_folds: int, n_classes: int
) -> FoldStats:
    return fold_stats(
        refs.vectors[start:stop], refs.labels[start:stop], folds[start:stop], n_folds, n_classes
    )


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


@ray.remote(num_cpus=1)
def _posterior_task(queries: np.ndarray, weights: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return posterior(queries, weights, offsets)


def out_of_fold(
    queries: np.ndarray, query_uris: np.ndarray, refs: References, n_classes: int,
    cfg: OffClassConfig,
) -> np.ndarray:  # fmt: skip
    """(m, n_classes): each query's class probabilities from the probe fitted on every
    reference outside the query's fold (folds fixed by URI hash)."""
    k = cfg.off_class_folds
    ref_folds = (uri_rank(refs.uris) % k).astype(np.int64)
    shared = ray.put(refs)
    step = cfg.off_class_block_rows
    parts = ray.get(
        [
            _stats_task.remote(shared, i, i + step, ref_folds, k, n_classes)
            for i in range(0, len(refs.labels), step)
        ]
    )
    stats = FoldStats(
        sum(p.sums for p in parts), sum(p.counts for p in parts), sum(p.scatter for p in parts)
    )
    query_folds = uri_rank(query_uris) % k
    probabilities = np.zeros((len(queries), n_classes))
    futures, owners = [], []
    for fold in range(k):
        rows = np.flatnonzero(query_folds == fold)
        if rows.size:
            weights, offsets = discriminants(stats, fold, cfg.off_class_shrinkage)
            for i in range(0, rows.size, step):
                block = rows[i : i + step]
                futures.append(_posterior_task.remote(queries[block], weights, offsets))
                owners.append(block)
    for block, result in zip(owners, ray.get(futures), strict=True):
        probabilities[block] = result
    return probabilities


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
    sims[query_uris[:, None] == refs.uris[None, :]] = -np.inf
    sims[sims >= copy_similarity] = -np.inf
    kk = min(k, sims.shape[1])
    votes = np.zeros((len(queries), n_classes), np.float32)
    if kk == 0:
        return votes
    nearest = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    valid = np.isfinite(np.take_along_axis(sims, nearest, axis=1))
    for j in range(kk):
        np.add.at(votes, (np.arange(len(queries)), refs.labels[nearest[:, j]]), valid[:, j])
    return votes / np.maximum(valid.sum(axis=1, keepdims=True), 1)


@ray.remote(num_cpus=1)
def _neighbour_task(
    queries: np.ndarray, uris: np.ndarray, refs: References, n_classes: int, k: int, copy: float
) -> np.ndarray:
    return neighbour_votes(queries, uris, refs, n_classes, k, copy)


def distributed_votes(
    queries: np.ndarray, uris: np.ndarray, refs: References, n_classes: int,
    cfg: OffClassConfig,
) -> np.ndarray:  # fmt: skip
    """`neighbour_votes` over blocks of queries in Ray tasks; references put once."""
    shared = ray.put(refs)
    step = cfg.off_class_block_rows
    futures = [
        _neighbour_task.remote(
            queries[i : i + step],
            uris[i : i + step],
            shared,
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
    probabilities = out_of_fold(
        np.concatenate([queries, refs.vectors[sample]]),
        np.concatenate([uris, refs.uris[sample]]),
        refs,
        n_classes,
        cfg,
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
    votes = distributed_votes(queries, uris, refs, n_classes, cfg)
    votes[np.arange(m), labels] = 0.0
    return OffClassScores(
        score, like, others[np.arange(m), like], votes.max(axis=1), votes.argmax(axis=1)
    )


# --- the stage -------------------------------------------------------------------------


def embeddings(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of rows with an embedding, their vectors as (m, d) float16)."""
    array = column.combine_chunks()
    has = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), bool)
    rows = int(has.sum())
    if not rows:
        return has, np.zeros((0, 0), np.float16)
    values = array.filter(pa.array(has)).flatten().to_numpy(zero_copy_only=False)
    return has, values.reshape(rows, -1).astype(np.float16)


def _references(existing: pa.Table, candidates: pa.Table) -> tuple[References, list[str]]:
    """Kept images of the previous version plus this run's candidates, in URI order
    (the probe's result must not depend on the order shards were read in)."""
    columns = ["source_uri", "label", "class_name", "embedding"]
    parts = [t.select(columns) for t in (existing, candidates) if t.num_rows]
    table = pa.concat_tables(parts, promote_options="default")
    table = table.take(pc.sort_indices(table, [("source_uri", "ascending")]))
    has, vectors = embeddings(table["embedding"])
    table = table.filter(pa.array(has))
    labels = table["label"].to_numpy(zero_copy_only=False).astype(np.int32)
    names = {}
    for row in (
        table.select(["label", "class_name"])
        .group_by(["label", "class_name"])
        .aggregate([])
        .to_pylist()
    ):
        names[row["label"]] = row["class_name"]
    classes = [names.get(c, str(c)) for c in range(int(labels.max(initial=-1)) + 1)]
    uris = np.asarray(table["source_uri"].to_pylist(), dtype=object)
    return References(vectors, labels, uris), classes


def off_class_stage(candidates: pa.Table, existing: pa.Table, cfg: OffClassConfig) -> pa.Table:
    """Score this run's candidates; one row per candidate, in order: source_uri,
    class_name, the `COLUMNS`, `NEIGHBOUR_CLASS` and `REJECT` (policy 'reject', score
    at least max_off_class, and no person's "keep" on the row)."""
    n = candidates.num_rows
    score, like_p, share = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    like: list[str | None] = [None] * n
    neighbour: list[str | None] = [None] * n
    has, queries = embeddings(candidates["embedding"])
    if n and has.any():
        refs, classes = _references(existing, candidates)
        rows = np.flatnonzero(has)
        labels = candidates["label"].to_numpy(zero_copy_only=False)[rows].astype(np.int32)
        uris = np.asarray(candidates["source_uri"].to_pylist(), dtype=object)[rows]
        got = score_rows(queries, labels, uris, refs, len(classes), cfg)
        score[rows], like_p[rows], share[rows] = (
            got.score,
            got.like_probability,
            got.neighbour_share,
        )
        names = np.asarray(classes + [None], dtype=object)
        like_names, neighbour_names = names[got.like], names[got.neighbour_class]
        scored = np.isfinite(got.score)
        for j, i in enumerate(rows[scored]):
            like[i] = like_names[scored][j]
            neighbour[i] = neighbour_names[scored][j]
    kept_by_person = np.zeros(n, bool)
    if "override" in candidates.column_names:
        kept_by_person = np.asarray(
            pc.fill_null(pc.equal(candidates["override"], "keep"), False), bool
        )
    with np.errstate(invalid="ignore"):
        reject = (score >= cfg.max_off_class) & ~kept_by_person
    reject &= cfg.off_class_policy == "reject"
    return pa.table(
        {
            "source_uri": candidates["source_uri"],
            "class_name": candidates["class_name"],
            SCORE: pa.array(score, pa.float32(), from_pandas=True),
            LIKE: pa.array(like, pa.string()),
            LIKE_PROBABILITY: pa.array(like_p, pa.float32(), from_pandas=True),
            NEIGHBOUR_SHARE: pa.array(share, pa.float32(), from_pandas=True),
            NEIGHBOUR_CLASS: pa.array(neighbour, pa.string()),
            REJECT: pa.array(reject),
        }
    )


def detail(row: dict) -> str:
    """What a person reads next to an off-class rejection."""
    return (
        f"off_class_score {row[SCORE]:.3g}: looks like {row[LIKE]} "
        f"(p {row[LIKE_PROBABILITY]:.3f}) more than its own class"
    )


def decisions_with_off_class(decisions: pa.Table, off: pa.Table) -> pa.Table:
    """The de-duplication decisions (of the rows off-class did not reject) plus one
    rejection per off-class row, every row carrying its off-class columns; `score` and
    `detail` are set on the off-class rejections only."""
    rejected = off.filter(off[REJECT])
    count = rejected.num_rows
    extra = pa.table(
        {
            "source_uri": rejected["source_uri"],
            "cluster_id": pa.nulls(count, pa.string()),
            "keep": pa.array([False] * count, pa.bool_()),
            "reason": pa.array(["off_class"] * count, pa.string()),
            "duplicate_of": pa.nulls(count, pa.string()),
            "distance": pa.nulls(count, pa.int32()),
            "split": pa.nulls(count, pa.string()),
            "score": rejected[SCORE].cast(pa.float64()),
            "detail": pa.array([detail(r) for r in rejected.to_pylist()], pa.string()),
        }
    )
    base = decisions.append_column("score", pa.nulls(decisions.num_rows, pa.float64()))
    base = base.append_column("detail", pa.nulls(decisions.num_rows, pa.string()))
    merged = pa.concat_tables([base, extra.select(base.column_names)])
    position = pc.index_in(merged["source_uri"], value_set=off["source_uri"])
    for column in COLUMNS:
        merged = merged.append_column(column, pc.take(off[column], position))
    return merged


def summary(off: pa.Table, cfg: OffClassConfig) -> dict:
    """This run's off-class figures and possible label issues, for report.json."""
    score = off[SCORE].to_numpy(zero_copy_only=False)
    share = off[NEIGHBOUR_SHARE].to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        issue = (share >= cfg.label_issue_share) & ~off[REJECT].to_numpy(zero_copy_only=False)
    order = np.argsort(-np.nan_to_num(share[issue]), kind="stable")[:MAX_LABEL_ISSUES]
    issues = off.filter(pa.array(issue)).take(pa.array(order, pa.int64()))
    with np.errstate(invalid="ignore"):
        flagged = int((score >= cfg.max_off_class).sum())
    return {
        "policy": cfg.off_class_policy,
        "threshold": cfg.max_off_class,
        "scored": int(np.isfinite(score).sum()),
        "flagged": flagged,
        "rejected": int(off[REJECT].to_numpy(zero_copy_only=False).sum()),
        "possible_label_issues": [
            {
                "source_uri": r["source_uri"],
                "class": r["class_name"],
                "neighbours_class": r[NEIGHBOUR_CLASS],
                "neighbour_share": round(float(r[NEIGHBOUR_SHARE]), 3),
                "off_class_score": None if r[SCORE] is None else round(float(r[SCORE]), 3),
            }
            for r in issues.to_pylist()
        ],
        "possible_label_issues_total": int(issue.sum()),
    }

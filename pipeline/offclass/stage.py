"""The off-class stage on tables: scores this run's candidates, merges its rejections into
the de-duplication decisions and summarises it for report.json."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.offclass.config import (
    COLUMNS,
    LIKE,
    LIKE_PROBABILITY,
    MAX_LABEL_ISSUES,
    NEIGHBOUR_CLASS,
    NEIGHBOUR_SHARE,
    REJECT,
    SCORE,
    OffClassConfig,
)
from pipeline.offclass.keys import Keys, content_keys, keys_of
from pipeline.offclass.probe import References
from pipeline.offclass.score import Stored, score_stored
from pipeline.vectors import VectorRows, of_tables


def embeddings(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of rows with an embedding, their vectors as (m, d) float16), in one copy of
    the vectors (each copy is 51 MB at 20,000 rows; in the task that builds the
    references, `_read_references`)."""
    has = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)
    rows = int(has.sum())
    if not rows:
        return has, np.zeros((0, 0), np.float16)
    values = pc.list_flatten(column).to_numpy()  # a null row holds no values
    return has, values.reshape(rows, -1).astype(np.float16, copy=False)


def _read_references(
    vectors: VectorRows, labels: np.ndarray, codes: np.ndarray
) -> tuple[References, np.ndarray]:
    """Ray task: the `References` of the rows that have an embedding (left in the
    object store; their keys' codes stand for the keys), and which rows those are."""
    has, matrix = embeddings(vectors.read(["embedding"])["embedding"])
    return References(matrix, labels[has], codes[has]), has


_remote_references = ray.remote(num_returns=2)(_read_references)


def _references(
    existing: pa.Table, candidates: pa.Table, vectors: VectorRows, cfg: OffClassConfig
) -> tuple[Stored, np.ndarray, list[str], Keys]:
    """Kept images of the previous version plus this run's candidates that have an
    embedding, in URI order (the probe's result must not depend on the order shards
    were read in), built by a task (`vectors`: the rows of both); the candidates' rows
    among them (-1: none); the class names; the candidates' `Keys`, coded with the
    references'."""
    columns = ["source_uri", "sha256", "label", "class_name"]
    parts = [t.select(columns) for t in (existing, candidates) if t.num_rows]
    table = pa.concat_tables(parts, promote_options="default")
    order = pc.sort_indices(table, [("source_uri", "ascending")]).to_numpy()
    table = table.take(order)
    labels = table["label"].to_numpy(zero_copy_only=False).astype(np.int32)
    keys = keys_of(content_keys(table), cfg.off_class_repeats, cfg.off_class_folds)
    refs, found = _remote_references.remote(vectors.take(order), labels, keys.codes)
    has = ray.get(found)
    at = np.full(len(order), -1, np.int64)  # each row's reference, by row id
    at[order[has]] = np.arange(int(has.sum()))
    names = {}
    for row in (
        table.filter(pa.array(has))
        .select(["label", "class_name"])
        .group_by(["label", "class_name"])
        .aggregate([])
        .to_pylist()
    ):
        names[row["label"]] = row["class_name"]
    by_row = np.empty(len(order), np.int64)  # each row's position in URI order
    by_row[order] = np.arange(len(order))
    queries = keys[by_row[existing.num_rows :]]  # the candidates', in their order
    labels, refs_keys = labels[has], keys[has]
    classes = [names.get(c, str(c)) for c in range(int(labels.max(initial=-1)) + 1)]
    return Stored(refs, labels, refs_keys, refs), at[existing.num_rows :], classes, queries


def off_class_stage(
    candidates: pa.Table,
    existing: pa.Table,
    cfg: OffClassConfig,
    vectors: VectorRows | None = None,
) -> pa.Table:
    """Score this run's candidates; one row per candidate, in order: source_uri,
    class_name, the `COLUMNS`, `NEIGHBOUR_CLASS` and `REJECT` (policy 'reject', score
    at least max_off_class, and no person's "keep" on the row). `vectors`: where the
    embeddings of `existing`'s rows, then of the candidates', lie (`pipeline.vectors`),
    when the tables do not carry them; None and no embedding column: none to score."""
    n = candidates.num_rows
    score, like_p, share = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    # Class codes (-1: none), named once at the end: no Python object per candidate.
    like, neighbour = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    classes: list[str] = []
    if vectors is None and "embedding" in candidates.column_names:
        vectors = of_tables(existing, candidates)
    if n and vectors is not None:
        stored, at, classes, keys = _references(existing, candidates, vectors, cfg)
        rows = np.flatnonzero(at >= 0)
        labels = candidates["label"].to_numpy(zero_copy_only=False)[rows].astype(np.int32)
        got = score_stored(at[rows], labels, keys[rows], stored, len(classes), cfg)
        score[rows], like_p[rows], share[rows] = (
            got.score,
            got.like_probability,
            got.neighbour_share,
        )
        scored = np.isfinite(got.score)
        like[rows[scored]] = np.asarray(got.like)[scored]
        neighbour[rows[scored]] = np.asarray(got.neighbour_class)[scored]
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
            LIKE: _named(like, classes),
            LIKE_PROBABILITY: pa.array(like_p, pa.float32(), from_pandas=True),
            NEIGHBOUR_SHARE: pa.array(share, pa.float32(), from_pandas=True),
            NEIGHBOUR_CLASS: _named(neighbour, classes),
            REJECT: pa.array(reject),
        }
    )


def _named(codes: np.ndarray, classes: list[str]) -> pa.Array:
    """Class codes as names: null for -1, and for the code one past the last class
    (`score_stored`'s "none"), as indexing `classes + [None]` gave."""
    none = (codes < 0) | (codes >= len(classes))
    return pa.array(classes, pa.string()).take(pa.array(np.where(none, 0, codes), mask=none))


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
    issues = off.filter(pa.array(issue))
    # Ties by URI: the candidates' order follows their shards' names, which differ per run.
    keys = pa.table({"share": np.nan_to_num(share[issue]), "uri": issues["source_uri"]})
    order = pc.sort_indices(keys, [("share", "descending"), ("uri", "ascending")])
    issues = issues.take(order[:MAX_LABEL_ISSUES])
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

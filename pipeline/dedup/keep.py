"""Keep decisions of one part (`pipeline.dedup.parts`), in a Ray task, and their merge.

Why in the task: a part holds whole clusters, so the clustering pass, each copy's
reason, a cluster's label conflict and the counts are all known there. The task returns
its decisions as numbers (each new row's keeper as a row id, keep, reason code,
distance) and its counts: no strings travel through the object store, and the driver
turns the numbers into the decisions table with Arrow-sized columns of the names it
already holds, adding counts rather than walking rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.chunked import take
from pipeline.dedup.cluster import Clusterer
from pipeline.dedup.config import EXACT_DUPLICATE, LABEL_CONFLICT, NEAR_DUPLICATE, DedupConfig
from pipeline.dedup.parts import Part
from pipeline.dedup.rows import Rows, RowVectors
from pipeline.dedup.verify import Verifier
from pipeline.tables import schema_of

# One row per new row, in the input's order (types as `pipeline.tables` declares them).
DECISION_SCHEMA = schema_of(
    ["source_uri", "cluster_id", "keep", "reason", "duplicate_of", "distance"]
)
REASONS = (EXACT_DUPLICATE, NEAR_DUPLICATE, LABEL_CONFLICT)  # reason codes 0, 1, 2
LISTED_MEMBERS = 20  # copies a label conflict lists in the report


@dataclass
class PartResult:
    """One part's decisions, per new row (in any order: `positions` says where each goes)
    and its counts. Row ids index the whole `Rows` the driver holds."""

    positions: np.ndarray  # the row's position in the caller's new table
    keeper: np.ndarray  # row id of the row it is kept in place of (its own: a keeper)
    keep: np.ndarray
    reason: np.ndarray  # int8: -1 none, else an index into REASONS
    distance: np.ndarray  # int32 hash distance to its keeper (any value for a keeper)
    counts: dict[str, int]  # additive over parts, but "largest_cluster" (a maximum)
    conflicts: list[dict[str, Any]]  # the report's, with row ids for names (`_named`)


def decide_part(part: Part, cfg: DedupConfig, vectors: RowVectors | None = None) -> PartResult:
    """Ray task: cluster the part's rows and turn each new row's keeper into a decision
    (`vectors`: every row's, with verification; the part takes its own rows')."""
    rows = part.rows if vectors is None else part.rows.with_vectors(vectors, part.row_ids)
    verifier = Verifier(rows, cfg) if cfg.verified else None
    near_across = cfg.conflict_matching == "near"
    keeper = Clusterer(
        rows, part.node_of, part.pairs, part.n_nodes, near_across, verifier, cfg.assign_to
    ).run()
    new = np.arange(rows.n_existing, rows.count)
    is_keeper = keeper == new
    exact = ~is_keeper & (rows.sha_code[new] == rows.sha_code[keeper])
    distance = np.bitwise_count(rows.hashes[new] ^ rows.hashes[keeper]).astype(np.int32)
    distance[exact] = 0
    reason = np.where(is_keeper, -1, np.where(exact, 0, 1)).astype(np.int8)
    conflicts = _conflicting(rows, keeper)
    in_conflict = np.isin(keeper, conflicts)
    if cfg.drop_label_conflicts:
        dropped_for_label = in_conflict
    else:
        dropped_for_label = in_conflict & (rows.class_code[new] != rows.class_code[keeper])
    reason[dropped_for_label] = 2
    keep = (is_keeper & ~dropped_for_label) | part.forced
    reason[part.forced] = -1
    counts = _counts(rows, keeper, reason, keep)
    counts["kept_by_override"] = int((part.forced & ~(is_keeper & ~dropped_for_label)).sum())
    counts["failed_verification"] = verifier.rejected if verifier else 0
    ids = part.row_ids
    return PartResult(
        part.positions,
        ids[keeper],
        keep,
        reason,
        distance,
        counts,
        _conflicts(rows, keeper, conflicts, ids),
    )


@dataclass
class Decided:
    """The merged decisions on the new rows, as numbers in the input's order, with the
    rows' names they are written with. The table is built for the rows asked for
    (`table`): the job builds it a candidate shard at a time (`pipeline.decide`), so its
    driver never holds the decisions' strings (at 1M rows +171 MB, the cluster ids alone
    64 bytes a row)."""

    keeper: np.ndarray  # int64: the row (in `Rows`) each new row is kept in place of
    keep: np.ndarray  # bool
    reason: np.ndarray  # int8: -1 none, else an index into REASONS
    distance: np.ndarray  # int32 (any value for a keeper)
    uri: pa.ChunkedArray  # every row's source_uri (`Rows.uri`: existing rows first)
    cluster_id: pa.ChunkedArray  # `Rows.cluster_id`
    n_existing: int

    @classmethod
    def none(cls) -> Decided:
        """No new rows."""
        empty = pa.chunked_array([], pa.string())
        ids = np.zeros(0, np.int64)
        return cls(ids, np.zeros(0, bool), np.zeros(0, np.int8), np.zeros(0, np.int32),
                   empty, empty, 0)  # fmt: skip

    @property
    def num_rows(self) -> int:
        return int(self.keep.size)

    def clusters(self, new: np.ndarray) -> pa.Array:
        """The cluster ids of the new rows at positions `new`."""
        return take(self.cluster_id, self.keeper[new])

    def table(self, start: int = 0, stop: int | None = None) -> pa.Table:
        """DECISION_SCHEMA for new rows `start` to `stop` (positions in the input)."""
        stop = self.num_rows if stop is None else stop
        keeper, reason = self.keeper[start:stop], self.reason[start:stop]
        own = self.n_existing + np.arange(start, stop)
        is_keeper = keeper == own
        return pa.table(
            {
                "source_uri": self.uri.slice(self.n_existing + start, stop - start),
                "cluster_id": take(self.cluster_id, keeper),  # the keeper's (a keeper: its own)
                "keep": pa.array(self.keep[start:stop]),
                "reason": pa.array(REASONS, pa.string()).take(pa.array(reason, mask=reason < 0)),
                # The copies' keepers only: a keeper's own URI is never taken (null).
                "duplicate_of": take(self.uri, keeper, mask=is_keeper),
                "distance": pa.array(self.distance[start:stop], pa.int32(), mask=is_keeper),
            },
            schema=DECISION_SCHEMA,
        )


def merge(results: list[PartResult], rows: Rows) -> tuple[Decided, dict[str, Any]]:
    """The parts' decisions as numbers in the caller's order, their counts added, the
    label conflicts largest first (ties: the earlier keeper, as the single pass had it)."""
    n = sum(r.positions.size for r in results)

    def column(name: str, dtype: type) -> np.ndarray:
        """Each part's values put at their positions (no concatenated copy to sort)."""
        out = np.empty(n, dtype)
        for r in results:
            out[r.positions] = getattr(r, name)
        return out

    decided = Decided(
        column("keeper", np.int64),
        column("keep", bool),
        column("reason", np.int8),
        column("distance", np.int32),
        rows.uri,
        rows.cluster_id,
        rows.n_existing,
    )
    counts = {k: sum(r.counts[k] for r in results) for k in results[0].counts}
    counts["largest_cluster"] = max(r.counts["largest_cluster"] for r in results)
    listed = sorted(
        (c for r in results for c in r.conflicts), key=lambda c: (-c["size"], c["keeper"])
    )
    counts["label_conflicts"] = _named(listed, rows)
    return decided, counts


def _conflicting(rows: Rows, keeper: np.ndarray) -> np.ndarray:
    """Keepers whose cluster (new members plus an existing keeper) spans two classes."""
    new = np.arange(rows.n_existing, rows.count)
    members = np.concatenate([keeper, np.unique(keeper[keeper < rows.n_existing])])
    member_rows = np.concatenate([new, np.unique(keeper[keeper < rows.n_existing])])
    pairs = np.unique(np.stack([members, rows.class_code[member_rows]]), axis=1)
    clusters, classes = np.unique(pairs[0], return_counts=True)
    return clusters[classes > 1]


def _counts(rows: Rows, keeper: np.ndarray, reason: np.ndarray, keep: np.ndarray) -> dict:
    """The summary's counts over this part's new rows (clusters never span parts)."""
    new = np.arange(rows.n_existing, rows.count)
    clusters, sizes = np.unique(keeper, return_counts=True)
    sizes = sizes + (clusters < rows.n_existing)  # the existing keeper is a member too
    dropped = reason[~keep]
    return {
        "rows": int(new.size),
        "kept": int(keep.sum()),
        **{f"dropped:{r}": int((dropped == code).sum()) for code, r in enumerate(REASONS)},
        "clusters": int(clusters.size),
        "duplicate_clusters": int((sizes > 1).sum()),
        "largest_cluster": int(sizes.max(initial=0)),
        "low_detail_rows": int(rows.low_detail[new].sum()),
        "degenerate_hash_rows": int(rows.degenerate[new].sum()),
    }


def _conflicts(
    rows: Rows, keeper: np.ndarray, conflicts: np.ndarray, ids: np.ndarray
) -> list[dict[str, Any]]:
    """The label conflicts as the report shows them, with row ids (`ids`: this part's
    rows in the whole `Rows`) where the report has names."""
    by_cluster = np.argsort(keeper, kind="stable")
    sorted_keeper = keeper[by_cluster]
    out = []
    for cluster in conflicts.tolist():
        a, b = np.searchsorted(sorted_keeper, [cluster, cluster + 1])
        members = rows.n_existing + by_cluster[a:b]
        if cluster < rows.n_existing:
            members = np.concatenate([[cluster], members])
        names = [rows.classes[c] for c in rows.class_code[members]]
        out.append(
            {
                "keeper": int(ids[cluster]),
                "size": int(members.size),
                "classes": {name: names.count(name) for name in sorted(set(names))},
                "members": ids[members[:LISTED_MEMBERS]].tolist(),
            }
        )
    return out


def _named(conflicts: list[dict[str, Any]], rows: Rows) -> list[dict[str, Any]]:
    """The conflicts as the report lists them: each cluster's id and names, not row ids,
    gathered once for them all (`pipeline.chunked.take`)."""
    if not conflicts:
        return []
    keepers = np.asarray([c["keeper"] for c in conflicts], dtype=np.int64)
    members = [np.asarray(c["members"], dtype=np.int64) for c in conflicts]
    bounds = np.cumsum([0] + [m.size for m in members])
    names = take(rows.uri, np.concatenate(members)).to_pylist()
    keeper_names = take(rows.uri, keepers).to_pylist()
    cluster_ids = take(rows.cluster_id, keepers).to_pylist()
    return [
        {
            "cluster_id": cluster_ids[i],
            "keeper": keeper_names[i],
            "size": c["size"],
            "classes": c["classes"],
            "members": names[bounds[i] : bounds[i + 1]],
        }
        for i, c in enumerate(conflicts)
    ]

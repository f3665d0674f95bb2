"""Decisions: `deduplicate` runs the steps (rows, search, candidates, verification,
clustering) and turns each new row's keeper into its decision, reason and summary."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup.candidates import (
    apply_strict_distance,
    grey_simhashes,
    search_hashes,
    search_units,
    simhashes,
    with_simhash_candidates,
)
from pipeline.dedup.cluster import Clusterer
from pipeline.dedup.config import EXACT_DUPLICATE, LABEL_CONFLICT, NEAR_DUPLICATE, DedupConfig
from pipeline.dedup.rows import Rows, prepare_rows
from pipeline.dedup.verify import Verifier
from pipeline.tables import schema_of

# One row per new row, in the input's order (types as `pipeline.tables` declares them).
DECISION_SCHEMA = schema_of(
    ["source_uri", "cluster_id", "keep", "reason", "duplicate_of", "distance"]
)


@dataclass
class DedupResult:
    decisions: pa.Table  # DECISION_SCHEMA: one row per new row, in the input's order
    summary: dict[str, Any]


def deduplicate(new: pa.Table, cfg: DedupConfig, existing: pa.Table | None = None) -> DedupResult:
    """Decide which `new` rows to keep; `existing` rows (kept earlier) stay kept.

    A full run passes existing=None. The candidate search runs as Ray tasks (Ray must be
    initialised); the clustering pass runs here on the driver over the verified pairs.
    """
    started = time.perf_counter()
    rows = prepare_rows(existing, new, cfg)
    nodes, node_of = np.unique(rows.hashes[rows.searchable], return_inverse=True)
    node_of_row = np.full(rows.count, -1, dtype=np.int64)
    node_of_row[rows.searchable] = node_of
    is_query = None
    if existing is not None:
        is_query = np.zeros(nodes.size, dtype=bool)
        is_query[node_of_row[rows.n_existing :][rows.searchable[rows.n_existing :]]] = True
    pairs = search_hashes(nodes, cfg.search_distance, is_query, cfg, cfg.hash_bands)
    verifier = None
    if cfg.verified:
        verifier = Verifier(rows, cfg)
        if cfg.embedding_hash_distance:
            units = search_units(rows, node_of_row)
            hashes = simhashes(rows.embedding[units])
            pairs = with_simhash_candidates(
                pairs, units, hashes, cfg.embedding_hash_distance, node_of_row, nodes, is_query, cfg
            )
        if cfg.grey_hash_distance and rows.grey is not None:
            units = search_units(rows, node_of_row, rows.has_grey)
            hashes = grey_simhashes(rows.grey[units])
            pairs = with_simhash_candidates(
                pairs, units, hashes, cfg.grey_hash_distance, node_of_row, nodes, is_query, cfg
            )
    else:
        pairs = apply_strict_distance(pairs, rows, node_of_row, nodes.size, cfg)
    near_across = cfg.conflict_matching == "near"
    keeper = Clusterer(
        rows, node_of_row, pairs, nodes.size, near_across, verifier, cfg.assign_to
    ).run()
    decisions, summary = _decisions(rows, keeper, cfg, _kept_by_override(new))
    summary["search"] = {
        "distinct_hashes": int(nodes.size),
        "band_bits": list(pairs.plan.widths),
        "band_radius": pairs.plan.radius,
        "candidate_pairs": int(pairs.candidates),
        "near_pairs": int(pairs.i.size),
        "embedding_hash_distance": cfg.embedding_hash_distance if cfg.verified else 0,
        "grey_hash_distance": cfg.grey_hash_distance if cfg.verified else 0,
        "verified": cfg.verified,
        "failed_verification": verifier.rejected if verifier else 0,
        "crowded_buckets": int(pairs.giant_buckets),
        "seconds": round(pairs.seconds, 3),
    }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return DedupResult(decisions, summary)


def _conflicting(rows: Rows, keeper: np.ndarray) -> np.ndarray:
    """Keepers whose cluster (new members plus an existing keeper) spans two classes."""
    new = np.arange(rows.n_existing, rows.count)
    members = np.concatenate([keeper, np.unique(keeper[keeper < rows.n_existing])])
    member_rows = np.concatenate([new, np.unique(keeper[keeper < rows.n_existing])])
    pairs = np.unique(np.stack([members, rows.class_code[member_rows]]), axis=1)
    clusters, classes = np.unique(pairs[0], return_counts=True)
    return clusters[classes > 1]


def _kept_by_override(new: pa.Table) -> np.ndarray:
    """New rows a person decided to keep (`override` "keep", see `pipeline.overrides`):
    never dropped as a copy; they stay kept, in their cluster."""
    if "override" not in new.column_names:
        return np.zeros(new.num_rows, dtype=bool)
    return np.asarray(pc.fill_null(pc.equal(new["override"], "keep"), False), dtype=bool)


def _decisions(
    rows: Rows, keeper: np.ndarray, cfg: DedupConfig, forced: np.ndarray
) -> tuple[pa.Table, dict]:
    new = np.arange(rows.n_existing, rows.count)
    is_keeper = keeper == new
    exact = ~is_keeper & (rows.sha_code[new] == rows.sha_code[keeper])
    distance = np.bitwise_count(rows.hashes[new] ^ rows.hashes[keeper]).astype(np.int64)
    distance[exact] = 0
    reason = np.where(is_keeper, None, np.where(exact, EXACT_DUPLICATE, NEAR_DUPLICATE))
    conflicts = _conflicting(rows, keeper)
    in_conflict = np.isin(keeper, conflicts)
    if cfg.drop_label_conflicts:
        dropped_for_label = in_conflict
    else:
        dropped_for_label = in_conflict & (rows.class_code[new] != rows.class_code[keeper])
    reason[dropped_for_label] = LABEL_CONFLICT
    keep = (is_keeper & ~dropped_for_label) | forced
    reason[forced] = None
    decisions = pa.table(
        {
            "source_uri": pa.array(rows.uri[new], pa.string()),
            "cluster_id": pa.array(rows.cluster_id[keeper], pa.string()),
            "keep": pa.array(keep),
            "reason": pa.array(reason, pa.string()),
            "duplicate_of": pa.array(rows.uri[keeper], pa.string(), mask=is_keeper),
            "distance": pa.array(distance, pa.int32(), mask=is_keeper),
        },
        schema=DECISION_SCHEMA,
    )
    summary = _summary(rows, keeper, reason, keep, conflicts, cfg)
    summary["kept_by_override"] = int((forced & ~(is_keeper & ~dropped_for_label)).sum())
    return decisions, summary


def _summary(
    rows: Rows,
    keeper: np.ndarray,
    reason: np.ndarray,
    keep: np.ndarray,
    conflicts: np.ndarray,
    cfg: DedupConfig,
) -> dict[str, Any]:
    new = np.arange(rows.n_existing, rows.count)
    clusters, sizes = np.unique(keeper, return_counts=True)
    sizes = sizes + (clusters < rows.n_existing)  # the existing keeper is a member too
    dropped = reason[~keep]
    return {
        "rows": int(new.size),
        "existing_rows": rows.n_existing,
        "kept": int(keep.sum()),
        "dropped": {
            r: int((dropped == r).sum()) for r in (EXACT_DUPLICATE, NEAR_DUPLICATE, LABEL_CONFLICT)
        },
        "clusters": int(clusters.size),
        "duplicate_clusters": int((sizes > 1).sum()),
        "largest_cluster": int(sizes.max(initial=0)),
        "low_detail_rows": int(rows.low_detail[new].sum()),
        "degenerate_hash_rows": int(rows.degenerate[new].sum()),
        "label_conflicts": _conflicts(rows, keeper, conflicts),
        "hash_kind": cfg.hash_kind,
        "max_hash_distance": cfg.search_distance,
    }


def _conflicts(
    rows: Rows, keeper: np.ndarray, conflicts: np.ndarray, listed: int = 20
) -> list[dict[str, Any]]:
    """The label conflicts as the report shows them: classes and (some of) the copies."""
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
                "cluster_id": str(rows.cluster_id[cluster]),
                "keeper": str(rows.uri[cluster]),
                "size": int(members.size),
                "classes": {name: names.count(name) for name in sorted(set(names))},
                "members": [str(u) for u in rows.uri[members[:listed]]],
            }
        )
    return sorted(out, key=lambda c: -c["size"])

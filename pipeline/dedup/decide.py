"""Decisions: `deduplicate` runs the steps (rows, search, candidates, then clustering and
keep decisions per part in Ray tasks) and merges the parts' decisions and counts.

The caller (the job's decide task) holds the rows' arrays and the near pairs; the
per-row work of clustering and deciding (Python loops and lists, in the single pass
this replaced) runs in the tasks (`pipeline.dedup.parts`, `pipeline.dedup.keep`), which
return Arrow tables and counts.
Verification's vectors never reach the caller: a task reads them (`pipeline.vectors`)
and leaves them in the object store, the SimHashes and each part's task take theirs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup.candidates import (
    apply_strict_distance,
    search_hashes,
    search_units,
    stored_simhashes,
    with_simhash_candidates,
)
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.keep import (
    DECISION_SCHEMA,
    REASONS,
    Decided,
    PartResult,
    decide_part,
    merge,
)
from pipeline.dedup.parts import split_parts
from pipeline.dedup.rows import Rows, prepare_rows
from pipeline.dedup.search import NearPairs
from pipeline.vectors import VectorRows

__all__ = ["DECISION_SCHEMA", "Decided", "DedupResult", "deduplicate"]

# New rows (with the old ones in their components) per clustering task: about 3 KB a row
# with verification's vectors, so a task's arrays stay around 300 MB.
ROWS_PER_TASK = 100_000


@dataclass
class DedupResult:
    decided: Decided  # one decision per new row, in the input's order, as numbers
    summary: dict[str, Any]

    @property
    def decisions(self) -> pa.Table:
        """DECISION_SCHEMA: one row per new row, in the input's order (the job builds
        it a shard at a time instead: `Decided.table`)."""
        return self.decided.table()


def deduplicate(
    new: pa.Table,
    cfg: DedupConfig,
    existing: pa.Table | None = None,
    vectors: VectorRows | None = None,
    more: Callable[[], pa.Table] | None = None,
) -> DedupResult:
    """Decide which `new` rows to keep; `existing` rows (kept earlier) stay kept.

    A full run passes existing=None. The candidate search, the components and the
    clustering with its decisions run as Ray tasks (Ray must be initialised). With
    verification, `vectors` says where the rows' vectors lie (those of `existing`, then
    of `new`: `pipeline.vectors`) when the tables do not carry them; tasks read them.
    `more`: reads the new rows' columns `new` lacks (in its order), so the caller need
    not hold them once they are arrays (`prepare_rows`).
    """
    started = time.perf_counter()
    rows = prepare_rows(existing, new, cfg, vectors, more)
    stored = _in_store(rows.vectors)
    nodes, node_of = np.unique(rows.hashes[rows.searchable], return_inverse=True)
    node_of_row = np.full(rows.count, -1, dtype=np.int64)
    node_of_row[rows.searchable] = node_of
    is_query = None
    if existing is not None:
        is_query = np.zeros(nodes.size, dtype=bool)
        is_query[node_of_row[rows.n_existing :][rows.searchable[rows.n_existing :]]] = True
    pairs = search_hashes(nodes, cfg.search_distance, is_query, cfg, cfg.hash_bands)
    if cfg.verified:
        sources = []
        if cfg.embedding_hash_distance:
            sources.append((search_units(rows, node_of_row), False, cfg.embedding_hash_distance))
        if cfg.grey_hash_distance:
            units = search_units(rows, node_of_row, rows.has_grey)
            sources.append((units, True, cfg.grey_hash_distance))
        found = _simhashes_of(stored, [(units, grey) for units, grey, _ in sources])
        for (units, _, distance), hashes in zip(sources, found, strict=True):
            pairs = with_simhash_candidates(
                pairs, units, hashes, distance, node_of_row, nodes, is_query, cfg
            )
    else:
        pairs = apply_strict_distance(pairs, rows, node_of_row, nodes.size, cfg)
    results = _decide_parts(rows, node_of_row, pairs, _kept_by_override(new), stored, cfg)
    decisions, summary = _summary(rows, results, cfg)
    rejected = summary.pop("failed_verification")
    summary["search"] = {
        "distinct_hashes": int(nodes.size),
        "band_bits": list(pairs.plan.widths),
        "band_radius": pairs.plan.radius,
        "candidate_pairs": int(pairs.candidates),
        "near_pairs": int(pairs.i.size),
        "embedding_hash_distance": cfg.embedding_hash_distance if cfg.verified else 0,
        "grey_hash_distance": cfg.grey_hash_distance if cfg.verified else 0,
        "verified": cfg.verified,
        "failed_verification": rejected,
        "crowded_buckets": int(pairs.giant_buckets),
        "seconds": round(pairs.seconds, 3),
    }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return DedupResult(decisions, summary)


def _kept_by_override(new: pa.Table) -> np.ndarray:
    """New rows a person decided to keep (`override` "keep", see `pipeline.overrides`):
    never dropped as a copy; they stay kept, in their cluster."""
    if "override" not in new.column_names:
        return np.zeros(new.num_rows, dtype=bool)
    return np.asarray(pc.fill_null(pc.equal(new["override"], "keep"), False), dtype=bool)


def _decide_parts(
    rows: Rows,
    node_of_row: np.ndarray,
    pairs: NearPairs,
    forced: np.ndarray,
    vectors: Any,
    cfg: DedupConfig,
) -> list[PartResult]:
    """One Ray task per part; each part is sliced and handed over before the next is cut,
    so the driver holds one part's copies at a time. `vectors`: the rows' `RowVectors`
    in the object store (None without verification), each task takes its rows' own.

    At most `_in_flight()` parts are out at once, and each result is copied out of the
    object store as it arrives: the store then reuses the same pages, which the driver
    maps (its RSS counts them: all parts at once added ~250 MB at 3M rows)."""
    import ray

    task = _remote(decide_part)
    window = _in_flight()
    pending: dict[Any, int] = {}
    results: list[PartResult] = []

    def collect(wait_for: int) -> None:
        ready, _ = ray.wait(list(pending), num_returns=min(wait_for, len(pending)))
        for ref in ready:
            results[pending.pop(ref)] = _owned(ray.get(ref))

    for part in split_parts(rows, node_of_row, pairs, forced, ROWS_PER_TASK):
        if len(pending) >= window:
            collect(1)
        pending[task.remote(part, cfg, vectors)] = len(results)
        results.append(None)  # type: ignore[arg-type]  # filled in by collect
        del part
    while pending:
        collect(len(pending))
    return results


def _in_flight() -> int:
    """Parts out at once: two per CPU of the cluster keeps every CPU busy; at least 8,
    for a cluster whose workers are still starting (its head has no CPU of its own)."""
    import ray

    return max(8, 2 * int(ray.cluster_resources().get("CPU", 0)))


def _owned(result: PartResult) -> PartResult:
    """`result` with its arrays in the driver's memory, not views of the object store."""
    arrays = {f: np.array(getattr(result, f)) for f in _ARRAY_FIELDS}
    return dataclasses.replace(result, **arrays)


_ARRAY_FIELDS = ("positions", "keeper", "keep", "reason", "distance")


def _in_store(vectors: Any) -> Any:
    """The rows' `RowVectors` as a reference into the object store (None: none)."""
    import ray

    if vectors is None or isinstance(vectors, ray.ObjectRef):
        return vectors
    return ray.put(vectors)


def _simhashes_of(vectors: Any, sources: list[tuple[np.ndarray, bool]]) -> list[np.ndarray]:
    """The SimHashes of each (unit rows, grey layouts or embeddings), computed in tasks
    from the rows' vectors in the object store (the driver never holds them)."""
    import ray

    task = _remote(stored_simhashes)
    return ray.get([task.remote(vectors, units, grey) for units, grey in sources])


@cache
def _remote(fn: Any) -> Any:
    import ray

    return ray.remote(fn)


def _summary(
    rows: Rows, results: list[PartResult], cfg: DedupConfig
) -> tuple[Decided, dict[str, Any]]:
    """The merged decisions, and the summary in the shape (and key order) it always had."""
    decisions, counts = merge(results, rows)
    summary = {
        "rows": counts["rows"],
        "existing_rows": rows.n_existing,
        "kept": counts["kept"],
        "dropped": {r: counts[f"dropped:{r}"] for r in REASONS},
        "clusters": counts["clusters"],
        "duplicate_clusters": counts["duplicate_clusters"],
        "largest_cluster": counts["largest_cluster"],
        "low_detail_rows": counts["low_detail_rows"],
        "degenerate_hash_rows": counts["degenerate_hash_rows"],
        "label_conflicts": counts["label_conflicts"],
        "hash_kind": cfg.hash_kind,
        "max_hash_distance": cfg.search_distance,
        "kept_by_override": counts["kept_by_override"],
        "failed_verification": counts["failed_verification"],
    }
    return decisions, summary

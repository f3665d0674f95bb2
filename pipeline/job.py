"""The cleaning job, stage by stage:

    list -> plan (incremental) -> normalise + score (Ray Data) -> de-duplicate
    -> split -> finalize (Ray Data) -> carry over the previous version -> report -> publish

Each stage lives in its own module; this one only wires them together.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from common.config import to_dict
from common.ray_runtime import ensure_ray
from common.storage import join, relative_to
from pipeline import dedup
from pipeline.config import CleanConfig
from pipeline.embed import embedder
from pipeline.finalize import finalize_stage, work_items
from pipeline.incremental import carry_over, plan_run, previous_state
from pipeline.listing import list_lake
from pipeline.normalize import normalise_batch
from pipeline.output import (
    check_writable,
    new_run_id,
    publish,
    read_json,
    read_manifest,
    read_shards,
    staging_uri,
    write_snapshot,
)
from pipeline.report import build_report, read_version, review_page
from pipeline.sink import Shards, ShardSink, ShardWrite, write_parquet
from pipeline.split import assign_splits, group_of, load_group_manifest
from pipeline.tables import CANDIDATES, INDEX, INDEX_COLUMNS, route_normalized

log = logging.getLogger(__name__)


@dataclass
class CleanResult:
    output_uri: str
    manifest: dict[str, Any]
    report: dict[str, Any]
    seconds: float
    up_to_date: bool = False


def stable_classes(previous: dict[str, Any] | None, snapshot: pa.Table) -> list[str]:
    """Labels never change between versions: known classes first, new ones appended."""
    known = list(previous["classes"]) if previous else []
    found = sorted({c for c in snapshot["class_name"].to_pylist() if c} - set(known))
    return known + found


def with_work_columns(
    snapshot: pa.Table, classes: list[str], first_seen: int, cfg: CleanConfig
) -> pa.Table:
    """Labels, the user's group key and the order files were first seen (keep policy)."""
    manifest = load_group_manifest(cfg.split, cfg.storage)
    uris = snapshot["source_uri"].to_pylist()
    names = snapshot["class_name"].to_pylist()
    order = sorted(range(len(uris)), key=lambda i: (snapshot["mtime"][i].as_py(), uris[i]))
    seen = [0] * len(uris)
    for rank, i in enumerate(order):
        seen[i] = first_seen + rank
    labels = [classes.index(n) if n else None for n in names]
    groups = [group_of(relative_to(u, cfg.input_uri), cfg.split, manifest) for u in uris]
    return (
        snapshot.set_column(
            snapshot.schema.get_field_index("label"), "label", pa.array(labels, pa.int32())
        )
        .append_column("group", pa.array(groups, pa.string()))
        .append_column("seen_order", pa.array(seen, pa.int64()))
    )


def normalise_stage(work: pa.Table, cfg: CleanConfig, stage: str) -> Shards:
    """Ray Data: one task per `files_per_task` files; rows routed to candidates/rejected."""
    sink = ShardSink(stage, route_normalized, cfg.storage, name_prefix="norm")
    if work.num_rows == 0:
        return sink.result
    step = max(1, cfg.execution.files_per_task)
    blocks = [work.slice(i, step) for i in range(0, work.num_rows, step)]
    (
        ray.data.from_arrow(blocks)
        .map_batches(partial(normalise_batch, cfg=cfg), batch_format="pyarrow", batch_size=None)
        .write_datasink(sink)
    )
    return sink.result


def dedup_input(table: pa.Table) -> pa.Table:
    """The de-duplication stage ranks resolution by the source's size: normalised images
    of every large source share the same 512 px side."""
    table = table.drop_columns(
        [c for c in ("width", "height", "_shard") if c in table.schema.names]
    )
    sizes = {"source_width": "width", "source_height": "height"}
    return table.rename_columns([sizes.get(c, c) for c in table.column_names])


def decide(
    existing: pa.Table, candidates: pa.Table, cfg: CleanConfig
) -> tuple[pa.Table, dict[str, Any]]:
    """De-duplicate the candidates against each other and the kept index, then split."""
    result = dedup.deduplicate(
        dedup_input(candidates), cfg.dedup, dedup_input(existing) if existing.num_rows else None
    )
    decisions, summary = result.decisions, result.summary
    by_uri = {d["source_uri"]: d for d in decisions.to_pylist()}
    kept_new = candidates.filter(
        pc.is_in(
            candidates["source_uri"],
            value_set=pa.array([u for u, d in by_uri.items() if d["keep"]], pa.string()),
        )
    )
    units = pa.concat_tables(
        [
            _split_input(_split_rows(existing)),
            _split_input(
                [
                    {**r, "cluster_id": by_uri[r["source_uri"]]["cluster_id"], "split": None}
                    for r in _split_rows(kept_new)
                ]
            ),
        ]
    )
    splits, split_stats = assign_splits(units, cfg.split, root=cfg.input_uri)
    split_of = dict(zip(units["source_uri"].to_pylist(), splits, strict=True))
    decisions = decisions.append_column(
        "split",
        pa.array(
            [
                split_of.get(u) if by_uri[u]["keep"] else None
                for u in decisions["source_uri"].to_pylist()
            ],
            pa.string(),
        ),
    )
    return decisions, {**summary, **split_stats}


SPLIT_COLUMNS = ["source_uri", "class_name", "cluster_id", "group", "split"]


def _split_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The split's columns only: the rows also carry 1280-float embeddings."""
    return table.select([c for c in SPLIT_COLUMNS if c in table.column_names]).to_pylist()


def _split_input(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{c: r.get(c) for c in SPLIT_COLUMNS} for r in rows],
        schema=pa.schema([(c, pa.string()) for c in SPLIT_COLUMNS]),
    )


def index_shard(
    candidates: pa.Table, decisions: pa.Table, stage: str, run_id: str, cfg: CleanConfig
) -> Shards:
    """This run's rows of the hash index: kept images' metadata, cluster and split."""
    kept = decisions.filter(decisions["keep"])
    if kept.num_rows == 0:
        return Shards()
    rows = candidates.filter(pc.is_in(candidates["source_uri"], value_set=kept["source_uri"]))
    outcome = pc.index_in(rows["source_uri"], value_set=kept["source_uri"])
    table = (
        rows.drop_columns([c for c in ("cluster_id", "split") if c in rows.column_names])
        .append_column("cluster_id", pc.take(kept["cluster_id"], outcome))
        .append_column("split", pc.take(kept["split"], outcome))
        .select(INDEX_COLUMNS)
    )
    uri = join(stage, INDEX, f"index-{run_id}.parquet")
    return Shards([ShardWrite(INDEX, uri, table.num_rows, write_parquet(table, uri, cfg.storage))])


def run_clean(cfg: CleanConfig) -> CleanResult:
    started = time.perf_counter()
    run_id = new_run_id()
    snapshot = list_lake(cfg.input_uri, cfg.storage)
    previous = read_manifest(cfg.output_uri, cfg.storage)
    classes = stable_classes(previous, snapshot)
    previous_snapshot, retry = previous_state(cfg.output_uri, previous, cfg.storage)
    plan = plan_run(snapshot, previous_snapshot, retry)
    log.info(
        "listed %d files in %d classes; %d to process, %d carried over, %d removed",
        snapshot.num_rows,
        len(classes),
        plan.todo.num_rows,
        plan.carried,
        len(plan.removed),
    )
    if previous and not plan.has_work:
        report = read_json_report(cfg, previous)
        return CleanResult(cfg.output_uri, previous, report, time.perf_counter() - started, True)

    check_writable(cfg.output_uri, run_id, cfg.storage)
    if cfg.dedup.verified:
        embedder(cfg.dedup.embedding_weights)  # fails here, before any work, if unavailable
    stage = staging_uri(cfg.output_uri, run_id)
    write_snapshot(snapshot, join(stage, "snapshot.parquet"), cfg.storage)
    ensure_ray(cfg.execution.ray_address, cfg.execution.num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = cfg.execution.progress

    first_seen = previous.get("next_seen_order", 0) if previous else 0
    work = with_work_columns(plan.todo, classes, first_seen, cfg)
    normalised = normalise_stage(work, cfg, stage)
    carried, rewritten = carry_over(cfg.output_uri, previous, plan.removed, stage, cfg.storage)

    final, decision_stats = deduplicate_and_finalize(
        normalised, carried, rewritten, stage, run_id, cfg
    )
    normalised.writes = [w for w in normalised.writes if w.folder != CANDIDATES]
    staged = Shards(normalised.writes + final.writes)

    decision_stats = {
        "processed": work.num_rows,
        "carried": plan.carried,
        "removed": len(plan.removed),
        **decision_stats,
    }
    tables = read_version(cfg, staged, carried)
    report = build_report(cfg, run_id, snapshot, classes, tables, decision_stats)
    report["seconds"] = round(time.perf_counter() - started, 2)
    html = review_page(cfg, report, tables)
    manifest = publish(
        cfg.output_uri,
        run_id,
        staged,
        carried,
        report,
        html,
        {
            "input_uri": cfg.input_uri,
            "classes": classes,
            "totals": report["totals"],
            "splits": report["splits"],
            "channel_stats": report["channel_stats"],
            "next_seen_order": first_seen + work.num_rows,
            "config": to_dict(cfg),
        },
        cfg.storage,
    )
    return CleanResult(cfg.output_uri, manifest, report, time.perf_counter() - started)


def deduplicate_and_finalize(
    normalised: Shards,
    carried: dict[str, list[str]],
    rewritten: list[str],
    stage: str,
    run_id: str,
    cfg: CleanConfig,
) -> tuple[Shards, dict[str, Any]]:
    """Decide on this run's candidates from their metadata, then apply the decisions to
    their pixels in Ray tasks; carried-over shards that had to be rewritten come along."""
    index_rewrites = [join(stage, r) for r in rewritten if r.startswith(INDEX + "/")]
    existing = _existing_index(cfg, carried, index_rewrites)
    candidates = read_shards(
        normalised.uris(CANDIDATES),
        cfg.storage,
        [c for c in INDEX_COLUMNS if c not in ("cluster_id", "split")],
        with_shard=True,
    )
    final, stats = Shards(), {}
    if candidates.num_rows:
        decisions, stats = decide(existing, candidates, cfg)
        final = finalize_stage(work_items(candidates, decisions), stage, cfg.storage)
        final.writes += index_shard(candidates, decisions, stage, run_id, cfg).writes
    final.writes += [ShardWrite(rel.split("/", 1)[0], join(stage, rel), 0, 0) for rel in rewritten]
    return final, stats


def _existing_index(
    cfg: CleanConfig, carried: dict[str, list[str]], rewritten: list[str]
) -> pa.Table:
    """The hash index of the images this version keeps from the previous one."""
    uris = [join(cfg.output_uri, rel) for rel in carried.get(INDEX, [])] + rewritten
    return read_shards(uris, cfg.storage, INDEX_COLUMNS) if uris else pa.table({})


def read_json_report(cfg: CleanConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    return read_json(join(cfg.output_uri, manifest["files"]["report"]), cfg.storage) or {}

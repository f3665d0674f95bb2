"""The cleaning job, stage by stage:

    list -> plan (incremental) -> normalise + score (Ray Data) -> de-duplicate
    -> split -> finalize (Ray Data) -> carry over the previous version -> report -> publish

Each stage lives in its own module; this one only wires them together.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from common.config import to_dict
from common.logs import show_bars, stage_line
from common.ray_runtime import ensure_ray
from common.storage import join, relative_to
from pipeline.config import EMBED_IN_TASKS, CleanConfig
from pipeline.decide import deduplicate_and_finalize
from pipeline.embed_stage import embedding_stage, require_gpus
from pipeline.embed_task import EMBEDDING_WORKERS, shared_features
from pipeline.incremental import carry_over, overrides_to_redo, plan_run, previous_state
from pipeline.inventory import inventory_snapshot
from pipeline.lease import Lease
from pipeline.listing import list_lake
from pipeline.normalize import normalise_batch
from pipeline.output import (
    check_writable,
    new_run_id,
    publish,
    read_json,
    read_manifest,
    staging_uri,
    write_snapshot,
)
from pipeline.overrides import load_overrides, with_overrides
from pipeline.report import build_report
from pipeline.report_parts import read_version
from pipeline.review import review_page
from pipeline.sink import Shards, ShardSink, StageFailed
from pipeline.split import group_of, load_group_manifest
from pipeline.tables import CANDIDATES, route_normalized

log = logging.getLogger(__name__)

# A normalise task whose worker dies (a native crash, the OOM killer) is tried this
# many more times, then the job stops with StageFailed instead of looping.
NORMALISE_MAX_RETRIES = 2
_WORKER_DEATHS = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.OutOfMemoryError,
    ray.exceptions.NodeDiedError,
)


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
    # The distinct names only: no Python string per file (1M files, ~60 MB).
    found = sorted({c for c in pc.unique(snapshot["class_name"]).to_pylist() if c} - set(known))
    return known + found


def with_work_columns(
    snapshot: pa.Table,
    classes: list[str],
    first_seen: int,
    cfg: CleanConfig,
    overrides: pa.Table | None = None,
) -> pa.Table:
    """Labels, the user's group key, the order files were first seen (keep policy) and a
    person's decision on the file (`pipeline.overrides`)."""
    manifest = load_group_manifest(cfg.split, cfg.storage)
    # Arrow and numpy over whole columns: no Python object per file on the driver.
    order = pc.sort_indices(
        snapshot, sort_keys=[("mtime", "ascending"), ("source_uri", "ascending")]
    ).to_numpy()
    seen = np.empty(snapshot.num_rows, dtype=np.int64)
    seen[order] = first_seen + np.arange(snapshot.num_rows, dtype=np.int64)
    labels = pc.index_in(snapshot["class_name"], value_set=pa.array(classes, pa.string()))
    if manifest or cfg.split.group_regex:
        uris = snapshot["source_uri"].to_pylist()
        groups = pa.array(
            [group_of(relative_to(u, cfg.input_uri), cfg.split, manifest) for u in uris],
            pa.string(),
        )
    else:  # no grouping rule: every group is null
        groups = pa.nulls(snapshot.num_rows, pa.string())
    work = (
        snapshot.set_column(
            snapshot.schema.get_field_index("label"), "label", labels.cast(pa.int32())
        )
        .append_column("group", groups)
        .append_column("seen_order", pa.array(seen, pa.int64()))
    )
    return with_overrides(work, overrides)


def normalise_stage(
    work: pa.Table, cfg: CleanConfig, stage: str, features: ray.ObjectRef | None = None
) -> Shards:
    """Ray Data: one task per `files_per_task` files; rows routed to candidates/rejected.
    `features`: the embedding network (`pipeline.embed_task`), which the tasks share, or
    which the embedding stage's actors hold (`execution.embedding_device`)."""
    sink = ShardSink(stage, route_normalized, cfg.storage, name_prefix="norm")
    if work.num_rows == 0:
        return sink.result
    step = max(1, cfg.execution.files_per_task)
    kwargs: dict[str, Any] = {"cfg": cfg}
    remote_args: dict[str, Any] = {"max_retries": NORMALISE_MAX_RETRIES}  # default: forever
    separate = features is not None and cfg.execution.embedding_device != EMBED_IN_TASKS
    if separate:
        require_gpus(cfg)  # before any file is read
        kwargs["embed_later"] = True  # the tasks hold no torch: Ray's shared workers do
    elif features is not None:
        kwargs["features"] = features
        remote_args["runtime_env"] = EMBEDDING_WORKERS
    blocks = [work.slice(i, step) for i in range(0, work.num_rows, step)]
    try:
        with warnings.catch_warnings():
            # Ray 2.60 names no parameter for max_retries yet; only this warning is hidden.
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", Warning)
            dataset = ray.data.from_arrow(blocks).map_batches(
                partial(normalise_batch, **kwargs),
                batch_format="pyarrow",
                batch_size=None,
                **remote_args,
            )
        if separate:
            dataset = embedding_stage(dataset, cfg, features)
        # The same remote args: the write fuses into the normalise task (no block in
        # between); after the embedding stage, it runs in tasks of its own.
        dataset.write_datasink(sink, ray_remote_args=remote_args)
    except _WORKER_DEATHS as exc:
        raise StageFailed(
            f"normalise stage: a task's worker died on each of its {NORMALISE_MAX_RETRIES + 1} "
            f"tries ({type(exc).__name__}); a file may crash a native decoder or exhaust "
            "memory: see the Ray worker logs"
        ) from exc
    return sink.result


def run_clean(cfg: CleanConfig) -> CleanResult:
    """The whole run holds the output's lease: one writer per output (`pipeline.lease`)."""
    started = time.perf_counter()
    run_id = new_run_id()
    # A malformed overrides file stops the job here, before it writes anything.
    given = load_overrides(cfg.overrides, cfg.storage, cfg.input_uri) if cfg.overrides else None
    check_writable(cfg.output_uri, run_id, cfg.storage)
    lease = Lease(cfg.output_uri, run_id, cfg.storage).acquire(cfg.execution.wait_for_lock)
    try:
        return _run_clean_leased(cfg, run_id, lease, started, given)
    finally:
        lease.release()


def _run_clean_leased(
    cfg: CleanConfig, run_id: str, lease: Lease, started: float, given: pa.Table | None
) -> CleanResult:
    ensure_ray(cfg.execution.ray_address, cfg.execution.num_cpus)  # the listing's tasks
    snapshot = (
        inventory_snapshot(cfg.inventory_uri, cfg.input_uri, cfg.storage)
        if cfg.inventory_uri
        else list_lake(cfg.input_uri, cfg.storage)
    )
    previous = read_manifest(cfg.output_uri, cfg.storage)
    classes = stable_classes(previous, snapshot)
    previous_snapshot, retry = previous_state(cfg.output_uri, previous, cfg.storage)
    in_force, redo = overrides_to_redo(cfg.output_uri, previous, given, cfg.storage)
    retry |= redo
    plan = plan_run(snapshot, previous_snapshot, retry)
    del previous_snapshot  # compared: a row per file the run no longer needs
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

    # Fails here, before any work, if the weights are unavailable.
    features = shared_features(cfg.dedup.embedding_weights) if cfg.dedup.verified else None
    stage = staging_uri(cfg.output_uri, run_id)
    snapshot_uri = join(stage, "snapshot.parquet")
    write_snapshot(snapshot, snapshot_uri, cfg.storage)
    # Bars on a terminal; elsewhere one line per stage (stage_line) instead of hundreds.
    ray.data.DataContext.get_current().enable_progress_bars = cfg.execution.progress and show_bars()

    first_seen = previous.get("next_seen_order", 0) if previous else 0
    work = with_work_columns(plan.todo, classes, first_seen, cfg, in_force)
    processed, removed, unchanged = work.num_rows, plan.removed, plan.carried
    with stage_line("normalise", logger=log) as line:
        normalised = normalise_stage(work, cfg, stage, features)
        line.count = processed
    # The listing and the work table (a row per file) are not held through the stages
    # after this one: the report reads the listing back from the run's snapshot.
    del snapshot, work, plan
    carried, rewritten = carry_over(cfg.output_uri, previous, removed, stage, cfg.storage)

    with stage_line("dedup+finalize", logger=log) as line:
        final, decision_stats = deduplicate_and_finalize(
            normalised, carried, rewritten, stage, run_id, cfg
        )
        line.count = processed
    normalised.writes = [w for w in normalised.writes if w.folder != CANDIDATES]
    staged = Shards(normalised.writes + final.writes)

    decision_stats = {
        "processed": processed,
        "carried": unchanged,
        "removed": len(removed),
        **decision_stats,
    }
    figures = read_version(cfg, staged, carried, snapshot_uri, in_force)
    report = build_report(cfg, run_id, classes, figures, decision_stats, in_force)
    report["seconds"] = round(time.perf_counter() - started, 2)
    html = review_page(cfg, report, figures, in_force)
    lease.check()  # still this run's: nobody took the output over while it worked
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
            "next_seen_order": first_seen + processed,
            "overrides": in_force.to_pylist(),
            "config": to_dict(cfg),
        },
        cfg.storage,
    )
    return CleanResult(cfg.output_uri, manifest, report, time.perf_counter() - started)


def read_json_report(cfg: CleanConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    return read_json(join(cfg.output_uri, manifest["files"]["report"]), cfg.storage) or {}

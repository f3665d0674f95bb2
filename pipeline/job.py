"""The cleaning job, stage by stage:

    list -> plan (incremental) -> normalise + score (Ray Data) -> de-duplicate
    -> split -> finalize (Ray Data) -> carry over the previous version -> report -> publish

Each stage lives in its own module; this one only wires them together.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import ray

from common.config import to_dict
from common.logs import show_bars, stage_line
from common.ray_runtime import ensure_ray
from common.storage import join
from pipeline.config import EMBED_IN_TASKS, CleanConfig
from pipeline.decide import deduplicate_and_finalize
from pipeline.embed_stage import embedding_stage, require_gpus
from pipeline.embed_task import EMBEDDING_WORKERS, shared_features
from pipeline.incremental import carry_over
from pipeline.lease import Lease
from pipeline.normalize import normalise_batch
from pipeline.output import (
    check_writable,
    new_run_id,
    publish,
    read_json,
    read_manifest,
    staging_uri,
)
from pipeline.overrides import load_overrides
from pipeline.planning import RunPlan, plan_in_task, read_block
from pipeline.remote import WORKER_DEATHS
from pipeline.report import build_report
from pipeline.report_parts import figures_in_task
from pipeline.review import review_page
from pipeline.sink import Shards, ShardSink, StageFailed
from pipeline.tables import CANDIDATES, route_normalized

log = logging.getLogger(__name__)

# A normalise task whose worker dies (a native crash, the OOM killer) is tried this
# many more times, then the job stops with StageFailed instead of looping.
NORMALISE_MAX_RETRIES = 2


@dataclass
class CleanResult:
    output_uri: str
    manifest: dict[str, Any]
    report: dict[str, Any]
    seconds: float
    up_to_date: bool = False


def normalise_stage(
    plan: RunPlan, cfg: CleanConfig, stage: str, features: ray.ObjectRef | None = None
) -> Shards:
    """Ray Data: one task per work block (`files_per_task` files, staged by the plan:
    `pipeline.planning`), which it reads itself; rows routed to candidates/rejected.
    `features`: the embedding network (`pipeline.embed_task`), which the tasks share, or
    which the embedding stage's actors hold (`execution.embedding_device`)."""
    sink = ShardSink(stage, route_normalized, cfg.storage, name_prefix="norm")
    if not plan.blocks:
        return sink.result
    kwargs: dict[str, Any] = {"cfg": cfg}
    remote_args: dict[str, Any] = {"max_retries": NORMALISE_MAX_RETRIES}  # default: forever
    separate = features is not None and cfg.execution.embedding_device != EMBED_IN_TASKS
    if separate:
        require_gpus(cfg)  # before any file is read
        kwargs["embed_later"] = True  # the tasks hold no torch: Ray's shared workers do
    elif features is not None:
        kwargs["features"] = features
        remote_args["runtime_env"] = EMBEDDING_WORKERS
    # A block's place, not its rows: the driver holds no row (one small table a block).
    blocks = [pa.table({"work": [uri], "row_group": [k]}) for uri, k in plan.blocks]
    try:
        with warnings.catch_warnings():
            # Ray 2.60 names no parameter for max_retries yet; only this warning is hidden.
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", Warning)
            dataset = ray.data.from_arrow(blocks).map_batches(
                partial(normalise_block, normalise=normalise_batch, **kwargs),
                batch_format="pyarrow",
                batch_size=None,
                **remote_args,
            )
        if separate:
            dataset = embedding_stage(dataset, cfg, features)
        # The same remote args: the write fuses into the normalise task (no block in
        # between); after the embedding stage, it runs in tasks of its own.
        dataset.write_datasink(sink, ray_remote_args=remote_args)
    except WORKER_DEATHS as exc:
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
    previous = read_manifest(cfg.output_uri, cfg.storage)
    stage = staging_uri(cfg.output_uri, run_id)
    snapshot_uri = join(stage, "snapshot.parquet")
    plan = plan_in_task(cfg, previous, given, stage, snapshot_uri)
    classes, in_force, removed = plan.classes, plan.in_force, plan.removed
    log.info(
        "listed %d files in %d classes; %d to process, %d carried over, %d removed",
        plan.listed,
        len(classes),
        plan.todo,
        plan.carried,
        len(removed),
    )
    if previous and not plan.has_work:
        report = read_json_report(cfg, previous)
        return CleanResult(cfg.output_uri, previous, report, time.perf_counter() - started, True)

    # Fails here, before any image is read, if the weights are unavailable.
    features = shared_features(cfg.dedup.embedding_weights) if cfg.dedup.verified else None
    # Bars on a terminal; elsewhere one line per stage (stage_line) instead of hundreds.
    ray.data.DataContext.get_current().enable_progress_bars = cfg.execution.progress and show_bars()

    first_seen = previous.get("next_seen_order", 0) if previous else 0
    processed, unchanged = plan.todo, plan.carried
    with stage_line("normalise", logger=log) as line:
        normalised = normalise_stage(plan, cfg, stage, features)
        line.count = processed
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
    figures = figures_in_task(cfg, staged, carried, snapshot_uri, in_force)
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


def normalise_block(block: pa.Table, normalise: Callable[..., pa.Table], **kwargs: Any) -> pa.Table:
    """In a normalise task: read the work block(s) `block` names (`pipeline.planning`)
    and `normalise` their files (`pipeline.normalize.normalise_batch`)."""
    cfg = kwargs["cfg"]
    places = zip(block["work"].to_pylist(), block["row_group"].to_pylist(), strict=True)
    outs = [normalise(read_block(uri, k, cfg), **kwargs) for uri, k in places]
    return outs[0] if len(outs) == 1 else pa.concat_tables(outs, promote_options="default")


def read_json_report(cfg: CleanConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    return read_json(join(cfg.output_uri, manifest["files"]["report"]), cfg.storage) or {}

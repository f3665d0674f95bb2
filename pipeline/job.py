"""The cleaning job: list -> normalise (Ray Data) -> stage shards -> report -> publish."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import ray

from common.config import to_dict
from common.storage import join
from pipeline.config import CleanConfig, ExecutionConfig
from pipeline.listing import list_lake
from pipeline.normalize import normalise_batch
from pipeline.output import check_writable, new_run_id, publish, staging_uri, write_snapshot
from pipeline.report import build_report
from pipeline.sink import CleanOutputSink

log = logging.getLogger(__name__)


@dataclass
class CleanResult:
    output_uri: str
    manifest: dict[str, Any]
    report: dict[str, Any]
    seconds: float


def ensure_ray(execution: ExecutionConfig) -> None:
    """Join the configured cluster, or start a local Ray if none is running in this process."""
    if ray.is_initialized():
        return
    address = execution.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=execution.num_cpus, include_dashboard=False, log_to_driver=False)


def snapshot_dataset(snapshot: pa.Table, files_per_task: int) -> ray.data.Dataset:
    """One block per `files_per_task` listed files, so work spreads over every node."""
    step = max(1, files_per_task)
    blocks = [snapshot.slice(i, step) for i in range(0, snapshot.num_rows, step)]
    return ray.data.from_arrow(blocks)


def run_clean(cfg: CleanConfig) -> CleanResult:
    started = time.perf_counter()
    run_id = new_run_id()
    snapshot = list_lake(cfg.input_uri, cfg.storage)
    check_writable(cfg.output_uri, run_id, cfg.storage)
    classes = sorted({c for c in snapshot["class_name"].to_pylist() if c})
    log.info(
        "listed %d files in %d classes: %s", snapshot.num_rows, len(classes), ", ".join(classes)
    )

    stage = staging_uri(cfg.output_uri, run_id)
    write_snapshot(snapshot, join(stage, "snapshot.parquet"), cfg.storage)
    ensure_ray(cfg.execution)
    ray.data.DataContext.get_current().enable_progress_bars = cfg.execution.progress

    sink = CleanOutputSink(stage, cfg.storage)
    (
        snapshot_dataset(snapshot, cfg.execution.files_per_task)
        .map_batches(partial(normalise_batch, cfg=cfg), batch_format="pyarrow", batch_size=None)
        .write_datasink(sink)
    )
    report = build_report(snapshot, sink.result, classes, cfg.storage)
    report["run_id"] = run_id
    report["input_uri"] = cfg.input_uri
    report["seconds"] = round(time.perf_counter() - started, 2)
    manifest = publish(
        cfg.output_uri,
        run_id,
        sink.result,
        report,
        {
            "input_uri": cfg.input_uri,
            "classes": classes,
            "totals": report["totals"],
            "channel_stats": report["channel_stats"],
            "config": to_dict(cfg),
        },
        cfg.storage,
    )
    return CleanResult(cfg.output_uri, manifest, report, time.perf_counter() - started)

"""The run's plan, made in a Ray task: list the lake (or read its inventory), compare the
listing with the previous version's, and stage the files to process as the normalise
stage's blocks.

Why a task: the listing and the work table hold a row per file (~150 bytes; at 10M
files 1.8 GB), so on the driver they made the head's memory grow with the lake. The
task writes the listing (the run's snapshot) and the work blocks to the run's staging
prefix and returns counts, the class names and the blocks' places; the driver holds no
row (`RunPlan`). The normalise tasks read their block themselves (`read_block`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.storage import ensure_parent, filesystem, join, relative_to
from pipeline.config import CleanConfig
from pipeline.incremental import overrides_to_redo, plan_run, previous_state
from pipeline.inventory import inventory_snapshot
from pipeline.listing import list_lake
from pipeline.output import write_snapshot
from pipeline.overrides import with_overrides
from pipeline.remote import RowTask
from pipeline.split import group_of, load_group_manifest

WORK = "work"  # the staged work blocks' folder (an intermediate, never published)
# Normalise blocks per staged work file: one row group each, so a task reads its own.
BLOCKS_PER_FILE = 64


@dataclass
class RunPlan:
    """What the run must do, without a row per file: counts, the classes, the files
    whose old rows must go (incremental runs only) and where the work blocks lie."""

    classes: list[str]
    listed: int
    todo: int  # files to process
    carried: int  # unchanged files, kept as they were
    # The files whose old rows must go (URIs, Arrow strings: no Python object per file).
    removed: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    in_force: pa.Table | None = None  # the overrides in force (`pipeline.overrides`)
    blocks: list[tuple[str, int]] = field(default_factory=list)  # (file, row group)

    @property
    def has_work(self) -> bool:
        return self.todo > 0 or len(self.removed) > 0


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
    # Arrow and numpy over whole columns: no Python object per file.
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


def make_plan(
    cfg: CleanConfig,
    previous: dict[str, Any] | None,
    given: pa.Table | None,
    stage: str,
    snapshot_uri: str,
) -> RunPlan:
    """List, compare with the previous version, and (when there is work) stage the
    snapshot at `snapshot_uri` and the work blocks under `stage`. Writes nothing for a
    run with nothing to do."""
    snapshot = (
        inventory_snapshot(cfg.inventory_uri, cfg.input_uri, cfg.storage)
        if cfg.inventory_uri
        else list_lake(cfg.input_uri, cfg.storage)
    )
    classes = stable_classes(previous, snapshot)
    previous_snapshot, retry = previous_state(cfg.output_uri, previous, cfg.storage)
    in_force, redo = overrides_to_redo(cfg.output_uri, previous, given, cfg.storage)
    plan = plan_run(snapshot, previous_snapshot, retry | redo)
    del previous_snapshot  # compared: a row per file the run no longer needs
    removed = pa.array(sorted(plan.removed), pa.string())  # to the driver as Arrow strings
    found = RunPlan(classes, snapshot.num_rows, plan.todo.num_rows, plan.carried, removed, in_force)
    if previous and not found.has_work:
        return found
    write_snapshot(snapshot, snapshot_uri, cfg.storage)
    del snapshot
    first_seen = previous.get("next_seen_order", 0) if previous else 0
    work = with_work_columns(plan.todo, classes, first_seen, cfg, in_force)
    del plan
    found.blocks = write_blocks(work, max(1, cfg.execution.files_per_task), stage, cfg)
    return found


def write_blocks(work: pa.Table, step: int, stage: str, cfg: CleanConfig) -> list[tuple[str, int]]:
    """The work table's rows `step` at a time, each block a row group of a staged file
    (`BLOCKS_PER_FILE` to a file): the blocks the normalise tasks read, in order."""
    blocks: list[tuple[str, int]] = []
    per_file = step * BLOCKS_PER_FILE
    for number, start in enumerate(range(0, work.num_rows, per_file)):
        uri = join(stage, WORK, f"{WORK}-{number:06d}.parquet")
        fs, path = filesystem(uri, cfg.storage)
        ensure_parent(fs, path)
        part = work.slice(start, per_file)
        with fs.open(path, "wb") as f, pq.ParquetWriter(f, work.schema) as writer:
            for k, lo in enumerate(range(0, part.num_rows, step)):
                writer.write_table(part.slice(lo, step), row_group_size=step)
                blocks.append((uri, k))
    return blocks


def read_block(uri: str, row_group: int, cfg: CleanConfig) -> pa.Table:
    """One normalise block, as `write_blocks` staged it (in the normalise task)."""
    fs, path = filesystem(uri, cfg.storage)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).read_row_group(row_group)


# The plan, made in a Ray task on a worker: its errors (a bad inventory, a damaged
# previous version) are raised to the caller as they were raised there.
plan_in_task = RowTask(make_plan, "planning")

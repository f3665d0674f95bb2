"""Incremental runs: compare this run's listing with the one the published version used.

Only objects that are new or changed (etag or size) are processed; objects that left
the lake (or changed) take their old rows out of the new version; everything else
is carried over untouched. No changes at all means no image work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from common.storage import StorageConfig, filesystem, join
from pipeline.output import read_shards, read_table, verify_version
from pipeline.overrides import changed, merged, newly_dropped, recorded
from pipeline.sink import shard_name, write_parquet
from pipeline.tables import IMAGES, INDEX, REJECTED_DIR


@dataclass
class Plan:
    todo: pa.Table  # snapshot rows to process in this run
    removed: set[str] = field(default_factory=set)  # source_uris whose old rows must go
    carried: int = 0  # unchanged files, kept as they were

    @property
    def has_work(self) -> bool:
        return self.todo.num_rows > 0 or bool(self.removed)


def _fingerprint_changed(snapshot: pa.Table, previous: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Per snapshot row: whether the previous listing holds its URI, and whether it holds
    it with another (etag, size). Arrow over whole columns: no Python object per file
    (dicts of both listings cost the driver about 1 KB a file)."""
    at = pc.index_in(snapshot["source_uri"], value_set=previous["source_uri"])
    before = pc.is_valid(at)
    differs = [
        _differs(snapshot[c], pc.take(previous[c], at).cast(snapshot[c].type))
        for c in ("etag", "size")
    ]
    return before, pc.and_(before, pc.or_(*differs))


def _differs(now: pa.ChunkedArray, before: pa.ChunkedArray) -> pa.ChunkedArray:
    """now != before as Python compares them: two nulls are equal, a null and a value
    are not (never null itself)."""
    valid = pc.and_(pc.is_valid(now), pc.is_valid(before))
    unequal = pc.and_(valid, pc.fill_null(pc.not_equal(now, before), False))
    return pc.or_(unequal, pc.xor(pc.is_valid(now), pc.is_valid(before)))


def plan_run(
    snapshot: pa.Table, previous: pa.Table | None, retry: set[str] | frozenset = frozenset()
) -> Plan:
    """What this run must do, given the previous version's snapshot (None: everything).

    `retry`: files the previous version rejected for a passing reason (read_error,
    source_changed, internal_error); they are processed again even if unchanged.
    Source URIs are unique within a listing.
    """
    if previous is None:
        return Plan(todo=snapshot)
    before, changed = _fingerprint_changed(snapshot, previous)
    retried = pc.is_in(snapshot["source_uri"], value_set=pa.array(sorted(retry), pa.string()))
    changed = pc.or_(changed, retried)
    new = pc.invert(before)
    gone = pc.invert(pc.is_in(previous["source_uri"], value_set=snapshot["source_uri"]))
    # The files whose old rows must go, as strings: `carry_over` looks each shard's up.
    removed = previous["source_uri"].filter(gone).to_pylist()
    removed += snapshot["source_uri"].filter(changed).to_pylist()
    return Plan(
        todo=snapshot.filter(pc.or_(new, changed)),
        removed=set(removed),
        carried=snapshot.num_rows - _count(new) - _count(changed),
    )


def _count(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)


# Rejections that say nothing about the file itself: try again on the next run.
TRANSIENT_REASONS = ("read_error", "source_changed", "internal_error")


def previous_state(
    output_uri: str, manifest: dict[str, Any] | None, storage: StorageConfig
) -> tuple[pa.Table | None, set[str]]:
    """The previous version's listing and the files it rejected for a passing reason.
    The version is verified first: a damaged one stops the run (OutputError)."""
    if manifest is None:
        return None, set()
    verify_version(output_uri, manifest, storage)
    fs, path = filesystem(join(output_uri, manifest["files"]["snapshot"]), storage)
    with fs.open(path, "rb") as f:
        snapshot = pq.read_table(f)
    rejected = read_table(output_uri, REJECTED_DIR, storage, ["source_uri", "reason"], manifest)
    retry = set()
    if rejected.num_rows:
        mask = pc.is_in(rejected["reason"], value_set=pa.array(TRANSIENT_REASONS))
        retry = set(rejected.filter(mask)["source_uri"].to_pylist())
    return snapshot, retry


def overrides_to_redo(
    output_uri: str,
    manifest: dict[str, Any] | None,
    given: pa.Table | None,
    storage: StorageConfig,
) -> tuple[pa.Table, set[str]]:
    """The overrides in force for this run (the previous version's, updated by `given`)
    and the files to process again because of them: those whose override changed, and
    those the previous version dropped as duplicates of a file that is now dropped."""
    before = recorded(manifest)
    in_force = merged(before, given) if given is not None else before
    redo = changed(before, in_force)
    dropped = newly_dropped(before, in_force)
    if manifest is not None and dropped:
        rejected = read_table(
            output_uri, REJECTED_DIR, storage, ["source_uri", "duplicate_of"], manifest
        )
        if rejected.num_rows:
            mask = pc.is_in(rejected["duplicate_of"], value_set=pa.array(sorted(dropped)))
            redo |= set(rejected.filter(mask)["source_uri"].to_pylist())
    return in_force, redo


def _without(
    uri: str, removed: pa.Array, stage: str, folder: str, storage: StorageConfig
) -> str | None:
    """Rewrite one shard without the removed rows; None when nothing is left."""
    table = read_shards([uri], storage)
    keep = pc.invert(pc.is_in(table["source_uri"], value_set=removed))
    table = table.filter(keep)
    if table.num_rows == 0:
        return None
    name = shard_name(table["source_uri"].to_pylist(), "carried", stage)
    write_parquet(table, join(stage, folder, name), storage)
    return f"{folder}/{name}"


def table_folder(relative: str, table: str) -> str:
    """The folder of a shard within its table ("images/split=train"), wherever the run
    that wrote it put it ("runs/<run>/images/split=train/x.parquet" or, in versions
    written before runs/, "images/split=train/x.parquet")."""
    parts = relative.split("/")
    return "/".join(parts[parts.index(table) : -1])


@ray.remote(num_cpus=0.25)
def _carry_shard(
    output_uri: str,
    relative: str,
    table: str,
    removed: pa.Array,
    stage: str,
    storage: StorageConfig,
) -> tuple[str, str | None]:
    """(relative path, what replaces it): itself, a rewritten shard (relative to this
    run's folder, starting with its table), or None."""
    uri = join(output_uri, relative)
    uris = read_shards([uri], storage, ["source_uri"])["source_uri"]
    if not pc.any(pc.is_in(uris, value_set=removed)).as_py():
        return relative, relative
    return relative, _without(uri, removed, stage, table_folder(relative, table), storage)


def carry_over(
    output_uri: str,
    manifest: dict[str, Any] | None,
    removed: pa.Array,
    stage: str,
    storage: StorageConfig,
) -> tuple[dict[str, list[str]], list[str]]:
    """The previous version's shards for the new one, per table: untouched when they hold
    no removed file (`removed`: their URIs, as Arrow strings: no Python object per file),
    else rewritten (in Ray tasks) into the staging area. Returns the carried relative
    paths and the staged ones (published with this run's shards)."""
    if manifest is None:
        return {}, []
    files = manifest["files"]
    if len(removed) == 0:
        return {t: list(files.get(t, [])) for t in (IMAGES, REJECTED_DIR, INDEX)}, []
    shared = ray.put(removed)  # once, not with each task
    carried: dict[str, list[str]] = {}
    staged: list[str] = []
    for table in (IMAGES, REJECTED_DIR, INDEX):
        refs = [
            _carry_shard.remote(output_uri, rel, table, shared, stage, storage)
            for rel in files.get(table, [])
        ]
        carried[table] = []
        for relative, replacement in ray.get(refs):
            if replacement == relative:
                carried[table].append(relative)
            elif replacement:
                staged.append(replacement)
    return carried, staged

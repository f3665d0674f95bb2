"""The published data set: a staging prefix per run, then a manifest written last.

Layout of OUTPUT_URI:

    _manifest.json        the commit point: which shards make up the current version
    images/part-*.parquet kept images (JPEG bytes + metadata)
    rejected/part-*.parquet every file not kept, with its reason
    snapshots/<run>.parquet the listing each run worked on
    report.json           counts, formats, bytes, mean/std of the current version
    _staging/<run>/       a run in progress (removed when it publishes)

A run writes only under `_staging/<run>/` until it is complete; then it moves its
shards into place, writes the report and, last, `_manifest.json`. Readers that go
through `read_manifest` never see a half-written version; shards no manifest lists
(a crashed run's leftovers) are removed when the next run publishes.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import StorageConfig, filesystem, join
from pipeline.sink import IMAGES_DIR, REJECTED_DIR, StagedFiles

MANIFEST = "_manifest.json"
REPORT = "report.json"
STAGING = "_staging"
SNAPSHOTS = "snapshots"
FORMAT_VERSION = 1


class OutputError(Exception):
    """The output location cannot be written: the job stops with a one-line message."""


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def staging_uri(output_uri: str, run_id: str) -> str:
    return join(output_uri, STAGING, run_id)


def check_writable(output_uri: str, run_id: str, storage: StorageConfig) -> None:
    """Fail fast, before any work, when the output cannot be written."""
    probe = join(staging_uri(output_uri, run_id), ".probe")
    try:
        fs, path = filesystem(probe, storage)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, b"ok")
        fs.rm_file(path)
    except Exception as exc:  # noqa: BLE001 - any failure here means the job cannot run
        raise OutputError(f"cannot write to {output_uri}: {type(exc).__name__}: {exc}") from exc


def write_json(uri: str, payload: dict[str, Any], storage: StorageConfig) -> None:
    """Write JSON so a reader sees the old or the new file, never a partial one."""
    fs, path = filesystem(uri, storage)
    data = json.dumps(payload, indent=2, sort_keys=False, default=str).encode()
    if fs.protocol in ("file", "local") or "file" in fs.protocol:
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)  # rename: atomic on one filesystem
    else:
        fs.pipe_file(path, data)  # a single PUT is atomic on S3


def read_json(uri: str, storage: StorageConfig) -> dict[str, Any] | None:
    fs, path = filesystem(uri, storage)
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def read_manifest(output_uri: str, storage: StorageConfig) -> dict[str, Any] | None:
    """The current published version of a cleaning output, or None if there is none yet."""
    return read_json(join(output_uri, MANIFEST), storage)


def write_snapshot(snapshot: pa.Table, uri: str, storage: StorageConfig) -> None:
    fs, path = filesystem(uri, storage)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(snapshot, f, compression="zstd")


def publish(
    output_uri: str,
    run_id: str,
    staged: StagedFiles,
    report: dict[str, Any],
    manifest_extra: dict[str, Any],
    storage: StorageConfig,
) -> dict[str, Any]:
    """Move a finished run's shards into place and commit it by writing the manifest."""
    fs, _ = filesystem(output_uri, storage)
    stage = staging_uri(output_uri, run_id)
    files: dict[str, list[str]] = {IMAGES_DIR: [], REJECTED_DIR: []}
    for shard in staged.shards:
        relative = shard.uri[len(stage) :].lstrip("/")
        target = join(output_uri, relative)
        fs.makedirs(fs._strip_protocol(join(output_uri, shard.table)), exist_ok=True)
        fs.mv(fs._strip_protocol(shard.uri), fs._strip_protocol(target))
        files[shard.table].append(relative)
    snapshot_rel = f"{SNAPSHOTS}/{run_id}.parquet"
    fs.makedirs(fs._strip_protocol(join(output_uri, SNAPSHOTS)), exist_ok=True)
    fs.mv(
        fs._strip_protocol(join(stage, "snapshot.parquet")),
        fs._strip_protocol(join(output_uri, snapshot_rel)),
    )
    write_json(join(output_uri, REPORT), report, storage)
    manifest = {
        "format_version": FORMAT_VERSION,
        "run_id": run_id,
        "published_at": dt.datetime.now(dt.UTC).isoformat(),
        **manifest_extra,
        "files": {
            IMAGES_DIR: sorted(files[IMAGES_DIR]),
            REJECTED_DIR: sorted(files[REJECTED_DIR]),
            "snapshot": snapshot_rel,
            "report": REPORT,
        },
    }
    write_json(join(output_uri, MANIFEST), manifest, storage)
    _collect_garbage(output_uri, manifest, storage)
    return manifest


def _collect_garbage(output_uri: str, manifest: dict[str, Any], storage: StorageConfig) -> None:
    """Remove shards no manifest lists and the staging area (after the commit, never before)."""
    fs, root = filesystem(output_uri, storage)
    root = root.rstrip("/")
    listed = {
        f"{root}/{rel}" for key in (IMAGES_DIR, REJECTED_DIR) for rel in manifest["files"][key]
    }
    for table in (IMAGES_DIR, REJECTED_DIR):
        folder = f"{root}/{table}"
        if fs.exists(folder):
            for path in fs.find(folder):
                if path not in listed:
                    fs.rm_file(path)
    if fs.exists(f"{root}/{STAGING}"):
        fs.rm(f"{root}/{STAGING}", recursive=True)


def table_uris(output_uri: str, manifest: dict[str, Any], table: str) -> list[str]:
    """Full URIs of the current version's shards of `table` ("images" or "rejected")."""
    return [join(output_uri, rel) for rel in manifest["files"][table]]


def read_table(
    output_uri: str, table: str, storage: StorageConfig, columns: list[str] | None = None
) -> pa.Table:
    """Read the current version of one output table (without the image column if asked)."""
    manifest = read_manifest(output_uri, storage)
    if manifest is None:
        raise OutputError(f"{output_uri} has no published cleaning output ({MANIFEST} missing)")
    return read_shards(table_uris(output_uri, manifest, table), storage, columns)


def read_shards(uris: list[str], storage: StorageConfig, columns: list[str] | None) -> pa.Table:
    if not uris:
        return pa.table({})
    fs, _ = filesystem(uris[0], storage)
    tables = []
    for uri in uris:
        with fs.open(fs._strip_protocol(uri), "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables, promote_options="default")

"""The published data set: a staging prefix per run, then a manifest written last.

Layout of OUTPUT_URI:

    _manifest.json        the commit point: which shards make up the current version
    images/split=<split>/part-*.parquet  kept images (JPEG bytes + metadata)
    rejected/part-*.parquet every file not kept, with its reason
    index/part-*.parquet    the hash index of kept images (no pixels), for incremental runs
    snapshots/<run>.parquet the listing each run worked on
    versions/<run>.json     every published manifest
    report.json, report.html  the current version's report and review page
    _staging/<run>/         a run in progress (removed when it publishes)

A run writes only under `_staging/<run>/` until it is complete; then it moves its
shards into place, writes the reports and, last, `_manifest.json`. Readers that go
through `read_manifest` never see a half-written version. Shards are immutable and
shared between versions; files listed by neither the new nor the previous version
(a crashed run's leftovers, superseded shards) are removed after the commit, so the
previous version stays readable until the next run publishes.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import StorageConfig, filesystem, join
from pipeline.sink import Shards
from pipeline.tables import IMAGES, INDEX, REJECTED_DIR

MANIFEST = "_manifest.json"
REPORT = "report.json"
REPORT_HTML = "report.html"
STAGING = "_staging"
SNAPSHOTS = "snapshots"
VERSIONS = "versions"
TABLES = (IMAGES, REJECTED_DIR, INDEX)
FORMAT_VERSION = 1
_READ_THREADS = 16


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
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
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
    staged: Shards,
    carried: dict[str, list[str]],
    report: dict[str, Any],
    report_html: str,
    manifest_extra: dict[str, Any],
    storage: StorageConfig,
) -> dict[str, Any]:
    """Move a finished run's shards into place and commit the version by writing the
    manifest. `carried`: shards of the previous version kept as they are, per table."""
    fs, _ = filesystem(output_uri, storage)
    stage = staging_uri(output_uri, run_id)
    files: dict[str, list[str]] = {table: list(carried.get(table, [])) for table in TABLES}
    moves = []
    for shard in staged.writes:
        relative = shard.uri[len(stage) :].lstrip("/")
        table = relative.split("/", 1)[0]
        if table in files:  # not e.g. candidates/: an intermediate of this run
            moves.append((shard.uri, join(output_uri, relative)))
            files[table].append(relative)

    def move(pair: tuple[str, str]) -> None:
        source, target = (fs._strip_protocol(u) for u in pair)
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.mv(source, target)

    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        list(pool.map(move, moves))  # server-side copies on S3: I/O bound
    snapshot_rel = f"{SNAPSHOTS}/{run_id}.parquet"
    fs.makedirs(fs._strip_protocol(join(output_uri, SNAPSHOTS)), exist_ok=True)
    fs.mv(
        fs._strip_protocol(join(stage, "snapshot.parquet")),
        fs._strip_protocol(join(output_uri, snapshot_rel)),
    )
    write_json(join(output_uri, REPORT), report, storage)
    fs.pipe_file(fs._strip_protocol(join(output_uri, REPORT_HTML)), report_html.encode())
    manifest = {
        "format_version": FORMAT_VERSION,
        "run_id": run_id,
        "published_at": dt.datetime.now(dt.UTC).isoformat(),
        **manifest_extra,
        "files": {
            **{table: sorted(set(files[table])) for table in TABLES},
            "snapshot": snapshot_rel,
            "report": REPORT,
            "report_html": REPORT_HTML,
        },
    }
    previous = read_manifest(output_uri, storage)
    write_json(join(output_uri, VERSIONS, f"{run_id}.json"), manifest, storage)
    write_json(join(output_uri, MANIFEST), manifest, storage)  # the commit point
    _collect_garbage(output_uri, [manifest, previous], storage)
    return manifest


def _listed(root: str, manifest: dict[str, Any] | None) -> set[str]:
    if not manifest:
        return set()
    files = manifest["files"]
    paths = {rel for table in TABLES for rel in files.get(table, [])}
    paths.add(files.get("snapshot", ""))
    return {f"{root}/{rel}" for rel in paths if rel}


def _collect_garbage(
    output_uri: str, keep: list[dict[str, Any] | None], storage: StorageConfig
) -> None:
    """Remove shards neither the new nor the previous version lists, and the staging
    area. The previous version stays readable until the next run publishes."""
    fs, root = filesystem(output_uri, storage)
    root = root.rstrip("/")
    listed = set().union(*(_listed(root, m) for m in keep))
    for folder in (*TABLES, SNAPSHOTS):
        if fs.exists(f"{root}/{folder}"):
            for path in fs.find(f"{root}/{folder}"):
                if path not in listed:
                    fs.rm_file(path)
    if fs.exists(f"{root}/{STAGING}"):
        fs.rm(f"{root}/{STAGING}", recursive=True)


def table_uris(output_uri: str, manifest: dict[str, Any], table: str) -> list[str]:
    """Full URIs of a version's shards of `table` ("images", "rejected" or "index")."""
    return [join(output_uri, rel) for rel in manifest["files"][table]]


def read_table(
    output_uri: str,
    table: str,
    storage: StorageConfig,
    columns: list[str] | None = None,
    manifest: dict[str, Any] | None = None,
) -> pa.Table:
    """Read one table of the current (or the given) version, e.g. without the image column."""
    manifest = manifest or read_manifest(output_uri, storage)
    if manifest is None:
        raise OutputError(f"{output_uri} has no published cleaning output ({MANIFEST} missing)")
    return read_shards(table_uris(output_uri, manifest, table), storage, columns)


def read_shards(
    uris: list[str],
    storage: StorageConfig,
    columns: list[str] | None = None,
    with_shard: bool = False,
) -> pa.Table:
    """Concatenate Parquet shards (fetched concurrently); `with_shard` adds a `_shard`
    column naming each row's file, so a later pass can go back for other columns."""
    if not uris:
        return pa.table({})
    fs, _ = filesystem(uris[0], storage)

    def read_one(uri: str) -> pa.Table:
        with fs.open(fs._strip_protocol(uri), "rb") as f:
            table = pq.read_table(f, columns=columns)
        if with_shard:
            table = table.append_column("_shard", pa.array([uri] * table.num_rows, pa.string()))
        return table

    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        tables = list(pool.map(read_one, uris))
    return pa.concat_tables(tables, promote_options="default")

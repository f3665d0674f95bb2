"""The published data set: a prefix per run, made current by a manifest written last.

Layout of OUTPUT_URI:

    _manifest.json        the commit point: which shards make up the current version,
                          with each shard's row count, size and footer digest
    _lease.json           the run writing this output now, if any (pipeline.lease)
    runs/<run>/           everything one run wrote, published in place:
        images/split=<split>/part-*.parquet  kept images (JPEG bytes + metadata)
        rejected/part-*.parquet   every file not kept, with its reason
        index/part-*.parquet      the hash index of kept images (no pixels)
        snapshot.parquet          the listing the run worked on
    versions/<run>.json     every published manifest
    report.json, report.html  the current version's report and review page

A version is the shards its manifest lists: this run's under runs/<run>/ and those it
carries over from earlier runs' prefixes. A run writes only under its own prefix; it
publishes by writing the reports and, last, `_manifest.json`: no shard is copied or
moved. Readers that go through `read_manifest` never see a half-written version.
Shards are immutable and shared between versions; `collect_garbage`, a step of its
own after the commit, removes what neither the new nor the previous version lists (a
crashed run's prefix, this run's intermediates, superseded shards), so the previous
version stays readable until the next run publishes. Outputs written before the run
prefixes (root images/, rejected/, index/, snapshots/, _staging/) are read and
cleaned up the same way.

Every read of a published version for a new run goes through `verify_version`: a
shard that is missing, or whose size, rows or footer differ from what the manifest
recorded, stops the run with a one-line error naming the file (never a silent
re-process on damaged data). The recorded `classes` must agree with the labels of the
kept images; they only ever grow (new classes are appended).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# The data set's names and readers are common to both jobs (`common.dataset`); they are
# re-exported here for the cleaning job's modules.
from common.dataset import (  # noqa: F401 - re-exported
    FORMAT_VERSION,
    INDEX,
    MANIFEST,
    REPORT,
    REPORT_HTML,
    TABLES,
    OutputError,
    read_json,
    read_manifest,
    read_shards,
    read_table,
    table_uris,
)
from common.storage import StorageConfig, ensure_parent, filesystem, is_object_store, join
from pipeline.sink import Shards

RUNS = "runs"  # runs/<run>/: everything one run writes; its shards are published in place
STAGING = "_staging"  # where runs wrote before the run prefixes (only cleaned up now)
SNAPSHOTS = "snapshots"
VERSIONS = "versions"
LEASE = "_lease.json"  # pipeline.lease; named here so garbage collection never touches it
_READ_THREADS = 16
_PARQUET_TAIL = 64 * 1024  # one ranged read usually holds a shard's whole footer


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def staging_uri(output_uri: str, run_id: str) -> str:
    """Where a run writes; once it publishes, its shards stay there (never moved)."""
    return join(output_uri, RUNS, run_id)


def check_writable(output_uri: str, run_id: str, storage: StorageConfig) -> None:
    """Fail fast, before any work, when the output cannot be written. Never creates a
    bucket: a typo'd bucket name is an error, not a new bucket."""
    probe = join(staging_uri(output_uri, run_id), ".probe")
    try:
        fs, path = filesystem(probe, storage)
        if is_object_store(fs) and not _bucket_exists(fs, path.split("/", 1)[0]):
            raise OutputError(
                f"cannot write to {output_uri}: bucket {path.split('/', 1)[0]!r} does not exist "
                "(the job does not create buckets)"
            )
        ensure_parent(fs, path)
        fs.pipe_file(path, b"ok")
        fs.rm_file(path)
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here means the job cannot run
        raise OutputError(f"cannot write to {output_uri}: {type(exc).__name__}: {exc}") from exc


def _bucket_exists(fs, bucket: str) -> bool:  # noqa: ANN001 - an S3-like fsspec filesystem
    """HEAD the bucket; a bucket we may not HEAD is left to the write probe to judge."""
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - e.g. 403 on HEAD but PUT allowed
        return True
    return True


def write_json(uri: str, payload: dict[str, Any], storage: StorageConfig) -> None:
    """Write JSON so a reader sees the old or the new file, never a partial one."""
    fs, path = filesystem(uri, storage)
    data = json.dumps(payload, indent=2, sort_keys=False, default=str).encode()
    ensure_parent(fs, path)
    if fs.protocol in ("file", "local") or "file" in fs.protocol:
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)  # rename: atomic on one filesystem
    else:
        fs.pipe_file(path, data)  # a single PUT is atomic on S3


def write_snapshot(snapshot: pa.Table, uri: str, storage: StorageConfig) -> None:
    fs, path = filesystem(uri, storage)
    ensure_parent(fs, path)
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
    """Commit a finished run's version by writing the manifest: its shards stay where the
    run wrote them (runs/<run>/), nothing is copied or moved. `carried`: shards of the
    previous version kept as they are, per table. Garbage collection follows as its own
    step (`collect_garbage`)."""
    fs, _ = filesystem(output_uri, storage)
    stage = staging_uri(output_uri, run_id)
    files: dict[str, list[str]] = {table: list(carried.get(table, [])) for table in TABLES}
    for shard in staged.writes:
        in_run = shard.uri[len(stage) :].lstrip("/")
        table = in_run.split("/", 1)[0]
        if table in files:  # not e.g. candidates/: an intermediate of this run
            files[table].append(f"{RUNS}/{run_id}/{in_run}")
    snapshot_rel = f"{RUNS}/{run_id}/snapshot.parquet"
    write_json(join(output_uri, REPORT), report, storage)
    fs.pipe_file(fs._strip_protocol(join(output_uri, REPORT_HTML)), report_html.encode())
    previous = read_manifest(output_uri, storage)
    listed = sorted({rel for table in TABLES for rel in files[table]} | {snapshot_rel})
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
        "shards": _shard_records(output_uri, listed, previous, storage),
    }
    write_json(join(output_uri, VERSIONS, f"{run_id}.json"), manifest, storage)
    write_json(join(output_uri, MANIFEST), manifest, storage)  # the commit point
    collect_garbage(output_uri, run_id, [manifest, previous], storage)
    return manifest


def shard_record(uri: str, storage: StorageConfig) -> dict[str, Any]:
    """What the manifest records of one Parquet shard: rows, bytes and the SHA-256 of
    its footer (schema, row groups, offsets and column statistics). One HEAD and one
    ranged read: a replaced, truncated or rewritten shard changes all three."""
    fs, path = filesystem(uri, storage)
    size = int(fs.size(path))
    tail = fs.cat_file(path, start=max(0, size - _PARQUET_TAIL))
    if size < 12 or tail[-4:] != b"PAR1":
        raise OutputError(f"{uri} is not a Parquet file")
    footer_len = int.from_bytes(tail[-8:-4], "little")
    if footer_len + 8 > len(tail):
        tail = fs.cat_file(path, start=max(0, size - footer_len - 8))
    footer = tail[-(footer_len + 8) :]
    rows = pq.read_metadata(pa.BufferReader(b"PAR1" + footer)).num_rows
    return {"rows": rows, "bytes": size, "footer_sha256": hashlib.sha256(footer).hexdigest()}


def _shard_records(
    output_uri: str, listed: list[str], previous: dict[str, Any] | None, storage: StorageConfig
) -> dict[str, dict[str, Any]]:
    """Records of every shard of the new version; carried shards keep their record."""
    known = (previous or {}).get("shards", {})
    todo = [rel for rel in listed if rel not in known]
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        found = pool.map(lambda rel: shard_record(join(output_uri, rel), storage), todo)
        fresh = dict(zip(todo, found, strict=True))
    return {rel: known.get(rel) or fresh[rel] for rel in listed}


def verify_version(output_uri: str, manifest: dict[str, Any], storage: StorageConfig) -> None:
    """Check every shard of a published version against the manifest's records, and its
    classes against the labels of its kept images; OutputError naming what is damaged.

    A version published before the records existed (format 1) is not checked."""
    records = manifest.get("shards")
    if records is None:
        return
    listed = {rel for table in TABLES for rel in manifest["files"][table]}
    listed.add(manifest["files"].get("snapshot", ""))
    unrecorded = sorted(rel for rel in listed if rel and rel not in records)
    if unrecorded:
        raise OutputError(
            f"{join(output_uri, unrecorded[0])} is listed by {MANIFEST} without a record: "
            "the manifest is damaged"
        )

    def check(item: tuple[str, dict[str, Any]]) -> None:
        rel, expected = item
        uri = join(output_uri, rel)
        try:
            found = shard_record(uri, storage)
        except FileNotFoundError:
            raise OutputError(f"{uri} is missing: the published version is damaged") from None
        for key in ("rows", "bytes", "footer_sha256"):
            if found[key] != expected.get(key):
                raise OutputError(
                    f"{uri} does not match {MANIFEST} ({key} {found[key]}, recorded "
                    f"{expected.get(key)}): the published version is damaged"
                )

    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        list(pool.map(check, sorted(records.items())))
    _verify_classes(output_uri, manifest, storage)


def _verify_classes(output_uri: str, manifest: dict[str, Any], storage: StorageConfig) -> None:
    """The labels of the kept images must name their classes through `classes`: a
    reordered or shortened class list would silently relabel every new row."""
    classes = manifest.get("classes")
    if not isinstance(classes, list) or len(set(classes)) != len(classes):
        raise OutputError(f"{join(output_uri, MANIFEST)} is damaged (invalid 'classes')")
    index = read_shards(table_uris(output_uri, manifest, INDEX), storage, ["class_name", "label"])
    if index.num_rows == 0:
        return
    pairs = set(zip(index["label"].to_pylist(), index["class_name"].to_pylist(), strict=True))
    for label, name in sorted(pairs, key=str):
        if label is None or not 0 <= label < len(classes) or classes[label] != name:
            raise OutputError(
                f"{join(output_uri, MANIFEST)} is damaged: its classes name label {label} "
                f"{classes[label] if label is not None and 0 <= label < len(classes) else None!r}"
                f", but the kept images of class {name!r} carry it (classes only ever grow)"
            )


def _relative(manifest: dict[str, Any]) -> set[str]:
    """Every file a version lists, relative to the output."""
    files = manifest["files"]
    paths = {rel for table in TABLES for rel in files.get(table, [])}
    paths.add(files.get("snapshot", ""))
    return {rel for rel in paths if rel}


def _listed(root: str, manifest: dict[str, Any] | None) -> set[str]:
    return {f"{root}/{rel}" for rel in _relative(manifest)} if manifest else set()


def collect_garbage(
    output_uri: str, run_id: str, keep: list[dict[str, Any] | None], storage: StorageConfig
) -> None:
    """Remove what neither the new nor the previous version lists: run prefixes no kept
    version references (crashed runs), the unlisted files of the referenced ones (this
    run's intermediates, shards superseded by a carry-over rewrite), and leftovers of the
    older layout (root table folders, _staging/). Readers of the previous version are
    safe: it stays whole until the next run publishes. Bounded: it lists only the
    runs/ prefixes, the referenced runs' files and the legacy folders. Runs only under the
    lease: no other run is writing, and the prefix of whichever run holds the lease
    (normally this one) is left alone unless a kept version references it."""
    fs, root = filesystem(output_uri, storage)
    root = root.rstrip("/")
    listed = set().union(*(_listed(root, m) for m in keep))
    runs = [p for m in keep if m for p in _relative(m) if p.startswith(f"{RUNS}/")]
    referenced = {p.split("/", 2)[1] for p in runs}
    holder = _lease_holder(fs, f"{root}/{LEASE}")
    for path in _children(fs, f"{root}/{RUNS}"):
        run = path.rstrip("/").rsplit("/", 1)[-1]
        if run in referenced or run == run_id:
            for found in fs.find(f"{root}/{RUNS}/{run}"):
                if found not in listed:
                    fs.rm_file(found)
        elif run != holder:
            fs.rm(f"{root}/{RUNS}/{run}", recursive=True)
    for folder in (*TABLES, SNAPSHOTS):
        if fs.exists(f"{root}/{folder}"):
            for path in fs.find(f"{root}/{folder}"):
                if path not in listed:
                    fs.rm_file(path)
    staged = {p.rstrip("/").rsplit("/", 1)[-1] for p in _children(fs, f"{root}/{STAGING}")}
    for run in sorted(staged):
        if run == run_id or run != holder:
            fs.rm(f"{root}/{STAGING}/{run}", recursive=True)


def _children(fs, path: str) -> list[str]:  # noqa: ANN001
    try:
        return [p for p in fs.ls(path, detail=False) if p.rstrip("/") != path]
    except FileNotFoundError:
        return []


def _lease_holder(fs, path: str) -> str | None:  # noqa: ANN001
    try:
        return json.loads(fs.cat_file(path)).get("run_id")
    except (FileNotFoundError, ValueError, AttributeError):
        return None

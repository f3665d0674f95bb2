"""Stage 1: list the lake once into a snapshot manifest; the run works on that snapshot only.

Files that arrive while the job runs are not in the snapshot and wait for the next
run; files whose size changes are rejected as `source_changed` when read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import ray
from botocore.utils import parse_timestamp

from common.storage import StorageConfig, filesystem, join

SNAPSHOT_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("class_name", pa.string()),  # null: the file sits outside any class prefix
        ("label", pa.int32()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("mtime", pa.string()),
    ]
)


# Prefixes one listing task lists at a time (threads: listing waits on the network).
LIST_THREADS = 16


class LakeError(Exception):
    """The lake as a whole cannot be read: the job stops with a one-line message."""


def _mtime(info: dict) -> str:
    value = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, tz=dt.UTC)
    return value.isoformat() if isinstance(value, dt.datetime) else str(value or "")


def _etag(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag") or ""
    return str(etag).strip('"')


_ROW_SCHEMA = pa.schema([f for f in SNAPSHOT_SCHEMA if f.name != "label"])


def _rows_table(input_uri: str, root: str, entries: dict[str, dict]) -> pa.Table:
    """The snapshot rows (without labels) of listed entries; directories are left out.
    Column by column: a listing's client CPU is per key."""
    columns: list[list] = [[], [], [], [], []]
    uris, classes, sizes, etags, mtimes = columns
    for path, info in entries.items():
        if info.get("type") == "directory" or path.endswith("/"):
            continue
        relative = path[len(root) :].lstrip("/")
        class_name, below, _ = relative.partition("/")
        uris.append(join(input_uri, relative))
        classes.append(class_name if below else None)  # null: a file outside any class
        sizes.append(int(info.get("size") or 0))
        etags.append(_etag(info))
        mtimes.append(_mtime(info))
    return pa.table(columns, schema=_ROW_SCHEMA)


def _iso_timestamp(value: object) -> dt.datetime:
    """S3's LastModified ('2026-12-07T05:00:00.000Z') read in ~1 us: botocore's own parser
    goes through dateutil, ~50 us a key, most of a listing's client CPU. The same instant and
    `isoformat()`; any other form goes to botocore's parser."""
    if isinstance(value, str) and len(value) > 10 and value[4] == "-" and value[10] == "T":
        with contextlib.suppress(ValueError):
            return dt.datetime.fromisoformat(value)
    return parse_timestamp(value)


def _filesystem(input_uri: str, storage: StorageConfig) -> tuple[object, str]:
    """`common.storage.filesystem`, with S3 responses' timestamps read by `_iso_timestamp`
    (botocore's documented parser default, on this filesystem's session: the process's other
    users of it read no timestamps, and would get the same instants)."""
    fs, root = filesystem(input_uri, storage)
    if hasattr(fs, "connect") and hasattr(fs, "session"):  # s3fs
        if fs.session is None:
            fs.connect()
        factory = fs.session.get_component("response_parser_factory")
        factory.set_parser_defaults(timestamp_parser=_iso_timestamp)
    return fs, root.rstrip("/")


@contextlib.contextmanager
def _listing_errors(input_uri: str) -> Iterator[None]:
    """Any listing failure, on the driver or in a listing task, stops the whole job with
    one line (LakeError)."""
    try:
        yield
    except LakeError:
        raise
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, Exception) else exc
        if isinstance(cause, PermissionError):
            raise LakeError(f"no permission to list {input_uri}: {cause}") from exc
        raise LakeError(f"cannot list {input_uri}: {type(cause).__name__}: {cause}") from exc
    except PermissionError as exc:
        raise LakeError(f"no permission to list {input_uri}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any listing failure stops the whole job
        raise LakeError(f"cannot list {input_uri}: {type(exc).__name__}: {exc}") from exc


def _open_root(input_uri: str, storage: StorageConfig) -> tuple[object, str]:
    fs, root = _filesystem(input_uri, storage)
    if not fs.isdir(root):
        raise LakeError(f"input {input_uri} does not exist or is not a folder/prefix")
    return fs, root


def _threaded(function, items: list) -> list:  # noqa: ANN001
    """Listing is I/O bound: a task lists its prefixes `LIST_THREADS` at a time."""
    with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
        return list(pool.map(function, items))


@ray.remote(max_retries=3)
def _list_level(
    input_uri: str, storage: StorageConfig, prefixes: list[str]
) -> tuple[pa.Table, list[str]]:
    """Each prefix one level deep (delimiter '/'): its files as rows, its sub-prefixes."""
    fs, root = _filesystem(input_uri, storage)

    def level(prefix: str) -> tuple[dict[str, dict], list[str]]:
        entries = fs.ls(prefix, detail=True, refresh=True)
        files = {e["name"]: e for e in entries if e.get("type") != "directory"}
        subdirs = [e["name"].rstrip("/") for e in entries if e.get("type") == "directory"]
        return files, [d for d in subdirs if d != prefix]

    found = _threaded(level, prefixes)
    files = {path: info for f, _ in found for path, info in f.items()}
    return _rows_table(input_uri, root, files), [d for _, dirs in found for d in dirs]


@ray.remote(max_retries=3)
def _list_tree(input_uri: str, storage: StorageConfig, prefixes: list[str]) -> pa.Table:
    """Every object below each of `prefixes` (recursive, as the sequential listing)."""
    fs, root = _filesystem(input_uri, storage)
    tables = _threaded(
        lambda p: _rows_table(input_uri, root, fs.find(p, detail=True, withdirs=False)), prefixes
    )
    return pa.concat_tables(tables) if tables else _ROW_SCHEMA.empty_table()


def _groups(items: list[str], count: int) -> list[list[str]]:
    """`items` dealt round-robin into at most `count` non-empty groups."""
    return [g for g in (items[i::count] for i in range(count)) if g]


def with_labels(rows: pa.Table, input_uri: str) -> pa.Table:
    """Sorted by path, labelled by the sorted class names (`class_names`)."""
    if rows.num_rows == 0:
        raise LakeError(f"input {input_uri} holds no files")
    rows = rows.take(pc.sort_indices(rows["source_uri"]))
    classes = pc.unique(rows["class_name"].drop_null()).sort()
    label = pc.index_in(rows["class_name"], value_set=classes).cast(pa.int32())
    return pa.table(
        [label if f.name == "label" else rows[f.name] for f in SNAPSHOT_SCHEMA],
        schema=SNAPSHOT_SCHEMA,
    )


def list_lake(input_uri: str, storage: StorageConfig, concurrent: bool | None = None) -> pa.Table:
    """List every object under `input_uri`; the class is the first path component.

    With Ray running (or concurrent=True), the listing fans out in Ray tasks: one task
    per cluster CPU lists the class prefixes' own level, then as many tasks list the
    sub-prefixes one level below the classes, each `LIST_THREADS` prefixes at a time;
    the driver only merges Arrow tables. Without Ray, one sequential recursive listing. Both give
    the same snapshot."""
    if concurrent is None:
        concurrent = ray.is_initialized()
    with _listing_errors(input_uri):
        fs, root = _open_root(input_uri, storage)
        if not concurrent:
            rows = _rows_table(input_uri, root, fs.find(root, detail=True, withdirs=False))
            return with_labels(rows, input_uri)
        top = fs.ls(root, detail=True, refresh=True)
        loose = {e["name"]: e for e in top if e.get("type") != "directory"}
        tables = [_rows_table(input_uri, root, loose)]
        classes = [e["name"].rstrip("/") for e in top if e.get("type") == "directory"]
        tasks = max(1, int(ray.cluster_resources().get("CPU", 1)))
        levels = ray.get(
            [_list_level.remote(input_uri, storage, g) for g in _groups(classes, tasks)]
        )
        tables += [rows for rows, _ in levels]
        subdirs = sorted(d for _, found in levels for d in found)
        refs = [_list_tree.remote(input_uri, storage, g) for g in _groups(subdirs, tasks)]
        tables += ray.get(refs)
        return with_labels(pa.concat_tables(tables), input_uri)


def class_names(rows: list[dict]) -> list[str]:
    """Classes are data: the sorted names of the lake's top-level prefixes."""
    return sorted({r["class_name"] for r in rows if r["class_name"]})

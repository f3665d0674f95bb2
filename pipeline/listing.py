"""Stage 1: list the lake once into a snapshot manifest; the run works on that snapshot only.

Files that arrive while the job runs are not in the snapshot and wait for the next
run; files whose size changes are rejected as `source_changed` when read.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

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


def list_lake(input_uri: str, storage: StorageConfig) -> pa.Table:
    """List every object under `input_uri`; the class is the first path component."""
    try:
        fs, root = filesystem(input_uri, storage)
        root = root.rstrip("/")
        if not fs.isdir(root):
            raise LakeError(f"input {input_uri} does not exist or is not a folder/prefix")
        entries = fs.find(root, detail=True, withdirs=False)
    except LakeError:
        raise
    except PermissionError as exc:
        raise LakeError(f"no permission to list {input_uri}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any listing failure stops the whole job
        raise LakeError(f"cannot list {input_uri}: {type(exc).__name__}: {exc}") from exc

    rows = []
    for path, info in sorted(entries.items()):
        if info.get("type") == "directory" or path.endswith("/"):
            continue
        relative = path[len(root) :].lstrip("/")
        parts = relative.split("/")
        rows.append(
            {
                "source_uri": join(input_uri, relative),
                "class_name": parts[0] if len(parts) > 1 else None,
                "size": int(info.get("size") or 0),
                "etag": _etag(info),
                "mtime": _mtime(info),
            }
        )
    classes = class_names(rows)
    for row in rows:
        row["label"] = classes.index(row["class_name"]) if row["class_name"] else None
    if not rows:
        raise LakeError(f"input {input_uri} holds no files")
    return pa.Table.from_pylist(rows, schema=SNAPSHOT_SCHEMA)


def class_names(rows: list[dict]) -> list[str]:
    """Classes are data: the sorted names of the lake's top-level prefixes."""
    return sorted({r["class_name"] for r in rows if r["class_name"]})

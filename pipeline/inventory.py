"""The snapshot from an S3 Inventory report instead of a listing.

At tens of millions of objects, listing the lake costs hours of LIST requests before
the first image is read (docs/cluster.md); S3 Inventory already wrote that list, daily
or weekly, as CSV, ORC or Parquet files named by a `manifest.json`. This module reads
such a report into the same snapshot table `pipeline.listing.list_lake` returns: one
Ray task per inventory file keeps the rows below the job's input prefix, the driver
only merges them. What the report does not hold yet (objects written after it was
made) waits for the next report; objects deleted since are rejected as `read_error`
when the job fetches them, as with a listing that is a few hours old.

Reference: https://docs.aws.amazon.com/AmazonS3/latest/userguide/storage-inventory.html
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
from typing import Any
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import ray

from common.storage import StorageConfig, filesystem, join
from pipeline.listing import LakeError, with_labels

MANIFEST_NAME = "manifest.json"
FORMATS = ("CSV", "ORC", "Parquet")
# The columns this job needs, by their CSV fileSchema names; ORC and Parquet name them
# in snake case (`last_modified_date`, `e_tag`).
NEEDED = ("Bucket", "Key", "Size")
OPTIONAL = ("LastModifiedDate", "ETag", "IsLatest", "IsDeleteMarker")
_SNAKE = {
    "Bucket": "bucket",
    "Key": "key",
    "Size": "size",
    "LastModifiedDate": "last_modified_date",
    "ETag": "e_tag",
    "IsLatest": "is_latest",
    "IsDeleteMarker": "is_delete_marker",
}
_ROW_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("class_name", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("mtime", pa.string()),
    ]
)


def manifest_uri(uri: str, storage: StorageConfig) -> str:
    """`uri` itself when it names a manifest.json; for the report's folder (the
    inventory configuration's prefix), the newest `<timestamp>/manifest.json` below it."""
    if uri.rstrip("/").endswith(MANIFEST_NAME):
        return uri.rstrip("/")
    fs, root = filesystem(uri, storage)
    found = sorted(p for p in fs.find(root.rstrip("/")) if p.endswith("/" + MANIFEST_NAME))
    if not found:
        raise LakeError(f"no {MANIFEST_NAME} below the inventory {uri}")
    return join(uri, found[-1][len(root.rstrip("/")) :].lstrip("/"))


def read_manifest(uri: str, storage: StorageConfig) -> dict[str, Any]:
    """The manifest, checked for what this module reads: its format, schema and files."""
    fs, path = filesystem(uri, storage)
    try:
        with fs.open(path, "rb") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise LakeError(f"cannot read the inventory manifest {uri}: {exc}") from exc
    if manifest.get("fileFormat") not in FORMATS:
        raise LakeError(
            f"inventory {uri}: fileFormat {manifest.get('fileFormat')!r} is not one of "
            f"{', '.join(FORMATS)}"
        )
    if not isinstance(manifest.get("files"), list):
        raise LakeError(f"inventory {uri}: no 'files' list")
    if manifest["fileFormat"] == "CSV":
        fields = csv_fields(manifest.get("fileSchema", ""))
        missing = [name for name in NEEDED if name not in fields]
        if missing:
            raise LakeError(
                f"inventory {uri}: the report lacks {', '.join(missing)}; add the Size "
                "field to the inventory configuration"
            )
    return manifest


def csv_fields(file_schema: str) -> list[str]:
    """CSV reports name their columns in order: 'Bucket, Key, Size, ...'."""
    return [name.strip() for name in file_schema.split(",") if name.strip()]


def _bucket(arn_or_name: str) -> str:
    return arn_or_name.rsplit(":", 1)[-1]


def _iso(value: Any) -> str:
    """The listing's mtime format (`datetime.isoformat()` in UTC), so that a lake read
    once by listing and once by inventory gives the same arrival order."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat()


def _csv_table(data: bytes, fields: list[str]) -> pa.Table:
    """A CSV report's rows; its keys are URL-encoded (spaces as '+')."""
    text = gzip.decompress(data).decode("utf-8") if data[:2] == b"\x1f\x8b" else data.decode()
    columns: dict[str, list] = {name: [] for name in fields}
    for record in csv.reader(io.StringIO(text)):
        for name, value in zip(fields, record, strict=False):
            columns[name].append(value)
    columns["Key"] = [unquote_plus(k) for k in columns["Key"]]
    columns["Size"] = [int(s) if s else 0 for s in columns["Size"]]
    for flag in ("IsLatest", "IsDeleteMarker"):
        if flag in columns:
            columns[flag] = [v.lower() == "true" for v in columns[flag]]
    return pa.table({k: v for k, v in columns.items() if k in NEEDED + OPTIONAL})


def _columnar_table(table: pa.Table) -> pa.Table:
    """An ORC or Parquet report with its snake-case columns renamed to the CSV names."""
    by_snake = {snake: name for name, snake in _SNAKE.items()}
    keep = [c for c in table.column_names if c in by_snake]
    table = table.select(keep).rename_columns([by_snake[c] for c in keep])
    missing = [name for name in NEEDED if name not in table.column_names]
    if missing:
        raise LakeError(f"an inventory file lacks {', '.join(missing)}")
    return table


def _rows(table: pa.Table, input_uri: str, bucket: str, prefix: str) -> pa.Table:
    """The current objects below `prefix` in `bucket` as snapshot rows (no label)."""
    mask = pc.and_(pc.equal(table["Bucket"], bucket), pc.starts_with(table["Key"], prefix))
    if "IsDeleteMarker" in table.column_names:
        mask = pc.and_(mask, pc.invert(pc.fill_null(table["IsDeleteMarker"], False)))
    if "IsLatest" in table.column_names:
        mask = pc.and_(mask, pc.fill_null(table["IsLatest"], True))
    table = table.filter(mask)
    relative = [k[len(prefix) :] for k in table["Key"].to_pylist()]
    rows = {
        "source_uri": [join(input_uri, r) for r in relative],
        "class_name": [r.split("/")[0] if "/" in r else None for r in relative],
        "size": table["Size"].cast(pa.int64()),
        "etag": (
            table["ETag"].cast(pa.string())
            if "ETag" in table.column_names
            else pa.nulls(table.num_rows, pa.string())
        ),
        "mtime": [
            _iso(v)
            for v in (
                table["LastModifiedDate"].to_pylist()
                if "LastModifiedDate" in table.column_names
                else [None] * table.num_rows
            )
        ],
    }
    out = pa.table(rows, schema=_ROW_SCHEMA)
    etag = pc.replace_substring(pc.fill_null(out["etag"], ""), '"', "")  # as the listing's
    out = out.set_column(out.schema.get_field_index("etag"), "etag", etag)
    return out.filter(pc.invert(pc.ends_with(out["source_uri"], "/")))  # folder markers


@ray.remote(max_retries=3)
def _read_file(
    uri: str, file_format: str, fields: list[str], input_uri: str, storage: StorageConfig
) -> pa.Table:
    """One inventory file's rows below the input prefix."""
    fs, path = filesystem(uri, storage)
    with fs.open(path, "rb") as f:
        data = f.read()
    if file_format == "CSV":
        table = _csv_table(data, fields)
    elif file_format == "ORC":
        import pyarrow.orc as orc

        table = _columnar_table(orc.ORCFile(io.BytesIO(data)).read())
    else:
        import pyarrow.parquet as pq

        table = _columnar_table(pq.read_table(io.BytesIO(data)))
    bucket, _, prefix = input_uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    return _rows(table, input_uri, bucket, prefix)


def inventory_snapshot(inventory_uri: str, input_uri: str, storage: StorageConfig) -> pa.Table:
    """The lake's snapshot (`listing.SNAPSHOT_SCHEMA`) from the S3 Inventory report at
    `inventory_uri` (its manifest.json, or the folder whose newest manifest counts).
    Rows are the report's current objects below `input_uri`, which must be in the
    report's source bucket."""
    if not input_uri.startswith("s3://"):
        raise LakeError(f"an inventory describes an S3 bucket; the input {input_uri} is not one")
    uri = manifest_uri(inventory_uri, storage)
    manifest = read_manifest(uri, storage)
    source = manifest.get("sourceBucket", "")
    bucket = input_uri.removeprefix("s3://").split("/", 1)[0]
    if source and source != bucket:
        raise LakeError(f"inventory {uri} describes bucket {source!r}, the input is in {bucket!r}")
    destination = _bucket(manifest.get("destinationBucket", "")) or bucket
    fields = csv_fields(manifest.get("fileSchema", ""))
    refs = [
        _read_file.remote(
            f"s3://{destination}/{entry['key']}",
            manifest["fileFormat"],
            fields,
            input_uri,
            storage,
        )
        for entry in manifest["files"]
    ]
    try:
        tables = ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        raise LakeError(f"cannot read the inventory {uri}: {exc.cause or exc}") from exc
    return with_labels(pa.concat_tables([_ROW_SCHEMA.empty_table(), *tables]), input_uri)

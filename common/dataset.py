"""The published data set: the format the cleaning job writes and training reads.

Both jobs (and the benchmarks) name its parts from here, so neither reaches into the
other. Layout of a data set's root (the cleaning job's OUTPUT_URI):

    _manifest.json                        the commit point: lists the current version's
                                          shards, each with rows, bytes and a digest
    runs/<run>/images/split=<split>/...   kept images of the run that wrote them
    runs/<run>/rejected/..., index/...    every file not kept (reason), the hash index
    report.json, report.html              the current version's report and review page

A version is the set of shards its manifest lists, wherever they were written: a
later run lists the shards it carries over from earlier runs' folders, so readers
always go through the manifest (`table_uris`), never a folder listing.

How a version is written and verified is `pipeline.output`'s business; this module
only names the parts and reads a published version.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import StorageConfig, filesystem, join

MANIFEST = "_manifest.json"
REPORT = "report.json"
REPORT_HTML = "report.html"
# 2: the manifest records each shard's rows, bytes and footer digest ("shards").
FORMAT_VERSION = 2

# The tables of a version (the manifest's "files" keys and the root's folders).
IMAGES, REJECTED, INDEX = "images", "rejected", "index"
TABLES = (IMAGES, REJECTED, INDEX)

# The splits kept images are assigned to (`pipeline.split`), and how images are partitioned.
TRAIN, VAL, TEST = "train", "val", "test"
SPLITS = (TRAIN, VAL, TEST)
SPLIT_PARTITION = "split"

_READ_THREADS = 16


class OutputError(Exception):
    """The output location cannot be written, or a published version cannot be read:
    the job stops with a one-line message."""


def split_folder(split: str) -> str:
    """The images table's folder of one split, relative to the root: images/split=<split>."""
    return f"{IMAGES}/{SPLIT_PARTITION}={split}"


def read_json(uri: str, storage: StorageConfig) -> dict[str, Any] | None:
    fs, path = filesystem(uri, storage)
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def read_manifest(output_uri: str, storage: StorageConfig) -> dict[str, Any] | None:
    """The current published version of a cleaning output, or None if there is none yet.
    A manifest that is not a manifest is an OutputError (one line), not a traceback."""
    uri = join(output_uri, MANIFEST)
    try:
        manifest = read_json(uri, storage)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OutputError(f"{uri} is damaged (not valid JSON: {exc})") from exc
    if manifest is None:
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(files.get(table, []), list) for table in TABLES
    ):
        raise OutputError(f"{uri} is damaged (no valid 'files' section)")
    return manifest


def table_uris(output_uri: str, manifest: dict[str, Any], table: str) -> list[str]:
    """Full URIs of a version's shards of `table` ("images", "rejected" or "index")."""
    return [join(output_uri, rel) for rel in manifest["files"][table]]


def split_uris(output_uri: str, manifest: dict[str, Any], split: str) -> list[str]:
    """Full URIs of a version's image shards of one split."""
    folder = f"/{split_folder(split)}/"
    return [u for u in table_uris(output_uri, manifest, IMAGES) if folder in u]


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
    optional: dict[str, pa.DataType] | None = None,
) -> pa.Table:
    """Concatenate Parquet shards (fetched concurrently). `with_shard` adds a `_shard`
    column naming each row's file, so a later pass can go back for other columns
    (dictionary-encoded: one string per shard, not ~100 bytes per row). `optional`:
    columns a shard written by an earlier version may lack, read there as nulls."""
    if not uris:
        return pa.table({})
    fs, _ = filesystem(uris[0], storage)
    extra = optional or {}

    def read_one(uri: str) -> pa.Table:
        with fs.open(fs._strip_protocol(uri), "rb") as f:
            found = pq.ParquetFile(f).schema_arrow.names if extra else []
            missing = [name for name in extra if name not in found]
            wanted = None if columns is None else [*columns, *(c for c in extra if c in found)]
            table = pq.read_table(f, columns=wanted)
        for name in missing:
            table = table.append_column(name, pa.nulls(table.num_rows, extra[name]))
        if with_shard:
            indices = pa.array(np.zeros(table.num_rows, np.int32))
            shard = pa.DictionaryArray.from_arrays(indices, pa.array([uri], pa.string()))
            table = table.append_column("_shard", shard)
        return table

    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        tables = list(pool.map(read_one, uris))
    return pa.concat_tables(tables, promote_options="default")

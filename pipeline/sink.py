"""Stage 3: a Ray Data sink that splits normalised rows into the `images/` and `rejected/`
Parquet shards of a staging prefix.

Shard names derive from the rows they hold, so a retried task overwrites its own
shard instead of adding a second copy: every input stays in the output exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block
from ray.data.datasource.datasink import WriteResult

from common.storage import StorageConfig, filesystem, join
from pipeline.normalize import KEPT, REJECTED

IMAGE_COLUMNS = [
    "image",
    "label",
    "class_name",
    "source_uri",
    "source_etag",
    "sha256",
    "width",
    "height",
    "source_format",
    "source_bytes",
    "source_width",
    "source_height",
    "frames",
    "image_bytes",
    "channel_mean",
    "channel_sqmean",
]
REJECTED_COLUMNS = [
    "source_uri",
    "class_name",
    "reason",
    "detail",
    "source_etag",
    "source_bytes",
    "source_format",
]
IMAGES_DIR, REJECTED_DIR = "images", "rejected"


@dataclass
class ShardWrite:
    table: str  # "images" or "rejected"
    uri: str
    rows: int
    bytes: int


@dataclass
class StagedFiles:
    shards: list[ShardWrite] = field(default_factory=list)

    def uris(self, table: str) -> list[str]:
        return sorted(s.uri for s in self.shards if s.table == table)


def shard_name(source_uris: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(source_uris)).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


class CleanOutputSink(Datasink[list[ShardWrite]]):
    def __init__(self, staging_uri: str, storage: StorageConfig) -> None:
        self.staging_uri = staging_uri
        self.storage = storage
        self.result = StagedFiles()

    def _write(self, table: pa.Table, kind: str, name: str) -> ShardWrite:
        fs, _ = filesystem(self.staging_uri, self.storage)
        uri = join(self.staging_uri, kind, name)
        fs.makedirs(fs._strip_protocol(join(self.staging_uri, kind)), exist_ok=True)
        with fs.open(fs._strip_protocol(uri), "wb") as f:
            pq.write_table(table, f, compression="zstd" if kind == REJECTED_DIR else "none")
        return ShardWrite(kind, uri, table.num_rows, fs.size(fs._strip_protocol(uri)))

    def write(self, blocks: Iterable[Block], ctx) -> list[ShardWrite]:  # noqa: ANN001
        tables = [b for b in blocks if b.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables)
        name = shard_name(table.column("source_uri").to_pylist())
        status = table.column("status")
        written = []
        kept = table.filter(pc.equal(status, KEPT)).select(IMAGE_COLUMNS)
        if kept.num_rows:
            written.append(self._write(kept, IMAGES_DIR, name))
        rejected = table.filter(pc.equal(status, REJECTED)).select(REJECTED_COLUMNS)
        if rejected.num_rows:
            written.append(self._write(rejected, REJECTED_DIR, name))
        return written

    def on_write_complete(self, write_result: WriteResult[list[ShardWrite]]) -> None:
        for shards in write_result.write_returns:
            self.result.shards.extend(shards)

"""A Ray Data sink that routes each block's rows into Parquet shards under a prefix.

A route function splits a block into {relative folder: table}, e.g. kept rows to
`images/split=train/` and the rest to `rejected/`. Shard names derive from the rows
they hold and the run's staging prefix: a retried task overwrites its own shard
instead of adding a second copy (every input stays in the output exactly once), and
two runs never name a shard alike, so one run's files never replace another's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block
from ray.data.datasource.datasink import WriteResult

from common.storage import StorageConfig, ensure_parent, filesystem, join

Route = Callable[[pa.Table], dict[str, pa.Table]]
# Already-compressed JPEG columns gain nothing from Parquet compression.
_UNCOMPRESSED_COLUMNS = ("image", "thumbnail")


@dataclass
class ShardWrite:
    folder: str  # relative to the sink's prefix, e.g. "images/split=train"
    uri: str
    rows: int
    bytes: int


@dataclass
class Shards:
    writes: list[ShardWrite] = field(default_factory=list)

    def uris(self, folder_prefix: str) -> list[str]:
        """URIs of shards in `folder_prefix` or below, e.g. "images" covers every split."""
        return sorted(
            w.uri
            for w in self.writes
            if w.folder == folder_prefix or w.folder.startswith(folder_prefix + "/")
        )


class StageFailed(Exception):
    """A stage gave up (a task failed on every try): one-line error, exit 2."""


def shard_name(source_uris: list[str], prefix: str = "part", run: str = "") -> str:
    """`prefix-<digest>.parquet`; the digest covers the rows' sources and `run` (the
    run's staging URI), so it is stable across retries and unique across runs."""
    digest = hashlib.sha256("\n".join([run, *sorted(source_uris)]).encode()).hexdigest()[:20]
    return f"{prefix}-{digest}.parquet"


def write_parquet(table: pa.Table, uri: str, storage: StorageConfig) -> int:
    """Write one shard; returns its size in bytes."""
    fs, path = filesystem(uri, storage)
    ensure_parent(fs, path)
    compression = {
        name: ("none" if name in _UNCOMPRESSED_COLUMNS else "zstd") for name in table.column_names
    }
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, compression=compression)
    return fs.size(path)


class ShardSink(Datasink[list[ShardWrite]]):
    def __init__(
        self, prefix: str, route: Route, storage: StorageConfig, name_prefix: str = "part"
    ) -> None:
        self.prefix = prefix
        self.route = route
        self.storage = storage
        self.name_prefix = name_prefix  # stages writing the same folder never collide
        self.result = Shards()

    def write(self, blocks: Iterable[Block], ctx) -> list[ShardWrite]:  # noqa: ANN001
        tables = [b for b in blocks if b.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables)
        name = shard_name(table.column("source_uri").to_pylist(), self.name_prefix, self.prefix)
        written = []
        for folder, part in self.route(table).items():
            if part.num_rows:
                uri = join(self.prefix, folder, name)
                written.append(
                    ShardWrite(folder, uri, part.num_rows, write_parquet(part, uri, self.storage))
                )
        return written

    def on_write_complete(self, write_result: WriteResult[list[ShardWrite]]) -> None:
        for shards in write_result.write_returns:
            self.result.writes.extend(shards)

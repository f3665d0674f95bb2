"""The candidates' vectors (embeddings, colour and grey layouts), read by the tasks that
use them instead of by the driver.

Why: an embedding is 2.5 KB, so at 20,000 candidates each copy of them is 51 MB, and the
driver made several (the candidates read back, the off-class references and queries,
de-duplication's rows) and wrote their blocks to the object store, whose pages then
stayed in its memory (868 MiB at 20,000 crops). Now the driver reads the candidates'
small columns only and plans with row ids; a task reads the vector columns of the rows
it is given, where they lie, and leaves what it builds from them (the off-class
references, de-duplication's matrices) in the object store for the tasks after it.

Row ids: rows of the kept index (`existing`) first, then the candidates, each in the
order `read_shards` returns them (the shards' order, each shard's row order), so a
task reading the same shards finds the same rows, to the bit. Callers that hold tables
(tests, benchmarks) pass them instead (`TableVectors`), with the same row ids.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.storage import StorageConfig, filesystem

VECTOR_COLUMNS = ("embedding", "colour_layout", "grey_layout")
READ_THREADS = 16  # shards fetched at once (as `read_shards` does)


@dataclass(frozen=True)
class ShardVectors:
    """Vector columns in Parquet shards: `uris` read in order and concatenated."""

    uris: tuple[str, ...]
    storage: StorageConfig

    def read(self, columns: list[str], ids: np.ndarray) -> pa.Table:
        """The rows `ids`' `columns`, in that order. Shard by shard, each keeping only
        its rows among `ids`, so the task holds the rows asked for and a few shards,
        not every row (the index shard's task asks for the kept rows only)."""
        if not len(ids):
            return _empty(columns)
        fs, _ = filesystem(self.uris[0], self.storage)

        def rows_in(uri: str) -> int:
            with fs.open(fs._strip_protocol(uri), "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows

        def read_one(uri: str, first: int, wanted: np.ndarray) -> pa.Table:
            with fs.open(fs._strip_protocol(uri), "rb") as f:
                table = pq.read_table(f, columns=columns)
            return table.take(pa.array(wanted - first, pa.int64()))

        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            starts = np.cumsum([0, *pool.map(rows_in, self.uris)])
            ordered = np.sort(ids)
            bounds = np.searchsorted(ordered, starts)
            parts = [
                pool.submit(read_one, uri, starts[k], ordered[bounds[k] : bounds[k + 1]])
                for k, uri in enumerate(self.uris)
                if bounds[k + 1] > bounds[k]
            ]
            tables = [part.result() for part in parts]
        found = pa.concat_tables(tables, promote_options="default")
        # `found` holds the rows in ascending id order: put them in the order asked for.
        return found.take(pa.array(np.searchsorted(ordered, ids), pa.int64()))


def _empty(columns: list[str]) -> pa.Table:
    return pa.table({name: pa.nulls(0) for name in columns})


@dataclass(frozen=True)
class TableVectors:
    """Vector columns of tables held in memory, concatenated in order (a column a table
    lacks is null on its rows)."""

    tables: tuple[pa.Table, ...]

    def read(self, columns: list[str], ids: np.ndarray) -> pa.Table:
        parts = [_with_columns(t, columns) for t in self.tables]
        found = pa.concat_tables(parts, promote_options="default") if parts else _empty(columns)
        return found.take(pa.array(ids, pa.int64()))


def _with_columns(table: pa.Table, columns: list[str]) -> pa.Table:
    """`table`'s `columns`, null ones added for those it lacks."""
    present = [c for c in columns if c in table.column_names]
    out = table.select(present)
    for name in columns:
        if name not in present:
            out = out.append_column(name, pa.nulls(table.num_rows))  # type null: promotes
    return out.select(columns)


@dataclass(frozen=True)
class VectorRows:
    """Rows of a vector source in a caller's order: `ids` are row ids (module doc)."""

    source: ShardVectors | TableVectors
    ids: np.ndarray  # int64

    def take(self, index: np.ndarray) -> VectorRows:
        """These rows' `index`-th rows (a selection, reordering, or both)."""
        return VectorRows(self.source, self.ids[index])

    def read(self, columns: list[str]) -> pa.Table:
        """The rows' `columns`, in the rows' order (in a task: it reads the source).
        Through Arrow's system pool, as the driver's (`pipeline.cli`): freed buffers go
        back to the system. Mimalloc, Arrow's default, kept what the reads took in the
        worker, whose later tasks then peaked at 1,072 MiB instead of 729 (20,000 rows)."""
        pa.set_memory_pool(pa.system_memory_pool())
        return self.source.read(columns, self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def of_tables(*tables: pa.Table) -> VectorRows:
    """The vectors of tables held in memory: every row of each, in order."""
    rows = sum(t.num_rows for t in tables)
    return VectorRows(TableVectors(tuple(tables)), np.arange(rows, dtype=np.int64))


def of_shards(uris: list[str], storage: StorageConfig, rows: int) -> VectorRows:
    """The vectors of the `rows` rows of the shards `uris`, as `read_shards` reads them."""
    return VectorRows(ShardVectors(tuple(uris), storage), np.arange(rows, dtype=np.int64))

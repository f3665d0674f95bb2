"""The caller's tables as the arrays the decisions need (`prepare_rows`).

What the caller passes (`REQUIRED_COLUMNS`, typed as `pipeline.tables` declares them),
one row per normalised image:
    source_uri (str, unique), class_name (str), sha256 (str: hex of the normalised
    pixels), phash (str: 16 hex chars, `compute_hashes(image, cfg.hash_kind)` of the
    normalised image, whatever the kind; null if it could not be computed), width and
    height (int: the SOURCE's size, which the keep policy's "resolution" ranks: the
    normalised images of large sources all share the same 512 px side), source_format
    (str, as `common.decode` names it),
    seen_order (int: lower = seen earlier; may be null), low_detail (bool:
    `pipeline.junk.is_low_detail` of the image's scores; null counts as False).

Optional (`OPTIONAL_COLUMNS`): hash_stability (float; null or absent counts as stable);
with verification (cfg.verified) also embedding (list of floats, L2-normalised:
`pipeline.embed`) and colour_layout (list of floats): a row without them is matched
exactly only; and grey_layout (list of uint8): a pair where either lacks it skips the
grey checks (hash indexes written before it existed stay usable).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup.codes import all_distinct, first_seen_codes, hashes_to_uint64
from pipeline.dedup.config import HASH_BITS, KEEP_KEYS, DedupConfig
from pipeline.tables import schema_of
from pipeline.vectors import VECTOR_COLUMNS, VectorRows, of_tables

REQUIRED_COLUMNS = (
    "source_uri",
    "class_name",
    "sha256",
    "phash",
    "width",
    "height",
    "source_format",
    "seen_order",
    "low_detail",
)
OPTIONAL_COLUMNS = ("hash_stability", "embedding", "colour_layout", "grey_layout")
# The job passes the source's size as width/height (`pipeline.decide.dedup_input`): both
# are declared int32 in `pipeline.tables`, as the normalise stage writes them.
INPUT_SCHEMA = schema_of([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
# What the driver's arrays come from: the vectors are read apart (`row_vectors`).
METADATA_SCHEMA = schema_of([*REQUIRED_COLUMNS, "hash_stability"])


def degenerate_hashes(
    hashes: np.ndarray,
    min_bits: int,
    image_ids: np.ndarray | None = None,
    max_collisions: int = 0,
) -> np.ndarray:
    """True where a hash says too little about its image to call anything "near" it.

    Two signs: an extreme popcount (a blank image's pHash has 0 or 1 bit set, where a
    real photo's has 32), and a value shared by more than `max_collisions` distinct
    images (`image_ids`, e.g. sha256 codes), as featureless images all hash alike.
    """
    bits = np.bitwise_count(hashes)
    mask = (bits < min_bits) | (bits > HASH_BITS - min_bits)
    if max_collisions and image_ids is not None and hashes.size:
        order = np.lexsort((image_ids, hashes))  # by hash, then image
        value, image = hashes[order], image_ids[order]
        del order
        pair = np.r_[True, (value[1:] != value[:-1]) | (image[1:] != image[:-1])]
        values, images = np.unique(value[pair], return_counts=True)  # distinct images a hash
        crowded = values[images > max_collisions]
        if crowded.size:
            mask |= np.isin(hashes, crowded)
    return mask


@dataclass
class Rows:
    """Existing rows first, then new ones, as the arrays the decisions need."""

    n_existing: int
    uri: pa.ChunkedArray | np.ndarray  # the source URIs (a part's: row ids)
    classes: list[str]
    class_code: np.ndarray
    sha_code: np.ndarray  # equal pixels, equal code
    hashes: np.ndarray  # uint64
    low_detail: np.ndarray
    degenerate: np.ndarray
    strict: np.ndarray  # low hash stability: matched within strict_hash_distance only
    searchable: np.ndarray  # takes part in the near-duplicate search
    rank: np.ndarray  # position in keep-policy order, 0 = best
    cluster_id: pa.ChunkedArray | np.ndarray  # the id a cluster kept by it gets (part: ids)
    # Verification's vectors (None without it): `vectors` holds them all (a RowVectors,
    # in the driver's `Rows` a ray.ObjectRef of one) and the arrays below are None but
    # `has_grey`, until `with_vectors` sets them (a part's rows, in its task).
    embedding: np.ndarray | None  # (rows, dim) float16, L2-normalised
    colour: np.ndarray | None  # (rows, cells) float32, L2-normalised
    grey: np.ndarray | None  # (rows, cells) uint8, zeros where has_grey is False
    has_grey: np.ndarray | None
    vectors: Any = None  # RowVectors, or a ray.ObjectRef of one (`prepare_rows`)

    @property
    def count(self) -> int:
        return len(self.uri)

    def with_vectors(self, vectors: RowVectors, ids: np.ndarray | None = None) -> Rows:
        """These rows with their vectors in memory (`ids`: their rows in `vectors`)."""
        pick = slice(None) if ids is None else ids
        return dataclasses.replace(
            self,
            embedding=vectors.embedding[pick],
            colour=vectors.colour[pick],
            grey=vectors.grey[pick],
            has_grey=vectors.has_grey[pick],
            vectors=None,
        )


@dataclass
class RowVectors:
    """Verification's vectors of every row, in `Rows`' order (`row_vectors`)."""

    embedding: np.ndarray  # (rows, dim) float16, L2-normalised
    colour: np.ndarray  # (rows, cells) float32, L2-normalised
    grey: np.ndarray  # (rows, cells) uint8, zeros where has_grey is False
    has_grey: np.ndarray
    usable: np.ndarray  # the row has an embedding and a colour layout


def row_vectors(table: pa.Table) -> RowVectors:
    """The `VECTOR_COLUMNS` of `table` as `RowVectors` (in a task when they are read
    from the candidate shards, `stored_vectors`), each copied once on its way."""
    grey, has_grey = vectors(_typed(table, "grey_layout"), np.uint8)
    embedding, has_embedding = vectors(_typed(table, "embedding"), np.float16)
    colour, has_colour = vectors(_typed(table, "colour_layout"), np.float32)
    colour /= np.maximum(np.linalg.norm(colour, axis=1, keepdims=True), 1e-12)
    return RowVectors(embedding, colour, grey, has_grey, has_embedding & has_colour)


def _typed(table: pa.Table, name: str) -> pa.ChunkedArray:
    return table[name].cast(INPUT_SCHEMA.field(name).type)


def _read_row_vectors(rows: VectorRows) -> tuple[RowVectors, tuple[np.ndarray, np.ndarray]]:
    """Ray task: the rows' `RowVectors` (left in the object store) and what the driver
    needs of them: which rows are usable, which have a grey layout."""
    found = row_vectors(rows.read(list(VECTOR_COLUMNS)))
    return found, (found.usable, found.has_grey)


def stored_vectors(rows: VectorRows) -> tuple[Any, np.ndarray, np.ndarray]:
    """`rows`' `RowVectors` built by a task and left in the object store: (its
    reference, the usable rows, the rows with a grey layout)."""
    import ray

    stored, masks = _remote_read().remote(rows)
    usable, has_grey = ray.get(masks)
    return stored, usable, has_grey


@cache
def _remote_read() -> Any:
    import ray

    return ray.remote(num_returns=2)(_read_row_vectors)


def _checked(table: pa.Table, what: str) -> pa.Table:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{what} table lacks column(s): {', '.join(missing)}")
    if "hash_stability" not in table.column_names:
        table = table.append_column("hash_stability", pa.nulls(table.num_rows, pa.float32()))
    out = table.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)
    if out["sha256"].null_count or out["source_uri"].null_count:
        raise ValueError(f"{what} table has rows without source_uri or sha256")
    return out


def policy_rank(table: pa.Table, keep_policy: list[str], lossless: list[str]) -> np.ndarray:
    """Each row's position when sorted best-first by the keep policy (source_uri last)."""
    unknown = set(keep_policy) - set(KEEP_KEYS)
    if unknown:
        raise ValueError(f"unknown keep_policy key(s) {sorted(unknown)}; use {KEEP_KEYS}")
    formats = pc.utf8_upper(pc.fill_null(table["source_format"], ""))
    keys = pa.table(
        {
            # int64: the sizes are int32, their product may not be
            "resolution": pc.negate(pc.multiply(_int64(table["width"]), _int64(table["height"]))),
            "lossless": pc.invert(pc.is_in(formats, pa.array([f.upper() for f in lossless]))),
            "earliest": table["seen_order"],
            "source_uri": table["source_uri"],
        }
    )
    sort_keys = [(k, "ascending", "at_end") for k in [*keep_policy, "source_uri"]]
    order = np.asarray(pc.sort_indices(keys, sort_keys=sort_keys))
    rank = np.empty(table.num_rows, dtype=np.int64)
    rank[order] = np.arange(table.num_rows)
    return rank


def _int64(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.cast(pa.int64())


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Each row's code (equal values, equal codes) and the values by code."""
    encoded = pc.dictionary_encode(pc.fill_null(column, "")).combine_chunks()
    return np.asarray(encoded.indices, dtype=np.int64), encoded.dictionary


def prepare_rows(
    existing: pa.Table | None,
    new: pa.Table,
    cfg: DedupConfig,
    vectors: VectorRows | None = None,
    more: Callable[[], pa.Table] | None = None,
) -> Rows:
    """The rows as arrays. With verification, their `RowVectors` (`Rows.vectors`): read
    by a task from `vectors` (the rows of `existing`, then of `new`: `pipeline.vectors`)
    and left in the object store; without `vectors`, from the tables' own columns.
    `more`: reads `new`'s further columns; they are held only while they become arrays."""
    if more is not None:
        new = _beside(new, more())
    missing = {"embedding", "colour_layout"} - set(new.column_names)
    if cfg.verified and vectors is None and missing:
        raise ValueError(
            f"verification is on (embedding_weights {cfg.embedding_weights!r}) but the new "
            f"rows lack {', '.join(sorted(missing))}; embedding_weights 'none' turns it off"
        )
    tables = [new] if existing is None else [existing, new]
    table = pa.concat_tables(
        [_checked(t, w) for t, w in zip(tables, ("existing", "new")[-len(tables) :], strict=True)]
    )
    # Arrow columns, not numpy arrays of Python strings (the driver's memory at 1M rows).
    uri = table["source_uri"]
    if not all_distinct(uri):
        raise ValueError("source_uri must be unique across the existing and new rows")
    n_existing = 0 if existing is None else existing.num_rows
    sha_code = first_seen_codes(table["sha256"])
    class_code, class_names = _codes(table["class_name"])
    hashes, has_hash = hashes_to_uint64(table["phash"])
    low_detail = np.asarray(pc.fill_null(table["low_detail"], False), dtype=bool)
    degenerate = has_hash & degenerate_hashes(
        hashes, cfg.min_hash_bits, sha_code, cfg.max_hash_collisions
    )
    searchable = has_hash & ~low_detail & ~degenerate
    found: RowVectors | Any = None
    has_grey = None
    if cfg.verified and vectors is None:
        found = row_vectors(of_tables(*tables).read(list(VECTOR_COLUMNS)))
        searchable &= found.usable
        has_grey = found.has_grey
    elif cfg.verified:
        found, usable, has_grey = stored_vectors(vectors)
        searchable &= usable
    # A unit (the new rows of one sha256) is searched only if all its rows can be.
    new_codes = sha_code[n_existing:]
    blocked = np.bincount(new_codes, weights=~searchable[n_existing:], minlength=1) > 0
    searchable[n_existing:] &= ~blocked[new_codes]
    cluster_id = table["sha256"]
    if existing is not None and "cluster_id" in existing.column_names:
        given = pc.coalesce(existing["cluster_id"].cast(pa.string()), existing["sha256"])
        cluster_id = pa.chunked_array(given.chunks + cluster_id.slice(n_existing).chunks)
    return Rows(
        n_existing=n_existing,
        uri=uri,
        classes=class_names.to_pylist(),
        class_code=class_code,
        sha_code=sha_code,
        hashes=hashes,
        low_detail=low_detail,
        degenerate=degenerate,
        strict=np.asarray(
            pc.fill_null(pc.less(table["hash_stability"], cfg.min_hash_stability), False),
            dtype=bool,
        ),
        searchable=searchable,
        rank=policy_rank(table, cfg.keep_policy, cfg.lossless_formats),
        cluster_id=cluster_id,
        embedding=None,
        colour=None,
        grey=None,
        has_grey=has_grey,
        vectors=found,
    )


def _beside(table: pa.Table, more: pa.Table) -> pa.Table:
    """`table` with the columns of `more` (the same rows) it lacks."""
    if more.num_rows != table.num_rows:
        raise ValueError(f"read {more.num_rows} rows of further columns for {table.num_rows}")
    for name in more.column_names:
        if name not in table.column_names:
            table = table.append_column(name, more[name])
    return table


def vectors(column: pa.ChunkedArray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A list column as a (rows, dim) matrix (zeros where null), and the non-null mask.
    The values are copied once on their way (at 20,000 embeddings each copy is 51 MB of
    the memory of the task that reads them, `stored_vectors`)."""
    if not column.num_chunks:
        column = pa.chunked_array([], column.type)
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(column), 0))
    dim = int(lengths.max(initial=0))
    if (lengths[valid] != dim).any():
        raise ValueError(f"rows hold vectors of different lengths: {sorted(set(lengths))}")
    out = np.zeros((len(column), dim), dtype=dtype)
    if dim:  # else every row is null or empty: nothing to copy
        flat = pc.list_flatten(column).to_numpy()  # a null row holds no values
        out[valid] = flat.reshape(-1, dim).astype(dtype, copy=False)
    return out, valid & (lengths > 0)

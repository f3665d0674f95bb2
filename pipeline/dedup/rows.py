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

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup.config import HASH_BITS, KEEP_KEYS, DedupConfig
from pipeline.tables import schema_of

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
# The job passes the source's size as width/height (`pipeline.job.dedup_input`): both
# are declared int32 in `pipeline.tables`, as the normalise stage writes them.
INPUT_SCHEMA = schema_of([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])


def hashes_to_uint64(hex_hashes: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """16-hex-char strings to uint64 (as `int(h, 16)`), plus a mask of the non-null ones."""
    valid = np.asarray(pc.is_valid(hex_hashes), dtype=bool)
    filled = pc.fill_null(hex_hashes, "0" * 16)
    lengths = np.asarray(pc.utf8_length(filled))
    if lengths.size and (lengths != 16).any():
        bad = filled[int(np.flatnonzero(lengths != 16)[0])].as_py()
        raise ValueError(f"a hash must be 16 hex characters (64 bits), got {bad!r}")
    raw = bytes.fromhex("".join(filled.to_pylist()))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64), valid


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
        pairs = np.unique(np.stack([hashes.view(np.int64), image_ids.astype(np.int64)]), axis=1)
        values, images = np.unique(pairs[0], return_counts=True)
        crowded = values[images > max_collisions]
        if crowded.size:
            mask |= np.isin(hashes.view(np.int64), crowded)
    return mask


@dataclass
class Rows:
    """Existing rows first, then new ones, as the arrays the decisions need."""

    n_existing: int
    uri: np.ndarray  # object (str)
    classes: list[str]
    class_code: np.ndarray
    sha_code: np.ndarray  # equal pixels, equal code
    hashes: np.ndarray  # uint64
    low_detail: np.ndarray
    degenerate: np.ndarray
    strict: np.ndarray  # low hash stability: matched within strict_hash_distance only
    searchable: np.ndarray  # takes part in the near-duplicate search
    rank: np.ndarray  # position in keep-policy order, 0 = best
    cluster_id: np.ndarray  # object: the id a cluster kept by this row gets
    embedding: np.ndarray | None  # (rows, dim) float16, L2-normalised; None: no verification
    colour: np.ndarray | None  # (rows, cells) float32, L2-normalised
    grey: np.ndarray | None  # (rows, cells) uint8, zeros where has_grey is False
    has_grey: np.ndarray | None

    @property
    def count(self) -> int:
        return self.uri.size


def _checked(table: pa.Table, what: str) -> pa.Table:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{what} table lacks column(s): {', '.join(missing)}")
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(
                name, pa.nulls(table.num_rows, INPUT_SCHEMA.field(name).type)
            )
    out = table.select(INPUT_SCHEMA.names).cast(INPUT_SCHEMA)
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


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    encoded = pc.dictionary_encode(pc.fill_null(column, "")).combine_chunks()
    return np.asarray(encoded.indices, dtype=np.int64), encoded.dictionary.to_pylist()


def prepare_rows(existing: pa.Table | None, new: pa.Table, cfg: DedupConfig) -> Rows:
    missing = {"embedding", "colour_layout"} - set(new.column_names)
    if cfg.verified and missing:
        raise ValueError(
            f"verification is on (embedding_weights {cfg.embedding_weights!r}) but the new "
            f"rows lack {', '.join(sorted(missing))}; embedding_weights 'none' turns it off"
        )
    tables = [_checked(new, "new")]
    if existing is not None:
        tables.insert(0, _checked(existing, "existing"))
    table = pa.concat_tables(tables)
    uri = table["source_uri"].to_numpy()
    if pc.count_distinct(table["source_uri"]).as_py() != uri.size:
        raise ValueError("source_uri must be unique across the existing and new rows")
    n_existing = 0 if existing is None else existing.num_rows
    sha_code, _ = _codes(table["sha256"])
    class_code, classes = _codes(table["class_name"])
    hashes, has_hash = hashes_to_uint64(table["phash"])
    low_detail = np.asarray(pc.fill_null(table["low_detail"], False), dtype=bool)
    degenerate = has_hash & degenerate_hashes(
        hashes, cfg.min_hash_bits, sha_code, cfg.max_hash_collisions
    )
    searchable = has_hash & ~low_detail & ~degenerate
    embedding = colour = grey = has_grey = None
    if cfg.verified:
        grey, has_grey = vectors(table["grey_layout"], np.uint8)
        embedding, has_embedding = vectors(table["embedding"], np.float16)
        colour, has_colour = vectors(table["colour_layout"], np.float32)
        colour /= np.maximum(np.linalg.norm(colour, axis=1, keepdims=True), 1e-12)
        searchable &= has_embedding & has_colour
    # A unit (the new rows of one sha256) is searched only if all its rows can be.
    new_codes = sha_code[n_existing:]
    blocked = np.bincount(new_codes, weights=~searchable[n_existing:], minlength=1) > 0
    searchable[n_existing:] &= ~blocked[new_codes]
    cluster_id = table["sha256"].to_numpy()
    if existing is not None and "cluster_id" in existing.column_names:
        given = pc.coalesce(existing["cluster_id"].cast(pa.string()), existing["sha256"])
        cluster_id[:n_existing] = given.to_numpy()
    return Rows(
        n_existing=n_existing,
        uri=uri,
        classes=classes,
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
        embedding=embedding,
        colour=colour,
        grey=grey,
        has_grey=has_grey,
    )


def vectors(column: pa.ChunkedArray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A list column as a (rows, dim) matrix (zeros where null), and the non-null mask.
    The values are copied once on their way (at 20,000 embeddings each copy is 51 MB of
    the driver's memory)."""
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

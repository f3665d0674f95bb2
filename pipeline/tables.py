"""The columns of every table the cleaning job writes, and how rows are routed to them.

Stages pass one wide row schema between them (`work_schema`); the routes pick the
columns of each published table, so a column is declared once, here.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

KEPT, REJECTED = "kept", "rejected"
IMAGES, REJECTED_DIR, CANDIDATES, INDEX = "images", "rejected", "candidates", "index"

_SOURCE = [
    ("source_uri", pa.string()),
    ("class_name", pa.string()),
    ("label", pa.int32()),
    ("source_etag", pa.string()),
    ("source_bytes", pa.int64()),
    ("source_format", pa.string()),
    ("source_width", pa.int32()),
    ("source_height", pa.int32()),
    ("frames", pa.int32()),
    ("group", pa.string()),
    ("seen_order", pa.int64()),
]
_OUTCOME = [
    ("status", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("score", pa.float64()),
    ("duplicate_of", pa.string()),
    ("distance", pa.int32()),
    ("cluster_id", pa.string()),
    ("split", pa.string()),
]
_PIXELS = [
    ("image", pa.binary()),
    ("thumbnail", pa.binary()),
    ("sha256", pa.string()),
    ("phash", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("image_bytes", pa.int64()),
    ("channel_mean", pa.list_(pa.float32(), 3)),
    ("channel_sqmean", pa.list_(pa.float32(), 3)),
    ("low_detail", pa.bool_()),
    ("hash_stability", pa.float32()),
    # The near-duplicate verification's signals (`pipeline.embed`); null when it is off.
    ("embedding", pa.list_(pa.float16())),
    ("colour_layout", pa.list_(pa.float32())),
    ("grey_layout", pa.list_(pa.uint8())),
]


def work_schema(score_columns: list[str]) -> pa.Schema:
    """Every column any stage may set; junk check scores are `junk_<check>` floats."""
    return pa.schema(_SOURCE + _OUTCOME + _PIXELS + [(c, pa.float32()) for c in score_columns])


def image_columns(score_columns: list[str]) -> list[str]:
    return [
        "image", "label", "class_name", "source_uri", "source_etag", "sha256", "phash",
        "width", "height", "source_format", "source_bytes", "source_width", "source_height",
        "frames", "image_bytes", "channel_mean", "channel_sqmean", "low_detail",
        "hash_stability", "cluster_id",
        "group", "split", "seen_order", "thumbnail", *score_columns,
    ]  # fmt: skip


REJECTED_COLUMNS = [
    "source_uri", "class_name", "reason", "detail", "score", "duplicate_of", "distance",
    "cluster_id", "source_etag", "source_bytes", "source_format", "sha256", "phash",
    "width", "height", "thumbnail",
]  # fmt: skip

# The hash index kept with the output: what de-duplicating new files against the
# kept ones needs, without a byte of pixels.
INDEX_COLUMNS = [
    "source_uri", "class_name", "label", "sha256", "phash", "width", "height",
    "source_width", "source_height", "source_format", "seen_order", "low_detail",
    "hash_stability", "embedding", "colour_layout", "grey_layout", "cluster_id", "group",
    "split", "source_etag",
]  # fmt: skip


def _by_status(table: pa.Table, status: str) -> pa.Table:
    return table.filter(pc.equal(table["status"], status))


def route_normalized(table: pa.Table) -> dict[str, pa.Table]:
    """Stage 1 output: candidates go on to de-duplication, rejections are final."""
    return {
        CANDIDATES: _by_status(table, KEPT),
        REJECTED_DIR: _by_status(table, REJECTED).select(REJECTED_COLUMNS),
    }


def route_final(table: pa.Table) -> dict[str, pa.Table]:
    """Final output: kept rows partitioned by split; duplicates and conflicts rejected."""
    kept = _by_status(table, KEPT)
    scores = [c for c in table.column_names if c.startswith("junk_")]
    columns = image_columns(scores)
    routes = {
        f"{IMAGES}/split={split}": kept.filter(pc.equal(kept["split"], split)).select(columns)
        for split in sorted(set(kept["split"].to_pylist()))
    }
    routes[REJECTED_DIR] = _by_status(table, REJECTED).select(REJECTED_COLUMNS)
    return routes

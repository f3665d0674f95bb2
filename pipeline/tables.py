"""The columns of every table the cleaning job writes, and how rows are routed to them.

Stages pass one wide row schema between them (`work_schema`); the routes pick the
columns of each published table, so a column is declared once, here.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# The published tables' names are the data set's (`common.dataset`), re-exported here.
from common.dataset import IMAGES, INDEX, split_folder  # noqa: F401
from common.dataset import REJECTED as REJECTED_DIR  # noqa: F401

KEPT, REJECTED = "kept", "rejected"  # a row's status
CANDIDATES = "candidates"  # the normalise stage's output (staging only, never published)

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
    # A person's decision from --overrides (`pipeline.overrides`): keep, drop or null.
    ("override", pa.string()),
    ("override_note", pa.string()),
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
# The off-class stage's verdict on a kept image (`pipeline.offclass`); null until it ran.
_OFF_CLASS = [
    ("off_class_score", pa.float32()),
    ("off_class_like", pa.string()),
    ("off_class_like_probability", pa.float32()),
    ("off_class_neighbour_share", pa.float32()),
]
OFF_CLASS_COLUMNS = [name for name, _ in _OFF_CLASS]
# The de-duplication stage's verdict on a candidate (`pipeline.dedup`); its other
# decision columns are the outcome's above.
_DEDUP_DECISION = [("keep", pa.bool_())]


def work_schema(score_columns: list[str]) -> pa.Schema:
    """Every column any stage may set; junk check scores are `junk_<check>` floats."""
    scores = [(c, pa.float32()) for c in score_columns]
    return pa.schema(_SOURCE + _OUTCOME + _PIXELS + _OFF_CLASS + scores)


def schema_of(names: list[str], score_columns: list[str] | None = None) -> pa.Schema:
    """The declared types of `names`, in that order: every table that carries some of
    these columns (de-duplication's input and decisions, the published tables) is typed
    here, so the types cannot drift apart."""
    declared = dict(_DEDUP_DECISION)
    declared.update((f.name, f.type) for f in work_schema(score_columns or []))
    return pa.schema([(name, declared[name]) for name in names])


def image_columns(score_columns: list[str]) -> list[str]:
    return [
        "image", "label", "class_name", "source_uri", "source_etag", "sha256", "phash",
        "width", "height", "source_format", "source_bytes", "source_width", "source_height",
        "frames", "image_bytes", "channel_mean", "channel_sqmean", "low_detail",
        "hash_stability", "cluster_id",
        "group", "split", "seen_order", "thumbnail", "override", "override_note",
        *OFF_CLASS_COLUMNS, *score_columns,
    ]  # fmt: skip


REJECTED_COLUMNS = [
    "source_uri", "class_name", "reason", "detail", "score", "duplicate_of", "distance",
    "cluster_id", "source_etag", "source_bytes", "source_format", "sha256", "phash",
    "width", "height", "thumbnail", "override", "override_note",
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
        split_folder(split): kept.filter(pc.equal(kept["split"], split)).select(columns)
        for split in sorted(set(kept["split"].to_pylist()))
    }
    routes[REJECTED_DIR] = _by_status(table, REJECTED).select(REJECTED_COLUMNS)
    return routes

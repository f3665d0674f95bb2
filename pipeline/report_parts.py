"""The version's report figures (`pipeline.report.Figures`) computed where the data is.

A Ray task per shard of kept images and of rejected files, and per few row groups of
the run's listing (snapshot.parquet), reads only the columns the report needs and
returns counts, sums and the few rows the report or the review page can use; the driver
merges them in order, so it never holds a row per file (at 10M files reading them all
back cost the driver 2.6 GB). Counting duplicate clusters needs every cluster id
grouped: the same tasks return their ids' fingerprints, and a second pass counts the
files of the ids that may be shared only (`pipeline.report_clusters`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from common.storage import StorageConfig, filesystem
from pipeline import report_clusters as clusters
from pipeline.config import CleanConfig
from pipeline.offclass import SCORE
from pipeline.output import read_shards
from pipeline.remote import RowTask
from pipeline.report import (
    IMAGE_STATS,
    NO_CLASS,
    OPTIONAL_STATS,
    REJECTED_STATS,
    Figures,
    counts,
    current_uris,
    empty_of,
    extensions,
    moments,
    shard_groups,
    total,
)
from pipeline.review import most_off_class, worst_first
from pipeline.sink import Shards
from pipeline.tables import IMAGES, REJECTED_DIR

# What the report reads of the run's listing.
LISTING_COLUMNS = ["source_uri", "class_name", "size"]
LISTING_ROWS_PER_TASK = 1 << 20  # the snapshot's row groups are 1Mi rows (pyarrow's default)
MERGE_BATCH = 64  # shards' figures fetched and merged at a time
_MOMENT_COLUMNS = ["width", "height", "channel_mean", "channel_sqmean"]


def _mask(condition: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean column as a writable numpy mask (null: False)."""
    return np.array(pc.fill_null(condition, False).to_numpy(zero_copy_only=False), dtype=bool)


def _by_class(table: pa.Table, *more: str) -> pa.Table:
    """`class_name` with null as `NO_CLASS` (named `c`), and `more` columns as they are."""
    return pa.table(
        {"c": pc.fill_null(table["class_name"], NO_CLASS), **{m: table[m] for m in more}}
    )


def _formats(table: pa.Table) -> dict[str, int]:
    return counts(pa.table({"f": pc.fill_null(table["source_format"], "unidentified")}), ["f"])


def shown_images(images: pa.Table, named: pa.Array, limit: int) -> pa.Table:
    """The kept rows the page may show or the overrides (`named`) name, in their order:
    the `limit` most off-class (a version's are among its shards') and those named."""
    show = _mask(pc.is_in(images["source_uri"], value_set=named))
    show[most_off_class(images, limit).to_numpy()] = True
    return images.filter(pa.array(show))


def shown_rejected(rejected: pa.Table, named: pa.Array, limit: int) -> pa.Table:
    """The rejected rows the report or the page may use, in their order: `worst_first`
    (a version's are among its shards'), those named, and the label conflicts."""
    show = _mask(pc.is_in(rejected["source_uri"], value_set=named))
    show |= _mask(pc.equal(rejected["reason"], "label_conflict"))
    rows = pa.array(np.arange(rejected.num_rows, dtype=np.int64))
    show[worst_first(rejected.append_column("_row", rows), limit)["_row"].to_numpy()] = True
    return rejected.filter(pa.array(show))


def image_figures(images: pa.Table, named: pa.Array, limit: int) -> Figures:
    """One images shard's figures."""
    scores = images[SCORE]
    moment_columns = images.select(_MOMENT_COLUMNS)
    return Figures(
        kept=images.num_rows,
        kept_per_class=counts(images, ["class_name"]),
        class_split=counts(images, ["class_name", "split"]),
        formats=_formats(images),
        kept_formats=counts(images, ["source_format"]),
        source_bytes=total(images, "source_bytes"),
        image_bytes=total(images, "image_bytes"),
        train_moments=moments(moment_columns.filter(pc.equal(images["split"], "train"))),
        kept_moments=moments(moment_columns),
        scored=scores.null_count < len(scores),
        images=shown_images(images, named, limit),
    )


def rejected_figures(rejected: pa.Table, named: pa.Array, limit: int) -> Figures:
    """One rejected shard's figures."""
    return Figures(
        rejected=rejected.num_rows,
        class_reason=counts(_by_class(rejected, "reason"), ["c", "reason"]),
        reasons=counts(rejected, ["reason"]),
        formats=_formats(rejected),
        rejected_rows=shown_rejected(rejected, named, limit),
    )


def listing_figures(listing: pa.Table, named: pa.Array) -> Figures:
    """A part of the listing's figures; its rows kept are those the overrides name."""
    return Figures(
        listed=listing.num_rows,
        listed_per_class=counts(_by_class(listing), ["c"]),
        extensions=extensions(listing["source_uri"]),
        listed_bytes=total(listing, "size"),
        listing=listing.filter(pc.is_in(listing["source_uri"], value_set=named)),
    )


def _images_task(uris: list[str], storage: StorageConfig, named: pa.Array, limit: int) -> tuple:
    """A group of images shards' figures, as one table's: counts keep the order of
    first appearance, the rows shown are among each shard's."""
    table = read_shards(uris, storage, IMAGE_STATS, with_shard=True, optional=OPTIONAL_STATS)
    return image_figures(table, named, limit), clusters.shard_marks(table["cluster_id"])


def _rejected_task(uris: list[str], storage: StorageConfig, named: pa.Array, limit: int) -> tuple:
    table = read_shards(uris, storage, REJECTED_STATS, with_shard=True)
    return rejected_figures(table, named, limit), clusters.shard_marks(table["cluster_id"])


def _listing_task(uri: str, storage: StorageConfig, groups: list[int], named: pa.Array) -> Figures:
    fs, path = filesystem(uri, storage)
    with fs.open(path, "rb") as f:
        return listing_figures(pq.ParquetFile(f).read_row_groups(groups, LISTING_COLUMNS), named)


_remote_images = ray.remote(num_cpus=1)(_images_task)
_remote_rejected = ray.remote(num_cpus=1)(_rejected_task)
_remote_listing = ray.remote(num_cpus=1)(_listing_task)
_remote_files = ray.remote(num_cpus=1)(clusters.files_task)


def listing_tasks(uri: str, storage: StorageConfig) -> list[list[int]]:
    """The listing's row groups, dealt in consecutive runs of about
    `LISTING_ROWS_PER_TASK` rows: one task each (only the footer is read here)."""
    fs, path = filesystem(uri, storage)
    with fs.open(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    runs: list[list[int]] = []
    rows = LISTING_ROWS_PER_TASK
    for group in range(meta.num_row_groups):
        if rows >= LISTING_ROWS_PER_TASK:
            runs.append([])
            rows = 0
        runs[-1].append(group)
        rows += meta.row_group(group).num_rows
    return runs


def _named(overrides: pa.Table | None) -> pa.Array:
    if overrides is None or overrides.num_rows == 0:
        return pa.array([], pa.string())
    return overrides["source_uri"].combine_chunks()


def _merged(refs: list[ray.ObjectRef], named: pa.Array, limit: int) -> Figures:
    """The figures of `refs` merged in their order, `MERGE_BATCH` at a time: the rows
    kept after each batch are those the whole could show (`shown_images`,
    `shown_rejected`), so the driver holds a few pages' worth whatever the shards."""
    figures = Figures()
    for at in range(0, len(refs), MERGE_BATCH):
        figures = Figures.merge([figures, *ray.get(refs[at : at + MERGE_BATCH])])
        if figures.images is not None:
            figures.images = shown_images(figures.images, named, limit)
        if figures.rejected_rows is not None:
            figures.rejected_rows = shown_rejected(figures.rejected_rows, named, limit)
    return figures


def read_version(
    cfg: CleanConfig,
    staged: Shards,
    carried: dict[str, list[str]],
    listing_uri: str,
    overrides: pa.Table | None = None,
) -> Figures:
    """The version's figures (Ray must be running): a task per group of images shards,
    of rejected shards (`shard_groups`) and per part of the listing (`listing_uri`, the
    run's snapshot), merged in that order; the duplicate clusters counted in two passes
    of tasks (`pipeline.report_clusters`)."""
    image_shards = current_uris(cfg, IMAGES, staged, carried)
    shards = [(_remote_images, g) for g in shard_groups(image_shards)]
    rejected = current_uris(cfg, REJECTED_DIR, staged, carried)
    shards += [(_remote_rejected, g) for g in shard_groups(rejected)]
    limit, wanted = cfg.report.gallery_per_reason, _named(overrides)
    named = ray.put(wanted)
    outs = [
        task.options(num_returns=2).remote(uri, cfg.storage, named, limit) for task, uri in shards
    ]
    listing = [
        _remote_listing.remote(listing_uri, cfg.storage, groups, named)
        for groups in listing_tasks(listing_uri, cfg.storage)
    ]
    figures = _merged([out[0] for out in outs] + listing, wanted, limit)
    shared = ray.put(clusters.shared_marks(ray.get([out[1] for out in outs])))
    del outs
    files = [
        _remote_files.remote(group, cfg.storage, shared)
        for group in shard_groups(image_shards) + shard_groups(rejected)
    ]
    figures.clusters, figures.largest = clusters.cluster_sizes(ray.get(files))
    figures.image_shards = image_shards
    if figures.images is None:
        figures.images = empty_of([*IMAGE_STATS, *OPTIONAL_STATS, "_shard"])
    if figures.rejected_rows is None:
        figures.rejected_rows = empty_of([*REJECTED_STATS, "_shard"])
    if figures.listing is None:
        figures.listing = empty_of(LISTING_COLUMNS)
    return figures


# `read_version` in a Ray task on a worker: its merges hold the shards' results and the
# version's cluster fingerprints (8 bytes a file; at 10M files ~0.4 GB with their
# copies), which grow with the version; the driver gets the figures only.
figures_in_task = RowTask(read_version, "the report")

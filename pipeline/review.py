"""The review page's data: which cards report.html shows and the pictures on them.

Per rejection reason the worst `gallery_per_reason` rows (highest score first: a junk
check's or the off-class score; for duplicates the closest copy first). The stored
thumbnail is small (`thumbnail_side`, 96 px), too small to judge a banner or a bird
at a glance, so the shown cards get a larger preview (`preview_side`): rejected rows
re-read their source (the cards shown are few: the page stays bounded by
`gallery_per_reason`), and so do the kept rows shown (the kept copy of a dropped
duplicate, files kept by an override, the kept images that look most off-class). Only
the shards that hold a shown row are read back, for their thumbnails.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from PIL import Image

from common.decode import decode_within
from common.storage import StorageConfig, filesystem
from pipeline import overrides as ov
from pipeline.config import CleanConfig
from pipeline.normalize import decode_limits
from pipeline.offclass import LIKE, SCORE
from pipeline.output import read_shards
from pipeline.report import IMAGE_STATS, OPTIONAL_STATS, Figures, shard_groups
from pipeline.report_html import render_report_html

log = logging.getLogger(__name__)

PREVIEW_QUALITY = 75
_FETCH_THREADS = 8


def worst_first(rejected: pa.Table, limit: int) -> pa.Table:
    """At most `limit` rows per reason, each reason's highest score first (then the
    closest duplicate, then by URI, so the page is the same for the same data)."""
    if rejected.num_rows == 0:
        return rejected
    keys = [("reason", "ascending"), ("score", "descending"), ("distance", "ascending")]
    keys.append(("source_uri", "ascending"))
    order = pc.sort_indices(rejected, sort_keys=[(k, o, "at_end") for k, o in keys])
    ordered = rejected.take(order)
    reasons = ordered["reason"].to_pylist()
    taken: dict[str | None, int] = defaultdict(int)
    keep = []
    for i, reason in enumerate(reasons):
        if taken[reason] < limit:
            taken[reason] += 1
            keep.append(i)
    return ordered.take(pa.array(keep, pa.int64()))  # typed: `limit` may be 0


def _column_of(rows: list[dict[str, Any]], column: str, cfg: CleanConfig) -> dict[str, bytes]:
    """`column` (thumbnail or image) of just these rows, reading only their shards (each
    row's `_shard`)."""
    by_shard: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_shard[row["_shard"]].add(row["source_uri"])
    found: dict[str, bytes] = {}
    for shard, wanted in by_shard.items():
        part = read_shards([shard], cfg.storage, ["source_uri", column])
        # Only the shown rows' values become Python bytes, not the whole shard's.
        part = part.filter(pc.is_in(part["source_uri"], value_set=pa.array(sorted(wanted))))
        for uri, value in zip(
            part["source_uri"].to_pylist(), part[column].to_pylist(), strict=True
        ):
            if value:
                found[uri] = value
    return found


def _jpeg(image: Image.Image, side: int) -> bytes:
    small = image.convert("RGB")
    small.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=PREVIEW_QUALITY)
    return buffer.getvalue()


def source_previews(rows: list[dict[str, Any]], cfg: CleanConfig) -> dict[str, bytes]:
    """Previews of rejected rows that decoded in the run, from their source files (with
    the job's decode limits); a file that changed size since, or fails now, keeps its
    thumbnail."""
    side = cfg.report.preview_side
    todo = [r for r in rows if r.get("thumbnail") and r.get("source_bytes")]
    if side <= 0 or not todo:
        return {}
    fs, _ = filesystem(cfg.input_uri, cfg.storage)
    limits = decode_limits(cfg.normalize)

    def one(row: dict[str, Any]) -> tuple[str, bytes | None]:
        try:
            data = fs.cat_file(fs._strip_protocol(row["source_uri"]))
            if len(data) != row["source_bytes"]:
                return row["source_uri"], None
            return row["source_uri"], _jpeg(decode_within(data, limits, side).image, side)
        except Exception as exc:  # noqa: BLE001 - a preview is optional: the thumbnail stays
            log.debug("no preview for %s: %s", row["source_uri"], exc)
            return row["source_uri"], None

    with ThreadPoolExecutor(max_workers=_FETCH_THREADS) as pool:
        return {uri: jpeg for uri, jpeg in pool.map(one, todo) if jpeg}


def _with_pictures(rows: list[dict[str, Any]], cfg: CleanConfig) -> list[dict]:
    """Rows plus their stored thumbnail and a preview from their source."""
    thumbs = _column_of(rows, "thumbnail", cfg)
    rows = [{**r, "thumbnail": thumbs.get(r["source_uri"])} for r in rows]
    previews = source_previews(rows, cfg)
    return [{**r, "preview": previews.get(r["source_uri"])} for r in rows]


def kept_sections(
    images: pa.Table, overrides: pa.Table | None, limit: int, scored: bool | None = None
) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """Kept images worth a second look, each offered for a drop: the ones a person chose
    to keep, and the ones that look most off-class (highest off_class_score first).
    `images` may hold just the rows that can be chosen (each shard's `limit` most
    off-class and those the overrides name), given `scored`: whether any kept image has
    an off-class score (None: any of `images`)."""
    sections = []
    if overrides is not None and overrides.num_rows and images.num_rows:
        keeps = overrides.filter(pc.equal(overrides["decision"], ov.KEEP))
        chosen = images.filter(pc.is_in(images["source_uri"], value_set=keeps["source_uri"]))
        notes = dict(zip(keeps["source_uri"].to_pylist(), keeps["note"].to_pylist(), strict=True))
        rows = [
            {**r, "reason": None, "signal": "kept", "override_note": notes.get(r["source_uri"])}
            for r in chosen.sort_by("source_uri").slice(0, limit).to_pylist()
        ]
        if rows:
            sections.append(("kept-by-override", "kept by a person's override", rows))
    if scored is None:
        scored = bool(images.num_rows) and SCORE in images.column_names
        scored = scored and images[SCORE].null_count < len(images)
    if scored:
        top = images.take(most_off_class(images, limit))  # not a copy of every kept row first
        top = top.filter(pc.is_valid(top[SCORE]))
        rows = [
            {
                **r,
                "reason": None,
                "signal": SCORE,
                "score": r[SCORE],
                "detail": f"looks like {r[LIKE]}" if r.get(LIKE) else "",
            }
            for r in top.to_pylist()
        ]
        sections.append(("kept-off-class", "kept, most off-class first", rows))
    return sections


def most_off_class(images: pa.Table, limit: int) -> pa.Array:
    """Indices of the `limit` kept rows with the highest off-class score (unscored last,
    then by URI): a shard's are a superset of its rows among the version's."""
    order = pc.sort_indices(
        images, sort_keys=[(SCORE, "descending", "at_end"), ("source_uri", "ascending")]
    )
    return order.slice(0, limit)


def _rows_named(shards: list[str], storage: StorageConfig, uris: pa.Array) -> pa.Table:
    """The kept rows of a group of images shards whose source_uri is one of `uris`."""
    rows = read_shards(shards, storage, IMAGE_STATS, with_shard=True, optional=OPTIONAL_STATS)
    return rows.filter(pc.is_in(rows["source_uri"], value_set=uris))


_remote_rows_named = ray.remote(num_cpus=1)(_rows_named)


def kept_copies(cfg: CleanConfig, shards: list[str], uris: set[str]) -> list[dict[str, Any]]:
    """The kept rows of `uris` (the kept copies of the duplicates shown), found by a Ray
    task per group of images shards: the driver never reads every kept row."""
    if not uris or not shards:
        return []
    wanted = ray.put(pa.array(sorted(uris), pa.string()))
    groups = shard_groups(shards)
    found = ray.get([_remote_rows_named.remote(g, cfg.storage, wanted) for g in groups])
    return [row for table in found for row in table.to_pylist()]


def review_page(
    cfg: CleanConfig,
    report: dict[str, Any],
    figures: Figures,
    overrides: pa.Table | None = None,
) -> str:
    """report.html: the worst rejected rows per reason (duplicates beside their kept
    copy), and kept images worth a second look, each selectable for the overrides file.
    `figures`: the version's (`pipeline.report_parts.read_version`), with the rows the
    page can show."""
    limit = cfg.report.gallery_per_reason
    rows = _with_pictures(worst_first(figures.rejected_rows, limit).to_pylist(), cfg)
    kept = [
        (key, title, _with_pictures(section, cfg))
        for key, title, section in kept_sections(figures.images, overrides, limit, figures.scored)
    ]
    keepers = {r["duplicate_of"] for r in rows if r.get("duplicate_of")}
    pictures = {
        r["source_uri"]: r.get("preview") or r.get("thumbnail")
        for r in _with_pictures(kept_copies(cfg, figures.image_shards, keepers), cfg)
    }
    return render_report_html(report, rows, pictures, limit, kept)

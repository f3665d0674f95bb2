"""report.json and report.html of a version: what was kept and dropped, per class and
reason, the class balance and split, duplicate clusters and label conflicts, and the
train split's per-channel mean/std (the seed computed these by hand for Normalize).

Built from the tables' metadata columns; the review page (`pipeline.review`) goes
back for the pictures of the few rows it shows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.reasons import Reason
from common.storage import StorageConfig, join
from pipeline import offclass
from pipeline import overrides as ov
from pipeline import split_units as units
from pipeline.config import CleanConfig
from pipeline.output import read_shards
from pipeline.sink import Shards
from pipeline.tables import IMAGES, REJECTED_DIR

_IMAGE_STATS = [
    "source_uri",
    "class_name",
    "source_format",
    "source_bytes",
    "image_bytes",
    "width",
    "height",
    "channel_mean",
    "channel_sqmean",
    "cluster_id",
    "split",
]
# Read where present: the review page shows the kept images that look most off-class.
_OPTIONAL_STATS = {offclass.SCORE: pa.float32(), offclass.LIKE: pa.string()}
_REJECTED_STATS = [
    "source_uri",
    "class_name",
    "reason",
    "source_format",
    "source_bytes",
    "cluster_id",
    "duplicate_of",
    "distance",
    "score",
    "detail",
]
_MAX_CONFLICTS_LISTED = 100
NO_CLASS = "(no class)"


def counts(table: pa.Table, keys: list[str]) -> dict[Any, int]:
    """Row counts per key (a value, or a tuple for several keys), aggregated by Arrow."""
    if table.num_rows == 0:
        return {}
    grouped = table.group_by(keys).aggregate([([], "count_all")]).to_pylist()
    key = (lambda r: r[keys[0]]) if len(keys) == 1 else (lambda r: tuple(r[k] for k in keys))
    return {key(r): r["count_all"] for r in grouped}


def extensions(uris: pa.ChunkedArray) -> dict[str, int]:
    """File extensions as the seed tabulated them (case kept, '' if none)."""
    found = pc.struct_field(pc.extract_regex(uris, r"(?P<ext>\.[^./]*)$"), "ext")
    table = pa.table({"ext": pc.fill_null(found, "")})
    return dict(sorted(counts(table, ["ext"]).items()))


def current_uris(
    cfg: CleanConfig, table: str, staged: Shards, carried: dict[str, list[str]]
) -> list[str]:
    """Every shard of `table` in the version being built: carried over plus staged."""
    return [join(cfg.output_uri, rel) for rel in carried.get(table, [])] + staged.uris(table)


def _vectors(column: pa.ChunkedArray) -> np.ndarray:
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, 3)


def channel_stats(images: pa.Table) -> dict[str, list[float]]:
    """Pixel-weighted mean and std over images, from per-image moments."""
    if images.num_rows == 0:
        return {"mean": [], "std": []}
    pixels = (
        images["width"].to_numpy().astype(np.float64)
        * images["height"].to_numpy().astype(np.float64)
    )[:, None]
    total = pixels.sum()
    mean = (_vectors(images["channel_mean"]) * pixels).sum(axis=0) / total
    sqmean = (_vectors(images["channel_sqmean"]) * pixels).sum(axis=0) / total
    var = np.maximum(sqmean - mean**2, 0.0)
    return {
        "mean": [round(float(x), 6) for x in mean],
        "std": [round(float(math.sqrt(x)), 6) for x in var],
    }


def class_balance(kept_per_class: dict[str, int]) -> list[dict[str, Any]]:
    """The seed's table: images per class and their share of the total."""
    total = sum(kept_per_class.values()) or 1
    return [
        {"class": name, "images": n, "percent": round(100.0 * n / total, 2)}
        for name, n in sorted(kept_per_class.items())
    ]


def duplicate_stats(images: pa.Table, rejected: pa.Table) -> dict[str, Any]:
    """Clusters of more than one file (a null or empty id is none) and the largest,
    counted on integer ids of the cluster ids (`split_units.key_groups`): neither a
    Python object per file nor a hash table of every id (+310 MB at 1M files)."""
    ids = [t["cluster_id"] for t in (images, rejected) if t.num_rows]
    chunks = [c for i in ids for c in i.chunks]
    column = units.strings(pa.chunked_array(chunks, ids[0].type if ids else pa.string()))
    rows, group, groups = units.key_groups(column)
    sizes = np.bincount(group, minlength=groups)
    empty = np.flatnonzero(pc.fill_null(pc.equal(column, ""), False).to_numpy())
    if empty.size:  # every empty id shares one group
        sizes[group[empty[0] if rows is None else np.searchsorted(rows, empty[0])]] = 0
    sizes = sizes[sizes > 1]
    reasons = counts(rejected, ["reason"])
    return {
        "clusters": int(sizes.size),
        "largest": int(sizes.max(initial=0)),
        "exact_duplicates_dropped": reasons.get("exact_duplicate", 0),
        "near_duplicates_dropped": reasons.get("near_duplicate", 0),
    }


def label_conflicts(rejected: pa.Table) -> dict[str, Any]:
    rows = rejected.filter(pc.equal(rejected["reason"], "label_conflict")).to_pylist()
    clusters: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        clusters[r["cluster_id"]].append(r)
    listed = [
        {
            "cluster_id": cid,
            "classes": sorted({r["class_name"] for r in members}),
            "files": sorted(r["source_uri"] for r in members),
        }
        for cid, members in sorted(clusters.items())[:_MAX_CONFLICTS_LISTED]
    ]
    return {"count": len(clusters), "files": len(rows), "clusters": listed}


def split_table(images: pa.Table) -> dict[str, Any]:
    per_split: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, name), n in sorted(counts(images, ["split", "class_name"]).items()):
        per_split[split][name] = n
    return {
        split: {"images": sum(c.values()), "per_class": c} for split, c in sorted(per_split.items())
    }


def per_class_table(
    snapshot: pa.Table, images: pa.Table, rejected: pa.Table
) -> dict[str, dict[str, Any]]:
    listed = counts(pa.table({"c": pc.fill_null(snapshot["class_name"], NO_CLASS)}), ["c"])
    kept = counts(images, ["class_name"])
    splits = counts(images, ["class_name", "split"])
    dropped = (
        counts(
            pa.table(
                {"c": pc.fill_null(rejected["class_name"], NO_CLASS), "reason": rejected["reason"]}
            ),
            ["c", "reason"],
        )
        if rejected.num_rows
        else {}
    )
    return {
        name: {
            "listed": n,
            "kept": kept.get(name, 0),
            "splits": {s: k for (c, s), k in sorted(splits.items()) if c == name},
            "rejected": {r: k for (c, r), k in sorted(dropped.items()) if c == name},
        }
        for name, n in sorted(listed.items())
    }


def _total(table: pa.Table, column: str) -> int:
    return int(pc.sum(table[column]).as_py() or 0) if table.num_rows else 0


@dataclass
class VersionTables:
    """The version's metadata (no pixels), read once for report.json and report.html;
    `_shard` names each row's file, so the page can go back for just its thumbnails."""

    images: pa.Table
    rejected: pa.Table


# What the report reads of the run's listing (`read_listing`).
LISTING_COLUMNS = ["source_uri", "class_name", "size"]


def read_listing(uri: str, storage: StorageConfig) -> pa.Table:
    """The run's listing as the report needs it, read back from the snapshot the run
    wrote (`uri`): the driver does not hold the listing through the stages between."""
    return read_shards([uri], storage, LISTING_COLUMNS)


def read_version(cfg: CleanConfig, staged: Shards, carried: dict[str, list[str]]) -> VersionTables:
    images = read_shards(
        current_uris(cfg, IMAGES, staged, carried), cfg.storage, _IMAGE_STATS,
        with_shard=True, optional=_OPTIONAL_STATS,
    )  # fmt: skip
    rejected = read_shards(
        current_uris(cfg, REJECTED_DIR, staged, carried), cfg.storage, _REJECTED_STATS,
        with_shard=True,
    )  # fmt: skip
    return VersionTables(
        images if images.num_rows else _empty([*_IMAGE_STATS, *_OPTIONAL_STATS, "_shard"]),
        rejected if rejected.num_rows else _empty([*_REJECTED_STATS, "_shard"]),
    )


def off_class_section(decision_stats: dict[str, Any]) -> dict[str, Any]:
    """The off-class stage's figures for this run's images, and the possible label issues
    (kept images whose nearest neighbours mostly carry another class: `pipeline.offclass`),
    moved out of `this_run` so report.json lists them once, at the top level."""
    return decision_stats.pop("off_class", {})


def build_report(
    cfg: CleanConfig,
    run_id: str,
    snapshot: pa.Table,
    classes: list[str],
    tables: VersionTables,
    decision_stats: dict[str, Any],
    overrides: pa.Table | None = None,
) -> dict[str, Any]:
    images, rejected = tables.images, tables.rejected
    formats = pa.table(
        {
            "f": pc.fill_null(
                pa.concat_arrays(
                    [
                        images["source_format"].combine_chunks(),
                        rejected["source_format"].combine_chunks(),
                    ]
                ),
                "unidentified",
            )
        }
    )
    moments = images.select(["width", "height", "channel_mean", "channel_sqmean"])
    train = moments.filter(pc.equal(images["split"], "train"))  # not a copy of every column
    return {
        "run_id": run_id,
        "input_uri": cfg.input_uri,
        "classes": classes,
        "totals": {
            "listed": snapshot.num_rows,
            "kept": images.num_rows,
            "rejected": rejected.num_rows,
        },
        "per_class": per_class_table(snapshot, images, rejected),
        "class_balance": class_balance(counts(images, ["class_name"])),
        "splits": split_table(images),
        "rejected_by_reason": dict(
            sorted(counts(rejected, ["reason"]).items(), key=lambda kv: -kv[1])
        ),
        "duplicates": duplicate_stats(images, rejected),
        "label_conflicts": label_conflicts(rejected),
        "input_extensions": extensions(snapshot["source_uri"]),
        "input_formats": dict(sorted(counts(formats, ["f"]).items(), key=lambda kv: -kv[1])),
        "kept_formats": dict(
            sorted(counts(images, ["source_format"]).items(), key=lambda kv: -kv[1])
        ),
        "bytes": {
            "listed": _total(snapshot, "size"),
            "kept_sources": _total(images, "source_bytes"),
            "kept_jpeg": _total(images, "image_bytes"),
        },
        "channel_stats": channel_stats(train),
        "channel_stats_all_kept": channel_stats(moments),
        "overrides": override_stats(overrides, snapshot, images, rejected),
        "off_class": off_class_section(decision_stats),
        "this_run": decision_stats,
    }


def override_stats(
    overrides: pa.Table | None, snapshot: pa.Table, images: pa.Table, rejected: pa.Table
) -> dict[str, Any]:
    """The person's decisions in force and what became of them: kept / dropped as asked,
    and keeps that could not be honoured (e.g. the file does not decode), with why."""
    overrides = overrides if overrides is not None else ov.empty()
    out = ov.summary(overrides, _named_in(snapshot, overrides["source_uri"]))
    wanted = {d: overrides.filter(pc.equal(overrides["decision"], d)) for d in (ov.KEEP, ov.DROP)}
    kept_uris = _named_in(images, wanted[ov.KEEP]["source_uri"])["source_uri"]
    keep_kept = pc.is_in(wanted[ov.KEEP]["source_uri"], value_set=kept_uris)
    blocked = rejected.filter(
        pc.is_in(rejected["source_uri"], value_set=wanted[ov.KEEP]["source_uri"])
    )
    out.update(
        kept=int(pc.sum(keep_kept).as_py() or 0),
        dropped=int(pc.sum(pc.equal(rejected["reason"], Reason.OVERRIDE)).as_py() or 0)
        if rejected.num_rows
        else 0,
        keep_not_honoured=dict(sorted(counts(blocked, ["reason"]).items())),
    )
    return out


def _named_in(table: pa.Table, uris: pa.ChunkedArray) -> pa.Table:
    """The rows of `table` whose source_uri is one of `uris` (a person's few overrides):
    a lookup table of those, not of every file of the lake, as the reverse lookup built."""
    return table.filter(pc.is_in(table["source_uri"], value_set=uris))


def _empty(columns: list[str]) -> pa.Table:
    types = {
        "source_bytes": pa.int64(),
        "image_bytes": pa.int64(),
        "width": pa.int32(),
        "height": pa.int32(),
        "distance": pa.int32(),
        "score": pa.float64(),
        **_OPTIONAL_STATS,
        "channel_mean": pa.list_(pa.float32(), 3),
        "channel_sqmean": pa.list_(pa.float32(), 3),
    }
    return pa.schema([(c, types.get(c, pa.string())) for c in columns]).empty_table()


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for the terminal at the end of a run."""
    t = report["totals"]
    lines = [f"listed {t['listed']}  kept {t['kept']}  rejected {t['rejected']}"]
    lines += [
        f"  {row['class']:<24} {row['images']:>7}  {row['percent']:>6.2f} %"
        for row in report["class_balance"]
    ]
    lines += [
        f"  split {name:<18} {s['images']:>7}" for name, s in report.get("splits", {}).items()
    ]
    lines += [
        f"  rejected {reason:<22} {n:>7}" for reason, n in report["rejected_by_reason"].items()
    ]
    given = report.get("overrides", {}).get("given", {})
    if any(given.values()):
        o = report["overrides"]
        lines.append(
            f"  overrides: kept {o['kept']} of {given['keep']}, dropped {o['dropped']} of "
            f"{given['drop']}, not in the lake {o['not_in_lake']}"
        )
    stats = report["channel_stats"]
    if stats["mean"]:
        lines.append(f"  train mean {stats['mean']}  std {stats['std']}")
    return lines

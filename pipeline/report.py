"""report.json and report.html of a version: what was kept and dropped, per class and
reason, the class balance and split, duplicate clusters and label conflicts, and the
train split's per-channel mean/std (the seed computed these by hand for Normalize).

Built from the version's `Figures`: counts, sums and a few rows, computed per shard in
Ray tasks (`pipeline.report_parts`) and merged, so the driver holds nothing per file.
The review page (`pipeline.review`) goes back for the pictures of the few rows it shows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.reasons import Reason
from common.storage import join
from pipeline import offclass
from pipeline import overrides as ov
from pipeline.config import CleanConfig
from pipeline.sink import Shards

IMAGE_STATS = [
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
OPTIONAL_STATS = {offclass.SCORE: pa.float32(), offclass.LIKE: pa.string()}
REJECTED_STATS = [
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
MOMENTS = 8  # `moments`: rows, pixels, 3 channel sums, 3 channel sums of squares


# Shards a report task reads, one after the other: a task per shard cost ~20 CPU-ms of
# Ray's per task, ~2 ms a file at 2,000 files (`scripts/bench/clean_end_to_end.py`).
SHARDS_PER_TASK = 8


def shard_groups(uris: list[str]) -> list[list[str]]:
    """`uris` in consecutive groups of `SHARDS_PER_TASK`: one report task each."""
    return [uris[i : i + SHARDS_PER_TASK] for i in range(0, len(uris), SHARDS_PER_TASK)]


def counts(table: pa.Table, keys: list[str]) -> dict[Any, int]:
    """Row counts per key (a value, or a tuple for several keys), aggregated by Arrow;
    keys in order of first appearance (`Figures` merges shards' counts keeping it)."""
    if table.num_rows == 0:
        return {}
    grouped = table.group_by(keys).aggregate([([], "count_all")]).to_pylist()
    key = (lambda r: r[keys[0]]) if len(keys) == 1 else (lambda r: tuple(r[k] for k in keys))
    return {key(r): r["count_all"] for r in grouped}


def by_count(found: dict[Any, int]) -> dict[Any, int]:
    """Most frequent first; ties in order of first appearance."""
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


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


def moments(images: pa.Table) -> np.ndarray:
    """What channel statistics add up over images: rows, pixels, and the pixel-weighted
    sums of the per-image channel means and mean squares (float64: shards' sums add)."""
    if images.num_rows == 0:
        return np.zeros(MOMENTS)
    pixels = (
        images["width"].to_numpy().astype(np.float64)
        * images["height"].to_numpy().astype(np.float64)
    )[:, None]
    mean = (_vectors(images["channel_mean"]) * pixels).sum(axis=0)
    sqmean = (_vectors(images["channel_sqmean"]) * pixels).sum(axis=0)
    return np.concatenate([[images.num_rows, pixels.sum()], mean, sqmean])


def moment_stats(sums: np.ndarray) -> dict[str, list[float]]:
    """Pixel-weighted mean and std from `moments` (of one table or added over shards)."""
    if sums[0] == 0:
        return {"mean": [], "std": []}
    total = sums[1]
    mean, sqmean = sums[2:5] / total, sums[5:8] / total
    var = np.maximum(sqmean - mean**2, 0.0)
    return {
        "mean": [round(float(x), 6) for x in mean],
        "std": [round(float(math.sqrt(x)), 6) for x in var],
    }


def channel_stats(images: pa.Table) -> dict[str, list[float]]:
    """Pixel-weighted mean and std over images, from per-image moments."""
    return moment_stats(moments(images))


def class_balance(kept_per_class: dict[str, int]) -> list[dict[str, Any]]:
    """The seed's table: images per class and their share of the total."""
    total = sum(kept_per_class.values()) or 1
    return [
        {"class": name, "images": n, "percent": round(100.0 * n / total, 2)}
        for name, n in sorted(kept_per_class.items())
    ]


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


def split_table(class_split: dict[tuple[str, str], int]) -> dict[str, Any]:
    """Images per split and per class in it, from the counts per (class, split)."""
    per_split: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, name), n in sorted(((s, c), n) for (c, s), n in class_split.items()):
        per_split[split][name] = n
    return {
        split: {"images": sum(c.values()), "per_class": c} for split, c in sorted(per_split.items())
    }


def per_class_table(figures: Figures) -> dict[str, dict[str, Any]]:
    """Per listed class (no class: `NO_CLASS`): listed, kept, kept per split, dropped
    per reason."""
    splits, dropped = sorted(figures.class_split.items()), sorted(figures.class_reason.items())
    return {
        name: {
            "listed": n,
            "kept": figures.kept_per_class.get(name, 0),
            "splits": {s: k for (c, s), k in splits if c == name},
            "rejected": {r: k for (c, r), k in dropped if c == name},
        }
        for name, n in sorted(figures.listed_per_class.items())
    }


def total(table: pa.Table, column: str) -> int:
    return int(pc.sum(table[column]).as_py() or 0) if table.num_rows else 0


@dataclass
class Figures:
    """What report.json and report.html need of a version, in a size that does not grow
    with the files: counts, sums and the few rows shown or looked up (those the page may
    show, those a person's overrides name, the label conflicts). Each shard's figures are
    computed in a task (`pipeline.report_parts`) and `merge`d on the driver; `rows`
    keep `_shard`, their file, so the page can go back for just their thumbnails."""

    listed: int = 0
    kept: int = 0
    rejected: int = 0
    listed_per_class: dict[str, int] = field(default_factory=dict)  # null: NO_CLASS
    extensions: dict[str, int] = field(default_factory=dict)
    kept_per_class: dict[str, int] = field(default_factory=dict)
    class_split: dict[tuple[str, str], int] = field(default_factory=dict)
    class_reason: dict[tuple[str, str], int] = field(default_factory=dict)  # null: NO_CLASS
    reasons: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)  # kept, then rejected files
    kept_formats: dict[str | None, int] = field(default_factory=dict)
    listed_bytes: int = 0
    source_bytes: int = 0
    image_bytes: int = 0
    train_moments: np.ndarray = field(default_factory=lambda: np.zeros(MOMENTS))
    kept_moments: np.ndarray = field(default_factory=lambda: np.zeros(MOMENTS))
    scored: bool = False  # some kept image has an off-class score
    images: pa.Table | None = None  # kept rows that may be shown or are overridden
    rejected_rows: pa.Table | None = None  # worst per reason, overridden, label conflicts
    listing: pa.Table | None = None  # listed rows a person's overrides name
    clusters: int = 0  # duplicate clusters of more than one file, and the largest
    largest: int = 0
    image_shards: list[str] = field(default_factory=list)

    @staticmethod
    def merge(parts: list[Figures]) -> Figures:
        """Counts and sums added, rows concatenated, in the order of `parts`: a count's
        keys keep their order of first appearance, as Arrow's over the tables would."""
        out = Figures()
        for f in fields(Figures):
            values = [getattr(p, f.name) for p in parts]
            first = getattr(out, f.name)
            if isinstance(first, dict):
                merged: dict[Any, int] = {}
                for found in values:
                    for key, n in found.items():
                        merged[key] = merged.get(key, 0) + n
                value: Any = merged
            elif isinstance(first, list):
                value = [x for v in values for x in v]
            elif f.name in ("images", "rejected_rows", "listing"):
                tables = [t for t in values if t is not None]
                value = pa.concat_tables(tables, promote_options="default") if tables else None
            elif f.name == "largest":
                value = max(values, default=0)
            elif isinstance(first, bool):
                value = any(values)
            else:
                value = sum(values, first)
            setattr(out, f.name, value)
        return out


def off_class_section(decision_stats: dict[str, Any]) -> dict[str, Any]:
    """The off-class stage's figures for this run's images, and the possible label issues
    (kept images whose nearest neighbours mostly carry another class: `pipeline.offclass`),
    moved out of `this_run` so report.json lists them once, at the top level."""
    return decision_stats.pop("off_class", {})


def build_report(
    cfg: CleanConfig,
    run_id: str,
    classes: list[str],
    figures: Figures,
    decision_stats: dict[str, Any],
    overrides: pa.Table | None = None,
) -> dict[str, Any]:
    """report.json from the version's merged figures (`pipeline.report_parts.read_version`)."""
    f = figures
    return {
        "run_id": run_id,
        "input_uri": cfg.input_uri,
        "classes": classes,
        "totals": {"listed": f.listed, "kept": f.kept, "rejected": f.rejected},
        "per_class": per_class_table(f),
        "class_balance": class_balance(f.kept_per_class),
        "splits": split_table(f.class_split),
        "rejected_by_reason": by_count(f.reasons),
        "duplicates": {
            "clusters": f.clusters,
            "largest": f.largest,
            "exact_duplicates_dropped": f.reasons.get("exact_duplicate", 0),
            "near_duplicates_dropped": f.reasons.get("near_duplicate", 0),
        },
        "label_conflicts": label_conflicts(f.rejected_rows),
        "input_extensions": dict(sorted(f.extensions.items())),
        "input_formats": by_count(f.formats),
        "kept_formats": by_count(f.kept_formats),
        "bytes": {
            "listed": f.listed_bytes,
            "kept_sources": f.source_bytes,
            "kept_jpeg": f.image_bytes,
        },
        "channel_stats": moment_stats(f.train_moments),
        "channel_stats_all_kept": moment_stats(f.kept_moments),
        "overrides": override_stats(
            overrides, f.listing, f.images, f.rejected_rows, f.reasons.get(Reason.OVERRIDE, 0)
        ),
        "off_class": off_class_section(decision_stats),
        "this_run": decision_stats,
    }


def override_stats(
    overrides: pa.Table | None,
    snapshot: pa.Table,
    images: pa.Table,
    rejected: pa.Table,
    dropped: int | None = None,
) -> dict[str, Any]:
    """The person's decisions in force and what became of them: kept / dropped as asked,
    and keeps that could not be honoured (e.g. the file does not decode), with why.
    The tables need only hold the rows the overrides name, given `dropped` (the files
    rejected for an override: None counts them in `rejected`)."""
    overrides = overrides if overrides is not None else ov.empty()
    out = ov.summary(overrides, _named_in(snapshot, overrides["source_uri"]))
    wanted = {d: overrides.filter(pc.equal(overrides["decision"], d)) for d in (ov.KEEP, ov.DROP)}
    kept_uris = _named_in(images, wanted[ov.KEEP]["source_uri"])["source_uri"]
    keep_kept = pc.is_in(wanted[ov.KEEP]["source_uri"], value_set=kept_uris)
    blocked = rejected.filter(
        pc.is_in(rejected["source_uri"], value_set=wanted[ov.KEEP]["source_uri"])
    )
    if dropped is None:
        dropped = (
            int(pc.sum(pc.equal(rejected["reason"], Reason.OVERRIDE)).as_py() or 0)
            if rejected.num_rows
            else 0
        )
    out.update(
        kept=int(pc.sum(keep_kept).as_py() or 0),
        dropped=dropped,
        keep_not_honoured=dict(sorted(counts(blocked, ["reason"]).items())),
    )
    return out


def _named_in(table: pa.Table, uris: pa.ChunkedArray) -> pa.Table:
    """The rows of `table` whose source_uri is one of `uris` (a person's few overrides):
    a lookup table of those, not of every file of the lake, as the reverse lookup built."""
    return table.filter(pc.is_in(table["source_uri"], value_set=uris))


def empty_of(columns: list[str]) -> pa.Table:
    """No rows, with the columns' types (a version without images or rejected files)."""
    types = {
        "source_bytes": pa.int64(),
        "image_bytes": pa.int64(),
        "width": pa.int32(),
        "height": pa.int32(),
        "distance": pa.int32(),
        "score": pa.float64(),
        "size": pa.int64(),
        **OPTIONAL_STATS,
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

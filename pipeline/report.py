"""report.json: what the run kept and dropped, per class and reason, and the data set's
per-channel mean/std (the seed computed these by hand for Normalize).

Built from the staged tables' metadata columns (never the image bytes), so its cost
grows with the row count, not the pixels.
"""

from __future__ import annotations

import math
import posixpath
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from common.storage import StorageConfig
from pipeline.output import read_shards
from pipeline.sink import IMAGES_DIR, REJECTED_DIR, StagedFiles

_IMAGE_STATS_COLUMNS = [
    "class_name",
    "source_format",
    "source_bytes",
    "image_bytes",
    "width",
    "height",
    "channel_mean",
    "channel_sqmean",
]
_REJECTED_STATS_COLUMNS = ["class_name", "reason", "source_format", "source_bytes"]


def extension(uri: str) -> str:
    """The file name's extension as the seed tabulated it (case kept, '' if none)."""
    return posixpath.splitext(uri.rsplit("/", 1)[-1])[1]


def channel_stats(images: pa.Table) -> dict[str, list[float]]:
    """Pixel-weighted mean and std over all kept images, from per-image moments."""
    if images.num_rows == 0:
        return {"mean": [], "std": []}
    pixels = (
        np.asarray(images["width"], dtype=np.float64)
        * np.asarray(images["height"], dtype=np.float64)
    )[:, None]
    means = np.asarray(images["channel_mean"].to_pylist(), dtype=np.float64)
    sqmeans = np.asarray(images["channel_sqmean"].to_pylist(), dtype=np.float64)
    total = pixels.sum()
    mean = (means * pixels).sum(axis=0) / total
    var = np.maximum((sqmeans * pixels).sum(axis=0) / total - mean**2, 0.0)
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


def build_report(
    snapshot: pa.Table, staged: StagedFiles, classes: list[str], storage: StorageConfig
) -> dict[str, Any]:
    images = read_shards(staged.uris(IMAGES_DIR), storage, _IMAGE_STATS_COLUMNS)
    rejected = read_shards(staged.uris(REJECTED_DIR), storage, _REJECTED_STATS_COLUMNS)
    image_rows = images.to_pylist() if images.num_rows else []
    rejected_rows = rejected.to_pylist() if rejected.num_rows else []

    listed = Counter(c or "(no class)" for c in snapshot["class_name"].to_pylist())
    kept = Counter(r["class_name"] for r in image_rows)
    dropped: dict[str, Counter] = defaultdict(Counter)
    for r in rejected_rows:
        dropped[r["class_name"] or "(no class)"][r["reason"]] += 1
    per_class = {
        name: {
            "listed": listed[name],
            "kept": kept.get(name, 0),
            "rejected": dict(sorted(dropped[name].items())),
        }
        for name in sorted(listed)
    }
    formats = Counter(r["source_format"] or "unidentified" for r in image_rows + rejected_rows)
    return {
        "classes": classes,
        "totals": {
            "listed": snapshot.num_rows,
            "kept": len(image_rows),
            "rejected": len(rejected_rows),
        },
        "per_class": per_class,
        "class_balance": class_balance(dict(kept)),
        "rejected_by_reason": dict(Counter(r["reason"] for r in rejected_rows).most_common()),
        "input_extensions": dict(
            sorted(Counter(extension(u) for u in snapshot["source_uri"].to_pylist()).items())
        ),
        "input_formats": dict(formats.most_common()),
        "kept_formats": dict(Counter(r["source_format"] for r in image_rows).most_common()),
        "bytes": {
            "listed": int(sum(snapshot["size"].to_pylist())),
            "kept_sources": int(sum(r["source_bytes"] for r in image_rows)),
            "kept_jpeg": int(sum(r["image_bytes"] for r in image_rows)),
            "parquet_written": int(sum(s.bytes for s in staged.shards)),
        },
        "channel_stats": channel_stats(images) if images.num_rows else {"mean": [], "std": []},
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for the terminal at the end of a run."""
    t = report["totals"]
    lines = [f"listed {t['listed']}  kept {t['kept']}  rejected {t['rejected']}"]
    lines += [
        f"  {row['class']:<24} {row['images']:>7}  {row['percent']:>6.2f} %"
        for row in report["class_balance"]
    ]
    lines += [
        f"  rejected {reason:<22} {n:>7}" for reason, n in report["rejected_by_reason"].items()
    ]
    stats = report["channel_stats"]
    if stats["mean"]:
        lines.append(f"  mean {stats['mean']}  std {stats['std']}")
    return lines

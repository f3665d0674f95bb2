"""Stage 2: read each snapshot file's bytes inside a Ray task and normalise it.

Every input row leaves as exactly one output row: `status` "kept" with a JPEG and its
metadata, or "rejected" with a reason from `common.reasons`. Nothing raises out of a
batch, so one corrupt file never fails a task or the job.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem
from PIL import Image

from common.decode import DecodeLimits, decode_image
from common.reasons import Reason, Rejected
from common.storage import filesystem
from pipeline.config import CleanConfig, NormalizeConfig

log = logging.getLogger(__name__)

KEPT, REJECTED = "kept", "rejected"

# One schema for both outcomes keeps Ray blocks uniform; the sink splits them.
NORMALIZED_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("class_name", pa.string()),
        ("label", pa.int32()),
        ("source_etag", pa.string()),
        ("source_bytes", pa.int64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source_format", pa.string()),
        ("source_width", pa.int32()),
        ("source_height", pa.int32()),
        ("frames", pa.int32()),
        ("image", pa.binary()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image_bytes", pa.int64()),
        ("channel_mean", pa.list_(pa.float32(), 3)),
        ("channel_sqmean", pa.list_(pa.float32(), 3)),
    ]
)


def decode_limits(cfg: NormalizeConfig) -> DecodeLimits:
    return DecodeLimits(
        max_pixels=cfg.max_pixels,
        min_side=cfg.min_side,
        allow_svg=cfg.rasterize_svg,
        max_svg_bytes=cfg.max_svg_bytes,
        background=tuple(cfg.background),
    )


def pixel_sha256(image: Image.Image) -> str:
    """Content name of the normalised pixels: equal pixels, equal name, whatever the source."""
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def channel_moments(image: Image.Image) -> tuple[list[float], list[float]]:
    """Per-channel mean and mean of squares in [0, 1], for the data set's Normalize."""
    arr = np.asarray(image, dtype=np.float32).reshape(-1, 3) / 255.0
    return arr.mean(axis=0).tolist(), (arr * arr).mean(axis=0).tolist()


def normalise_bytes(data: bytes, cfg: NormalizeConfig) -> dict[str, Any]:
    """The per-file work: decode safely, shrink, re-encode; raises Rejected."""
    decoded = decode_image(data, decode_limits(cfg), target_side=cfg.max_side)
    image = decoded.image
    if max(image.size) > cfg.max_side:
        image.thumbnail((cfg.max_side, cfg.max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=cfg.jpeg_quality)
    mean, sqmean = channel_moments(image)
    return {
        "source_format": decoded.source_format,
        "source_width": decoded.width,
        "source_height": decoded.height,
        "frames": decoded.frames,
        "image": buffer.getvalue(),
        "sha256": pixel_sha256(image),
        "width": image.width,
        "height": image.height,
        "image_bytes": buffer.tell(),
        "channel_mean": mean,
        "channel_sqmean": sqmean,
    }


def _rejection(row: dict[str, Any], reason: Reason, detail: str) -> dict[str, Any]:
    return {**row, "status": REJECTED, "reason": str(reason), "detail": detail[:500]}


def _source_row(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "source_uri": item["source_uri"],
        "class_name": item["class_name"],
        "label": item["label"],
        "source_etag": item["etag"] or item["mtime"],
        "source_bytes": item["size"],
    }


def _precheck(item: dict[str, Any], cfg: NormalizeConfig) -> tuple[Reason, str] | None:
    """Rejections decided from the listing alone, before any byte is read."""
    if item["class_name"] is None:
        return Reason.NO_CLASS, "file sits directly under the lake root, not in a class prefix"
    if item["size"] == 0:
        return Reason.EMPTY, "zero bytes"
    if item["size"] > cfg.max_file_bytes:
        return Reason.FILE_TOO_LARGE, f"{item['size']} bytes exceeds {cfg.max_file_bytes}"
    return None


def _read_windows(items: list[dict], max_files: int, max_bytes: int) -> Iterator[list[dict]]:
    """Group files so one concurrent fetch holds at most max_files / max_bytes."""
    window: list[dict] = []
    held = 0
    for item in items:
        if window and (len(window) >= max_files or held + item["size"] > max_bytes):
            yield window
            window, held = [], 0
        window.append(item)
        held += item["size"]
    if window:
        yield window


def normalise_item(item: dict[str, Any], data: bytes | Exception, cfg: NormalizeConfig) -> dict:
    """One snapshot row plus its bytes (or read error) into one output row."""
    row = _source_row(item)
    if isinstance(data, Exception):
        reason = Reason.READ_ERROR
        return _rejection(row, reason, f"{type(data).__name__}: {data}")
    if len(data) != item["size"]:
        return _rejection(
            row, Reason.SOURCE_CHANGED, f"listed {item['size']} bytes, read {len(data)}"
        )
    try:
        return {**row, "status": KEPT, **normalise_bytes(data, cfg)}
    except Rejected as rej:
        return _rejection(row, rej.reason, rej.detail)
    except Exception as exc:  # noqa: BLE001 - the file is recorded, the job goes on
        log.exception("unexpected error normalising %s", item["source_uri"])
        return _rejection(row, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")


def normalise_batch(batch: pa.Table, cfg: CleanConfig) -> pa.Table:
    """Ray Data map_batches function: snapshot rows in, normalised rows out (same count)."""
    Image.MAX_IMAGE_PIXELS = cfg.normalize.max_pixels
    fs, _ = filesystem(cfg.input_uri, cfg.storage)
    out: list[dict[str, Any]] = []
    to_read: list[dict[str, Any]] = []
    for item in batch.to_pylist():
        early = _precheck(item, cfg.normalize)
        if early:
            out.append(_rejection(_source_row(item), *early))
        else:
            to_read.append(item)
    run = cfg.execution
    with ThreadPoolExecutor(max_workers=run.read_window_files) as pool:
        for window in _read_windows(to_read, run.read_window_files, run.read_window_bytes):
            fetched = pool.map(lambda item: _fetch(fs, item["source_uri"]), window)
            for item, data in zip(window, fetched, strict=True):
                out.append(normalise_item(item, data, cfg.normalize))
    return pa.Table.from_pylist(out, schema=NORMALIZED_SCHEMA)


def _fetch(fs: AbstractFileSystem, uri: str) -> bytes | Exception:
    """Whole-object read; errors are returned, not raised (cat_file: no glob expansion)."""
    try:
        return fs.cat_file(fs._strip_protocol(uri))
    except Exception as exc:  # noqa: BLE001 - recorded as read_error for this file only
        return exc

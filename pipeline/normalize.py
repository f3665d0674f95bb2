"""Stage 2: read each snapshot file's bytes inside a Ray task, normalise it, and
compute what later stages decide on (content hash, perceptual hash, junk scores).

Every input row leaves as exactly one output row: `status` "kept" (a candidate for
de-duplication) with a JPEG and its metadata, or "rejected" with a reason from
`common.reasons` or a junk check. Nothing raises out of a batch, so one corrupt file
never fails a task or the job.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem
from PIL import Image, ImageStat

from common.decode import DecodeLimits, decode_within
from common.reasons import Reason, Rejected
from common.storage import filesystem
from pipeline.config import CleanConfig, NormalizeConfig
from pipeline.dedup.signals import hash_signals
from pipeline.embed import Embedder, colour_layout, embedder, embedding_input, grey_layout
from pipeline.junk import (
    Content,
    is_low_detail,
    registered_checks,
    score_column,
    score_image,
    verdict,
)
from pipeline.junk_model import junk_probability, load_model
from pipeline.overrides import DROP, KEEP, OVERRIDE, OVERRIDE_NOTE
from pipeline.tables import KEPT, REJECTED, work_schema

if TYPE_CHECKING:
    import ray

    # What embeds a batch: the run's shared network (`pipeline.embed_task`), an embedder
    # of its own (`pipeline.embed_stage`'s actors), or None: loaded from the weights setting.
    Network = ray.ObjectRef | Embedder | None

log = logging.getLogger(__name__)

THUMBNAIL_QUALITY = 80
# Set by `signals` and consumed by `normalise_batch`, which embeds a batch at once.
EMBEDDING_INPUT = "_embedding_input"
CONTENT_COLUMN = score_column(Content.name)


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
    """Per-channel mean and mean of squares in [0, 1], for the data set's Normalize.

    ImageStat works from the histogram: ~20x cheaper than a float copy of the pixels."""
    stat = ImageStat.Stat(image)
    pixels = image.width * image.height
    return ([m / 255.0 for m in stat.mean], [s2 / pixels / (255.0 * 255.0) for s2 in stat.sum2])


@dataclass
class Normalised:
    image: Image.Image  # RGB, longest side <= max_side: what the JPEG holds
    fields: dict[str, Any]  # the row's columns


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def thumbnail_jpeg(image: Image.Image, side: int) -> bytes:
    """A small preview for the review page, stored with every decodable row."""
    small = image.copy()
    small.thumbnail((side, side), Image.Resampling.BILINEAR)
    return encode_jpeg(small, THUMBNAIL_QUALITY)


def normalise(data: bytes, cfg: NormalizeConfig) -> Normalised:
    """The per-file format work: decode safely, shrink, re-encode; raises Rejected."""
    decoded = decode_within(data, decode_limits(cfg), cfg.max_side)
    image = decoded.image
    jpeg = encode_jpeg(image, cfg.jpeg_quality)
    mean, sqmean = channel_moments(image)
    return Normalised(
        image,
        {
            "source_format": decoded.source_format,
            "source_width": decoded.width,
            "source_height": decoded.height,
            "frames": decoded.frames,
            "image": jpeg,
            "thumbnail": thumbnail_jpeg(image, cfg.thumbnail_side),
            "sha256": pixel_sha256(image),
            "width": image.width,
            "height": image.height,
            "image_bytes": len(jpeg),
            "channel_mean": mean,
            "channel_sqmean": sqmean,
        },
    )


def normalise_bytes(data: bytes, cfg: NormalizeConfig) -> dict[str, Any]:
    """normalise(), columns only: the unit the benchmarks and format tests measure."""
    return normalise(data, cfg).fields


def signals(normalised: Normalised, cfg: CleanConfig) -> dict[str, Any]:
    """Perceptual hash and junk scores of the normalised image."""
    fields = normalised.fields
    meta = {k: fields[k] for k in ("source_width", "source_height", "source_format")}
    scores = score_image(normalised.image, meta, cfg.junk)
    phash, stability = hash_signals(normalised.image, cfg.dedup.hash_kind)
    verification = {}
    if cfg.dedup.verified:
        verification = {
            "colour_layout": colour_layout(normalised.image),
            "grey_layout": grey_layout(normalised.image),
            EMBEDDING_INPUT: embedding_input(normalised.image, cfg.dedup.embedding_side),
        }
    return {
        "phash": phash,
        "hash_stability": stability,
        "low_detail": is_low_detail(scores, cfg.junk),
        **scores,  # junk_<check> columns
        **verification,
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
        "group": item.get("group"),
        "seen_order": item.get("seen_order"),
        OVERRIDE: item.get(OVERRIDE),
        OVERRIDE_NOTE: item.get(OVERRIDE_NOTE),
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


def normalise_item(item: dict[str, Any], data: bytes | Exception, cfg: CleanConfig) -> dict:
    """One snapshot row plus its bytes (or read error) into one output row."""
    row = _source_row(item)
    if isinstance(data, Exception):
        return _rejection(row, Reason.READ_ERROR, f"{type(data).__name__}: {data}")
    if len(data) != item["size"]:
        return _rejection(
            row, Reason.SOURCE_CHANGED, f"listed {item['size']} bytes, read {len(data)}"
        )
    try:
        normalised = normalise(data, cfg.normalize)
        row = {**row, **normalised.fields, **signals(normalised, cfg)}
    except Rejected as rej:
        return _rejection(row, rej.reason, rej.detail)
    except Exception as exc:  # noqa: BLE001 - the file is recorded, the job goes on
        log.exception("unexpected error normalising %s", item["source_uri"])
        return _rejection(row, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    if row[OVERRIDE] == DROP:
        row.pop(EMBEDDING_INPUT, None)  # a person dropped it: nothing to embed or score
        return _rejection(row, Reason.OVERRIDE, f"override: {row[OVERRIDE_NOTE] or 'drop'}")
    return {**row, "status": KEPT}  # junk is decided per batch, once every row is embedded


def judge_junk(row: dict[str, Any], cfg: CleanConfig) -> dict[str, Any]:
    """The junk verdict on a decoded, scored row; a person's "keep" overrides it (the
    scores stay, so the review page still shows what a rule thought)."""
    if row["status"] != KEPT or row.get(OVERRIDE) == KEEP:
        return row
    junk_reason, junk_score = verdict(row, cfg.junk)
    if not junk_reason:
        return row
    return _rejection({**row, "score": junk_score}, junk_reason, f"score {junk_score:.4g}")


def normalise_batch(
    batch: pa.Table,
    cfg: CleanConfig,
    features: ray.ObjectRef | None = None,
    embed_later: bool = False,
) -> pa.Table:
    """Ray Data map_batches function: snapshot rows in, normalised rows out (same count).
    `features`: the run's embedding network (`pipeline.embed_task`); None: this process
    loads it from the weights setting. `embed_later`: the rows leave unjudged, with their
    embedding inputs, for the embedding stage (`pipeline.embed_stage`: on GPUs, say)."""
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
                out.append(normalise_item(item, data, cfg))
    if embed_later:
        from pipeline.embed_stage import pending_table  # it imports this module

        return pending_table(out, cfg)
    return judged_table(out, cfg, features)


def judged_table(
    rows: list[dict[str, Any]], cfg: CleanConfig, features: Network = None
) -> pa.Table:
    """The rows judged (`judge_batch`) as a work table, with the embeddings of the rows
    still kept (only they are compared); what the normalise and the embedding stage emit."""
    rows, vectors, todo = judge_batch(rows, cfg, features)
    table = pa.Table.from_pylist(rows, schema=work_schema(score_columns(cfg)))
    kept = [j for j, i in enumerate(todo) if rows[i]["status"] == KEPT]
    return with_embeddings(table, vectors[kept], [todo[j] for j in kept], len(rows))


def judge_batch(
    rows: list[dict[str, Any]], cfg: CleanConfig, features: Network = None
) -> tuple[list[dict[str, Any]], np.ndarray, list[int]]:
    """Embed every decodable row once (one batched pass), score what it shows, then
    give every row its junk verdict: (rows, embeddings, the rows they belong to)."""
    inputs = [row.pop(EMBEDDING_INPUT, None) for row in rows]
    vectors, todo = embed_inputs(inputs, cfg, features)
    add_content_scores(rows, vectors, todo, cfg)
    return [judge_junk(row, cfg) for row in rows], vectors, todo


def embed_inputs(
    inputs: list[np.ndarray | None], cfg: CleanConfig, features: Network = None
) -> tuple[np.ndarray, list[int]]:
    """Embed every decodable row once, in one batched pass (a CNN costs far less per
    image in batches): (vectors, the row positions they belong to)."""
    todo = [i for i, x in enumerate(inputs) if x is not None]
    if not todo or not cfg.dedup.verified:
        return np.zeros((0, 0), np.float16), []
    if isinstance(features, Embedder):  # the embedding stage's actor holds its own
        embed = features
    elif features is None:
        embed = embedder(cfg.dedup.embedding_weights)
    else:
        from pipeline.embed_task import shared_embedder  # Ray: only where a run shares it

        embed = shared_embedder(features)
    return embed([inputs[i] for i in todo]), todo


def add_content_scores(
    rows: list[dict[str, Any]], vectors: np.ndarray, todo: list[int], cfg: CleanConfig
) -> None:
    """Set `junk_content` (the learned classifier's P(junk)) on the embedded rows; the
    others keep NaN, which never flags (no embedding: the content check is off)."""
    if not todo:
        return
    if load_model(cfg.junk.junk_model).embedding_side != cfg.dedup.embedding_side:
        return  # fitted on another input size: its scores would mean nothing (config check)
    probability = junk_probability(vectors, [rows[i] for i in todo], cfg.junk.junk_model)
    for i, p in zip(todo, probability, strict=True):
        rows[i][CONTENT_COLUMN] = float(p)


def with_embeddings(table: pa.Table, vectors: np.ndarray, rows: list[int], n: int) -> pa.Table:
    """Fill the `embedding` column of `rows` (positions in a table of n rows)."""
    if not rows:
        return table
    dim = vectors.shape[1]
    offsets = np.zeros(n + 1, dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    lengths[rows] = dim
    np.cumsum(lengths, out=offsets[1:])
    mask = pa.array(lengths == 0)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(vectors.ravel()), mask=mask)
    index = table.schema.get_field_index("embedding")
    return table.set_column(index, table.schema.field(index), column)


def score_columns(cfg: CleanConfig) -> list[str]:
    return [score_column(name) for name in registered_checks()]


def _fetch(fs: AbstractFileSystem, uri: str) -> bytes | Exception:
    """Whole-object read; errors are returned, not raised (cat_file: no glob expansion).
    On S3 one GET per file: s3fs's cat_file otherwise first asks for the object's size
    (a HEAD request, as much CPU as the GET) to split large objects into ranged reads."""
    single = {"max_concurrency": 1} if getattr(fs, "max_concurrency", 1) > 1 else {}
    try:
        return fs.cat_file(fs._strip_protocol(uri), **single)
    except Exception as exc:  # noqa: BLE001 - recorded as read_error for this file only
        return exc

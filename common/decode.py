"""Turn untrusted bytes into an upright RGB Pillow image, or say exactly why not.

Shared by the cleaning job and the Lambda handler so that both apply the same rules:
the format comes from the content (never the file name), the pixel limit is checked
on the header before any pixel is decoded, large JPEGs decode at reduced scale, EXIF
orientation is applied and alpha is flattened onto a fixed background.
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.reasons import Reason, Rejected
from common.svg import looks_like_svg, rasterize_svg

SVG_FORMAT = "SVG"
# EXIF orientations that swap width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}
# Signatures of formats that are images but that this build cannot decode.
_KNOWN_UNSUPPORTED = {
    b"ftypheic": "HEIC",
    b"ftypheix": "HEIC",
    b"ftypmif1": "HEIF",
    b"ftypavif": "AVIF",
    b"ftypavis": "AVIF",
    b"ftypjxl ": "JPEG XL",
}


@dataclass(frozen=True)
class DecodeLimits:
    """What a decode may cost; the defaults are Pillow's own bomb limit."""

    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485
    min_side: int = 1
    allow_svg: bool = True
    max_svg_bytes: int = 5_000_000
    background: tuple[int, int, int] = (255, 255, 255)


@dataclass
class Decoded:
    image: Image.Image  # RGB, upright, possibly reduced by JPEG draft
    source_format: str  # detected from content, e.g. "JPEG", "PNG", "SVG"
    width: int  # upright size of the source before any reduction
    height: int
    frames: int


def describe_non_image(data: bytes) -> str:
    """A short human hint of what a non-image file is, for the rejection detail."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "content is HTML"
    if head.startswith(b"%pdf"):
        return "content is PDF"
    if head.startswith(b"{") or head.startswith(b"["):
        return "content looks like JSON"
    try:
        data[:512].decode("utf-8")
        return "content is text"
    except UnicodeDecodeError:
        return f"unrecognised binary content starting {data[:8].hex()}"


def sniff_unsupported(data: bytes) -> str | None:
    """Name an image format we recognise but cannot decode, else None."""
    brand = data[4:12]
    return _KNOWN_UNSUPPORTED.get(brand)


def _upright(image: Image.Image, header_size: tuple[int, int]) -> tuple[Image.Image, int, int]:
    """Apply EXIF orientation to a loaded image; also return the source's upright size.

    Only called after load(): for PNG, reading EXIF decodes the whole file.
    """
    width, height = header_size
    try:
        orientation = image.getexif().get(0x0112)
        upright = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose good pixels
        return image, width, height
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return upright, width, height


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float gray images into 8 bits instead of clipping."""
    arr = np.asarray(image)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = arr.max() if arr.size else 0.0
        arr = arr * 255.0 if 0 < peak <= 1.0 else arr
    else:
        arr = arr.astype(np.int64)
        if arr.size and arr.max() > 255:
            arr = arr >> 8
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Convert any Pillow mode to RGB, flattening transparency onto `background`."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        image = _to_8bit_gray(image)
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if image.mode == "P" and not has_alpha:
        return image.convert("RGB")
    if has_alpha:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


def _open_raster(data: bytes, limits: DecodeLimits) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected(Reason.DECOMPRESSION_BOMB, str(exc)) from exc
    except UnidentifiedImageError as exc:
        unsupported = sniff_unsupported(data)
        if unsupported:
            raise Rejected(Reason.UNSUPPORTED_FORMAT, f"{unsupported} is not decodable") from exc
        raise Rejected(Reason.NOT_AN_IMAGE, describe_non_image(data)) from exc
    except NotImplementedError as exc:  # e.g. a DDS pixel format Pillow does not implement
        raise Rejected(
            Reason.UNSUPPORTED_FORMAT, str(exc) or "format variant not implemented"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - plugins raise many types on hostile headers
        # Pillow identified a header but could not even parse it.
        raise Rejected(
            Reason.UNDECODABLE, f"header unreadable: {type(exc).__name__}: {exc}"
        ) from exc


def _frame_count(image: Image.Image) -> int:
    """Frames in the file; counting walks a multi-frame file, which can fail on its own."""
    try:
        return int(getattr(image, "n_frames", 1))
    except Exception:  # noqa: BLE001 - a broken later frame does not spoil the first
        return 1


def _load(image: Image.Image) -> None:
    """Decode pixels, mapping Pillow's many exception types onto our vocabulary."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected(Reason.DECOMPRESSION_BOMB, str(exc)) from exc
    except EOFError as exc:
        raise Rejected(Reason.TRUNCATED, str(exc) or "unexpected end of file") from exc
    except zlib.error as exc:
        raise Rejected(Reason.UNDECODABLE, f"corrupt compressed data: {exc}") from exc
    except OSError as exc:
        message = str(exc)
        if "truncated" in message:
            raise Rejected(Reason.TRUNCATED, message) from exc
        if "not supported" in message or "ghostscript" in message.lower():
            raise Rejected(Reason.UNSUPPORTED_FORMAT, message) from exc
        raise Rejected(Reason.UNDECODABLE, message) from exc
    except NotImplementedError as exc:
        raise Rejected(
            Reason.UNSUPPORTED_FORMAT, str(exc) or "format variant not implemented"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - SyntaxError, IndexError, MemoryError, ...
        raise Rejected(Reason.UNDECODABLE, f"{type(exc).__name__}: {exc}") from exc


def decode_image(data: bytes, limits: DecodeLimits, target_side: int | None = None) -> Decoded:
    """Decode `data` into an upright RGB image no smaller than `target_side` where possible.

    `target_side` lets JPEG decode at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) when
    the caller will shrink anyway: far less memory and time for camera-size files.
    """
    if not data:
        raise Rejected(Reason.EMPTY, "zero bytes")
    if looks_like_svg(data):
        return _decode_svg(data, limits, target_side)
    image = _open_raster(data, limits)
    source_format = image.format or "UNKNOWN"
    width, height = image.size  # from the header: nothing decoded yet
    if width <= 0 or height <= 0:
        raise Rejected(Reason.UNDECODABLE, f"{source_format} header gives size {width}x{height}")
    if width * height > limits.max_pixels:
        raise Rejected(
            Reason.DECOMPRESSION_BOMB,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limits.max_pixels}",
        )
    if min(width, height) < limits.min_side:
        raise Rejected(Reason.TOO_SMALL, f"{width}x{height} is below {limits.min_side} px")
    frames = _frame_count(image)
    if target_side and source_format in ("JPEG", "MPO"):
        # Draft keeps both sides >= the request: ask for the shrunk size, not a square.
        scale = target_side / max(width, height)
        if scale < 1:
            image.draft(image.mode, (max(1, int(width * scale)), max(1, int(height * scale))))
    _load(image)
    upright, width, height = _upright(image, (width, height))
    return Decoded(to_rgb(upright, limits.background), source_format, width, height, frames)


def decode_within(data: bytes, limits: DecodeLimits, max_side: int) -> Decoded:
    """Decode, then shrink (Lanczos) so the longest side is at most `max_side`: the image
    the cleaning job stores, and what the Lambda feeds the model for the same bytes."""
    decoded = decode_image(data, limits, target_side=max_side)
    if max(decoded.image.size) > max_side:
        decoded.image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return decoded


def _decode_svg(data: bytes, limits: DecodeLimits, target_side: int | None) -> Decoded:
    if not limits.allow_svg:
        raise Rejected(Reason.UNSUPPORTED_FORMAT, "SVG is not accepted here")
    rendered = rasterize_svg(data, target_side or 1024, limits.max_svg_bytes)
    width, height = rendered.size
    if min(width, height) < limits.min_side:
        raise Rejected(Reason.TOO_SMALL, f"SVG renders at {width}x{height}")
    return Decoded(to_rgb(rendered, limits.background), SVG_FORMAT, width, height, 1)

"""Turn untrusted bytes into an upright RGB Pillow image, or say exactly why not.

Shared by the cleaning job and the Lambda handler so that both apply the same rules:
the format comes from the content (never the file name), the pixel limit is checked
on the header before any pixel is decoded, large JPEGs decode at reduced scale, EXIF
orientation is applied and alpha is flattened onto a fixed background.

Memory is bounded by design: `decode_bytes_per_pixel` gives what decoding one source
pixel of each Pillow mode costs at peak (the decoded buffer plus the conversion to
RGB), and an image whose pixels x that cost exceed `DecodeLimits.max_decode_bytes` is
refused from its header, before any pixel is decoded. Conversions never make 64-bit
copies: high bit depths narrow to 8 bits in strips, and grey images shrink before they
widen to RGB. A deployment sizes its budget from its memory (see `budget_for_memory`).
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.reasons import Reason, Rejected
from common.svg import RENDER_TIMEOUT_S, looks_like_svg, rasterize_svg

SVG_FORMAT = "SVG"
# EXIF orientations that swap width and height, and how to undo each (as ImageOps).
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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


# Peak bytes per source pixel that `decode_within` holds for each decoded mode: the
# decoded buffer, plus the larger of a transposed copy (EXIF orientation) and the
# conversion to RGB (alpha: an RGBA copy, the RGB canvas and the alpha mask). 16/32-bit
# and float grey narrow to 8 bits in strips before any copy, and grey shrinks before it
# widens to RGB: the decoded buffer plus ~2 bytes.
# Measured growth per pixel (scripts/bench/decode_memory.py, 36 MP, fixed costs included):
# I;16 3.2, F 5.4, RGB 4.3, RGBA 9.0, LA 13.0, L 1.1, CMYK 8.1 (at 81-88 MP: I;16 3.1,
# F 5.2); the table adds margin.
DECODE_BYTES_PER_PIXEL: dict[str, float] = {
    "1": 5, "L": 2, "P": 5, "RGB": 6, "YCbCr": 7, "LAB": 7, "HSV": 7, "CMYK": 10,
    "I;16": 5, "I;16L": 5, "I;16B": 5, "I;16N": 5, "I": 6, "F": 6,
    "RGBA": 10, "RGBa": 14, "LA": 14, "La": 14, "PA": 14,
}  # fmt: skip
# Transparency given by a tRNS/`transparency` key: converted through RGBA first.
_KEYED_ALPHA_EXTRA = 8.0
# Any mode not in the table (none of Pillow's readers produce one today).
WORST_BYTES_PER_PIXEL = 14.0
# Default decode budget: a normalise task's Ray worker holds ~450 MB before it decodes
# (Ray, torch, the embedding model), so one task stays under 1 GB (budget_for_memory(
# 1 GiB, 450 MB) ~ 510 MiB). It admits a float
# 9000x9000 TIFF and 89 MP of RGB, 53 MP of RGBA, 38 MP of grey+alpha.
DEFAULT_DECODE_BUDGET = 512 * 2**20
# Strips of at most this many pixels when narrowing high bit depths (a few float64
# temporaries of a strip: ~8 MB).
_STRIP_PIXELS = 1 << 18
# What a decode holds besides its pixels (strips, codec buffers, the file's bytes).
DECODE_FIXED_BYTES = 64 * 2**20


def decode_bytes_per_pixel(mode: str, keyed_transparency: bool = False) -> float:
    """Peak bytes per source pixel that decoding an image of `mode` costs (see above)."""
    cost = DECODE_BYTES_PER_PIXEL.get(mode, WORST_BYTES_PER_PIXEL)
    return cost + (_KEYED_ALPHA_EXTRA if keyed_transparency else 0.0)


def budget_for_memory(memory_bytes: int, baseline_bytes: int) -> int:
    """The decode budget of a process with `memory_bytes` in all, of which the runtime
    itself (interpreter, libraries, model) already holds `baseline_bytes`.

    The rule: max pixels x bytes per pixel + DECODE_FIXED_BYTES < memory - baseline.
    Pass the result as `DecodeLimits.max_decode_bytes`; the pixel limit of the
    costliest mode is then `max_decode_bytes // WORST_BYTES_PER_PIXEL`."""
    return max(0, memory_bytes - baseline_bytes - DECODE_FIXED_BYTES)


@dataclass(frozen=True)
class DecodeLimits:
    """What a decode may cost; the pixel default is Pillow's own bomb limit, and
    `max_decode_bytes` bounds memory per mode (see DECODE_BYTES_PER_PIXEL)."""

    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485
    max_decode_bytes: int = DEFAULT_DECODE_BUDGET
    min_side: int = 1
    allow_svg: bool = True
    max_svg_bytes: int = 5_000_000
    svg_timeout_s: float = RENDER_TIMEOUT_S
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


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of a loaded image (1: upright). For PNG, reading EXIF needs
    the whole file decoded, hence after load()."""
    try:
        return int(image.getexif().get(0x0112) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose good pixels
        return 1


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation; an upright image is returned as it is, not copied."""
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _strips(image: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(top row, pixels) of horizontal strips: never a full-size array copy."""
    rows = max(1, _STRIP_PIXELS // max(1, image.width))
    for top in range(0, image.height, rows):
        bottom = min(image.height, top + rows)
        yield top, np.asarray(image.crop((0, top, image.width, bottom)))


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float grey images into 8 bits instead of clipping.

    Two passes over strips (the peak, then the conversion) into one 8-bit buffer: the
    memory is the source plus one byte per pixel, whatever the depth."""
    is_float = image.mode == "F"

    def widened(strip: np.ndarray) -> np.ndarray:
        if is_float:
            return np.nan_to_num(strip.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        return strip.astype(np.int64)

    peak = max((float(widened(s).max()) for _, s in _strips(image) if s.size), default=0.0)
    out = np.empty((image.height, image.width), np.uint8)
    for top, strip in _strips(image):
        values = widened(strip)
        if is_float and 0 < peak <= 1.0:
            values = values * 255.0
        elif not is_float and peak > 255:
            values = values >> 8
        out[top : top + strip.shape[0]] = np.clip(values, 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _narrow(image: Image.Image) -> Image.Image:
    """High bit depths down to 8-bit grey; other modes as they are."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        return _to_8bit_grey(image)
    return image


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Convert any Pillow mode to RGB, flattening transparency onto `background`."""
    image = _narrow(image)
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if image.mode == "P" and not has_alpha:
        return image.convert("RGB")
    if has_alpha:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
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


def _check_memory(image: Image.Image, limits: DecodeLimits) -> None:
    """Refuse, from the header, an image whose decode would exceed the memory budget."""
    width, height = image.size
    keyed = "transparency" in image.info and image.mode not in _ALPHA_MODES
    cost = decode_bytes_per_pixel(image.mode, keyed)
    need = int(width * height * cost)
    if need > limits.max_decode_bytes:
        raise Rejected(
            Reason.DECOMPRESSION_BOMB,
            f"{width}x{height} {image.mode} needs ~{need // 2**20} MiB to decode "
            f"({cost:g} bytes/pixel), over the budget of {limits.max_decode_bytes // 2**20} MiB",
        )


def decode_image(data: bytes, limits: DecodeLimits, target_side: int | None = None) -> Decoded:
    """Decode `data` into an upright RGB image no smaller than `target_side` where possible.

    `target_side` lets JPEG decode at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) when
    the caller will shrink anyway: far less memory and time for camera-size files.
    """
    if not data:
        raise Rejected(Reason.EMPTY, "zero bytes")
    if looks_like_svg(data):
        return _decode_svg(data, limits, target_side)
    decoded = _decode_raster(data, limits, target_side)
    decoded.image = to_rgb(decoded.image, limits.background)
    return decoded


def _decode_raster(data: bytes, limits: DecodeLimits, target_side: int | None) -> Decoded:
    """Decode to an upright image in a compact mode (high bit depths narrowed to 8-bit
    grey), not yet widened to RGB."""
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
    _check_memory(image, limits)  # after draft: the size that will really be decoded
    _load(image)
    orientation = _orientation(image)
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    # Narrow first: a transposed copy of 8-bit grey costs 1 byte/pixel, not 4.
    upright = _upright(_narrow(image), orientation)
    return Decoded(upright, source_format, width, height, frames)


def decode_within(data: bytes, limits: DecodeLimits, max_side: int) -> Decoded:
    """Decode, then shrink (Lanczos) so the longest side is at most `max_side`: the image
    the cleaning job stores, and what the Lambda feeds the model for the same bytes.

    Grey images shrink before they widen to RGB: the same pixels (the three channels
    are equal and resampled alike) for a third of the memory."""
    if not data:
        raise Rejected(Reason.EMPTY, "zero bytes")
    if looks_like_svg(data):
        decoded = _decode_svg(data, limits, max_side)
    else:
        decoded = _decode_raster(data, limits, max_side)
        grey = decoded.image.mode == "L" and "transparency" not in decoded.image.info
        if grey and max(decoded.image.size) > max_side:
            decoded.image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        decoded.image = to_rgb(decoded.image, limits.background)
    if max(decoded.image.size) > max_side:
        decoded.image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return decoded


def _decode_svg(data: bytes, limits: DecodeLimits, target_side: int | None) -> Decoded:
    if not limits.allow_svg:
        raise Rejected(Reason.UNSUPPORTED_FORMAT, "SVG is not accepted here")
    rendered = rasterize_svg(data, target_side or 1024, limits.max_svg_bytes, limits.svg_timeout_s)
    width, height = rendered.size
    if min(width, height) < limits.min_side:
        raise Rejected(Reason.TOO_SMALL, f"SVG renders at {width}x{height}")
    return Decoded(to_rgb(rendered, limits.background), SVG_FORMAT, width, height, 1)

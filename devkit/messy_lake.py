"""Generated messy files with the outcome the cleaning job must give each one.

Every case is made in code (no downloads, no ../shared), so tests run on a fresh
clone: each image format Pillow decodes, EXIF rotation, CMYK, animation, alpha,
16-bit, SVG (including one that tries to read a local file), same-stem files, and
the broken ones: zero bytes, truncated, corrupt, a decompression bomb, text and HTML
saved as .jpg, an undecodable HEIC signature, an image below the minimum size.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

KEPT, REJECTED = "kept", "rejected"


@dataclass(frozen=True)
class Case:
    path: str  # relative to the lake root: "<class>/<file>"
    data: bytes
    status: str  # "kept" or "rejected"
    reason: str | None = None  # for rejections
    source_format: str | None = None  # detected format, for kept files
    frames: int = 1
    portrait: bool | None = None  # kept output must be taller than wide (True) or not


# The `clean` flags that keep the certain junk rules only. photo() below draws abstract
# colour blobs, not photographs of a thing, so the learned content check rightly drops
# many of them once real embedding weights are present: tests of the job's mechanics
# (splits, duplicates, reruns) pass these; tests/test_junk.py tests the content check.
CERTAIN_JUNK_RULES = ["--junk-checks", "vector_source,too_small,near_uniform,too_dark"]
# The pixel rules that were the defaults before the learned content check: what the
# planted junk of devkit.planted (a drawn logo, a banner, a text page, an icon) was made
# to trip, with or without embedding weights on the machine.
PIXEL_JUNK_RULES = [
    "--junk-checks",
    "vector_source,aspect_ratio,too_small,near_uniform,too_dark,few_colors,flat_graphics,too_bright",
]


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: a seed-specific layout of soft blobs over a gradient, plus
    sensor-like noise, so JPEG sizes are realistic and different seeds are not
    perceptual near-duplicates of each other."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / max(height, 1), x / max(width, 1)
    angle = rng.uniform(0, 2 * np.pi)
    base = rng.uniform(60, 190, 3) + 60 * (np.cos(angle) * x + np.sin(angle) * y)[..., None]
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.3)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        base = base + blob[..., None] * rng.uniform(-110, 110, 3)
    noise = rng.normal(0, 10, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored landscape (200x100) with orientation 6: upright it is portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo(200, 100, 3), "JPEG", exif=exif.tobytes())


def animated(fmt: str, frames: int, seed: int) -> bytes:
    images = [photo(96, 80, seed + i) for i in range(frames)]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def png_with_alpha() -> bytes:
    rgba = photo(120, 90, 5).convert("RGBA")
    alpha = np.zeros((90, 120), dtype=np.uint8)
    alpha[:, 60:] = 255
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return encode(rgba, "PNG")


def palette_png_with_transparency() -> bytes:
    image = photo(100, 100, 6).quantize(colors=16)
    return encode(image, "PNG", transparency=0)


def sixteen_bit_png() -> bytes:
    ramp = np.tile(np.linspace(0, 65535, 128, dtype=np.uint16), (96, 1))
    return encode(Image.fromarray(ramp), "PNG")


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (decoding would need GBs)."""
    png = encode(Image.new("L", (1, 1)), "PNG")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return png[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]


def corrupt_png() -> bytes:
    """Valid signature and header, IDAT replaced by bytes that are not zlib data."""
    good = encode(photo(64, 64, 7), "PNG")
    start = good.index(b"IDAT") + 4
    length = struct.unpack(">I", good[start - 8 : start - 4])[0]
    garbage = bytes(range(256)) * (length // 256 + 1)
    return good[:start] + garbage[:length] + good[start + length :]


def svg(body: str, width: int = 240, height: int = 160) -> bytes:
    return (
        f'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
        f'xmlns:xlink="http://www.w3.org/1999/xlink" width="{width}" height="{height}">'
        f"{body}</svg>"
    ).encode()


def mpo() -> bytes:
    return encode(photo(120, 90, 8), "MPO", save_all=True, append_images=[photo(120, 90, 9)])


def messy_cases(local_file_for_svg: str = "/etc/hostname") -> list[Case]:
    """Every case once; classes are `birds`, `drones` and `planes`."""
    jpeg = encode(photo(160, 120, 1), "JPEG", quality=90)
    return [
        Case("birds/baseline.jpg", jpeg, KEPT, source_format="JPEG"),
        Case(
            "birds/progressive.jpeg",
            encode(photo(160, 120, 2), "JPEG", progressive=True),
            KEPT,
            source_format="JPEG",
        ),
        Case(
            "birds/cmyk.jpg",
            encode(photo(150, 100, 4).convert("CMYK"), "JPEG"),
            KEPT,
            source_format="JPEG",
        ),
        Case("birds/rotated.jpg", exif_rotated_jpeg(), KEPT, source_format="JPEG", portrait=True),
        Case(
            "birds/camera.JPG",
            encode(photo(2400, 1600, 10), "JPEG", quality=92),
            KEPT,
            source_format="JPEG",
            portrait=False,
        ),
        Case("birds/alpha.png", png_with_alpha(), KEPT, source_format="PNG"),
        Case("birds/palette.png", palette_png_with_transparency(), KEPT, source_format="PNG"),
        Case("birds/deep.png", sixteen_bit_png(), KEPT, source_format="PNG"),
        Case(
            "birds/gray_alpha.png",
            encode(photo(80, 80, 11).convert("LA"), "PNG"),
            KEPT,
            source_format="PNG",
        ),
        Case("drones/animated.gif", animated("GIF", 3, 30), KEPT, source_format="GIF", frames=3),
        Case(
            "drones/gif_in_disguise.jpg",
            animated("GIF", 2, 40),
            KEPT,
            source_format="GIF",
            frames=2,
        ),
        Case("drones/animated.png", animated("PNG", 2, 50), KEPT, source_format="PNG", frames=2),
        Case("drones/still.webp", encode(photo(120, 90, 12), "WEBP"), KEPT, source_format="WEBP"),
        Case("drones/animated.webp", animated("WEBP", 2, 60), KEPT, source_format="WEBP", frames=2),
        Case("drones/bitmap.bmp", encode(photo(90, 70, 13), "BMP"), KEPT, source_format="BMP"),
        Case(
            "drones/pages.tif",
            encode(photo(90, 70, 14), "TIFF", save_all=True, append_images=[photo(90, 70, 15)]),
            KEPT,
            source_format="TIFF",
            frames=2,
        ),
        Case("drones/pixmap.ppm", encode(photo(90, 70, 16), "PPM"), KEPT, source_format="PPM"),
        Case(
            "drones/graymap.pgm",
            encode(photo(90, 70, 17).convert("L"), "PPM"),
            KEPT,
            source_format="PPM",
        ),
        Case("drones/icon.ico", encode(photo(64, 64, 18), "ICO"), KEPT, source_format="ICO"),
        Case("drones/stereo.mpo", mpo(), KEPT, source_format="MPO", frames=2),
        Case(
            "planes/drawing.svg",
            svg(
                '<rect x="10" y="10" width="200" height="120" '
                'fill="#3366cc"/><circle cx="120" cy="80" r="40" '
                'fill="orange"/>'
            ),
            KEPT,
            source_format="SVG",
        ),
        Case(
            "planes/sneaky.svg",
            svg(
                f'<rect width="240" height="160" fill="green"/><image '
                f'xlink:href="{local_file_for_svg}" width="240" '
                f'height="160"/>'
            ),
            KEPT,
            source_format="SVG",
        ),
        # Same stem, different content and extension: both kept, under different names.
        Case("planes/plane.jpg", encode(photo(140, 100, 19), "JPEG"), KEPT, source_format="JPEG"),
        Case("planes/plane.png", encode(photo(140, 100, 20), "PNG"), KEPT, source_format="PNG"),
        Case("planes/empty.jpg", b"", REJECTED, reason="empty"),
        Case("planes/truncated.jpg", jpeg[: len(jpeg) // 2], REJECTED, reason="truncated"),
        Case("planes/corrupt.png", corrupt_png(), REJECTED, reason="undecodable"),
        Case("planes/bomb.png", bomb_png(), REJECTED, reason="decompression_bomb"),
        Case(
            "planes/notes.jpg",
            b"these are not the pixels you are looking for\n" * 20,
            REJECTED,
            reason="not_an_image",
        ),
        Case(
            "planes/page.jpg",
            b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
            REJECTED,
            reason="not_an_image",
        ),
        Case(
            "planes/phone.heic",
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64,
            REJECTED,
            reason="unsupported_format",
        ),
        Case("planes/speck.png", encode(photo(12, 12, 21), "PNG"), REJECTED, reason="too_small"),
        Case("stray-at-root.jpg", jpeg, REJECTED, reason="no_class"),
    ]


def as_files(cases: list[Case]) -> dict[str, bytes]:
    return {case.path: case.data for case in cases}

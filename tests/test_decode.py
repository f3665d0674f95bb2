"""The per-file rules of normalisation, without Ray or S3 (fast)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from common.decode import DecodeLimits, decode_image
from common.reasons import Reason, Rejected
from devkit.messy_lake import KEPT, bomb_png, encode, messy_cases, photo, svg
from pipeline.config import NormalizeConfig
from pipeline.normalize import normalise_bytes

CONFIG = NormalizeConfig()
CASES = [c for c in messy_cases() if "/" in c.path]  # no_class is decided by the listing


@pytest.mark.parametrize("case", CASES, ids=[c.path for c in CASES])
def test_each_messy_file_gets_its_outcome(case):
    if case.status == KEPT:
        row = normalise_bytes(case.data, CONFIG)
        assert row["source_format"] == case.source_format
        assert row["frames"] == case.frames
        out = Image.open(io.BytesIO(row["image"]))
        assert out.format == "JPEG" and out.mode == "RGB"
        assert out.size == (row["width"], row["height"])
        assert max(out.size) <= CONFIG.max_side
        if case.portrait is not None:
            assert (out.height > out.width) == case.portrait
    else:
        with pytest.raises(Rejected) as info:
            normalise_bytes(case.data, CONFIG)
        assert info.value.reason == case.reason
        assert info.value.detail


def test_format_comes_from_content_not_extension():
    gif = encode(photo(64, 64), "GIF")
    assert normalise_bytes(gif, CONFIG)["source_format"] == "GIF"


def test_exif_rotation_is_applied_to_pixels():
    # Upright image: top half red, bottom half blue; stored rotated with orientation 6.
    upright = np.zeros((200, 100, 3), np.uint8)
    upright[:100, :, 0] = 255
    upright[100:, :, 2] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    row = normalise_bytes(encode(stored, "JPEG", exif=exif.tobytes(), quality=95), CONFIG)
    pixels = np.asarray(Image.open(io.BytesIO(row["image"])))
    assert pixels.shape[:2] == (200, 100)
    assert pixels[20, 50, 0] > 200 and pixels[20, 50, 2] < 60  # red on top
    assert pixels[180, 50, 2] > 200 and pixels[180, 50, 0] < 60  # blue below


def test_alpha_is_flattened_onto_the_configured_background():
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # fully transparent red
    data = encode(rgba, "PNG")
    white = np.asarray(Image.open(io.BytesIO(normalise_bytes(data, CONFIG)["image"])))
    assert white.min() > 245
    black_cfg = NormalizeConfig(background=(0, 0, 0))
    black = np.asarray(Image.open(io.BytesIO(normalise_bytes(data, black_cfg)["image"])))
    assert black.max() < 10


def test_sixteen_bit_png_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 128, dtype=np.uint16), (64, 1))
    row = normalise_bytes(encode(Image.fromarray(ramp), "PNG"), CONFIG)
    grey = np.asarray(Image.open(io.BytesIO(row["image"])).convert("L"), dtype=np.int32)
    assert grey[:, :8].mean() < 20 and grey[:, -8:].mean() > 235
    assert 100 < grey[:, 60:68].mean() < 160  # the middle of the ramp stays mid-grey


def test_large_jpeg_decodes_at_reduced_scale():
    data = encode(photo(2400, 1600, 1), "JPEG")
    decoded = decode_image(data, DecodeLimits(), target_side=512)
    assert decoded.image.size == (600, 400)  # JPEG draft at 1/4: never the full 3.8 MP
    assert (decoded.width, decoded.height) == (2400, 1600)


def test_bomb_is_rejected_from_the_header_alone():
    limits = DecodeLimits(max_pixels=1_000_000)
    with pytest.raises(Rejected) as info:
        decode_image(bomb_png(2000, 2000), limits)
    assert info.value.reason == Reason.DECOMPRESSION_BOMB
    assert "4000000" in info.value.detail


def test_svg_cannot_read_local_files(tmp_path):
    red = tmp_path / "red.png"
    Image.new("RGB", (50, 50), (255, 0, 0)).save(red)
    data = svg(
        f'<rect width="240" height="160" fill="green"/>'
        f'<image xlink:href="{red}" width="240" height="160"/>'
        f'<image href="file://{red}" width="240" height="160"/>'
    )
    pixels = np.asarray(Image.open(io.BytesIO(normalise_bytes(data, CONFIG)["image"])))
    assert (pixels[..., 0] > 200).mean() == 0.0
    assert (pixels[..., 1] > 100).mean() > 0.9


def test_svg_with_entities_is_refused():
    data = (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="50" height="50">&a;</svg>'
    )
    with pytest.raises(Rejected) as info:
        normalise_bytes(data, CONFIG)
    assert info.value.reason == Reason.UNSUPPORTED_FORMAT


def test_svg_can_be_switched_off():
    data = svg('<rect width="100" height="100" fill="blue"/>')
    with pytest.raises(Rejected) as info:
        normalise_bytes(data, NormalizeConfig(rasterize_svg=False))
    assert info.value.reason == Reason.UNSUPPORTED_FORMAT


def test_same_pixels_same_name_whatever_the_container():
    image = photo(100, 80, 4)
    png = normalise_bytes(encode(image, "PNG"), CONFIG)["sha256"]
    bmp = normalise_bytes(encode(image, "BMP"), CONFIG)["sha256"]
    other = normalise_bytes(encode(photo(100, 80, 5), "PNG"), CONFIG)["sha256"]
    assert png == bmp != other


def test_never_upscales():
    row = normalise_bytes(encode(photo(100, 60), "PNG"), NormalizeConfig(max_side=512))
    assert (row["width"], row["height"]) == (100, 60)


def _reference_8bit(arr: np.ndarray) -> np.ndarray:
    """The former full-size 64-bit conversion, kept here as the definition of the result."""
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = arr.max() if arr.size else 0.0
        arr = arr * 255.0 if 0 < peak <= 1.0 else arr
    else:
        arr = arr.astype(np.int64)
        if arr.size and arr.max() > 255:
            arr = arr >> 8
    return np.clip(arr, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["I;16", "I", "F-unit", "F-wide", "F-nan"])
def test_strip_conversion_matches_the_full_size_one(kind, monkeypatch):
    from common import decode

    monkeypatch.setattr(decode, "_STRIP_PIXELS", 4096)  # many strips on a small image
    rng = np.random.default_rng(3)
    shape = (300, 257)
    arr = {
        "I;16": lambda: rng.integers(0, 65536, shape).astype(np.uint16),
        "I": lambda: rng.integers(-70_000, 70_000, shape).astype(np.int32),
        "F-unit": lambda: rng.random(shape).astype(np.float32),
        "F-wide": lambda: (rng.random(shape) * 400 - 50).astype(np.float32),
        "F-nan": lambda: np.where(rng.random(shape) < 0.1, np.nan, rng.random(shape)).astype(
            np.float32
        ),
    }[kind]()
    image = Image.fromarray(arr)
    assert image.mode == {"I;16": "I;16", "I": "I"}.get(kind, "F")
    got = np.asarray(decode._to_8bit_grey(image))
    assert np.array_equal(got, _reference_8bit(np.asarray(image)))

"""The evaluation transform shared by training and the Lambda handler."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from common.preprocess import EvalTransform, letterbox, pad_colour, raise_contrast

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)
SIZE = 64


def jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(width * height)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def test_output_is_normalised_chw_float():
    tensor = EvalTransform(SIZE, MEAN, STD).from_bytes(jpeg(300, 200))
    assert tensor.shape == (3, SIZE, SIZE)
    assert tensor.dtype == torch.float32


def test_aspect_ratio_is_kept_and_padding_normalises_to_zero():
    wide = Image.new("RGB", (200, 50), (255, 0, 0))
    boxed = letterbox(wide, SIZE, pad_colour(MEAN))
    pixels = np.asarray(boxed)
    rows = np.flatnonzero((pixels == (255, 0, 0)).all(axis=2).any(axis=1))
    assert len(rows) == SIZE // 4  # 200x50 -> 64x16, centred
    assert rows[0] == (SIZE - SIZE // 4) // 2
    tensor = EvalTransform(SIZE, MEAN, STD)(wide)
    pad_error = np.asarray(STD) ** -1 / 255  # 8-bit rounding of the mean colour
    assert (tensor[:, 0, :].abs().amax(dim=1).numpy() <= pad_error).all()


def test_same_bytes_give_the_same_tensor():
    data = jpeg(123, 77)
    transform = EvalTransform(SIZE, MEAN, STD)
    assert torch.equal(transform.from_bytes(data), transform.from_bytes(data))


def test_small_images_are_upscaled_to_the_input_size():
    tensor = EvalTransform(SIZE, MEAN, STD)(Image.new("RGB", (16, 32)))
    assert tensor.shape == (3, SIZE, SIZE)


def test_imports_neither_torchvision_nor_albumentations():
    """The Lambda image ships this module without them."""
    code = (
        "import sys, common.preprocess; "
        "print(sorted({'torchvision', 'albumentations', 'cv2'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def faint_speck_on_sky() -> np.ndarray:
    """A plain blue sky with a 3x3 object 12 grey levels darker: a distant airplane."""
    pixels = np.broadcast_to(np.asarray((90, 140, 200), np.uint8), (32, 32, 3)).copy()
    pixels[15:18, 15:18] -= 12
    return pixels


def test_contrast_gain_makes_a_faint_speck_stand_out_and_keeps_the_sky_colour():
    pixels = faint_speck_on_sky()
    raised = raise_contrast(pixels, 8.0).astype(int)
    depth = pixels[0, 0].astype(int) - pixels[16, 16]
    raised_depth = raised[0, 0] - raised[16, 16]
    assert (raised_depth >= 6 * depth).all()  # the gain, less the mean's pull
    assert np.abs(raised[0, 0] - pixels[0, 0]).max() <= 1  # the sky keeps its colour


def test_contrast_gain_leaves_full_range_photos_and_plain_images_alone():
    photo = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    photo[0, 0], photo[0, 1] = 0, 255  # black to white: nothing to stretch
    assert np.array_equal(raise_contrast(photo, 8.0), photo)
    blank = np.full((8, 8, 3), 128, np.uint8)
    assert np.array_equal(raise_contrast(blank, 8.0), blank)
    assert np.array_equal(raise_contrast(faint_speck_on_sky(), 1.0), faint_speck_on_sky())


def test_the_eval_transform_applies_the_contrast_gain_it_was_exported_with():
    """model.json carries the gain; the handler builds its transform from model.json."""
    image = Image.fromarray(faint_speck_on_sky())
    info = {"input_size": SIZE, "mean": MEAN, "std": STD}
    plain = EvalTransform.from_info(info)(image)
    raised = EvalTransform.from_info({**info, "contrast_gain": 8.0})(image)
    centre, corner = SIZE // 2, 2
    assert plain.shape == raised.shape == (3, SIZE, SIZE)
    plain_depth = plain[:, corner, corner] - plain[:, centre, centre]
    raised_depth = raised[:, corner, corner] - raised[:, centre, centre]
    assert (raised_depth > 4 * plain_depth).all()

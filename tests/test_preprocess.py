"""The evaluation transform shared by training and the Lambda handler."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from common.preprocess import EvalTransform, letterbox, pad_colour

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

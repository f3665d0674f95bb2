"""The evaluation transform: one function for training-time evaluation and the Lambda.

RGB image -> resize so the longest side is `input_size` (aspect kept, unlike the seed,
which stretched) -> pad to a square -> float CHW normalised by the data set's mean/std.

The padding is the data set's mean colour, so padded pixels normalise to exactly zero:
the network sees "no signal" there instead of a black frame whose strength depends on
the image's aspect ratio. The training augmentation (`train.presets`) pads with the same
colour.

Only numpy, Pillow and torch: the Lambda image ships this module without torchvision
or albumentations.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

MAX_PIXEL_VALUE = 255.0
# Bilinear with Pillow's antialiasing when shrinking: close to albumentations'
# LongestMaxSize (cv2 INTER_AREA/LINEAR) used in training, and deterministic.
RESAMPLE = Image.Resampling.BILINEAR
CHANNELS = 3


def pad_colour(mean: Sequence[float]) -> tuple[int, int, int]:
    """The data set's mean colour as 8-bit RGB: padding that normalises to ~zero."""
    r, g, b = (int(round(m * MAX_PIXEL_VALUE)) for m in mean)
    return r, g, b


def letterbox(image: Image.Image, input_size: int, fill: tuple[int, int, int]) -> Image.Image:
    """Resize so the longest side is `input_size` (keeping the aspect ratio), then pad
    the short side equally on both ends to a square of `fill` colour."""
    image = image.convert("RGB")
    width, height = image.size
    scale = input_size / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(size, RESAMPLE) if size != image.size else image
    canvas = Image.new("RGB", (input_size, input_size), fill)
    canvas.paste(resized, ((input_size - size[0]) // 2, (input_size - size[1]) // 2))
    return canvas


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """HWC uint8 -> CHW float32, scaled to [0, 1] then standardised per channel."""
    array = pixels.astype(np.float32) / MAX_PIXEL_VALUE
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


@dataclass(frozen=True)
class EvalTransform:
    """The evaluation transform with its parameters bound (picklable for Ray tasks)."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def array(self, image: Image.Image) -> np.ndarray:
        """CHW float32 numpy array (what Ray Data batches carry)."""
        boxed = letterbox(image, self.input_size, pad_colour(self.mean))
        return normalize(np.asarray(boxed), self.mean, self.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(self.array(image))

    def from_bytes(self, data: bytes) -> torch.Tensor:
        """Encoded image bytes (JPEG, PNG...) -> normalised tensor."""
        with Image.open(io.BytesIO(data)) as image:
            return self(image)


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image bytes -> HWC uint8 RGB array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))

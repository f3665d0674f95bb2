"""The evaluation transform: one function for training-time evaluation and the Lambda.

RGB image -> (optionally) contrast raised around the image's mean colour -> resize so
the longest side is `input_size` (aspect kept, unlike the seed, which stretched) -> pad
to a square -> float CHW normalised by the data set's mean/std.

The padding is the data set's mean colour, so padded pixels normalise to exactly zero:
the network sees "no signal" there instead of a black frame whose strength depends on
the image's aspect ratio. The training augmentation (`train.presets`) pads with the same
colour.

Only numpy, Pillow and torch: the Lambda image ships this module without torchvision
or albumentations.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

MAX_PIXEL_VALUE = 255.0
# Bilinear with Pillow's antialiasing when shrinking: close to albumentations'
# LongestMaxSize (cv2 INTER_AREA/LINEAR) used in training, and deterministic.
RESAMPLE = Image.Resampling.BILINEAR
CHANNELS = 3
# ITU-R BT.601 luma weights: the brightness whose range the contrast gain fills.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
NO_CONTRAST_GAIN = 1.0


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


def raise_contrast(pixels: np.ndarray, max_gain: float) -> np.ndarray:
    """Scale each pixel's difference from the image's mean colour so that the luminance
    range fills 0-255, by at most `max_gain` (never below 1: full-range photos are left
    alone).

    Why: a distant object on plain sky differs from it by a few grey levels, which the
    data set's normalisation leaves a faint speck; the same gain on R, G and B keeps the
    sky's colour, unlike a per-channel stretch. HWC uint8 -> HWC uint8."""
    if max_gain <= NO_CONTRAST_GAIN:
        return pixels
    array = pixels.astype(np.float32)
    luma = array @ LUMA_WEIGHTS
    spread = float(luma.max() - luma.min())
    gain = min(max_gain, MAX_PIXEL_VALUE / spread) if spread > 0 else NO_CONTRAST_GAIN
    if gain <= NO_CONTRAST_GAIN:
        return pixels
    mean = array.reshape(-1, array.shape[-1]).mean(axis=0)
    return np.clip(mean + (array - mean) * gain, 0, MAX_PIXEL_VALUE).round().astype(np.uint8)


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
    contrast_gain: float = NO_CONTRAST_GAIN

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> EvalTransform:
        """From a checkpoint's meta or a model.json (older ones have no contrast gain)."""
        mean, std = (tuple(float(x) for x in info[key]) for key in ("mean", "std"))
        return cls(
            int(info["input_size"]),
            (mean[0], mean[1], mean[2]),
            (std[0], std[1], std[2]),
            float(info.get("contrast_gain", NO_CONTRAST_GAIN)),
        )

    def array(self, image: Image.Image) -> np.ndarray:
        """CHW float32 numpy array (what Ray Data batches carry)."""
        if self.contrast_gain > NO_CONTRAST_GAIN:
            raised = raise_contrast(np.asarray(image.convert("RGB")), self.contrast_gain)
            image = Image.fromarray(raised)
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

"""The second near-duplicate signal: what `pipeline.dedup` verifies pHash candidates with.

Why: a 64-bit pHash cannot tell unrelated low-structure images apart (small objects
against plain sky collide at distance 0), and a slight crop moves it past any strict
threshold. So the search takes pHash candidates within a looser distance, and every
candidate pair must also agree on two signals computed once per image here, in the
normalise stage's Ray tasks, and stored in the work rows and the hash index (so
incremental runs verify new images against already-kept ones):

- `embedding`: the MobileNetV2 ImageNet backbone's globally pooled `features` output
  (1280 floats, L2-normalised, float16) of the image squashed to a small square: what
  is in the picture, robust to crops, re-encodes and brightness.
- `colour_layout`: the mean colour of each cell of a coarse grid: where the colours
  are. CNN features barely see colour, yet two clips of the same kind of drone differ
  mostly in their sky.
- `grey_layout`: a 24 x 24 grey thumbnail: where the edges and shading are. Frames of
  one clip seconds apart embed alike and share a sky, yet the object has moved; a
  re-encoded or rescaled copy keeps every pixel where it was (`grey_correlation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from common.backbone import NO_WEIGHTS, mobilenet_v2_backbone

if TYPE_CHECKING:
    from torch import nn

# torchvision's ImageNet statistics: what the backbone's weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXEL_VALUE = 255.0
# Images embedded per forward pass. On a CPU, 16: a batch's activations stay near the
# core's caches (at 112 px, 2.7 CPU-ms an image against 3.8 at 64, on one core of the
# 2-core AMD EPYC; the same embeddings to the bit as at 64: oneDNN runs the same kernels
# for any multiple of 8 from 16 up). A task's last, smaller batch may round ~1 % of its
# values differently, by one or two float16 steps (so did a last batch under 16 at 64;
# the decisions are the same). On a GPU, 64 (more images per kernel launch).
BATCH_SIZE = 16
GPU_BATCH_SIZE = 64
COLOUR_GRID = 4
GREY_GRID = 24
# Cells the grey-layout correlation shifts either way: a slight crop or an off-by-one
# resize moves content by up to a cell of a 24-cell grid.
GREY_SHIFT = 1
UNIT_NORM_FLOOR = 1e-6  # a flat window has no correlation with anything: it scores 0


def embedding_input(image: Image.Image, side: int) -> np.ndarray:
    """The image squashed to side x side RGB (uint8 HWC): near copies share an aspect
    ratio, so squashing loses nothing a letterbox would keep, and wastes no pixels."""
    return np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR))


def colour_layout(image: Image.Image, grid: int = COLOUR_GRID) -> list[float]:
    """Mean RGB of each cell of a grid x grid layout, in [0, 1] (3 * grid**2 floats)."""
    cells = image.convert("RGB").resize((grid, grid), Image.Resampling.BOX)
    return (np.asarray(cells, np.float32).ravel() / MAX_PIXEL_VALUE).tolist()


def grey_layout(image: Image.Image, grid: int = GREY_GRID) -> list[int]:
    """Grey level (0-255) of each cell of a grid x grid layout, row-major."""
    cells = image.convert("L").resize((grid, grid), Image.Resampling.BOX)
    return np.asarray(cells, np.uint8).ravel().tolist()


def _shifted_windows(layouts: np.ndarray, shift: int) -> np.ndarray:
    """(k, g*g) layouts -> (k, (2*shift+1)**2, w*w) windows, w = g - 2*shift, each one
    centred and scaled to unit length (dot product = Pearson correlation)."""
    k = len(layouts)
    side = math.isqrt(layouts.shape[1])
    width = side - 2 * shift
    grid = layouts.reshape(k, side, side).astype(np.float32)
    steps = range(2 * shift + 1)
    windows = np.stack(
        [grid[:, y : y + width, x : x + width].reshape(k, -1) for y in steps for x in steps],
        axis=1,
    )
    windows -= windows.mean(axis=2, keepdims=True)
    norm = np.linalg.norm(windows, axis=2, keepdims=True)
    return windows / np.maximum(norm, UNIT_NORM_FLOOR)


def grey_correlation(layout: np.ndarray, others: np.ndarray, shift: int = GREY_SHIFT) -> np.ndarray:
    """Pearson correlation of one grey layout's central window with each of `others`'
    windows shifted by up to `shift` cells, and the other way round; the best of both.
    Symmetric, so the order the clusterer meets two images in does not matter."""
    mine = _shifted_windows(layout[None], shift)[0]  # (shifts, w*w)
    theirs = _shifted_windows(others, shift)  # (k, shifts, w*w)
    centre = len(mine) // 2  # the unshifted window
    theirs_moved = (theirs @ mine[centre]).max(axis=1)
    mine_moved = (theirs[:, centre] @ mine.T).max(axis=1)
    return np.maximum(theirs_moved, mine_moved)


@dataclass
class Embedder:
    """The backbone in eval mode; call it with `embedding_input` arrays. `device`: where
    `features` lies ('cuda' in the GPU embedding stage, `pipeline.embed_stage`)."""

    features: nn.Module
    device: str = "cpu"

    @property
    def batch_size(self) -> int:
        return BATCH_SIZE if self.device == "cpu" else GPU_BATCH_SIZE

    def __call__(self, inputs: list[np.ndarray]) -> np.ndarray:
        """(n, 1280) float16, each row L2-normalised (cosine = dot product)."""
        import torch

        out = []
        mean = np.asarray(IMAGENET_MEAN, np.float32)
        std = np.asarray(IMAGENET_STD, np.float32)
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                batch = np.stack(inputs[start : start + self.batch_size]).astype(np.float32)
                batch = (batch / MAX_PIXEL_VALUE - mean) / std
                # NHWC as it comes: viewed as NCHW it is channels_last, the layout the
                # folded network runs fastest in (no transposed copy).
                x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2)
                pooled = self.features(x).mean(dim=(2, 3))
                out.append(torch.nn.functional.normalize(pooled, dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float16) if out else np.zeros((0, 0), np.float16)


@cache
def embedder(weights: str) -> Embedder:
    """One backbone per process (Ray reuses worker processes across tasks), loaded once.
    Raises common.backbone.WeightsUnavailable when `weights` cannot be loaded."""
    if weights == NO_WEIGHTS:
        raise ValueError("embedding is off (weights 'none'): nothing to embed with")
    model, _ = mobilenet_v2_backbone(weights)
    return Embedder(for_inference(model.features.eval()))


def for_inference(features: nn.Module) -> nn.Module:
    """Each BatchNorm folded into the convolution before it, weights in channels_last:
    the same function up to float rounding (embeddings are stored as float16, and agree
    to within one float16 step), at 1.4-1.8x less CPU per image on a 1-CPU task (measured
    when it was adopted, commit ace7c1c)."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(module: nn.Module) -> None:
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = torch.nn.Identity()
        for child in module.children():
            fold(child)

    fold(features)
    return features.to(memory_format=torch.channels_last)

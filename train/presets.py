"""The image transforms of training, after torchvision's references/classification/presets.

Training: the seed's augmentations with albumentations. Evaluation: the one function
the Lambda handler also uses (`common.preprocess.EvalTransform`), never a copy.

Every constant fill (padding, the area a rotation uncovers, Cutout holes) is the data
set's mean colour, as in the evaluation transform, so it normalises to zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np

from common.preprocess import EvalTransform, pad_colour
from train.config import DataSection

FLIP_PROBABILITY = 0.5
ROTATE_PROBABILITY = 0.5
CUTOUT_PROBABILITY = 0.5
CUTOUT_MIN_FRACTION = 0.05
COLOUR_JITTER_PROBABILITY = 0.8
HUE_SHARE = 0.25  # hue moves a quarter as far as brightness, contrast and saturation
MAX_HUE = 0.5  # ColorJitter's limit: half the colour wheel


def train_transform(
    input_size: int, mean: Sequence[float], std: Sequence[float], data: DataSection
) -> A.Compose:
    """HWC uint8 RGB -> CHW float32 (numpy: Ray Data batches carry arrays, not tensors)."""
    fill = pad_colour(mean)
    return A.Compose(
        [
            *colour_jitter(data.colour_jitter),
            A.HorizontalFlip(p=FLIP_PROBABILITY),
            A.LongestMaxSize(max_size=input_size, area_for_downscale="image"),
            A.PadIfNeeded(
                min_height=input_size,
                min_width=input_size,
                border_mode=cv2.BORDER_CONSTANT,
                fill=fill,
            ),
            A.Resize(input_size, input_size),  # a no-op after the two above; the seed's step
            A.Rotate(
                limit=data.rotate_degrees,
                border_mode=cv2.BORDER_CONSTANT,
                fill=fill,
                p=ROTATE_PROBABILITY,
            ),
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(CUTOUT_MIN_FRACTION, data.cutout_fraction),
                hole_width_range=(CUTOUT_MIN_FRACTION, data.cutout_fraction),
                fill=fill,
                p=CUTOUT_PROBABILITY,
            ),
            A.Normalize(mean=tuple(mean), std=tuple(std)),
        ]
    )


def colour_jitter(strength: float) -> list[A.BasicTransform]:
    """Random brightness, contrast, saturation and hue (none at 0, the seed's setting).

    Applied before padding, so padding keeps the mean colour. Why: each video has its
    own sky, so the background's colour can stand in for the class on seen videos and
    mislead on unseen ones."""
    if strength <= 0:
        return []
    return [
        A.ColorJitter(
            brightness=strength,
            contrast=strength,
            saturation=strength,
            hue=min(strength * HUE_SHARE, MAX_HUE),
            p=COLOUR_JITTER_PROBABILITY,
        )
    ]


def augment(transform: A.Compose, pixels: np.ndarray) -> np.ndarray:
    """One fresh random draw of the training transform, as CHW float32 (ToTensorV2's
    layout, kept numpy because Ray Data batches carry arrays)."""
    out = transform(image=pixels)["image"]
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def eval_transform(input_size: int, mean: Sequence[float], std: Sequence[float]) -> EvalTransform:
    return EvalTransform.from_info({"input_size": input_size, "mean": mean, "std": std})

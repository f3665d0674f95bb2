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

from common.preprocess import NO_CONTRAST_GAIN, EvalTransform, pad_colour, raise_contrast
from train.config import DataSection

FLIP_PROBABILITY = 0.5
ROTATE_PROBABILITY = 0.5
CUTOUT_PROBABILITY = 0.5
CUTOUT_MIN_FRACTION = 0.05
COLOUR_JITTER_PROBABILITY = 0.8
HUE_SHARE = 0.25  # hue moves a quarter as far as brightness, contrast and saturation
MAX_HUE = 0.5  # ColorJitter's limit: half the colour wheel
DOWNSCALE_PROBABILITY = 0.5
NO_DOWNSCALE = 1.0


def train_transform(
    input_size: int, mean: Sequence[float], std: Sequence[float], data: DataSection
) -> A.Compose:
    """HWC uint8 RGB -> CHW float32 (numpy: Ray Data batches carry arrays, not tensors)."""
    fill = pad_colour(mean)
    return A.Compose(
        [
            *contrast(data.contrast_gain),
            *colour_jitter(data.colour_jitter),
            *resolution_loss(data.downscale_min),
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


def contrast(max_gain: float) -> list[A.BasicTransform]:
    """The evaluation transform's contrast gain (`common.preprocess.raise_contrast`),
    first, so augmentations see the image the served model will see."""
    if max_gain <= NO_CONTRAST_GAIN:
        return []

    def raise_to(image: np.ndarray, **_: object) -> np.ndarray:
        return raise_contrast(image, max_gain)

    return [A.Lambda(image=raise_to, name="raise_contrast", p=1.0)]


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


def resolution_loss(smallest: float) -> list[A.BasicTransform]:
    """Shrink by a random factor in [smallest, 1], then enlarge back (none at 1).

    Applied to the source pixels before LongestMaxSize, so a near crop loses detail the
    way a distant one never had it; INTER_AREA shrinks without aliasing, as a camera
    further away would, and bilinear enlarging gives the soft look of an upsampled crop."""
    if not 0 < smallest <= NO_DOWNSCALE:
        raise ValueError(f"--downscale-min must be in (0, 1], got {smallest}")
    if smallest == NO_DOWNSCALE:
        return []
    return [
        A.Downscale(
            scale_range=(smallest, NO_DOWNSCALE),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            p=DOWNSCALE_PROBABILITY,
        )
    ]


def augment(transform: A.Compose, pixels: np.ndarray) -> np.ndarray:
    """One fresh random draw of the training transform, as CHW float32 (ToTensorV2's
    layout, kept numpy because Ray Data batches carry arrays)."""
    out = transform(image=pixels)["image"]
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def eval_transform(
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    contrast_gain: float = NO_CONTRAST_GAIN,
) -> EvalTransform:
    info = {"input_size": input_size, "mean": mean, "std": std, "contrast_gain": contrast_gain}
    return EvalTransform.from_info(info)

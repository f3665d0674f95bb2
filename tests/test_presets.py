"""The training transform's optional colour jitter: off by default (the seed's
augmentations), and when on, it changes the image's colour from draw to draw."""

from __future__ import annotations

import numpy as np

from train.config import DataSection
from train.presets import augment, train_transform

SIZE, DRAWS = 32, 16
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SKY = (90, 140, 200)  # a plain blue sky


def median_colours(data: DataSection) -> np.ndarray:
    """Per draw, each channel's median: the image's own colour, whatever the flip,
    rotation (a square input loses only its corners) or one small Cutout hole does."""
    pixels = np.broadcast_to(np.asarray(SKY, dtype=np.uint8), (SIZE, SIZE, 3)).copy()
    transform = train_transform(SIZE, MEAN, STD, data)
    return np.stack([np.median(augment(transform, pixels), axis=(1, 2)) for _ in range(DRAWS)])


def test_no_colour_jitter_by_default_keeps_the_colour():
    colours = median_colours(DataSection())
    expected = (np.asarray(SKY) / 255 - MEAN) / STD
    np.testing.assert_allclose(colours, np.broadcast_to(expected, colours.shape), atol=1e-5)


def test_colour_jitter_changes_the_colour_between_draws():
    colours = median_colours(DataSection(colour_jitter=0.4))
    assert np.ptp(colours, axis=0).min() > 0.1  # every channel moves, in std units

"""The training transform's optional augmentations (colour jitter, resolution loss): off
by default (the seed's augmentations), and when on, they change the image from draw to
draw; a bad setting fails on the driver with its flag named."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from train.config import DataSection, TrainConfig
from train.job import FitError, check_augmentations
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


def test_training_sees_the_contrast_gain_the_evaluation_transform_applies():
    """Without the same step in training, the served model would see inputs it never
    trained on. One draw without flip/rotation/Cutout equals the eval transform's."""
    from common.preprocess import EvalTransform

    pixels = np.broadcast_to(np.asarray(SKY, dtype=np.uint8), (SIZE, SIZE, 3)).copy()
    pixels[10:14, 10:14] -= 10
    data = DataSection(contrast_gain=8.0, rotate_degrees=0.0, cutout_fraction=0.05)
    transform = train_transform(SIZE, MEAN, STD, data)
    plain = EvalTransform(SIZE, MEAN, STD)(Image.fromarray(pixels)).numpy()
    served = EvalTransform(SIZE, MEAN, STD, contrast_gain=8.0)(Image.fromarray(pixels)).numpy()
    draws = [augment(transform, pixels) for _ in range(4 * DRAWS)]  # 1 in 4 plain
    matches = [d for d in draws if np.allclose(d, served, atol=0.05)]
    assert matches, "no draw equals the evaluation transform's output"
    assert not np.allclose(plain, served, atol=0.05)


def checker_contrasts(data: DataSection) -> np.ndarray:
    """Per draw, the std of a fine checkerboard (2 px squares): full in every draw unless
    something blurs it. No rotation (it interpolates), holes of a pixel or two."""
    square = (np.indices((SIZE, SIZE)).sum(axis=0) // 2) % 2
    pixels = np.repeat((square * 255).astype(np.uint8)[..., None], 3, axis=2)
    data = dataclasses.replace(data, rotate_degrees=0.0, cutout_fraction=0.05)
    transform = train_transform(SIZE, MEAN, STD, data)
    return np.array([augment(transform, pixels).std() for _ in range(2 * DRAWS)])


def test_no_resolution_loss_by_default_keeps_fine_detail():
    contrasts = checker_contrasts(DataSection())
    assert contrasts.min() > 0.9 * contrasts.max()


def test_resolution_loss_softens_fine_detail_on_some_draws():
    plain = checker_contrasts(DataSection()).max()
    contrasts = checker_contrasts(DataSection(downscale_min=0.3))
    assert contrasts.min() < 0.5 * plain  # a shrunk checkerboard averages to grey
    assert contrasts.max() > 0.9 * plain  # and half the draws keep it


@pytest.mark.parametrize("smallest", [0.0, -0.5, 1.5])
def test_a_bad_resolution_loss_setting_fails_before_training(smallest: float):
    cfg = TrainConfig()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, downscale_min=smallest))
    with pytest.raises(FitError, match="downscale-min"):
        check_augmentations(cfg)

"""Junk by content: a small learned classifier over what the normalise tasks compute.

Pixel statistics alone cannot tell a drone photographed on a white studio background
from clip art on white, or a wide side view of an airliner from a banner: both pairs
share the statistics the rules look at. What the image *shows* tells them apart, and
the MobileNetV2 embedding each normalise task already computes for near-duplicate
verification (`pipeline.embed`) says what it shows. So junk (logo, icon, clip art,
drawing, text, banner, screenshot, chart) is decided by a logistic regression over
that embedding plus a few of the cheap pixel scores (`PIXEL_FEATURES`).

The weights ship with the package (`models/junk_classifier_v1.npz`, a few tens of KiB)
and are rebuilt by `scripts/train_junk_classifier.py`, which names its training data,
its held-out fold and the figures measured on it. Inference is numpy only: one
standardisation, one dot product and a sigmoid per image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "junk_classifier_v1.npz"
FORMAT_VERSION = 1
# Pixel scores fed to the classifier, each through a fixed transform that makes it
# roughly linear in "junk-ness" (counts and variances are heavy-tailed: logs).
PIXEL_FEATURES = (
    "junk_flat_graphics",
    "junk_near_uniform",
    "junk_too_bright",
    "junk_few_colors",
    "junk_blurry",
    "junk_aspect_ratio",
)


def pixel_features(scores: Mapping[str, float]) -> np.ndarray:
    """The transformed pixel scores of one image, in `PIXEL_FEATURES` order (NaN: 0)."""
    raw = [float(scores.get(name, math.nan)) for name in PIXEL_FEATURES]
    flat, grey_std, brightness, colours, laplacian, aspect = (
        0.0 if math.isnan(x) else x for x in raw
    )
    return np.array(
        [
            flat,
            math.log1p(max(grey_std, 0.0)),
            brightness / 255.0,
            math.log1p(max(colours, 0.0)),
            math.log1p(max(laplacian, 0.0)),
            math.log(max(aspect, 1.0)),
        ],
        dtype=np.float32,
    )


def feature_matrix(embeddings: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(n, dim + len(PIXEL_FEATURES)) float32: embedding then pixel features."""
    return np.hstack([np.asarray(embeddings, np.float32), np.asarray(pixels, np.float32)])


@dataclass(frozen=True)
class JunkModel:
    """Standardise, then logistic regression: P(junk) = sigmoid(w . (x - mean) / scale + b)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    embedding_dim: int
    embedding_side: int
    name: str

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(junk) of each row of a feature matrix."""
        z = ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.coef
        return 1.0 / (1.0 + np.exp(-(z + self.intercept)))

    def save(self, path: Path, **provenance: str) -> None:
        """Write the weights and a few words of provenance (what data, which fold)."""
        np.savez_compressed(
            path,
            format_version=np.int32(FORMAT_VERSION),
            mean=self.mean.astype(np.float32),
            scale=self.scale.astype(np.float32),
            coef=self.coef.astype(np.float32),
            intercept=np.float64(self.intercept),
            embedding_dim=np.int32(self.embedding_dim),
            embedding_side=np.int32(self.embedding_side),
            pixel_features=np.array(PIXEL_FEATURES),
            **{k: np.array(v) for k, v in provenance.items()},
        )


def model_path(setting: str) -> Path:
    """A model setting: a file name under the package's models/ or a path."""
    path = Path(setting)
    return path if path.is_absolute() or path.exists() else MODELS_DIR / setting


@cache
def load_model(setting: str = DEFAULT_MODEL) -> JunkModel:
    """Load once per process. Raises ValueError for a file this code cannot use."""
    path = model_path(setting)
    try:
        with np.load(path) as data:
            if int(data["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"{path}: format {int(data['format_version'])} unsupported")
            if tuple(str(x) for x in data["pixel_features"]) != PIXEL_FEATURES:
                raise ValueError(f"{path}: was fitted on other pixel features")
            return JunkModel(
                mean=data["mean"].astype(np.float64),
                scale=data["scale"].astype(np.float64),
                coef=data["coef"].astype(np.float64),
                intercept=float(data["intercept"]),
                embedding_dim=int(data["embedding_dim"]),
                embedding_side=int(data["embedding_side"]),
                name=path.name,
            )
    except (OSError, KeyError) as exc:
        raise ValueError(f"junk classifier {setting!r} cannot be loaded: {exc}") from exc


def junk_probability(
    embeddings: np.ndarray, score_rows: list[Mapping[str, float]], setting: str
) -> np.ndarray:
    """P(junk) per image from its embedding and its pixel scores (one batch)."""
    if not score_rows:
        return np.zeros(0)
    model = load_model(setting)
    if embeddings.shape[1] != model.embedding_dim:
        raise ValueError(
            f"junk classifier {model.name} expects {model.embedding_dim}-float embeddings, "
            f"got {embeddings.shape[1]}"
        )
    pixels = np.stack([pixel_features(s) for s in score_rows])
    return model.probability(feature_matrix(embeddings, pixels))

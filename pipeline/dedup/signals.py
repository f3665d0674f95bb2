"""Per-image de-duplication signals, computed by the normalise stage on each normalised
image: the perceptual hash and how firmly its bits are set (`hash_signals`). The
verification's signals (embedding, colour and grey layouts) are `pipeline.embed`'s."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.dedup.config import HASH_KINDS

if TYPE_CHECKING:  # imagehash and PIL load lazily: the CLI imports this module for --help
    from PIL import Image


def compute_hashes(image: Image.Image, kind: str = "phash") -> str:
    """The image's 64-bit perceptual hash as 16 hex chars (imagehash's `str(hash)`)."""
    import imagehash

    functions = {
        "phash": imagehash.phash,
        "dhash": imagehash.dhash,
        "whash": imagehash.whash,
        "ahash": imagehash.average_hash,
    }
    if kind not in functions:
        raise ValueError(f"unknown hash kind {kind!r}; choose one of {', '.join(HASH_KINDS)}")
    return str(functions[kind](image, hash_size=8))


def _phash_dct(image: Image.Image) -> np.ndarray:
    """The 8x8 low-frequency DCT block pHash thresholds, computed as imagehash.phash does."""
    from PIL import Image as PILImage
    from scipy.fftpack import dct

    pixels = np.asarray(
        image.convert("L").resize((32, 32), PILImage.Resampling.LANCZOS), dtype=np.float64
    )
    return dct(dct(pixels, axis=0), axis=1)[:8, :8]


def _stability(low: np.ndarray) -> float:
    deviation = np.abs(low - np.median(low)).ravel()[1:]  # DC excluded
    return float(np.median(deviation))


def hash_stability(image: Image.Image) -> float:
    """How firmly pHash's bits are set: the median distance of the 8x8 low-frequency DCT
    coefficients (DC excluded) from the median that thresholds them. Photos score in the
    thousands; a small bird against a plain sky scores a few hundred, and its bits flip
    with the sky's gradient."""
    return _stability(_phash_dct(image))


def hash_signals(image: Image.Image, kind: str = "phash") -> tuple[str, float]:
    """The hash and its stability; for pHash both come from one DCT (the per-image path)."""
    if kind != "phash":
        return compute_hashes(image, kind), hash_stability(image)
    import imagehash

    low = _phash_dct(image)
    return str(imagehash.ImageHash(low > np.median(low))), _stability(low)

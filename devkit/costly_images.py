"""Small files that cost the most memory per byte to decode: a 16-bit grey PNG and a
32-bit float TIFF near Pillow's pixel limit, a few hundred KB each on disk.

They stand for the worst images a decoder accepts (issue: a 194 KB PNG took 2.46 GB
through the Lambda handler); tests and benchmarks measure peak memory with them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# The sizes the reliability issue reproduced with, just under Pillow's 89.5 MP limit.
PNG16_SIDE = 9400
FLOAT_TIFF_SIDE = 9000
SIXTEEN_BIT_PEAK = 60_000  # above 255, so the 16 -> 8 bit scaling path runs
FLOAT_PEAK = 0.9  # a [0, 1] float image


def _rows(height: int, peak: float, dtype: str) -> np.ndarray:
    """One value per row (a vertical gradient): compresses to almost nothing."""
    return np.linspace(0, peak, height, dtype=np.float64).astype(dtype)[:, None]


def sixteen_bit_png(width: int = PNG16_SIDE, height: int = PNG16_SIDE) -> bytes:
    """A 16-bit grey PNG (Pillow mode I;16) of width x height."""
    pixels = np.broadcast_to(_rows(height, SIXTEEN_BIT_PEAK, "<u2"), (height, width))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "PNG")
    return buffer.getvalue()


def float_tiff(width: int = FLOAT_TIFF_SIDE, height: int = FLOAT_TIFF_SIDE) -> bytes:
    """A 32-bit float grey TIFF (Pillow mode F), deflate-compressed."""
    pixels = np.broadcast_to(_rows(height, FLOAT_PEAK, "<f4"), (height, width))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(
        buffer, "TIFF", compression="tiff_adobe_deflate"
    )
    return buffer.getvalue()


def grey_alpha_png(width: int, height: int) -> bytes:
    """An 8-bit grey + alpha PNG (mode LA): the costliest mode per pixel to flatten."""
    grey = np.broadcast_to(_rows(height, 255, "u1"), (height, width))
    alpha = np.broadcast_to(_rows(height, 200, "u1")[::-1], (height, width))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.stack([grey, alpha], axis=-1))).save(buffer, "PNG")
    return buffer.getvalue()

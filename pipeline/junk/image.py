"""One image as the junk checks see it: its source metadata and the small derived arrays
(a shrunk copy, its grey levels, local ranges, the border) that the checks share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image

# ITU-R BT.601 luma weights, as in Pillow's convert("L").
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Width in pixels of the frame whose uniformity tells a drawn background from a sky.
BORDER_WIDTH = 2


@dataclass(frozen=True)
class ImageMeta:
    """What the normalise stage knows about the source beyond the pixels."""

    source_width: int = 0
    source_height: int = 0
    source_format: str = ""

    @classmethod
    def of(cls, meta: ImageMeta | Mapping[str, Any] | None) -> ImageMeta:
        if isinstance(meta, ImageMeta):
            return meta
        meta = meta or {}
        return cls(
            source_width=int(meta.get("source_width") or 0),
            source_height=int(meta.get("source_height") or 0),
            source_format=str(meta.get("source_format") or ""),
        )


class ImageView:
    """One image and the small derived arrays the checks share, each computed once."""

    def __init__(self, image: Image.Image | np.ndarray, analysis_side: int) -> None:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        self.image = image if image.mode == "RGB" else image.convert("RGB")
        self.analysis_side = analysis_side

    @cached_property
    def small(self) -> np.ndarray:
        """uint8 HxWx3 copy with the long side at most `analysis_side` (area-averaged)."""
        image = self.image
        scale = self.analysis_side / max(image.size)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BOX)
        return np.asarray(image)

    @cached_property
    def grey(self) -> np.ndarray:
        return self.small.astype(np.float32) @ LUMA_WEIGHTS

    @cached_property
    def local_range(self) -> np.ndarray:
        """Per pixel, the largest per-channel span (max - min) over its 3x3 neighbourhood."""
        padded = edge_padded(self.small)  # once for both filters
        high = _filter3x3(padded, np.maximum)
        low = _filter3x3(padded, np.minimum)
        return (high - low).max(axis=-1)

    @cached_property
    def border(self) -> np.ndarray:
        """The outer frame's pixels, N x 3 int16."""
        rgb = self.small.astype(np.int16)
        w = min(BORDER_WIDTH, *rgb.shape[:2])
        parts = [rgb[:w], rgb[-w:], rgb[:, :w].transpose(1, 0, 2), rgb[:, -w:].transpose(1, 0, 2)]
        return np.concatenate([p.reshape(-1, 3) for p in parts])


def edge_padded(array: np.ndarray) -> np.ndarray:
    """`array` with its first and last row and column repeated once outside it: what
    np.pad(mode="edge") gives on the first two axes, at a fraction of its per-call cost
    (tens of microseconds, as much as the filters on a 128 px copy)."""
    rows = np.concatenate([array[:1], array, array[-1:]], axis=0)
    return np.concatenate([rows[:, :1], rows, rows[:, -1:]], axis=1)


def _filter3x3(padded: np.ndarray, op: Callable[..., np.ndarray]) -> np.ndarray:
    """Separable 3x3 max or min filter per channel, of an `edge_padded` image."""
    rows = op(op(padded[:-2], padded[1:-1]), padded[2:])
    return op(op(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])

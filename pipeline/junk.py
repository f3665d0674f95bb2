"""Junk filter: score every normalised image on small registered checks and reject junk.

Scraped class folders ("birds", "drones", ...) also hold search icons, logos, banners,
clip art, screenshots and text images. None of them teaches a classifier the class, and
blank ones also break near-duplicate search (their perceptual hashes are degenerate).

Each check is a small class, registered by name, that turns one image (already RGB and at
most 512 px) plus its source metadata into one raw float score; a threshold in
`JunkConfig` and the check's direction decide whether the score flags the image. All
registered checks are scored, so the `junk_<name>` columns are the same in every run;
only the enabled ones (`junk_checks`) reject. New checks slot in with `@register_check`.

Which checks reject by default: the certain ones (`vector_source`, `too_small`,
`near_uniform`, `too_dark`) and `content`, a small learned classifier over the image's
MobileNetV2 embedding and a few pixel scores (`pipeline.junk_model`): whether an image
is a photograph of a thing or a logo, text, banner, chart or drawing is a question of
what it shows. The other pixel rules stay registered and scored, opt-in: on real web
images `flat_graphics` and `too_bright` drop product shots on white and birds against a
plain sky, `aspect_ratio` wide side views of airliners, `few_colors` flat renders
(scripts/bench/web_scraped_cleaning.py measures them).

The pixel checks look at one small copy of the image (`junk_analysis_side`): they are
cheap, and the statistics they use do not need more. The hard case is a real photo of a
small bird or drone against a plain sky: it is nearly uniform, has few colours and little
texture, so "mostly one colour" or "blurry" alone cannot tell it from junk. What does tell
clip art apart is structure: its detail is almost all hard edges between flat fills, and
it sits on one exactly uniform background, whereas a photo's detail is texture, soft edges
and noise, and even a plain sky has a gradient across its border. The defaults were
calibrated with `scripts/bench/junk_checks.py` on real sky photos and real clip art.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, ClassVar, TypeVar

import numpy as np
from PIL import Image

from common.config import option

SCORE_PREFIX = "junk_"
# ITU-R BT.601 luma weights, as in Pillow's convert("L").
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Source formats that hold drawings, never camera pixels.
VECTOR_FORMATS = frozenset({"SVG", "SVGZ", "EPS", "PDF", "WMF", "EMF"})
# Width in pixels of the frame whose uniformity tells a drawn background from a sky.
BORDER_WIDTH = 2


@dataclass
class JunkConfig:
    junk_checks: list[str] = option(
        ["vector_source", "too_small", "near_uniform", "too_dark", "content"],
        "Junk checks that reject an image, comma-separated; every registered check is "
        "scored either way (also available: aspect_ratio, few_colors, flat_graphics, "
        "too_bright, blurry: they drop product shots on white and wide side views)",
        choices=lambda: list(registered_checks()),
    )
    junk_model: str = option(
        "junk_classifier_v1.npz",
        "content: the learned junk classifier (a file under pipeline/models/ or a path); "
        "it needs the near-duplicate embedding (--embedding-weights not 'none')",
    )
    max_junk_content: float = option(
        0.5, "content: flag when the classifier's probability of junk reaches this", min=0, max=1
    )
    junk_analysis_side: int = option(
        128, "Pixel checks work on a copy shrunk to at most this many pixels a side", min=8
    )
    max_aspect_ratio: float = option(
        3.0,
        "aspect_ratio: flag sources whose long side is at least this many times the short",
        min=1,
    )
    min_source_side: int = option(
        64, "too_small: flag sources whose shorter side (original pixels) is below this", min=0
    )
    max_vector_source: float = option(
        0.5,
        "vector_source: flag when the score (1 for SVG and other vector formats) reaches this",
        min=0,
        max=1,
    )
    min_gray_std: float = option(
        0.6,
        "near_uniform: flag when the grey-level standard deviation (0-255) is below this",
        min=0,
        max=255,
    )
    min_colors: int = option(
        2,
        "few_colors: flag when fewer distinct quantised colours than this cover the image",
        min=0,
    )
    color_quantize_bits: int = option(
        4, "few_colors: bits kept per channel when quantising colours", min=1, max=8
    )
    min_color_share: float = option(
        0.001,
        "few_colors: a quantised colour counts only if it covers this share of pixels",
        min=0,
        max=1,
    )
    max_flat_graphics: float = option(
        0.4, "flat_graphics: flag drawings, text and clip art whose score reaches this", min=0
    )
    flat_pixel_max_span: int = option(
        4,
        "flat_graphics: a pixel is flat if its 3x3 neighbourhood spans at most this (0-255)",
        min=0,
        max=255,
    )
    drawing_min_flat_share: float = option(
        0.2,
        "flat_graphics: drawings are at least this share flat; below it the edge term "
        "shrinks in proportion (busy textures have hard edges but no flat fills)",
        min=0,
        max=1,
    )
    hard_edge_min_span: int = option(
        96,
        "flat_graphics: a pixel is on a hard edge if its 3x3 neighbourhood spans this",
        min=0,
        max=255,
    )
    uniform_border_tolerance: int = option(
        1,
        "flat_graphics: border pixels within this of the border's median are 'uniform'",
        min=0,
        max=255,
    )
    flat_graphics_border_weight: float = option(
        0.3,
        "flat_graphics: weight of the uniform-border share added to the edge share",
        min=0,
    )
    min_brightness: float = option(
        10.0, "too_dark: flag when the mean grey level (0-255) is below this", min=0, max=255
    )
    max_brightness: float = option(
        245.0, "too_bright: flag when the mean grey level (0-255) reaches this", min=0, max=255
    )
    min_sharpness: float = option(
        5.0,
        "blurry (not enabled by default): flag when the variance of the Laplacian of the "
        "grey copy is below this",
        min=0,
    )
    junk_low_detail_max_gray_std: float = option(
        1.0,
        "low_detail (kept out of near-duplicate search): grey-level std below this",
        min=0,
        max=255,
    )
    junk_low_detail_max_colors: int = option(
        1, "low_detail: at most this many distinct quantised colours", min=0
    )


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
    def gray(self) -> np.ndarray:
        return self.small.astype(np.float32) @ LUMA_WEIGHTS

    @cached_property
    def local_range(self) -> np.ndarray:
        """Per pixel, the largest per-channel span (max - min) over its 3x3 neighbourhood."""
        high = _filter3x3(self.small, np.maximum)
        low = _filter3x3(self.small, np.minimum)
        return (high - low).max(axis=-1)

    @cached_property
    def border(self) -> np.ndarray:
        """The outer frame's pixels, N x 3 int16."""
        rgb = self.small.astype(np.int16)
        w = min(BORDER_WIDTH, *rgb.shape[:2])
        parts = [rgb[:w], rgb[-w:], rgb[:, :w].transpose(1, 0, 2), rgb[:, -w:].transpose(1, 0, 2)]
        return np.concatenate([p.reshape(-1, 3) for p in parts])


def _filter3x3(rgb: np.ndarray, op: Callable[..., np.ndarray]) -> np.ndarray:
    """Separable 3x3 max or min filter (edges replicated), per channel."""
    padded = np.pad(rgb, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = op(op(padded[:-2], padded[1:-1]), padded[2:])
    return op(op(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _laplacian(gray: np.ndarray) -> np.ndarray:
    padded = np.pad(gray, 1, mode="edge")
    return padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * gray


class JunkCheck(ABC):
    """One cheap measurement and the direction in which its score means junk."""

    name: ClassVar[str]
    threshold_field: ClassVar[str]  # the JunkConfig field holding this check's threshold
    flag_above: ClassVar[bool]  # True: junk when score >= threshold; False: when below

    def __init__(self, cfg: JunkConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        """The raw score."""

    def threshold(self) -> float:
        return float(getattr(self.cfg, self.threshold_field))

    def flag(self, score: float, threshold: float) -> bool:
        """Whether `score` means junk (NaN never does)."""
        return score >= threshold if self.flag_above else score < threshold


CheckT = TypeVar("CheckT", bound=type[JunkCheck])
_REGISTRY: dict[str, type[JunkCheck]] = {}


def register_check(cls: CheckT) -> CheckT:
    """Class decorator: make a check available by its `name` (registration order is the
    fixed order in which a verdict looks for the first flagged check)."""
    if cls.name in _REGISTRY:
        raise ValueError(f"junk check {cls.name!r} is registered twice")
    if cls.threshold_field not in {f.name for f in fields(JunkConfig)}:
        raise ValueError(f"junk check {cls.name!r}: JunkConfig has no {cls.threshold_field!r}")
    _REGISTRY[cls.name] = cls
    return cls


def registered_checks() -> dict[str, type[JunkCheck]]:
    """Every registered check by name, in verdict order."""
    return dict(_REGISTRY)


def score_column(name: str) -> str:
    return SCORE_PREFIX + name


def enabled_checks(cfg: JunkConfig) -> list[JunkCheck]:
    """The enabled checks, in registration order; unknown names are a configuration error."""
    unknown = sorted(set(cfg.junk_checks) - set(_REGISTRY))
    if unknown:
        raise ValueError(
            f"unknown junk check(s): {', '.join(unknown)}; registered: {', '.join(_REGISTRY)}"
        )
    wanted = set(cfg.junk_checks)
    return [cls(cfg) for name, cls in _REGISTRY.items() if name in wanted]


# --- metadata checks -------------------------------------------------------------------


def _source_size(image: ImageView, meta: ImageMeta) -> tuple[int, int]:
    if meta.source_width > 0 and meta.source_height > 0:
        return meta.source_width, meta.source_height
    return image.image.size


@register_check
class VectorSource(JunkCheck):
    """SVG and other vector files are drawings by construction, whatever they show."""

    name = "vector_source"
    threshold_field = "max_vector_source"
    flag_above = True

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        return float(meta.source_format.upper() in VECTOR_FORMATS)


@register_check
class AspectRatio(JunkCheck):
    """Banners, headers and strips: long side over short side of the source."""

    name = "aspect_ratio"
    threshold_field = "max_aspect_ratio"
    flag_above = True

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        width, height = _source_size(image, meta)
        return max(width, height) / max(1, min(width, height))


@register_check
class TooSmall(JunkCheck):
    """Icons and thumbnails: the shorter side of the source in its own pixels."""

    name = "too_small"
    threshold_field = "min_source_side"
    flag_above = False

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        return float(min(_source_size(image, meta)))


# --- pixel checks ----------------------------------------------------------------------


@register_check
class NearUniform(JunkCheck):
    """Blank and solid images: standard deviation of the grey levels. A plain sky with a
    distant drone is still above ~0.8, so the default only catches the truly blank."""

    name = "near_uniform"
    threshold_field = "min_gray_std"
    flag_above = False

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        return float(image.gray.std())


@register_check
class TooDark(JunkCheck):
    """Black or nearly black images: mean grey level."""

    name = "too_dark"
    threshold_field = "min_brightness"
    flag_above = False

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        return float(image.gray.mean())


@register_check
class FewColors(JunkCheck):
    """Low information: how many quantised colours each cover a noticeable share."""

    name = "few_colors"
    threshold_field = "min_colors"
    flag_above = False

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        return float(
            count_colors(image.small, self.cfg.color_quantize_bits, self.cfg.min_color_share)
        )


def count_colors(rgb: np.ndarray, bits: int, min_share: float) -> int:
    shift = 8 - bits
    q = (rgb >> shift).astype(np.int32)
    codes = (q[..., 0] << (2 * bits)) | (q[..., 1] << bits) | q[..., 2]
    counts = np.bincount(codes.ravel(), minlength=1 << (3 * bits))
    return int((counts >= max(1.0, min_share * codes.size)).sum())


@register_check
class FlatGraphics(JunkCheck):
    """Clip art, logos, text and screenshots: flat fills meeting at hard edges.

    Score = (share of the non-flat pixels that are hard edges)
            x min(1, flat share / drawing_min_flat_share)
          + border weight x (share of the border that is one exact colour).
    A drawing's detail is nearly all hard edges (first term near 1) between flat fills, on
    a uniform background. A photo's detail is mostly texture and soft edges, a busy photo
    has almost no flat pixels, and even a plain sky carries a gradient across its border.
    The photos that come closest are silhouettes against a cloudless or clipped sky."""

    name = "flat_graphics"
    threshold_field = "max_flat_graphics"
    flag_above = True

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        border_term = self.cfg.flat_graphics_border_weight * self.border_share(image)
        return self.edge_share(image) + border_term

    def edge_share(self, image: ImageView) -> float:
        """Hard-edge share of the detail, scaled down when too little of the image is flat."""
        spans = image.local_range
        detail = int((spans > self.cfg.flat_pixel_max_span).sum())
        if not detail:
            return 0.0
        hard = int((spans >= self.cfg.hard_edge_min_span).sum())
        share = hard / detail
        needed = self.cfg.drawing_min_flat_share
        if needed > 0:
            share *= min(1.0, (1.0 - detail / spans.size) / needed)
        return share

    def border_share(self, image: ImageView) -> float:
        border = image.border
        deviation = np.abs(border - np.median(border, axis=0)).max(axis=1)
        return float((deviation <= self.cfg.uniform_border_tolerance).mean())


@register_check
class TooBright(JunkCheck):
    """White or washed-out images (and icons lost on a white page): mean grey level."""

    name = "too_bright"
    threshold_field = "max_brightness"
    flag_above = True

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        return float(image.gray.mean())


@register_check
class Content(JunkCheck):
    """What the image shows: the learned classifier's probability that it is not a
    photograph of a thing (logo, icon, clip art, drawing, text, banner, screenshot,
    chart). It needs the image's embedding, which the normalise batch computes for
    every decodable image at once, so `calculate` leaves it NaN (never flags) and
    `pipeline.normalize` fills it in (`pipeline.junk_model`)."""

    name = "content"
    threshold_field = "max_junk_content"
    flag_above = True

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        return float("nan")


@register_check
class Blurry(JunkCheck):
    """Out-of-focus images: variance of the Laplacian of the grey copy. Off by default:
    a small object against a plain sky scores as low as a blurred photo."""

    name = "blurry"
    threshold_field = "min_sharpness"
    flag_above = False

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        return float(_laplacian(image.gray).var())


# --- public API ------------------------------------------------------------------------


def score_image(
    image: Image.Image | np.ndarray,
    meta: ImageMeta | Mapping[str, Any] | None,
    cfg: JunkConfig,
) -> dict[str, float]:
    """Every registered check's raw score, keyed `junk_<name>`."""
    view = ImageView(image, cfg.junk_analysis_side)
    info = ImageMeta.of(meta)
    return {score_column(name): cls(cfg).calculate(view, info) for name, cls in _REGISTRY.items()}


def verdict(scores: Mapping[str, float], cfg: JunkConfig) -> tuple[str | None, float | None]:
    """(`junk_<name>`, score) of the first enabled check, in registration order, that flags
    the image; (None, None) if none does."""
    for check in enabled_checks(cfg):
        column = score_column(check.name)
        score = scores.get(column)
        if score is not None and check.flag(score, check.threshold()):
            return column, score
    return None, None


def is_low_detail(scores: Mapping[str, float], cfg: JunkConfig) -> bool:
    """Blank, near-uniform or (almost) one-colour: its perceptual hash says nothing, so
    near-duplicate search must leave it out. Independent of which checks are enabled."""
    gray_std = scores.get(score_column(NearUniform.name), np.nan)
    colors = scores.get(score_column(FewColors.name), np.nan)
    return bool(
        gray_std < cfg.junk_low_detail_max_gray_std or colors <= cfg.junk_low_detail_max_colors
    )

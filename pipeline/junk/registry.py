"""The junk rules: their settings (`JunkConfig`), the check interface and the registry that
names every check (`@register_check`), in the fixed order a verdict looks at them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import ClassVar, TypeVar

from common.config import option
from pipeline.junk.image import ImageMeta, ImageView

SCORE_PREFIX = "junk_"


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

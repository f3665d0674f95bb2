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

One module per concern: `registry` (the settings, the check interface, the registry),
`image` (an image and the arrays the checks share), `checks` (the registered checks);
this package's own functions score an image and give its verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from pipeline.junk.checks import (
    VECTOR_FORMATS,
    AspectRatio,
    Blurry,
    Content,
    FewColours,
    FlatGraphics,
    NearUniform,
    TooBright,
    TooDark,
    TooSmall,
    VectorSource,
    count_colours,
)
from pipeline.junk.image import BORDER_WIDTH, LUMA_WEIGHTS, ImageMeta, ImageView
from pipeline.junk.registry import (
    SCORE_PREFIX,
    JunkCheck,
    JunkConfig,
    enabled_checks,
    register_check,
    registered_checks,
    score_column,
)

__all__ = [
    "BORDER_WIDTH",
    "LUMA_WEIGHTS",
    "SCORE_PREFIX",
    "VECTOR_FORMATS",
    "AspectRatio",
    "Blurry",
    "Content",
    "FewColours",
    "FlatGraphics",
    "ImageMeta",
    "ImageView",
    "JunkCheck",
    "JunkConfig",
    "NearUniform",
    "TooBright",
    "TooDark",
    "TooSmall",
    "VectorSource",
    "count_colours",
    "enabled_checks",
    "is_low_detail",
    "register_check",
    "registered_checks",
    "score_column",
    "score_image",
    "verdict",
]


def score_image(
    image: Image.Image | np.ndarray,
    meta: ImageMeta | Mapping[str, Any] | None,
    cfg: JunkConfig,
) -> dict[str, float]:
    """Every registered check's raw score, keyed `junk_<name>`."""
    view = ImageView(image, cfg.junk_analysis_side)
    info = ImageMeta.of(meta)
    return {
        score_column(name): cls(cfg).calculate(view, info)
        for name, cls in registered_checks().items()
    }


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
    grey_std = scores.get(score_column(NearUniform.name), np.nan)
    colours = scores.get(score_column(FewColours.name), np.nan)
    return bool(
        grey_std < cfg.junk_low_detail_max_gray_std or colours <= cfg.junk_low_detail_max_colors
    )

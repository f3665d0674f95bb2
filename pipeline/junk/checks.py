"""The registered junk checks, one small class each: metadata checks on the source, pixel
checks on the shrunk copy, and the learned content check's placeholder."""

from __future__ import annotations

import numpy as np

from pipeline.junk.image import ImageMeta, ImageView, edge_padded
from pipeline.junk.registry import JunkCheck, register_check

# Source formats that hold drawings, never camera pixels.
VECTOR_FORMATS = frozenset({"SVG", "SVGZ", "EPS", "PDF", "WMF", "EMF"})


def _laplacian(grey: np.ndarray) -> np.ndarray:
    padded = edge_padded(grey)
    return padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * grey


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
        return float(image.grey.std())


@register_check
class TooDark(JunkCheck):
    """Black or nearly black images: mean grey level."""

    name = "too_dark"
    threshold_field = "min_brightness"
    flag_above = False

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        return float(image.grey.mean())


@register_check
class FewColours(JunkCheck):
    """Low information: how many quantised colours each cover a noticeable share."""

    name = "few_colors"
    threshold_field = "min_colors"
    flag_above = False

    def calculate(self, image: ImageView, meta: ImageMeta) -> float:
        return float(
            count_colours(image.small, self.cfg.color_quantize_bits, self.cfg.min_color_share)
        )


def count_colours(rgb: np.ndarray, bits: int, min_share: float) -> int:
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
        return float(image.grey.mean())


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
        return float(_laplacian(image.grey).var())

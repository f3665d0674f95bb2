"""The junk checks on synthetic images made here (fast; no shared data sets).

Every image goes through a JPEG q90 round trip first, as the normalise stage does,
so the checks see the compression artefacts they will see in the job.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from common.backbone import NO_WEIGHTS
from common.config import add_config_args, section
from devkit.weights import local_embedding_weights
from pipeline import junk
from pipeline.config import CleanConfig
from pipeline.junk import (
    ImageMeta,
    JunkCheck,
    JunkConfig,
    is_low_detail,
    register_check,
    registered_checks,
    score_image,
    verdict,
)
from pipeline.junk_model import PIXEL_FEATURES, load_model
from pipeline.normalize import judge_batch, normalise_item

CFG = JunkConfig()
# The opt-in pixel rules (the defaults before issue 27), to test each rule where it fires.
PIXEL_RULES = JunkConfig(
    junk_checks=["vector_source", "aspect_ratio", "too_small", "near_uniform", "too_dark",
                 "few_colors", "flat_graphics", "too_bright"]
)  # fmt: skip
JPEG_QUALITY = 90  # what the normalise stage writes
WHITE = (255, 255, 255)


def normalised(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def meta_of(image: Image.Image, fmt: str = "JPEG") -> ImageMeta:
    return ImageMeta(image.width, image.height, fmt)


def judge(image: Image.Image, meta: ImageMeta | None = None, cfg: JunkConfig = CFG):
    scores = score_image(image, meta or meta_of(image), cfg)
    return verdict(scores, cfg), scores


def photo_like(width: int = 320, height: int = 240, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus texture and sensor noise everywhere."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [120 + 80 * np.sin(x / 29), 110 + 70 * np.cos(y / 37), 100 + 60 * np.sin((x + y) / 53)],
        axis=-1,
    )
    texture = rng.normal(0, 10, (height // 4, width // 4, 3)).repeat(4, 0).repeat(4, 1)
    noise = rng.normal(0, 4, (height, width, 3))
    return normalised(Image.fromarray(np.clip(base + texture + noise, 0, 255).astype(np.uint8)))


def drone_on_sky(side: int = 96, seed: int = 1) -> Image.Image:
    """A small dark quadcopter-like shape against a plain, slightly noisy blue sky."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    sky = np.stack([90 + 0.2 * y, 140 + 0.15 * y, 210 + 0.1 * x], axis=-1)
    sky += rng.normal(0, 1.5, sky.shape)
    image = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    c = side // 2
    draw.line((c - 8, c - 8, c + 8, c + 8), fill=(40, 40, 45), width=2)
    draw.line((c - 8, c + 8, c + 8, c - 8), fill=(40, 40, 45), width=2)
    draw.ellipse((c - 3, c - 3, c + 3, c + 3), fill=(30, 30, 30))
    return normalised(image)


def clip_art() -> Image.Image:
    """A flat-colour drawing on white, as clip art arrives after flattening."""
    image = Image.new("RGB", (300, 300), WHITE)
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 60, 200, 180), fill=(230, 180, 20), outline=(0, 0, 0), width=4)
    draw.polygon([(180, 110), (270, 80), (250, 150)], fill=(200, 30, 30), outline=(0, 0, 0))
    draw.rectangle((90, 180, 110, 250), fill=(20, 90, 200))
    draw.ellipse((70, 90, 90, 110), fill=(0, 0, 0))
    return normalised(image)


def text_image() -> Image.Image:
    image = Image.new("RGB", (400, 240), WHITE)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=22)
    for i, line in enumerate(["Best drones of 2024", "Click here to buy", "Free shipping!"]):
        draw.text((20, 30 + 60 * i), line, fill=(0, 0, 0), font=font)
    return normalised(image)


def solid(colour: tuple[int, int, int] = (70, 130, 180), side: int = 200) -> Image.Image:
    return normalised(Image.new("RGB", (side, side), colour))


# --- real-photo stand-ins survive --------------------------------------------------------


@pytest.mark.parametrize("image", [photo_like(), photo_like(512, 384, seed=3), drone_on_sky()])
def test_photos_survive(image):
    (reason, score), scores = judge(image)
    assert reason is None, (reason, score)
    assert not is_low_detail(scores, CFG)


def test_small_object_on_sky_is_not_flat_graphics():
    _, scores = judge(drone_on_sky())
    assert scores["junk_flat_graphics"] < CFG.max_flat_graphics


def test_busy_high_contrast_texture_is_not_flat_graphics():
    # Hard edges everywhere but no flat fill: foliage, gravel, fine patterns.
    rng = np.random.default_rng(2)
    cells = rng.integers(0, 2, (128, 128, 1)) * 255
    busy = np.repeat(np.repeat(np.repeat(cells, 3, 0), 3, 1), 3, 2).astype(np.uint8)
    (reason, _), scores = judge(normalised(Image.fromarray(busy)))
    assert reason is None
    assert scores["junk_flat_graphics"] < 0.1


# --- junk is caught ----------------------------------------------------------------------


def test_solid_colour_is_near_uniform_and_low_detail():
    (reason, score), scores = judge(solid())
    assert reason == "junk_near_uniform"
    assert score == pytest.approx(scores["junk_near_uniform"]) and score < CFG.min_gray_std
    assert is_low_detail(scores, CFG)


def test_clip_art_is_flat_graphics():
    (reason, score), _ = judge(clip_art(), cfg=PIXEL_RULES)
    assert reason == "junk_flat_graphics"
    assert score >= CFG.max_flat_graphics


def test_rendered_text_is_flat_graphics():
    (reason, _), scores = judge(text_image(), cfg=PIXEL_RULES)
    assert reason == "junk_flat_graphics"
    assert not is_low_detail(scores, CFG)


def test_extreme_aspect_banner_is_caught_by_its_source_shape():
    banner = photo_like(512, 64)
    (reason, score), _ = judge(banner, ImageMeta(1456, 182, "JPEG"), PIXEL_RULES)
    assert reason == "junk_aspect_ratio"
    assert score == pytest.approx(8.0)


def test_very_dark_image():
    dark = Image.fromarray((np.asarray(photo_like()) * 0.03).astype(np.uint8))
    (reason, _), scores = judge(normalised(dark))
    assert reason == "junk_too_dark"
    assert scores["junk_too_dark"] < CFG.min_brightness


def test_very_bright_image():
    washed_out = np.clip(np.asarray(photo_like()) * 0.2 + 225, 0, 255)
    bright = Image.fromarray(washed_out.astype(np.uint8))
    (reason, _), _ = judge(normalised(bright), cfg=PIXEL_RULES)
    assert reason == "junk_too_bright"


def test_small_source_is_too_small_even_if_pixels_look_fine():
    (reason, score), _ = judge(photo_like(48, 48), ImageMeta(48, 48, "PNG"))
    assert (reason, score) == ("junk_too_small", 48.0)


def test_size_checks_use_the_source_not_the_normalised_size():
    image = photo_like(512, 384)
    (reason, _), scores = judge(image, ImageMeta(4000, 3000, "JPEG"))
    assert reason is None
    assert scores["junk_too_small"] == 3000.0


def test_vector_sources_are_drawings():
    (reason, score), _ = judge(photo_like(), ImageMeta(320, 240, "SVG"))
    assert (reason, score) == ("junk_vector_source", 1.0)


# --- scores and API ----------------------------------------------------------------------


def test_every_registered_check_has_a_float_score_column():
    scores = score_image(photo_like(), {"source_width": 320, "source_height": 240}, CFG)
    assert set(scores) == {f"junk_{name}" for name in registered_checks()}
    assert all(isinstance(v, float) for v in scores.values())


def test_numpy_array_and_pil_image_score_the_same():
    image = clip_art()
    # nan_ok: junk_content is NaN until the normalise batch fills it in from the embedding.
    expected = score_image(image, None, CFG)
    assert score_image(np.asarray(image), None, CFG) == pytest.approx(expected, nan_ok=True)


def test_missing_metadata_falls_back_to_the_image_size():
    scores = score_image(photo_like(300, 100), {}, CFG)
    assert scores["junk_aspect_ratio"] == pytest.approx(3.0)
    assert scores["junk_vector_source"] == 0.0


def test_first_flagged_check_in_registry_order_is_the_reason():
    # A tiny SVG banner of flat graphics: vector_source comes first.
    (reason, _), _ = judge(clip_art(), ImageMeta(40, 400, "SVG"))
    assert reason == "junk_vector_source"
    order = list(registered_checks())
    assert order.index("vector_source") < order.index("aspect_ratio") < order.index("too_small")


# --- registry and configuration ---------------------------------------------------------


def test_disabled_check_does_not_reject_but_is_still_scored():
    checks = [c for c in PIXEL_RULES.junk_checks if c != "flat_graphics"]
    cfg = dataclasses.replace(PIXEL_RULES, junk_checks=checks)
    (reason, _), scores = judge(clip_art(), cfg=cfg)
    assert reason != "junk_flat_graphics"
    assert scores["junk_flat_graphics"] >= cfg.max_flat_graphics


def test_no_enabled_checks_keeps_everything():
    cfg = dataclasses.replace(CFG, junk_checks=[])
    assert judge(solid(), cfg=cfg)[0] == (None, None)


def test_threshold_comes_from_config():
    assert judge(clip_art(), cfg=PIXEL_RULES)[0][0] == "junk_flat_graphics"
    cfg = dataclasses.replace(PIXEL_RULES, max_flat_graphics=10.0)
    assert judge(clip_art(), cfg=cfg)[0][0] != "junk_flat_graphics"


def test_unknown_check_name_is_a_clear_error():
    cfg = dataclasses.replace(CFG, junk_checks=["flat_graphics", "no_such_check"])
    with pytest.raises(ValueError, match="no_such_check.*registered: .*flat_graphics"):
        verdict({}, cfg)


def test_new_checks_slot_in_through_the_decorator(monkeypatch):
    monkeypatch.setattr(junk.registry, "_REGISTRY", dict(junk.registry._REGISTRY))

    @register_check
    class Watermark(JunkCheck):
        name = "watermark"
        threshold_field = "max_aspect_ratio"
        flag_above = True

        def calculate(self, image, meta):
            return 99.0

    assert "watermark" in registered_checks()
    scores = score_image(photo_like(), None, CFG)
    assert scores["junk_watermark"] == 99.0
    assert verdict(scores, CFG) == (None, None)  # registered, not enabled
    cfg = dataclasses.replace(CFG, junk_checks=["watermark"])
    assert verdict(scores, cfg) == ("junk_watermark", 99.0)
    with pytest.raises(ValueError, match="registered twice"):
        register_check(Watermark)


def test_a_check_needs_a_threshold_in_the_config(monkeypatch):
    monkeypatch.setattr(junk.registry, "_REGISTRY", dict(junk.registry._REGISTRY))

    class Orphan(JunkCheck):
        name = "orphan"
        threshold_field = "no_such_field"
        flag_above = True

        def calculate(self, image, meta):
            return 0.0

    with pytest.raises(ValueError, match="no_such_field"):
        register_check(Orphan)


def test_nan_scores_never_flag():
    check = registered_checks()["near_uniform"](CFG)
    assert not check.flag(float("nan"), check.threshold())
    assert verdict({"junk_near_uniform": float("nan")}, CFG) == (None, None)


def test_config_fields_have_help_and_flags_that_do_not_clash():
    for f in dataclasses.fields(JunkConfig):
        assert f.metadata.get("help"), f.name
    # Every field becomes a --flag next to the cleaning job's own: names must be unique.
    if JunkConfig in typing.get_type_hints(CleanConfig).values():
        combined = CleanConfig
    else:
        combined = dataclasses.make_dataclass(
            "WithJunk",
            [
                ("clean", CleanConfig, section(CleanConfig)),
                ("junk", JunkConfig, section(JunkConfig)),
            ],
        )
    add_config_args(argparse.ArgumentParser(), combined)


# --- junk by content: the learned classifier, through the job's own functions ------------
# Real files (tests/data/web/README.md says where each comes from and its licence) and
# images made here; the classifier needs the MobileNetV2 embedding, hence real weights.

WEB = Path(__file__).parent / "data" / "web"
needs_weights = pytest.mark.skipif(
    local_embedding_weights() == NO_WEIGHTS, reason="no local MobileNetV2 weights"
)


def encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, fmt, quality=90)
    return buffer.getvalue()


def ad_banner() -> bytes:
    """A promo banner: the product photo beside a flat panel with big text and a button."""
    photo = Image.open(WEB / "drone_product_shot_on_white.jpg").convert("RGB")
    banner = Image.new("RGB", (728, 224), (200, 20, 40))
    banner.paste(photo, (504, 0))
    draw = ImageDraw.Draw(banner)
    draw.text((24, 30), "MEGA SALE", (255, 255, 255), ImageFont.load_default(size=64))
    draw.text((24, 110), "-30% on all drones", (255, 230, 0), ImageFont.load_default(size=32))
    draw.rounded_rectangle((24, 160, 204, 205), 10, fill=(255, 255, 255))
    draw.text((44, 168), "BUY NOW", (200, 20, 40), ImageFont.load_default(size=26))
    return encoded(banner)


def job_verdicts(files: dict[str, bytes], **junk: object) -> dict[str, dict]:
    """name -> the row the normalise batch makes of it (status, reason, scores)."""
    cfg = CleanConfig()
    cfg.dedup.embedding_weights = local_embedding_weights()
    cfg.junk = dataclasses.replace(cfg.junk, **junk)
    rows = []
    for name, data in files.items():
        item = {"source_uri": f"s3://lake/raw/Drones/{name}", "class_name": "Drones",
                "label": 0, "etag": "e", "mtime": None, "size": len(data)}  # fmt: skip
        rows.append(normalise_item(item, data, cfg))
    judged, _, _ = judge_batch(rows, cfg)
    return {name: row for name, row in zip(files, judged, strict=True)}


@pytest.fixture(scope="module")
def web_verdicts() -> dict[str, dict]:
    files = {p.name: p.read_bytes() for p in sorted(WEB.glob("*.jpg")) + sorted(WEB.glob("*.png"))}
    files["text.png"] = encoded(text_image(), "PNG")
    files["banner.jpg"] = ad_banner()
    return job_verdicts(files)


@needs_weights
@pytest.mark.parametrize("name", ["drone_product_shot_on_white.jpg", "airliner_side_3.5to1.jpg"])
def test_real_product_shot_on_white_and_wide_photo_are_kept(web_verdicts, name):
    row = web_verdicts[name]
    assert row["status"] == "kept", (row.get("reason"), row.get("detail"))
    assert row["junk_content"] < CFG.max_junk_content
    # What the old default rules said about them (kept as scores, no longer enabled):
    if name.startswith("airliner"):
        assert row["junk_aspect_ratio"] >= PIXEL_RULES.max_aspect_ratio


@needs_weights
@pytest.mark.parametrize("name", ["logo_omoda.png", "text.png", "banner.jpg"])
def test_logo_text_and_ad_banner_are_rejected_by_content(web_verdicts, name):
    row = web_verdicts[name]
    assert (row["status"], row["reason"]) == ("rejected", "junk_content")
    assert row["score"] == pytest.approx(row["junk_content"])
    assert row["score"] >= CFG.max_junk_content
    assert row["detail"].startswith("score ")


@needs_weights
def test_content_threshold_comes_from_config():
    rows = job_verdicts({"text.png": encoded(text_image(), "PNG")}, max_junk_content=1.01)
    assert rows["text.png"]["status"] == "kept" and rows["text.png"]["junk_content"] > 0.5


@needs_weights
def test_overrides_keep_skips_junk_verdicts_and_drop_rejects_a_photo():
    cfg = CleanConfig()
    cfg.dedup.embedding_weights = local_embedding_weights()
    logo, photo = (
        (WEB / "logo_omoda.png").read_bytes(),
        (WEB / "airliner_side_3.5to1.jpg").read_bytes(),
    )
    rows = []
    for name, data, decision in (("logo.png", logo, "keep"), ("plane.jpg", photo, "drop")):
        item = {"source_uri": f"s3://lake/raw/Drones/{name}", "class_name": "Drones",
                "label": 0, "etag": "e", "mtime": None, "size": len(data),
                "override": decision, "override_note": "checked by eye"}  # fmt: skip
        rows.append(normalise_item(item, data, cfg))
    (logo_row, plane_row), _, _ = judge_batch(rows, cfg)
    assert logo_row["status"] == "kept" and logo_row["junk_content"] >= CFG.max_junk_content
    assert (plane_row["status"], plane_row["reason"]) == ("rejected", "override")
    assert plane_row["detail"] == "override: checked by eye"


def test_without_embeddings_the_content_check_never_fires():
    cfg = CleanConfig()
    cfg.dedup.embedding_weights = NO_WEIGHTS
    data = encoded(text_image(), "PNG")
    item = {"source_uri": "s3://lake/raw/Drones/t.png", "class_name": "Drones", "label": 0,
            "etag": "e", "mtime": None, "size": len(data)}  # fmt: skip
    (row,), vectors, todo = judge_batch([normalise_item(item, data, cfg)], cfg)
    assert row["status"] == "kept" and todo == []
    assert math.isnan(row.get("junk_content", float("nan")))


def test_shipped_classifier_loads_and_scores_in_numpy():
    model = load_model()
    assert (
        model.embedding_dim == 1280 and model.embedding_side == CleanConfig().dedup.embedding_side
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, model.embedding_dim + len(PIXEL_FEATURES)))
    p = model.probability(x)
    assert p.shape == (4,) and ((p >= 0) & (p <= 1)).all()

"""Train the content junk classifier shipped as pipeline/models/junk_classifier_v1.npz.

Junk = not a photograph of a thing (logo, icon, clip art, drawing, text, banner, screenshot,
chart, blank); photo = a real photograph of something, whatever it shows (an off-class
photo is still a photo: `pipeline.offclass` decides those). Every image goes through the
job's own functions (`pipeline.normalize.normalise` and `signals`, then
`pipeline.embed.embedder`), so the features are exactly those the job computes.

Training data (all under ../shared/data; nothing here is shipped, only the weights):

- junk: web-scraped/junk-logos, car-brand logos (MIT; the marks belong to their owners)
- junk: messy-ingredients/openclipart-svg, clip art, icons, logos (public domain)
- junk: messy-ingredients/skimage-data text, page, logo, chessboard, horse, phantom,
  color (scikit-image, BSD)
- junk: synthetic images made here, deterministically: text, banners over a photo,
  charts, icons, UI screenshots, blanks and gradients (this repository)
- photo: halmstad-crops, every 10th file of each video, all five classes (CC0)
- photo: messy-ingredients skimage photos (BSD) and Pillow's hopper/flower (MIT-CMU)
- both: web-scraped/lake labelled by eye (scripts/bench/labels/web_scraped_lake.csv):
  photo and off_class -> photo, junk -> junk, unsure left out (licences: web-scraped/README.md)

Folds (`devkit.junk_data`, with the data paths): `fold_of(key)` = first 4 bytes of
sha1(key) mod 5; fold 0 is HELD OUT, never fitted on. The key is the file's path relative
to its data set, except halmstad, where it is the video (frames of one video are near
copies) and synthetic images, where it is the recipe's id (a banner's background photo
is drawn from halmstad's training folds only). The model is fitted on folds 1-4 and
every figure this script prints about it is on fold 0
(`scripts/bench/web_scraped_cleaning.py` uses the same folds).

    .venv/bin/python scripts/train_junk_classifier.py [--labels CSV] [--cache PATH] [--write]

Without --write it only prints the held-out figures.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.reasons import Rejected
from devkit.junk_data import (
    CLIPART,
    FOLDS,
    HALMSTAD,
    HELD_OUT,
    LABELS,
    LAKE,
    LOGOS,
    PILLOW,
    SKIMAGE,
    fold_of,
    lake_labels,
)
from devkit.weights import local_embedding_weights
from pipeline.config import CleanConfig
from pipeline.embed import embedder
from pipeline.junk_model import (
    DEFAULT_MODEL,
    MODELS_DIR,
    PIXEL_FEATURES,
    JunkModel,
    feature_matrix,
    pixel_features,
)
from pipeline.normalize import EMBEDDING_INPUT, normalise, signals

DEFAULT_CACHE = Path("/tmp/junk-classifier-features.npz")

HALMSTAD_EVERY = 10  # every 10th crop of a video (itself every 10th frame)
SKIMAGE_JUNK = ["text", "page", "logo", "chessboard_GRAY", "chessboard_RGB", "horse",
                "phantom", "color"]  # fmt: skip
SKIMAGE_PHOTOS = ["astronaut", "chelsea", "coffee", "motorcycle_left", "motorcycle_right",
                  "rocket", "hubble_deep_field", "camera", "moon", "brick", "grass", "gravel",
                  "coins", "clock_motion"]  # fmt: skip
PILLOW_PHOTOS = ["hopper.jpg", "flower.jpg", "flower2.jpg"]
SYNTHETIC_PER_KIND = 60
C_REGULARISATION = 0.05


@dataclass
class Sample:
    key: str  # unique id: "<source>:<relative path or recipe>"
    source: str
    label: int  # 1 junk, 0 photo
    fold: int
    kind: str = ""

    def data(self) -> bytes:
        return SOURCES_BYTES[self.source](self)


# --- the sources -----------------------------------------------------------------------


def _file_bytes(root: Path) -> Callable[[Sample], bytes]:
    return lambda s: (root / s.key.split(":", 1)[1]).read_bytes()


@cache
def halmstad_files() -> list[tuple[str, str]]:
    """(relative path, video) of every HALMSTAD_EVERY-th crop of each video."""
    with open(HALMSTAD / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_video: dict[str, list[str]] = {}
    for r in rows:
        by_video.setdefault(r["video"], []).append(r["file"])
    every = HALMSTAD_EVERY
    return [(f, v) for v, files in sorted(by_video.items()) for f in sorted(files)[::every]]


def samples(labels: dict[str, tuple[str, str]]) -> list[Sample]:
    out = []
    for p in sorted(LOGOS.iterdir()):
        out.append(Sample(f"logos:{p.name}", "logos", 1, fold_of(p.name), "logo"))
    for p in sorted(CLIPART.rglob("*.svg")):
        rel = str(p.relative_to(CLIPART))
        out.append(Sample(f"clipart:{rel}", "clipart", 1, fold_of(rel), "clipart"))
    for name in SKIMAGE_JUNK + SKIMAGE_PHOTOS:
        (p,) = list(SKIMAGE.glob(name + ".*"))
        label = int(name in SKIMAGE_JUNK)
        out.append(Sample(f"skimage:{p.name}", "skimage", label, fold_of(p.name), "skimage"))
    for name in PILLOW_PHOTOS:
        out.append(Sample(f"pillow:{name}", "pillow", 0, fold_of(name), "photo"))
    for rel, video in halmstad_files():
        out.append(Sample(f"halmstad:{rel}", "halmstad", 0, fold_of(video), rel.split("/")[0]))
    for kind in SYNTHETIC_KINDS:
        for i in range(SYNTHETIC_PER_KIND):
            rid = f"{kind}-{i}"
            out.append(Sample(f"synthetic:{rid}", "synthetic", 1, fold_of(rid), kind))
    for rel, (label, kind) in sorted(labels.items()):
        if label in ("photo", "off_class", "junk") and (LAKE / rel).is_file():
            out.append(Sample(f"lake:{rel}", "lake", int(label == "junk"), fold_of(rel), kind))
    return out


# --- synthetic junk (deterministic: the recipe id seeds everything) --------------------

WORDS = [
    "drone", "sale", "best", "price", "free", "shipping", "new", "2024", "buy", "now",
    "pro", "camera", "flight", "aircraft", "wings", "sky", "click", "here", "download",
    "app", "top", "rated", "offer", "limited",
]  # fmt: skip


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big"))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(x) for x in rng.integers(0, 256, 3))


def _font(rng: np.random.Generator, lo: int = 12, hi: int = 48) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=int(rng.integers(lo, hi)))


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


@cache
def background_photos() -> list[Path]:
    """Training-fold files of halmstad and of the web-scraped lake (labelled or not)."""
    crops = [HALMSTAD / f for f, v in halmstad_files() if fold_of(v) != HELD_OUT]
    lake = [p for p in sorted(LAKE.rglob("*.jpg")) if fold_of(str(p.relative_to(LAKE))) != HELD_OUT]
    return crops + lake


def _training_photo(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A photo from a training fold, as a banner's or a page's picture."""
    files = background_photos()
    image = Image.open(files[int(rng.integers(len(files)))]).convert("RGB")
    return image.resize(size, Image.Resampling.BILINEAR)


def synth_text(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(200, 800)), int(rng.integers(150, 600))
    image = Image.new("RGB", (w, h), _colour(rng) if rng.random() < 0.4 else (255, 255, 255))
    draw = ImageDraw.Draw(image)
    y, ink = 10, (0, 0, 0) if rng.random() < 0.7 else _colour(rng)
    while y < h - 20:
        font = _font(rng, 12, 36)
        draw.text((int(rng.integers(5, 40)), y), _words(rng, int(rng.integers(2, 8))), ink, font)
        y += int(font.size * 1.5)
    return image


def synth_banner(rng: np.random.Generator) -> Image.Image:
    w = int(rng.integers(300, 900))
    h = int(w / rng.uniform(1.2, 4.0))
    image = _training_photo(rng, (w, h))
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.6:  # a flat panel beside or under the text
        x0 = int(rng.integers(0, w // 2))
        draw.rectangle((x0, 0, x0 + w // 2, h), fill=_colour(rng))
    for _ in range(int(rng.integers(1, 4))):
        font = _font(rng, max(18, h // 10), max(19, h // 4))
        xy = (int(rng.integers(0, w // 2)), int(rng.integers(0, max(1, h - font.size))))
        draw.text(xy, _words(rng, int(rng.integers(1, 4))).upper(), _colour(rng), font)
    if rng.random() < 0.5:  # a button
        x, y = int(rng.integers(0, w - 120)), int(rng.integers(0, max(1, h - 40)))
        draw.rounded_rectangle((x, y, x + 110, y + 36), 8, fill=_colour(rng))
        draw.text((x + 10, y + 8), "BUY NOW", (255, 255, 255), _font(rng, 14, 18))
    return image


def synth_chart(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(300, 700)), int(rng.integers(220, 500))
    image = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.line((40, 10, 40, h - 30), (0, 0, 0), 2)
    draw.line((40, h - 30, w - 10, h - 30), (0, 0, 0), 2)
    n = int(rng.integers(3, 12))
    style = rng.integers(3)
    values = rng.uniform(0.1, 1.0, n)
    step = (w - 60) / n
    if style == 0:  # bars
        for i, v in enumerate(values):
            x = 45 + i * step
            draw.rectangle((x, h - 30 - v * (h - 50), x + step * 0.7, h - 31), fill=_colour(rng))
    elif style == 1:  # lines
        for _ in range(int(rng.integers(1, 4))):
            ys = rng.uniform(0.1, 1.0, n)
            pts = [(45 + i * step, h - 30 - y * (h - 50)) for i, y in enumerate(ys)]
            draw.line(pts, _colour(rng), int(rng.integers(1, 4)))
    else:  # pie
        c, r, start = (w // 2, h // 2), min(w, h) // 3, 0.0
        for v in values / values.sum():
            draw.pieslice((c[0] - r, c[1] - r, c[0] + r, c[1] + r), start, start + 360 * v,
                          fill=_colour(rng))  # fmt: skip
            start += 360 * v
    draw.text((50, 2), _words(rng, 3), (0, 0, 0), _font(rng, 12, 20))
    return image


def synth_icon(rng: np.random.Generator) -> Image.Image:
    side = int(rng.integers(64, 400))
    bg = (255, 255, 255) if rng.random() < 0.6 else _colour(rng)
    image = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        box = sorted(rng.integers(0, side, 2)), sorted(rng.integers(0, side, 2))
        xy = (box[0][0], box[1][0], box[0][1] + 4, box[1][1] + 4)
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse(xy, fill=_colour(rng), outline=(0, 0, 0), width=int(rng.integers(0, 4)))
        elif shape == 1:
            draw.rectangle(xy, fill=_colour(rng))
        else:
            pts = [tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(3)]
            draw.polygon(pts, fill=_colour(rng))
    if rng.random() < 0.4:
        draw.text((side // 5, side // 3), _words(rng, 1), _colour(rng), _font(rng, 10, 40))
    return image


def synth_screenshot(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(400, 1000)), int(rng.integers(300, 700))
    image = Image.new("RGB", (w, h), (245, 245, 245) if rng.random() < 0.7 else (30, 30, 35))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, w, 30), fill=_colour(rng))
    draw.text((10, 8), _words(rng, 3), (255, 255, 255), _font(rng, 12, 16))
    side = int(rng.integers(0, w // 4))
    if side:
        draw.rectangle((0, 30, side, h), fill=(220, 220, 225))
        for y in range(45, h - 20, 28):
            draw.text((8, y), _words(rng, 2), (40, 40, 40), _font(rng, 11, 15))
    y = 45
    while y < h - 30:
        if rng.random() < 0.25:  # a photo thumbnail in the page
            tw, th = int(rng.integers(60, 200)), int(rng.integers(40, 120))
            image.paste(_training_photo(rng, (tw, th)), (side + 20, y))
            y += th + 10
        else:
            draw.text((side + 20, y), _words(rng, int(rng.integers(3, 10))), (20, 20, 20),
                      _font(rng, 11, 18))  # fmt: skip
            y += 24
        if rng.random() < 0.15:
            draw.rounded_rectangle((side + 20, y, side + 140, y + 28), 5, fill=_colour(rng))
            y += 36
    return image


def synth_blank(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(100, 600)), int(rng.integers(100, 600))
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    if rng.random() < 0.5:
        b = a
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    pixels = np.broadcast_to(a + (b - a) * t, (h, w, 3))
    return Image.fromarray(pixels.astype(np.uint8))


SYNTHETIC_KINDS = {
    "text": synth_text,
    "banner": synth_banner,
    "chart": synth_chart,
    "icon": synth_icon,
    "screenshot": synth_screenshot,
    "blank": synth_blank,
}


def synthetic_bytes(sample: Sample) -> bytes:
    rid = sample.key.split(":", 1)[1]
    image = SYNTHETIC_KINDS[rid.rsplit("-", 1)[0]](_rng(rid))
    buffer = io.BytesIO()
    image.save(buffer, "PNG" if rid.startswith(("icon", "chart")) else "JPEG", quality=90)
    return buffer.getvalue()


SOURCES_BYTES = {
    "logos": _file_bytes(LOGOS),
    "clipart": _file_bytes(CLIPART),
    "skimage": _file_bytes(SKIMAGE),
    "pillow": _file_bytes(PILLOW),
    "halmstad": _file_bytes(HALMSTAD),
    "lake": _file_bytes(LAKE),
    "synthetic": synthetic_bytes,
}


# --- features, through the job's own functions -----------------------------------------


def job_config() -> CleanConfig:
    cfg = CleanConfig()
    cfg.dedup.embedding_weights = local_embedding_weights()
    return cfg


def features_of(data: bytes, cfg: CleanConfig) -> tuple[np.ndarray, dict[str, float]] | None:
    """(embedding input, junk scores) as the job computes them; None if undecodable."""
    try:
        normalised = normalise(data, cfg.normalize)
    except Rejected:
        return None
    sig = signals(normalised, cfg)
    scores = {k: float(v) for k, v in sig.items() if k.startswith("junk_")}
    return sig[EMBEDDING_INPUT], scores


def extract(todo: list[Sample], cache: Path, cfg: CleanConfig) -> dict[str, dict]:
    """key -> {"embedding", "scores"}; cached in `cache` across runs (new keys only)."""
    found: dict[str, dict] = {}
    if cache.is_file():
        with np.load(cache) as data:
            keys = json.loads(str(data["keys"]))
            scores = json.loads(str(data["scores"]))
            vectors = data["embeddings"]
            for i, k in enumerate(keys):
                found[k] = {"embedding": vectors[i], "scores": scores[i]}
    missing = [s for s in todo if s.key not in found]
    embed = embedder(cfg.dedup.embedding_weights)
    started = time.perf_counter()
    for start in range(0, len(missing), 64):
        chunk = missing[start : start + 64]
        got = [(s, features_of(s.data(), cfg)) for s in chunk]
        got = [(s, f) for s, f in got if f is not None]
        for s in chunk:
            found.setdefault(s.key, {"embedding": None, "scores": None})
        if got:
            vectors = embed([f[0] for _, f in got])
            for (s, f), v in zip(got, vectors, strict=True):
                found[s.key] = {"embedding": v, "scores": f[1]}
        print(f"  features {start + len(chunk)}/{len(missing)} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)  # fmt: skip
    if missing:
        usable = [k for k, v in found.items() if v["embedding"] is not None]
        np.savez(
            cache,
            keys=json.dumps(usable),
            scores=json.dumps([found[k]["scores"] for k in usable]),
            embeddings=np.stack([found[k]["embedding"] for k in usable]).astype(np.float16),
        )
    return {k: v for k, v in found.items() if v["embedding"] is not None}


def matrix(items: list[Sample], feats: dict[str, dict]) -> np.ndarray:
    emb = np.stack([feats[s.key]["embedding"] for s in items]).astype(np.float32)
    pix = np.stack([pixel_features(feats[s.key]["scores"]) for s in items])
    return feature_matrix(emb, pix)


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=C_REGULARISATION, class_weight="balanced", max_iter=2000)
    model.fit((x - mean) / scale, y)
    return mean, scale, model.coef_[0], float(model.intercept_[0])


def report(items: list[Sample], p: np.ndarray, threshold: float) -> None:
    """Held-out figures per source and kind."""
    groups: dict[tuple[str, int], list[float]] = {}
    for s, pi in zip(items, p, strict=True):
        groups.setdefault((s.source, s.label), []).append(pi)
        if s.source in ("lake", "synthetic"):
            groups.setdefault((f"{s.source}/{s.kind}", s.label), []).append(pi)
    print(f"held-out fold {HELD_OUT}, threshold {threshold}:")
    print("| source | label | n | flagged as junk |")
    print("|---|---|---|---|")
    for (source, label), ps in sorted(groups.items()):
        flagged = float(np.mean(np.asarray(ps) >= threshold))
        print(f"| {source} | {'junk' if label else 'photo'} | {len(ps)} | {100 * flagged:.1f} % |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--write", action="store_true", help="write the shipped weights")
    parser.add_argument("--extract-only", action="store_true", help="cache features, no fit")
    parser.add_argument("--no-lake", action="store_true", help="leave the lake's labels out")
    args = parser.parse_args(argv)
    cfg = job_config()
    labels = {} if args.no_lake else lake_labels(args.labels)
    todo = samples(labels)
    if args.extract_only:  # every lake file, labelled yet or not: the labels come later
        lake = [str(p.relative_to(LAKE)) for p in sorted(LAKE.rglob("*")) if p.is_file()]
        extract(todo + [Sample(f"lake:{r}", "lake", -1, fold_of(r)) for r in lake], args.cache, cfg)
        return 0
    feats = extract(todo, args.cache, cfg)
    todo = [s for s in todo if s.key in feats]
    train = [s for s in todo if s.fold != HELD_OUT]
    held = [s for s in todo if s.fold == HELD_OUT]
    print(f"{len(train)} training images ({sum(s.label for s in train)} junk), "
          f"{len(held)} held out ({sum(s.label for s in held)} junk)")  # fmt: skip
    y = np.array([s.label for s in train])
    mean, scale, coef, intercept = fit(matrix(train, feats), y)
    model = JunkModel(mean, scale, coef, intercept, coef.size - len(PIXEL_FEATURES),
                      cfg.dedup.embedding_side, DEFAULT_MODEL)  # fmt: skip
    report(held, model.probability(matrix(held, feats)), args.threshold)
    if args.write:
        path = MODELS_DIR / DEFAULT_MODEL
        path.parent.mkdir(exist_ok=True)
        counts: dict[str, int] = {}
        for s in train:
            counts[f"{s.source}/{'junk' if s.label else 'photo'}"] = counts.get(
                f"{s.source}/{'junk' if s.label else 'photo'}", 0) + 1  # fmt: skip
        model.save(
            path,
            trained_on=json.dumps(counts, sort_keys=True),
            folds=f"sha1 mod {FOLDS}; fold {HELD_OUT} held out",
            embedding_weights=Path(cfg.dedup.embedding_weights).name,
            script="scripts/train_junk_classifier.py",
        )
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

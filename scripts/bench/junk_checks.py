"""Calibrate the junk checks: false drops on real photos, catches on real clip art.

Every file goes through ``pipeline.normalize.normalise_bytes`` first (the job's own
decode, shrink to 512 and JPEG q90), then ``pipeline.junk.score_image`` on the decoded
JPEG, so the scores are those the job will see.

* Photos that must survive: the halmstad crops (small birds, drones, planes and
  helicopters against the sky, one folder per class) and the real photos of
  skimage-data.
* Junk that should be caught: the openclipart SVGs (logos, buttons, icons, drawings of
  birds and aeroplanes; those the decoder rejects are counted, not scored) and
  skimage's text, page, logo and chessboard images.

Printed: the cost of ``score_image``; per check, its false-drop rate on the crops (per
class and overall) and its catch rate on the clip art at the configured threshold; the
combined verdict's rates, with every enabled check and with the pixel checks alone (the
metadata checks vector_source, too_small and aspect_ratio catch the SVGs for reasons
a PNG of the same drawing would not show); and, per pixel check, the threshold at
which it would drop a given share of the crops.

It measures the pixel rules alone: the `content` check needs the embedding, which this
script does not compute (it scores NaN here and never flags). Since issue 27 most pixel
rules are opt-in; by default this script enables the rule set the job used before
(`PIXEL_RULES`), so its tables stay comparable; `--set junk_checks=...` picks others.
The job's current defaults, content included, are measured on real web images by
``scripts/bench/web_scraped_cleaning.py``.

Run from the repository root:

    .venv/bin/python scripts/bench/junk_checks.py [--sample 300] [--set max_flat_graphics=0.5]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import random
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import HALMSTAD_CROPS, MESSY_INGREDIENTS
from PIL import Image

from common.reasons import Rejected
from pipeline.config import NormalizeConfig
from pipeline.junk import (
    ImageMeta,
    JunkConfig,
    is_low_detail,
    registered_checks,
    score_column,
    score_image,
    verdict,
)
from pipeline.normalize import normalise_bytes

CROPS_DIR = HALMSTAD_CROPS
CLIPART_DIR = MESSY_INGREDIENTS / "openclipart-svg"
SKIMAGE_DIR = MESSY_INGREDIENTS / "skimage-data"
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)
SKIMAGE_JUNK = ("text.png", "page.png", "logo.png", "chessboard_GRAY.png", "chessboard_RGB.png")
METADATA_CHECKS = ("vector_source", "too_small", "aspect_ratio")
CALIBRATION_DROPS = (0.001, 0.005, 0.01)  # shares of crops a suggested threshold may drop
TIMING_REPEATS = 3  # score_image runs per image; the fastest counts (the machine is shared)
SEED = 0
MS = 1000.0
PERCENT = 100.0


@dataclass
class Scored:
    name: str
    group: str  # crop class, "clipart" or "skimage"
    scores: dict[str, float]
    seconds: float


@dataclass
class Corpus:
    items: list[Scored] = field(default_factory=list)
    undecodable: Counter = field(default_factory=Counter)

    def group(self, *groups: str) -> list[Scored]:
        return [s for s in self.items if s.group in groups]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sample", type=int, default=None, help="crops sampled per class (default: all)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a JunkConfig field, e.g. max_flat_graphics=0.5 (repeatable)",
    )
    return parser.parse_args(argv)


PIXEL_RULES = ["vector_source", "aspect_ratio", "too_small", "near_uniform", "too_dark",
               "few_colors", "flat_graphics", "too_bright"]  # fmt: skip


def junk_config(overrides: list[str]) -> JunkConfig:
    cfg = JunkConfig(junk_checks=list(PIXEL_RULES))
    types = {f.name: type(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"no JunkConfig field {key!r}")
        parsed = value.split(",") if types[key] is list else types[key](value)
        setattr(cfg, key, parsed)
    return cfg


def crop_files(sample: int | None) -> dict[str, list[Path]]:
    rng = random.Random(SEED)
    by_class = {}
    for folder in sorted(p for p in CROPS_DIR.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))
        by_class[folder.name] = (
            sorted(rng.sample(files, min(sample, len(files)))) if sample else files
        )
    return by_class


def score_file(path: Path, group: str, ncfg: NormalizeConfig, cfg: JunkConfig) -> Scored | str:
    """Normalise like the job, then score; the rejection reason if the decoder refuses."""
    try:
        row = normalise_bytes(path.read_bytes(), ncfg)
    except Rejected as rej:
        return str(rej.reason)
    image = Image.open(io.BytesIO(row["image"]))
    image.load()
    meta = ImageMeta.of(row)
    fastest = float("inf")
    for _ in range(TIMING_REPEATS):
        started = time.perf_counter()
        scores = score_image(image, meta, cfg)
        fastest = min(fastest, time.perf_counter() - started)
    return Scored(path.name, group, scores, fastest)


def load(cfg: JunkConfig, sample: int | None) -> Corpus:
    ncfg = NormalizeConfig()
    corpus = Corpus()
    sets: list[tuple[str, list[Path]]] = list(crop_files(sample).items())
    sets.append(("clipart", sorted(CLIPART_DIR.rglob("*.svg"))))
    sets.append(("skimage", [SKIMAGE_DIR / n for n in (*SKIMAGE_PHOTOS, *SKIMAGE_JUNK)]))
    for group, files in sets:
        for path in files:
            out = score_file(path, group, ncfg, cfg)
            if isinstance(out, str):
                corpus.undecodable[(group, out)] += 1
            else:
                corpus.items.append(out)
    return corpus


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


def pct(flags: list[bool]) -> str:
    return f"{PERCENT * sum(flags) / max(1, len(flags)):.2f}%"


def flagged_by(item: Scored, name: str, cfg: JunkConfig) -> bool:
    check = registered_checks()[name](cfg)
    return check.flag(item.scores[score_column(name)], check.threshold())


def check_table(corpus: Corpus, classes: list[str], cfg: JunkConfig) -> None:
    print("\n## Each check at its configured threshold (crops: false drops; clip art: catches)\n")
    header = ["check", "on", "threshold", "crops", *classes, "clipart", "sk photos", "sk junk"]
    rows = []
    for name, cls in registered_checks().items():
        threshold = cls(cfg).threshold()
        crops = [flagged_by(s, name, cfg) for s in corpus.group(*classes)]
        per_class = [pct([flagged_by(s, name, cfg) for s in corpus.group(c)]) for c in classes]
        clip = [flagged_by(s, name, cfg) for s in corpus.group("clipart")]
        sk = corpus.group("skimage")
        photos = sum(flagged_by(s, name, cfg) for s in sk if s.name in SKIMAGE_PHOTOS)
        junk = sum(flagged_by(s, name, cfg) for s in sk if s.name in SKIMAGE_JUNK)
        rows.append(
            [
                name,
                "yes" if name in cfg.junk_checks else "no",
                f"{'>=' if cls.flag_above else '<'}{threshold:g}",
                pct(crops),
                *per_class,
                pct(clip),
                f"{photos}/{len(SKIMAGE_PHOTOS)}",
                f"{junk}/{len(SKIMAGE_JUNK)}",
            ]
        )
    print_table(header, rows)


def verdict_table(corpus: Corpus, classes: list[str], cfg: JunkConfig, label: str) -> None:
    reasons = {id(s): verdict(s.scores, cfg)[0] for s in corpus.items}
    crops = [reasons[id(s)] is not None for s in corpus.group(*classes)]
    clip = corpus.group("clipart")
    clip_reasons = Counter(reasons[id(s)] or "kept" for s in clip)
    print(f"\n## Combined verdict, {label}\n")
    print(f"checks: {', '.join(cfg.junk_checks)}")
    print_table(
        ["crops", *classes, "clipart"],
        [
            [
                pct(crops),
                *[pct([reasons[id(s)] is not None for s in corpus.group(c)]) for c in classes],
                pct([reasons[id(s)] is not None for s in clip]),
            ]
        ],
    )
    print("clip-art outcomes: " + ", ".join(f"{k} {v}" for k, v in clip_reasons.most_common()))
    crop_reasons = Counter(reasons[id(s)] for s in corpus.group(*classes) if reasons[id(s)])
    print(
        "crop drops by reason: "
        + (", ".join(f"{k} {v}" for k, v in crop_reasons.items()) or "none")
    )
    sk = {s.name: reasons[id(s)] or "kept" for s in corpus.group("skimage")}
    print("skimage photos: " + ", ".join(f"{n}={sk[n]}" for n in SKIMAGE_PHOTOS if n in sk))
    print("skimage junk:   " + ", ".join(f"{n}={sk[n]}" for n in SKIMAGE_JUNK if n in sk))


def calibration_table(corpus: Corpus, classes: list[str], cfg: JunkConfig) -> None:
    print("\n## Thresholds that drop a given share of the crops, and their clip-art catch\n")
    header = ["check", "configured", "worst sk photo"]
    for drop in CALIBRATION_DROPS:
        header += [f"thr@{PERCENT * drop:g}%", "catch"]
    rows = []
    for name, cls in registered_checks().items():
        if name in METADATA_CHECKS:
            continue
        column = score_column(name)
        crops = np.array([s.scores[column] for s in corpus.group(*classes)])
        clip = np.array([s.scores[column] for s in corpus.group("clipart")])
        photos = [s.scores[column] for s in corpus.group("skimage") if s.name in SKIMAGE_PHOTOS]
        worst = max(photos) if cls.flag_above else min(photos)
        row = [name, f"{cls(cfg).threshold():g}", f"{worst:.3g}"]
        for drop in CALIBRATION_DROPS:
            if cls.flag_above:
                threshold = float(np.quantile(crops, 1 - drop)) + 1e-9
                catch = np.mean(clip >= threshold)
            else:
                threshold = float(np.quantile(crops, drop))
                catch = np.mean(clip < threshold)
            row += [f"{threshold:.3g}", f"{PERCENT * catch:.1f}%"]
        rows.append(row)
    print_table(header, rows)


def timing(corpus: Corpus, classes: list[str]) -> None:
    print(
        "\n## Cost of score_image (all registered checks, one image, one core; "
        f"fastest of {TIMING_REPEATS} runs)\n"
    )
    rows = []
    for label, items in (("crops", corpus.group(*classes)), ("clipart", corpus.group("clipart"))):
        secs = sorted(s.seconds for s in items)
        rows.append(
            [
                label,
                str(len(secs)),
                f"{statistics.fmean(secs) * MS:.2f}",
                f"{statistics.median(secs) * MS:.2f}",
                f"{secs[int(0.95 * (len(secs) - 1))] * MS:.2f}",
            ]
        )
    print_table(["set", "images", "mean ms", "median ms", "p95 ms"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = junk_config(args.set)
    started = time.perf_counter()
    corpus = load(cfg, args.sample)
    classes = sorted({s.group for s in corpus.items} - {"clipart", "skimage"})
    counts = defaultdict(int)
    for s in corpus.items:
        counts[s.group] += 1
    print(
        f"# Junk checks: {sum(counts.values())} images scored in "
        f"{time.perf_counter() - started:.0f} s (normalise + score)"
    )
    print("scored: " + ", ".join(f"{g} {n}" for g, n in sorted(counts.items())))
    if corpus.undecodable:
        print(
            "refused by the decoder (not scored): "
            + ", ".join(f"{g} {r} {n}" for (g, r), n in sorted(corpus.undecodable.items()))
        )
    timing(corpus, classes)
    check_table(corpus, classes, cfg)
    verdict_table(corpus, classes, cfg, "every enabled check")
    pixel_only = dataclasses.replace(
        cfg, junk_checks=[c for c in cfg.junk_checks if c not in METADATA_CHECKS]
    )
    verdict_table(corpus, classes, pixel_only, "pixel checks only (as if the SVGs were PNGs)")
    calibration_table(corpus, classes, cfg)
    low = {g: pct([is_low_detail(s.scores, cfg) for s in corpus.group(g)]) for g in counts}
    print(
        "\nlow_detail (left out of near-duplicate search): "
        + ", ".join(f"{g} {v}" for g, v in sorted(low.items()))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

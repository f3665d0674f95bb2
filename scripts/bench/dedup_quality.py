"""Duplicate detection quality on real photos, and how well the job's split avoids leaks.

Part A: precision and recall of near-duplicate detection on planted copies of real
photos. Originals: the real photos of skimage-data, hand-picked camera photos among
Pillow's test images (`PILLOW_PHOTOS`) and one crop per video of halmstad-crops (the
middle frame). Every original gets the variants of `VARIANTS` (JPEG re-encodes,
resizes, format changes, crops, brightness changes and combinations). Each file then
goes through the job's own steps: `normalise` (decode, shrink to 512, JPEG q90), the
stage's `signals` (hashes, junk scores, low detail, layouts) and the job's batch verdict
(`judge_batch`: the content classifier on the embedding, then the junk rules)
(a file the job would reject never reaches de-duplication; counted as "filtered"), the
job's `dedup_input`, and last the real `deduplicate` on local Ray, at each threshold of
`--thresholds`. Why a variant was missed is the job's own `explain_pair`.

Ground truth: an original and its variants are duplicates of each other; any other
pair is not. Measured:
- precision: drops (exact or near duplicate) whose `duplicate_of` is in the dropped
  file's own group (its original or a sibling variant), over all drops;
- recall: planted variants kept in place of the same file as their original, that
  file being of their own group (the variant is dropped as a copy of its original or
  of a sibling, or the keep policy prefers the variant and drops the original), over
  all planted variants that reached de-duplication together with their original.
Both are printed per variant kind, per source and for a threshold sweep.

Part B: the real cleaning job, `pipeline.cli.main(["clean", LAKE, OUT, "--no-progress"])`,
on halmstad-crops as a local folder (one sub-folder per class; the root's manifest.csv
and README.md are rejected as no_class), once with default settings and once with
`--group-manifest-uri LAKE/manifest.csv --group-manifest-column video`, each into a
fresh folder under `--out-root`. The output is joined with manifest.csv to report
what was kept and dropped, how duplicate clusters match videos, and the leak: the
share of test images whose video also has frames in train, against a seeded random
per-image 70/30 split (stratified by class) of the same kept images.

`--job-thresholds 4` adds a run with `--max-hash-distance 4`.

Run from the repository root (part A takes about half a minute, each job of part B
about 40 s on 2 cores):

    RAY_AUTH_MODE=disabled .venv/bin/python scripts/bench/dedup_quality.py
    .venv/bin/python scripts/bench/dedup_quality.py --part a --thresholds 4 6 8 10 12
    .venv/bin/python scripts/bench/dedup_quality.py --part b --job-thresholds 4
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _common import SHARED_DATA
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from common.backbone import NO_WEIGHTS
from common.reasons import Rejected
from common.storage import StorageConfig
from devkit.weights import local_embedding_weights
from pipeline import dedup
from pipeline.config import CleanConfig, NormalizeConfig
from pipeline.decide import dedup_input
from pipeline.embed import BATCH_SIZE as EMBED_BATCH
from pipeline.normalize import EMBEDDING_INPUT, judge_batch, normalise, signals
from pipeline.tables import KEPT

SHARED = SHARED_DATA
CROPS_DIR = SHARED / "halmstad-crops"
SKIMAGE_DIR = SHARED / "messy-ingredients" / "skimage-data"
PILLOW_DIR = SHARED / "messy-ingredients" / "pillow-test-images"
# Real photos only: text, logo, page, chessboard, synthetic (color, phantom, horse
# silhouette, clock_motion) and multi-page/GIF files are left out.
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
    "retina.jpg", "rocket.jpg",
)  # fmt: skip
# Picked by eye from a contact sheet of the decodable Pillow test images: camera photos
# only, one file per photo (jpeg_ff00_header.jpg is flower2.jpg, sugarshack*.mpo,
# exif_typeerror.jpg and iptc_roundUp.jpg are copies, flower_thumbnail.png is flower.jpg
# small); renders, scans, test cards, drawings and the many hopper re-encodes are out.
PILLOW_PHOTOS = (
    "fujifilm.mpo", "frozenpond.mpo", "sugarshack.mpo", "xmp_test.jpg",
    "icc_profile_big.jpg", "junk_jpeg_header.jpg", "flower.jpg", "flower2.jpg",
    "app13-multiple.jpg", "exif-72dpi-int.jpg", "exif_gps_typeerror.jpg", "iptc.jpg",
    "hopper.jpg", "xmp_tags_orientation.png",
)  # fmt: skip
SOURCES = ("skimage", "pillow", "halmstad")
SOURCE_SETS = {
    "skimage": ("skimage",),
    "pillow": ("pillow",),
    "photos": ("skimage", "pillow"),
    "halmstad": ("halmstad",),
    "all": SOURCES,
}
# Originals larger than this (longest side) are first shrunk to it (LANCZOS, JPEG q95):
# the shrunk file is the original, so every variant stays cheap to encode and decode.
MAX_ORIGINAL_SIDE = 1024
ORIGINAL = "original"
MIDDLE_FRAME = 0.5  # halmstad: each video's original is its middle frame (what was tuned on)
WEBP_QUALITY = 80
JPEG_AFTER_EDIT = 90  # quality a pixel edit (resize, crop, brightness) is saved with
CLASS = "photos"  # one class: no label conflicts can hide a miss or a false drop
THRESHOLDS = (4, 6, 8, 10, 12)
TARGET = 0.95
FIVE_PERCENT = ("crop_c5", "crop_e5")
REVIEW_SIDE = 160  # px per image in the review sheet of cross-video drops

# Each variant: pixel edits, then one encoding step (jpeg q / png / webp).
Op = tuple[str, float]
VARIANTS: dict[str, tuple[Op, ...]] = {
    "jpeg_q50": (("jpeg", 50),),
    "jpeg_q70": (("jpeg", 70),),
    "jpeg_q90": (("jpeg", 90),),
    "resize_50": (("resize", 0.5), ("jpeg", JPEG_AFTER_EDIT)),
    "resize_70": (("resize", 0.7), ("jpeg", JPEG_AFTER_EDIT)),
    "resize_90": (("resize", 0.9), ("jpeg", JPEG_AFTER_EDIT)),
    "png": (("png", 0),),
    "webp": (("webp", WEBP_QUALITY),),
    "crop_c1": (("crop_centre", 0.01), ("jpeg", JPEG_AFTER_EDIT)),
    "crop_c2": (("crop_centre", 0.02), ("jpeg", JPEG_AFTER_EDIT)),
    "crop_c5": (("crop_centre", 0.05), ("jpeg", JPEG_AFTER_EDIT)),
    "crop_e1": (("crop_edge", 0.01), ("jpeg", JPEG_AFTER_EDIT)),
    "crop_e2": (("crop_edge", 0.02), ("jpeg", JPEG_AFTER_EDIT)),
    "crop_e5": (("crop_edge", 0.05), ("jpeg", JPEG_AFTER_EDIT)),
    "bright+10": (("bright", 1.1), ("jpeg", JPEG_AFTER_EDIT)),
    "bright-10": (("bright", 0.9), ("jpeg", JPEG_AFTER_EDIT)),
    "resize_70+jpeg_q60": (("resize", 0.7), ("jpeg", 60)),
    "resize_80+webp": (("resize", 0.8), ("webp", WEBP_QUALITY)),
    "crop_e2+bright+10+jpeg_q80": (("crop_edge", 0.02), ("bright", 1.1), ("jpeg", 80)),
    "bright-10+resize_60+jpeg_q70": (("bright", 0.9), ("resize", 0.6), ("jpeg", 70)),
    "crop_c1+resize_50+png": (("crop_centre", 0.01), ("resize", 0.5), ("png", 0)),
}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}

# The ground truth assumes that originals of different videos are distinct. Where the
# job dropped a halmstad original as another video's copy (at the defaults), the pair
# was looked at on the review sheet of that frame choice (`--halmstad-frame`;
# cross_video_frame*.png, dropped | kept) and judged: True = the same object in the same
# place, pose and size against the same sky (two recordings of one scene: a near copy in
# fact), False = they differ (pose, size, sky tone, another object, or no object seen:
# a real wrong drop, which stays counted). Unless --all-originals, the dropped video's
# original of a True pair is left out with its variants: a planted benchmark needs
# distinct originals. Judged conservatively: any visible difference is False.
SAME_SCENE: dict[float, dict[tuple[str, str], bool]] = {
    0.25: {
        ("V_AIRPLANE_055", "V_AIRPLANE_054"): True,
        ("V_BIRD_040", "V_BIRD_039"): True,
        ("V_BIRD_041", "V_BIRD_051"): False,  # other sky tone, other size
        ("V_DRONE_018", "V_DRONE_016"): False,  # other pose
        ("V_DRONE_021", "V_DRONE_013"): True,
        ("V_DRONE_058", "V_DRONE_098"): True,
        ("V_DRONE_114", "V_DRONE_113"): True,
        ("V_HELICOPTER_016", "V_HELICOPTER_015"): True,
        ("V_HELICOPTER_057", "V_HELICOPTER_058"): True,
    },
    0.5: {
        ("V_BIRD_028", "V_BIRD_027"): True,
        ("V_BIRD_031", "V_BIRD_025"): False,  # the bird elsewhere in the crop
        ("V_DRONE_114", "V_DRONE_113"): True,
        ("V_HELICOPTER_015", "V_HELICOPTER_016"): True,
    },
    0.75: {
        ("V_BIRD_023", "V_BIRD_022"): False,  # no bird seen in either, other sky tone
        ("V_BIRD_028", "V_BIRD_027"): True,
        ("V_DRONE_052", "V_DRONE_051"): False,  # other pose
        ("V_DRONE_086", "V_DRONE_001"): False,  # other pose and size
        ("V_DRONE_102", "V_DRONE_014"): True,
        ("V_HELICOPTER_005", "V_HELICOPTER_006"): True,
        ("V_HELICOPTER_024", "V_HELICOPTER_023"): False,  # other size and tail angle
        ("V_HELICOPTER_025", "V_HELICOPTER_037"): False,  # other pose
        ("V_HELICOPTER_057", "V_AIRPLANE_053"): False,  # another object class
    },
}

# Part B
JOB_SEED = 0
TRAIN_SHARE = 0.7
DUPLICATE_REASONS = (dedup.EXACT_DUPLICATE, dedup.NEAR_DUPLICATE, dedup.LABEL_CONFLICT)
CLUSTER_SIZE_BINS = ((2, 2), (3, 5), (6, 10), (11, 20), (21, 10**9))


# --- Part A: planted near duplicates -------------------------------------------------------


@dataclass
class Original:
    source: str  # skimage / pillow / halmstad
    name: str
    data: bytes
    image: Image.Image  # RGB, EXIF orientation applied: what the variants start from


@dataclass
class Sample:
    """One file of the planted lake and what the job's per-file steps made of it."""

    uri: str
    source: str
    group: str  # the original's name: every member of a group duplicates the others
    kind: str  # ORIGINAL or a key of VARIANTS
    filtered: str | None = None  # rejection reason before de-duplication
    row: dict[str, Any] = field(default_factory=dict)  # deduplicate()'s input columns
    signals: dict[str, Any] | None = None  # judged and embedded in batches, as the job does


def _rgb(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image = ImageOps.exif_transpose(image)
    return image.convert("RGB")


def _encode(image: Image.Image, fmt: str, quality: float) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, "JPEG", quality=int(quality))
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=int(quality))
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def _crop(image: Image.Image, share: float, centred: bool) -> Image.Image:
    """Cut `share` of each side length (at least 1 px): half from each edge when
    centred, else all from the left and top edges."""
    w, h = image.size
    cut_w, cut_h = max(1, round(w * share)), max(1, round(h * share))
    left, top = (cut_w // 2, cut_h // 2) if centred else (cut_w, cut_h)
    return image.crop((left, top, left + w - cut_w, top + h - cut_h))


def _resize(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


PIXEL_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "resize": _resize,
    "crop_centre": lambda im, p: _crop(im, p, centred=True),
    "crop_edge": lambda im, p: _crop(im, p, centred=False),
    "bright": lambda im, f: ImageEnhance.Brightness(im).enhance(f),
}


def make_variant(image: Image.Image, ops: tuple[Op, ...]) -> tuple[bytes, str]:
    """The variant's file bytes and extension: pixel edits in order, then the encoding."""
    *edits, (fmt, quality) = ops
    for name, value in edits:
        image = PIXEL_OPS[name](image, value)
    return _encode(image, fmt, quality), EXTENSIONS[fmt]


def _capped(data: bytes, image: Image.Image) -> tuple[bytes, Image.Image]:
    if max(image.size) <= MAX_ORIGINAL_SIDE:
        return data, image
    small = image.copy()
    small.thumbnail((MAX_ORIGINAL_SIDE, MAX_ORIGINAL_SIDE), Image.Resampling.LANCZOS)
    data = _encode(small, "jpeg", 95)
    return data, _rgb(data)


def _original(source: str, name: str, data: bytes) -> Original:
    Image.MAX_IMAGE_PIXELS = NormalizeConfig().max_pixels
    data, image = _capped(data, _rgb(data))
    return Original(source, name, data, image)


def halmstad_picks(crops_dir: Path, position: float = MIDDLE_FRAME) -> list[str]:
    """One crop per video (manifest.csv): the frame at `position` (0 first, 1 last) of
    its frames in frame order. Thresholds were tuned on the middle frames; another
    position gives originals the tuning never saw."""
    frames: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in read_manifest(crops_dir):
        frames[row["video"]].append((int(row["frame"]), row["file"]))
    return [
        sorted(f)[min(len(f) - 1, int(position * len(f)))][1] for _, f in sorted(frames.items())
    ]


def _video(name: str) -> str:
    """V_DRONE_021 of Large_QuadCopters/V_DRONE_021_f0080.jpg."""
    return Path(name).stem.rsplit("_f", 1)[0]


def same_scene_videos(position: float) -> set[str]:
    """Videos whose original at `position` was judged a copy of another video's."""
    return {dropped for (dropped, _), same in SAME_SCENE.get(position, {}).items() if same}


def distinct_originals(samples: list[Sample], position: float) -> list[Sample]:
    """The planted lake without the groups whose original was judged the same scene as
    another video's (SAME_SCENE): what the ground truth's premise needs."""
    left_out = same_scene_videos(position)
    return [s for s in samples if s.source != "halmstad" or _video(s.group) not in left_out]


def load_originals(crops_dir: Path, position: float = MIDDLE_FRAME) -> list[Original]:
    out = [_original("skimage", n, (SKIMAGE_DIR / n).read_bytes()) for n in SKIMAGE_PHOTOS]
    out += [_original("pillow", n, (PILLOW_DIR / n).read_bytes()) for n in PILLOW_PHOTOS]
    out += [
        _original("halmstad", f, (crops_dir / f).read_bytes())
        for f in halmstad_picks(crops_dir, position)
    ]
    return out


def _job_row(sample: Sample, data: bytes, seen_order: int) -> None:
    """The normalise stage's per-file work for one file (the job's `normalise` and
    `signals`: hashes, junk scores, layouts), leaving deduplicate()'s input columns in
    sample.row (as `pipeline.decide.dedup_input` passes them), the signals for the batch
    verdict in sample.signals, or the rejection in .filtered."""
    cfg = CleanConfig()
    try:
        normalised = normalise(data, cfg.normalize)
    except Rejected as rej:
        sample.filtered = str(rej.reason)
        return
    found = signals(normalised, cfg)
    sample.signals = {**found, "status": KEPT}
    work = {"source_uri": sample.uri, "class_name": CLASS, "seen_order": seen_order}
    work.update(normalised.fields)
    work.update({k: v for k, v in found.items() if k != EMBEDDING_INPUT})
    columns = [*dedup.REQUIRED_COLUMNS, *dedup.OPTIONAL_COLUMNS, "source_width", "source_height"]
    work_row = pa.Table.from_pylist([{k: work.get(k) for k in columns if k != "embedding"}])
    sample.row = dedup_input(work_row).to_pylist()[0]


def add_embeddings(samples: list[Sample], weights: str) -> float:
    """The job's batch verdict (`pipeline.normalize.judge_batch`: every decodable file
    embedded, the content classifier, the junk rules) in the embedding's CPU batches,
    as the normalise tasks run it: junk becomes .filtered, the rest get their embedding;
    seconds."""
    cfg = CleanConfig()
    cfg.dedup.embedding_weights = weights
    todo = [s for s in samples if s.signals is not None]
    started = time.perf_counter()
    for start in range(0, len(todo), EMBED_BATCH):
        batch = todo[start : start + EMBED_BATCH]
        judged, vectors, embedded = judge_batch([dict(s.signals) for s in batch], cfg)
        position = {row: j for j, row in enumerate(embedded)}
        for i, (sample, row) in enumerate(zip(batch, judged, strict=True)):
            if row["status"] != KEPT:
                sample.filtered = row["reason"]
            elif i in position:
                sample.row["embedding"] = vectors[position[i]].astype(np.float32).tolist()
    return time.perf_counter() - started


def build_samples(originals: list[Original]) -> list[Sample]:
    """Originals first (lower seen_order: the keep policy's last key), then variants."""
    samples = []
    for original in originals:
        uri = f"{original.source}/{original.name}"
        sample = Sample(uri, original.source, uri, ORIGINAL)
        _job_row(sample, original.data, len(samples))
        samples.append(sample)
    for original in originals:
        group = f"{original.source}/{original.name}"
        for kind, ops in VARIANTS.items():
            data, ext = make_variant(original.image, ops)
            sample = Sample(f"{group}/{kind}.{ext}", original.source, group, kind)
            _job_row(sample, data, len(samples))
            samples.append(sample)
    return samples


@dataclass
class Outcome:
    """Per file that reached deduplicate(): dropped as a copy, and whether rightly so."""

    sample: Sample
    dropped: bool
    correct_drop: bool
    with_original: bool  # the original reached de-duplication too
    caught: bool  # variants only: same keeper as its original, from their own group
    with_its_original: bool  # variants only: same keeper as its original, of any group
    distance: int | None  # pHash distance to its original
    keeper_kind: str  # kind of the file kept in its place; "another group" if unrelated
    keeper_group: str  # group of the file kept in its place
    extra_copy: bool  # kept although another file of its group is kept too


def _hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _keeper(decision: dict[str, Any]) -> str:
    """The file kept in this file's place (itself when it is kept)."""
    return decision["duplicate_of"] or decision["source_uri"]


def evaluate(samples: list[Sample], decisions: pa.Table) -> list[Outcome]:
    """A variant is caught when it and its original share a keeper from their own group
    (the original, or a sibling variant the keep policy prefers)."""
    by_uri = {d["source_uri"]: d for d in decisions.to_pylist()}
    group_of = {s.uri: s.group for s in samples}
    kind_of = {s.uri: s.kind for s in samples}
    originals = {s.group: s for s in samples if s.kind == ORIGINAL and s.uri in by_uri}
    representative: dict[str, str] = {}  # group -> its first kept file (originals come first)
    for s in samples:
        if s.uri in by_uri and not _removed(by_uri[s.uri]):
            representative.setdefault(s.group, s.uri)
    out = []
    for s in samples:
        if s.uri not in by_uri:
            continue
        d = by_uri[s.uri]
        dropped = _removed(d)
        original = originals.get(s.group)
        keeper = _keeper(d)
        same_keeper = original is not None and _keeper(by_uri[original.uri]) == keeper
        out.append(
            Outcome(
                sample=s,
                dropped=dropped,
                correct_drop=dropped and group_of[d["duplicate_of"]] == s.group,
                with_original=original is not None,
                caught=s.kind != ORIGINAL and same_keeper and group_of[keeper] == s.group,
                with_its_original=s.kind != ORIGINAL and same_keeper,
                distance=_hamming(s.row["phash"], original.row["phash"]) if original else None,
                keeper_kind=kind_of[keeper] if group_of[keeper] == s.group else "another group",
                keeper_group=group_of[keeper],
                extra_copy=not dropped and representative[s.group] != s.uri,
            )
        )
    return out


def _removed(decision: dict[str, Any]) -> bool:
    return decision["reason"] in (dedup.EXACT_DUPLICATE, dedup.NEAR_DUPLICATE)


@dataclass
class Score:
    drops: int = 0
    wrong: int = 0
    variants: int = 0
    caught: int = 0
    paired: int = 0  # variants with the same keeper as their original, of any group
    removed: int = 0  # variants not left in the output as an extra copy of their group

    def add(self, o: Outcome) -> None:
        self.drops += o.dropped
        self.wrong += o.dropped and not o.correct_drop
        if o.sample.kind != ORIGINAL and o.with_original:
            self.variants += 1
            self.caught += o.caught
            self.paired += o.with_its_original
            self.removed += not o.extra_copy

    @property
    def precision(self) -> float:
        return (self.drops - self.wrong) / self.drops if self.drops else float("nan")

    @property
    def recall(self) -> float:
        return self.caught / self.variants if self.variants else float("nan")

    @property
    def copy_recall(self) -> float:
        """Share of the planted copies the output no longer holds twice: a variant counts
        unless it is kept beside another kept file of its group. Each wrong decision is
        counted once: a wrong drop in precision, an extra copy here (R counts a wrongly
        dropped original again in recall, as every variant that then lacks its
        original's keeper)."""
        return self.removed / self.variants if self.variants else float("nan")

    @property
    def pair_recall(self) -> float:
        """Found with its original, even where the original itself went to another
        group's keeper (that wrong drop is counted once, in precision)."""
        return self.paired / self.variants if self.variants else float("nan")


def score(outcomes: Iterable[Outcome]) -> Score:
    total = Score()
    for o in outcomes:
        total.add(o)
    return total


def _without_5(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.sample.kind not in FIVE_PERCENT]


def config(threshold: int, weights: str, **changes: Any) -> dedup.DedupConfig:
    """Defaults, with the search radius at `threshold`: the verified candidates' radius
    when weights are given, else pHash's own."""
    return dedup.DedupConfig(
        max_hash_distance=threshold,
        verify_hash_distance=threshold,
        embedding_weights=weights,
        **changes,
    )


def run_dedup(
    samples: list[Sample], threshold: int, weights: str, **changes: Any
) -> tuple[pa.Table, dict]:
    rows = [s.row for s in samples if s.row and not s.filtered]
    table = pa.Table.from_pylist(rows)
    result = dedup.deduplicate(table, config(threshold, weights, **changes))
    return result.decisions, result.summary


def _of(outcomes: Iterable[Outcome], name: str) -> list[Outcome]:
    return [o for o in outcomes if o.sample.source in SOURCE_SETS[name]]


def print_inputs(samples: list[Sample]) -> None:
    print("inputs per source (normalise + junk verdict as in the job; low_detail: no near search)")
    print(
        f"  {'source':<9} {'originals':>9} {'variants':>8} {'filtered':>8} "
        f"{'low_detail':>10} {'to dedup':>8}"
    )
    for source in SOURCES:
        mine = [s for s in samples if s.source == source]
        originals = sum(s.kind == ORIGINAL for s in mine)
        filtered = sum(s.filtered is not None for s in mine)
        low = sum(bool(s.row.get("low_detail")) and not s.filtered for s in mine)
        print(
            f"  {source:<9} {originals:>9} {len(mine) - originals:>8} {filtered:>8} {low:>10} "
            f"{len(mine) - filtered:>8}"
        )
    reasons = Counter((s.source, s.kind, s.filtered) for s in samples if s.filtered)
    print("  filtered before dedup (source, kind, reason: files):")
    for (source, kind, reason), n in sorted(reasons.items()):
        print(f"    {source:<9} {kind:<30} {reason:<18} {n}")


def _prr(outcomes: list[Outcome]) -> str:
    s, w = score(outcomes), score(_without_5(outcomes))
    return f"{s.precision:.3f} {s.recall:.3f} {w.recall:.3f}"


def print_sweep(
    samples: list[Sample], thresholds: Iterable[int], weights: str
) -> dict[int, list[Outcome]]:
    e = dedup.DedupConfig().embedding_hash_distance
    how = (
        "pHash alone"
        if weights == NO_WEIGHTS
        else f"pHash and embedding-SimHash (e={e}) candidates verified (embedding)"
    )
    print(
        f"\nthreshold sweep, {how}: P, R, R without the 5% crops (crop_c5, crop_e5); "
        "photos = skimage + pillow"
    )
    _sweep_header("t", f" {'dedup s':>7}")
    results = {}
    for t in thresholds:
        decisions, summary = run_dedup(samples, t, weights)
        outcomes = evaluate(samples, decisions)
        results[t] = outcomes
        _sweep_row(t, outcomes, f" {summary['seconds']:>7.2f}")
    return results


SWEEP_SETS = ("all", "photos", "halmstad")


def _sweep_header(key: str, extra: str) -> None:
    sets = " ".join(f"{n + ' P/R/R-5%':>19}" for n in SWEEP_SETS)
    print(f"  {key:>3} {'drops':>6} {'wrong':>6} {sets}{extra}")


def _sweep_row(key: int, outcomes: list[Outcome], extra: str) -> None:
    total = score(outcomes)
    sets = " ".join(f"{_prr(_of(outcomes, n)):>19}" for n in SWEEP_SETS)
    print(f"  {key:>3} {total.drops:>6} {total.wrong:>6} {sets}{extra}", flush=True)


SIMHASH_SOURCES = {"embedding": "embedding_hash_distance", "grey layout": "grey_hash_distance"}


def print_simhash_sweep(
    samples: list[Sample], threshold: int, weights: str, source: str, distances: Iterable[int]
) -> None:
    """One SimHash candidate source (embedding or grey layout) at each radius, pHash at
    `threshold`, the other sources at their defaults."""
    print(f"\n{source} SimHash radius sweep (pHash t={threshold}, verified): P, R, R-5%")
    _sweep_header("e" if source == "embedding" else "g", f" {'candidates':>11} {'dedup s':>7}")
    for d in distances:
        change = {SIMHASH_SOURCES[source]: d}
        decisions, summary = run_dedup(samples, threshold, weights, **change)
        extra = f" {summary['search']['candidate_pairs']:>11,} {summary['seconds']:>7.2f}"
        _sweep_row(d, evaluate(samples, decisions), extra)


def print_assign_sweep(samples: list[Sample], threshold: int, weights: str) -> None:
    """Which keeper a near copy goes to (`--assign-to`), at the default search radii."""
    print(f"\nassign-to sweep (pHash t={threshold}, defaults otherwise): P, R, R-5%")
    print(
        f"  {'mode':<8} {'drops':>6} {'wrong':>6} "
        + " ".join(f"{n + ' P/R/R-5%':>19}" for n in SWEEP_SETS)
    )
    for mode in dedup.ASSIGN_MODES:
        decisions, _ = run_dedup(samples, threshold, weights, assign_to=mode)
        outcomes = evaluate(samples, decisions)
        total = score(outcomes)
        sets = " ".join(f"{_prr(_of(outcomes, n)):>19}" for n in SWEEP_SETS)
        print(f"  {mode:<8} {total.drops:>6} {total.wrong:>6} {sets}", flush=True)


def miss_reasons(outcomes: list[Outcome], cfg: dedup.DedupConfig) -> Counter:
    """Why each missed variant (with its original) was missed, the first that applies:
    low detail (matched exactly only), its original kept in place of another group's
    file, the checks against its original (embedding cosine, then colour angle), no
    candidate of either search (pHash beyond t, embedding SimHash beyond e), else a
    keeper of another group or a sibling took it."""
    searched = {
        o.sample.row["sha256"]: o.sample.row["embedding"]
        for o in outcomes
        if o.sample.row.get("embedding") is not None and not o.sample.row["low_detail"]
    }
    simhash = dict(zip(searched, dedup.simhashes(np.array(list(searched.values()))), strict=True))
    sim_of = {o.sample.uri: int(simhash.get(o.sample.row["sha256"], 0)) for o in outcomes}
    greys = [o.sample.row for o in outcomes if o.sample.row.get("grey_layout") is not None]
    grey_hashes = dedup.grey_simhashes(np.array([r["grey_layout"] for r in greys]))
    grey_of = {r["source_uri"]: int(h) for r, h in zip(greys, grey_hashes, strict=True)}
    by_group = {o.sample.group: o for o in outcomes if o.sample.kind == ORIGINAL}
    reasons: Counter = Counter()
    for o in outcomes:
        if o.sample.kind == ORIGINAL or not o.with_original or o.caught:
            continue
        v, orig = o.sample.row, by_group[o.sample.group]
        reasons[_miss_reason(v, orig, sim_of, grey_of, cfg)] += 1
    return reasons


def _miss_reason(
    v: dict, orig: Outcome, sim_of: dict[str, int], grey_of: dict[str, int], cfg: dedup.DedupConfig
) -> str:
    o = orig.sample.row
    if v["low_detail"] or o["low_detail"]:
        return "low detail: matched exactly only"
    if orig.dropped and not orig.correct_drop:
        return "its original was dropped as another group's copy"
    failed = dedup.explain_pair(o, v, cfg)  # the job's own checks, original as keeper
    if failed:
        return f"fails the checks against its original: {failed}"
    sim = (sim_of[v["source_uri"]] ^ sim_of[o["source_uri"]]).bit_count()
    grey_reached = (
        cfg.grey_hash_distance > 0
        and v["source_uri"] in grey_of
        and o["source_uri"] in grey_of  # the job searches only rows with a grey layout
        and (grey_of[v["source_uri"]] ^ grey_of[o["source_uri"]]).bit_count()
        <= cfg.grey_hash_distance
    )
    if (
        _hamming(v["phash"], o["phash"]) > cfg.verify_hash_distance
        and sim > cfg.embedding_hash_distance
        and not grey_reached
    ):
        return "passes the checks, no candidate of any search"
    return "passes, candidate, taken by another keeper"


def print_miss_reasons(outcomes: list[Outcome], threshold: int, weights: str) -> None:
    """A diagnostic beside recall, not part of it, and approximate: the SimHash centre is
    taken over the distinct searched images (not low detail) as the job takes it, but a
    candidate reached through another image of the same pHash value is not seen."""
    cfg = config(threshold, weights)
    print(f"\nwhy variants were missed at t={threshold} (first reason that applies; diagnostic)")
    for name in ("photos", "halmstad"):
        for reason, n in miss_reasons(_of(outcomes, name), cfg).most_common():
            print(f"  {name:<9} {n:>5}  {reason}")


def _distance_stats(outcomes: list[Outcome]) -> str:
    d = sorted(o.distance for o in outcomes if o.distance is not None)
    if not d:
        return f"{'-':>8}"
    return f"{statistics.median(d):.0f}/{d[int(0.9 * (len(d) - 1))]}/{d[-1]}".rjust(8)


def _recall_cell(outcomes: list[Outcome]) -> str:
    s = score(outcomes)
    return f"{s.caught}/{s.variants}".rjust(9) + (
        f" {s.recall:5.3f}" if s.variants else f" {'-':>5}"
    )


def print_per_kind(outcomes: list[Outcome], threshold: int) -> None:
    print(
        f"\nper variant kind at t={threshold}: caught/variants and R per source; drops, wrong "
        "and P over all sources; d = pHash bits to the original, median/p90/max"
    )
    print(
        f"  {'kind':<28} {'R skimage':>15} {'R pillow':>15} {'R halmstad':>15} {'R all':>15} "
        f"{'drops':>5} {'wrong':>5} {'P':>5} {'d photos':>8} {'d halm.':>8}"
    )
    for kind in (ORIGINAL, *VARIANTS):
        mine = [o for o in outcomes if o.sample.kind == kind]
        s = score(mine)
        recalls = " ".join(
            _recall_cell(_of(mine, n)) for n in ("skimage", "pillow", "halmstad", "all")
        )
        print(
            f"  {kind:<28} {recalls} {s.drops:>5} {s.wrong:>5} {s.precision:>5.3f} "
            f"{_distance_stats(_of(mine, 'photos'))} {_distance_stats(_of(mine, 'halmstad'))}"
        )


def print_per_source(outcomes: list[Outcome], threshold: int) -> None:
    print(
        f"\nper source at t={threshold} (photos = skimage + pillow; R pair: the variant has "
        "its original's keeper, whatever group that keeper is from; R copies: the variant "
        "is not kept beside another kept file of its group)"
    )
    print(
        f"  {'source':<9} {'variants':>8} {'caught':>6} {'R':>6} {'R excl.5%':>9} "
        f"{'drops':>5} {'wrong':>5} {'P':>6} {'R pair':>6} {'R copies':>8}"
    )
    for name in SOURCE_SETS:
        mine = _of(outcomes, name)
        s, w = score(mine), score(_without_5(mine))
        print(
            f"  {name:<9} {s.variants:>8} {s.caught:>6} {s.recall:>6.3f} {w.recall:>9.3f} "
            f"{s.drops:>5} {s.wrong:>5} {s.precision:>6.3f} {s.pair_recall:>6.3f} "
            f"{s.copy_recall:>8.3f}"
        )


def print_false_drops(samples: list[Sample], threshold: int, weights: str, listed: int = 8) -> None:
    """Wrong drops counted by (dropped file's source, kept file's source); every wrong
    drop of a photo is listed, and the first few of the others."""
    decisions, _ = run_dedup(samples, threshold, weights)
    by_uri = {s.uri: s for s in samples}
    wrong = [
        d
        for d in decisions.to_pylist()
        if d["reason"] in (dedup.EXACT_DUPLICATE, dedup.NEAR_DUPLICATE)
        and by_uri[d["duplicate_of"]].group != by_uri[d["source_uri"]].group
    ]
    pairs = Counter(
        (by_uri[d["source_uri"]].source, by_uri[d["duplicate_of"]].source) for d in wrong
    )
    print(
        f"\nwrong drops at t={threshold}: {len(wrong)}; by (dropped, kept) source: "
        + ", ".join(f"{a}<-{b} {n}" for (a, b), n in sorted(pairs.items()))
    )
    photos = [d for d in wrong if by_uri[d["source_uri"]].source != "halmstad"]
    others = [d for d in wrong if by_uri[d["source_uri"]].source == "halmstad"][:listed]
    for d in photos + others:
        print(f"  {d['source_uri']}  as copy of  {d['duplicate_of']}  (distance {d['distance']})")


def print_keepers(outcomes: list[Outcome], threshold: int) -> None:
    """Which copy the keep policy kept in place of each original."""
    print(f"\nfile kept in place of each original at t={threshold}, by kind")
    for name in ("photos", "halmstad"):
        kinds = Counter(o.keeper_kind for o in _of(outcomes, name) if o.sample.kind == ORIGINAL)
        print(f"  {name:<9} " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))


def cross_group_originals(outcomes: list[Outcome]) -> list[tuple[str, str]]:
    """Halmstad originals dropped as a copy of another group's file: (dropped original,
    the keeper's group). Each such drop takes the original's variants with it (their
    keeper is no longer their original's), so these pairs are what to look at by eye."""
    return [
        (o.sample.uri, o.keeper_group)
        for o in _of(outcomes, "halmstad")
        if o.sample.kind == ORIGINAL and o.dropped and not o.correct_drop
    ]


def write_review_sheet(pairs: list[tuple[str, str]], crops_dir: Path, path: Path) -> None:
    """One row per pair: the dropped original, then the original of the group it went
    to, both enlarged to REVIEW_SIDE px, labelled with their file names."""
    if not pairs:
        return
    label = 14
    sheet = Image.new("RGB", (2 * REVIEW_SIDE, len(pairs) * (REVIEW_SIDE + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, pair in enumerate(pairs):
        top = row * (REVIEW_SIDE + label)
        for col, uri in enumerate(pair):
            name = uri.removeprefix("halmstad/")
            image = _rgb((crops_dir / name).read_bytes())  # crops are square
            image = image.resize((REVIEW_SIDE, REVIEW_SIDE), Image.Resampling.LANCZOS)
            sheet.paste(image, (col * REVIEW_SIDE, top + label))
            draw.text((col * REVIEW_SIDE + 2, top + 1), Path(name).stem, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def print_cross_group_originals(
    outcomes: list[Outcome],
    threshold: int,
    crops_dir: Path,
    sheet: Path | None,
    position: float,
) -> None:
    pairs = cross_group_originals(outcomes)
    review = SAME_SCENE.get(position, {})
    print(
        f"\nhalmstad originals dropped as another group's copy at t={threshold}: {len(pairs)} "
        "(dropped original <- the group it went to; the SAME_SCENE judgement)"
    )
    for dropped, kept in pairs:
        judged = review.get((_video(dropped), _video(kept)))
        verdict_ = "not reviewed" if judged is None else ("same" if judged else "different")
        print(f"  {dropped}  <-  {kept}  ({verdict_})")
    if sheet is not None and pairs:
        write_review_sheet(pairs, crops_dir, sheet)
        print(f"  review sheet (dropped | kept group's original): {sheet}")


def print_left_out(every: list[Sample], kept: list[Sample], position: float) -> None:
    review = SAME_SCENE.get(position)
    if review is None:
        print(f"no review of cross-video drops for frame {position:g}: every original kept")
        return
    left = sorted({s.group for s in every} - {s.group for s in kept})
    judged_apart = sum(not same for same in review.values())
    print(
        f"left out, judged the same scene as another video's original (SAME_SCENE, frame "
        f"{position:g}; {judged_apart} reviewed pairs judged different stay): "
        f"{len(left)} originals, {len(every) - len(kept)} files: "
        + ", ".join(_video(g) for g in left)
    )


def print_both_ground_truths(
    every: list[Sample], outcomes: list[Outcome], threshold: int, weights: str
) -> None:
    """The default run's figures on the distinct originals beside those on every
    original (the ground truth that counts recordings of one scene as distinct)."""
    decisions, _ = run_dedup(every, threshold, weights)
    raw = evaluate(every, decisions)
    print(f"\nground truth at t={threshold}: P / R / R copies")
    for label, mine in (("distinct originals", outcomes), ("every original", raw)):
        cells = "   ".join(f"{name} {_pr_copies(_of(mine, name))}" for name in SOURCE_SETS)
        print(f"  {label:<19} {cells}")


def _pr_copies(outcomes: list[Outcome]) -> str:
    s = score(outcomes)
    return f"{s.precision:.3f} {s.recall:.3f} {s.copy_recall:.3f}"


def nearest_unrelated(samples: list[Sample]) -> None:
    """Per source, the pHash distance from each original to the nearest file of another
    group (low_detail and filtered files left out, as the search leaves them out)."""
    rows = [s for s in samples if s.row and not s.filtered and not s.row["low_detail"]]
    hashes = np.array([int(s.row["phash"], 16) for s in rows], dtype=np.uint64)
    groups = np.array([s.group for s in rows])
    print("\nnearest unrelated file per original (pHash bits; searchable files only)")
    print(
        f"  {'source':<9} {'originals':>9} {'min':>4} {'p10':>4} {'median':>6} "
        f"{'<=8':>5} {'<=12':>5}"
    )
    for source in SOURCES:
        idx = [i for i, s in enumerate(rows) if s.source == source and s.kind == ORIGINAL]
        if not idx:
            continue
        near = []
        for i in idx:
            d = np.bitwise_count(hashes ^ hashes[i])
            near.append(int(d[groups != groups[i]].min()))
        near.sort()
        print(
            f"  {source:<9} {len(near):>9} {near[0]:>4} {near[len(near) // 10]:>4} "
            f"{statistics.median(near):>6.0f} {sum(n <= 8 for n in near):>5} "
            f"{sum(n <= 12 for n in near):>5}"
        )


def part_a(
    crops_dir: Path,
    thresholds: list[int],
    weights: str,
    embedding_distances: list[int],
    grey_distances: list[int],
    position: float = MIDDLE_FRAME,
    sweep_threshold: int | None = None,
    review_sheet: Path | None = None,
    all_originals: bool = False,
) -> None:
    default = dedup.DedupConfig(embedding_weights=weights).search_distance
    swept = sweep_threshold or default
    started = time.perf_counter()
    originals = load_originals(crops_dir, position)
    samples = build_samples(originals)
    built = time.perf_counter() - started
    embedded = sum(s.signals is not None for s in samples)
    seconds = add_embeddings(samples, weights)
    print(
        f"== A. planted near duplicates: {len(originals)} originals x {len(VARIANTS)} variant "
        f"kinds = {len(samples)} files, built and normalised in {built:.0f} s; "
        f"{embedded} embedded ({weights}) in {seconds:.1f} s"
    )
    print("pillow photos used: " + ", ".join(PILLOW_PHOTOS))
    every_original = samples
    if not all_originals:
        samples = distinct_originals(samples, position)
        print_left_out(every_original, samples, position)
    print_inputs(samples)
    if weights != NO_WEIGHTS:
        unverified = dedup.DedupConfig(embedding_weights=NO_WEIGHTS).search_distance
        print_sweep(samples, sorted({*thresholds, unverified}), NO_WEIGHTS)
    results = print_sweep(samples, sorted({*thresholds, default}), weights)
    if weights != NO_WEIGHTS and embedding_distances:
        print_simhash_sweep(samples, swept, weights, "embedding", embedding_distances)
    if weights != NO_WEIGHTS and grey_distances:
        print_simhash_sweep(samples, swept, weights, "grey layout", grey_distances)
    print_assign_sweep(samples, default, weights)
    outcomes = results[default]
    print_per_kind(outcomes, default)
    print_per_source(outcomes, default)
    print_false_drops(samples, default, weights)
    print_keepers(outcomes, default)
    print_cross_group_originals(outcomes, default, crops_dir, review_sheet, position)
    if weights != NO_WEIGHTS:
        print_miss_reasons(outcomes, default, weights)
    nearest_unrelated(samples)
    if not all_originals:
        print_both_ground_truths(every_original, outcomes, default, weights)
    for name in ("photos", "halmstad", "all"):
        mine = _of(outcomes, name)
        total, without = score(mine), score(_without_5(mine))
        for label, value in (
            ("P", total.precision),
            ("R (all kinds)", total.recall),
            ("R (without 5% crops)", without.recall),
            ("R copies", total.copy_recall),
        ):
            verdict_ = "PASS" if value >= TARGET else "MISS"
            print(f"target {name} {label} >= {TARGET} at t={default}: {value:.3f} {verdict_}")


# --- Part B: the real job on halmstad-crops -------------------------------------------------


def read_manifest(crops_dir: Path) -> list[dict[str, str]]:
    with open(crops_dir / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def run_job(lake: Path, out: Path, extra: list[str]) -> float:
    """The product's CLI in this process (it reuses the Ray started here)."""
    from pipeline.cli import main as cli_main

    argv = ["clean", str(lake), str(out), "--no-progress", *extra]
    print(f"\n$ python -m pipeline {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    rc = cli_main(argv)
    if rc != 0:
        raise SystemExit(f"job failed with exit status {rc}")
    return time.perf_counter() - started


@dataclass
class JobOutput:
    kept: list[dict[str, Any]]  # source_uri, class_name, split, cluster_id, video
    rejected: list[
        dict[str, Any]
    ]  # source_uri, class_name, reason, duplicate_of, cluster_id, video


def load_output(out: Path, lake: Path, video_of: dict[str, str]) -> JobOutput:
    from pipeline.output import read_table

    storage = StorageConfig()
    root = str(lake).rstrip("/") + "/"
    images = read_table(
        str(out), "images", storage, columns=["source_uri", "class_name", "split", "cluster_id"]
    ).to_pylist()
    rejected = read_table(
        str(out),
        "rejected",
        storage,
        columns=["source_uri", "class_name", "reason", "duplicate_of", "cluster_id"],
    ).to_pylist()
    for row in images + rejected:
        row["video"] = video_of.get(row["source_uri"].removeprefix(root))
    return JobOutput(images, rejected)


def print_outcomes(job: JobOutput, listed: int) -> None:
    reasons = Counter(r["reason"] for r in job.rejected)
    print(f"  listed {listed}: kept {len(job.kept)}, rejected {len(job.rejected)}")
    print("  rejected by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    junk = sum(v for k, v in reasons.items() if k.startswith("junk_"))
    dups = sum(reasons[r] for r in DUPLICATE_REASONS)
    print(
        f"  dropped as duplicates {dups}, as junk {junk}, other {len(job.rejected) - dups - junk}"
    )
    cross = [
        r
        for r in job.rejected
        if r["reason"] in DUPLICATE_REASONS and r["duplicate_of"] is not None
    ]
    video_of_uri = {r["source_uri"]: r["video"] for r in job.kept + job.rejected}
    other_video = sum(video_of_uri.get(r["duplicate_of"]) != r["video"] for r in cross)
    print(f"  duplicate drops whose kept copy is from another video: {other_video} of {len(cross)}")


def _clusters(job: JobOutput) -> dict[str, list[dict[str, Any]]]:
    """cluster_id -> members, over kept rows and rows dropped as copies."""
    members: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in job.kept + [r for r in job.rejected if r["reason"] in DUPLICATE_REASONS]:
        if row["cluster_id"] is not None:
            members[row["cluster_id"]].append(row)
    return members


def print_clusters(job: JobOutput) -> None:
    clusters = _clusters(job)
    dup = {c: m for c, m in clusters.items() if len(m) > 1}
    sizes = sorted(len(m) for m in dup.values())
    pure = sum(len({r["video"] for r in m}) == 1 for m in dup.values())
    bins = ", ".join(
        f"{lo}{'' if lo == hi else ('+' if hi > 10**6 else f'-{hi}')}: "
        f"{sum(lo <= s <= hi for s in sizes)}"
        for lo, hi in CLUSTER_SIZE_BINS
    )
    print(
        f"  duplicate clusters (>= 2 files) {len(dup)}, files in them {sum(sizes)}; "
        f"largest {sizes[-1] if sizes else 0}, median {statistics.median(sizes) if sizes else 0}"
    )
    print(f"  sizes: {bins}")
    mixed = sum(len({r["class_name"] for r in m}) > 1 for m in dup.values())
    print(
        f"  purity: {pure}/{len(dup)} clusters hold frames of one video only; "
        f"{mixed} span two or more classes"
    )
    per_video: dict[str, set[str]] = defaultdict(set)
    for cid, m in clusters.items():
        for r in m:
            per_video[r["video"]].add(cid)
    split_videos = sum(len(c) > 1 for c in per_video.values())
    counts = sorted(len(c) for c in per_video.values())
    print(
        f"  videos with frames in de-duplication {len(per_video)}: split across several "
        f"clusters {split_videos}; clusters per video median {statistics.median(counts):.0f}, "
        f"max {counts[-1]}"
    )


def leak_share(rows: list[dict[str, Any]], split_of: Callable[[dict[str, Any]], str]) -> float:
    """Share of test images whose video also has images in train."""
    train_videos = {r["video"] for r in rows if split_of(r) == "train"}
    test = [r for r in rows if split_of(r) == "test"]
    return sum(r["video"] in train_videos for r in test) / len(test) if test else float("nan")


def random_split(rows: list[dict[str, Any]], seed: int) -> dict[str, str]:
    """A per-image 70/30 split, stratified by class, seeded."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_class[r["class_name"]].append(r["source_uri"])
    out = {}
    for _, uris in sorted(by_class.items()):
        order = rng.permutation(len(uris))
        n_train = round(TRAIN_SHARE * len(uris))
        for rank, i in enumerate(order):
            out[uris[i]] = "train" if rank < n_train else "test"
    return out


def print_per_class(job: JobOutput, manifest: list[dict[str, str]]) -> None:
    """Per class: crops and videos in the lake, what became of them, and the split."""
    listed = Counter(r["class"] for r in manifest)
    videos = defaultdict(set)
    for r in manifest:
        videos[r["class"]].add(r["video"])
    rejected = defaultdict(Counter)
    for r in job.rejected:
        rejected[r["class_name"]][r["reason"]] += 1
    kept: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in job.kept:
        kept[r["class_name"]].append(r)
    print(
        f"  {'class':<18} {'crops':>5} {'kept':>5} {'near':>5} {'label_c':>7} {'junk':>4} "
        f"{'train':>5} {'test':>5} {'train %':>7} {'videos':>6} {'kept v':>6}"
    )
    for name in [*sorted(listed), "all"]:
        names = sorted(listed) if name == "all" else [name]
        rows = [r for n in names for r in kept[n]]
        reasons = sum((rejected[n] for n in names), Counter())
        junk = sum(v for k, v in reasons.items() if k.startswith("junk_"))
        train = sum(r["split"] == "train" for r in rows)
        n_videos = sum(len(videos[n]) for n in names)
        print(
            f"  {name:<18} {sum(listed[n] for n in names):>5} {len(rows):>5} "
            f"{reasons[dedup.NEAR_DUPLICATE]:>5} {reasons[dedup.LABEL_CONFLICT]:>7} {junk:>4} "
            f"{train:>5} {len(rows) - train:>5} {100 * train / max(1, len(rows)):>7.1f} "
            f"{n_videos:>6} {len({r['video'] for r in rows}):>6}"
        )


def report_job(
    title: str, job: JobOutput, manifest: list[dict[str, str]], listed: int, seed: int
) -> None:
    print(f"\n-- {title}")
    print_outcomes(job, listed)
    print_clusters(job)
    print_per_class(job, manifest)
    rnd = random_split(job.kept, seed)
    job_leak = leak_share(job.kept, lambda r: r["split"])
    random_leak = leak_share(job.kept, lambda r: rnd[r["source_uri"]])
    print(
        f"  leak (test images whose video has frames in train): job split "
        f"{100 * job_leak:.1f} %, random per-image 70/30 (seed {seed}) {100 * random_leak:.1f} %"
    )


def similar_pairs(vectors: np.ndarray, min_similarity: float, block: int = 2048) -> np.ndarray:
    """(i, j) with i < j of every pair of rows whose cosine is at least min_similarity."""
    found = []
    for start in range(0, len(vectors), block):
        sims = vectors[start : start + block] @ vectors.T
        i, j = np.nonzero(sims >= min_similarity)
        i += start
        found.append(np.stack([i[i < j], j[i < j]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def print_similarity_links(out: Path, job: JobOutput, similarities: list[float]) -> None:
    """Would linking kept images with very close embeddings (split groups, not drops)
    find the videos without the group key? The split is redone with the job's own
    `assign_splits` plus these links; printed: leak, units and the largest, class balance."""
    from pipeline.output import read_table
    from pipeline.split import SplitConfig, assign_splits

    index = read_table(
        str(out),
        "index",
        StorageConfig(),
        columns=["source_uri", "class_name", "cluster_id", "group", "embedding"],
    )
    if index["embedding"].null_count:
        print("  similarity links: no embeddings in the index (verification off)")
        return
    vectors = np.stack(index["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    uris = index["source_uri"].to_pylist()
    units = index.select(["source_uri", "class_name", "cluster_id", "group"]).append_column(
        "split", pa.nulls(index.num_rows, pa.string())
    )
    print("  similarity links (embedding cosine >= s joins two kept images' split units):")
    for s in similarities:
        pairs = similar_pairs(vectors, s)
        links = [(uris[i], uris[j]) for i, j in pairs.tolist()]
        splits, stats = assign_splits(units, SplitConfig(), links)
        split_of = dict(zip(uris, splits, strict=True))
        leak = leak_share(job.kept, lambda r, split_of=split_of: split_of[r["source_uri"]])
        sizes = Counter(_unit_roots(uris, index["cluster_id"].to_pylist(), links).values())
        shares = _train_shares(job.kept, split_of)
        print(
            f"    s={s}: links {len(links)}, units {stats['units']}, largest "
            f"{max(sizes.values())}, leak {100 * leak:.1f} % (random split: see above), "
            f"train share per class {min(shares):.1f}-{max(shares):.1f} %"
        )


def _unit_roots(uris: list[str], clusters: list[str], links: list[tuple[str, str]]) -> dict:
    """uri -> unit root, joining rows by cluster_id and by the links (for unit sizes)."""
    parent = {u: u for u in uris}

    def find(u: str) -> str:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    first: dict[str, str] = {}
    for u, c in zip(uris, clusters, strict=True):
        parent[find(u)] = find(first.setdefault(c, u))
    for a, b in links:
        parent[find(a)] = find(b)
    return {u: find(u) for u in uris}


def _train_shares(kept: list[dict[str, Any]], split_of: dict[str, str]) -> list[float]:
    per_class: dict[str, Counter] = defaultdict(Counter)
    for r in kept:
        per_class[r["class_name"]][split_of[r["source_uri"]]] += 1
    return [100 * c["train"] / sum(c.values()) for c in per_class.values()]


def part_b(
    lake: Path,
    out_root: Path,
    seed: int,
    grouped: bool,
    thresholds: list[int],
    weights: str,
    links: list[float],
) -> None:
    manifest = read_manifest(lake)
    video_of = {r["file"]: r["video"] for r in manifest}
    listed = sum(1 for p in lake.rglob("*") if p.is_file())
    stamp = time.strftime("%Y%m%dT%H%M%S")
    print(
        f"\n== B. the cleaning job on {lake} ({len(manifest)} crops, "
        f"{len(set(video_of.values()))} videos in manifest.csv)"
    )
    runs = [("default settings", [])]
    if grouped:
        runs.append(
            (
                "grouped by video",
                [
                    "--group-manifest-uri",
                    str(lake / "manifest.csv"),
                    "--group-manifest-column",
                    "video",
                ],
            )
        )
    runs += [
        (f"hash distance {t}", ["--max-hash-distance", str(t), "--verify-hash-distance", str(t)])
        for t in thresholds
    ]
    for i, (title, extra) in enumerate(runs):
        out = out_root / f"{stamp}-{i}"
        seconds = run_job(lake, out, [*extra, "--embedding-weights", weights])
        job = load_output(out, lake, video_of)
        report_job(f"{title}: {out} ({seconds:.0f} s)", job, manifest, listed, seed)
        if i == 0 and links:
            print_similarity_links(out, job, links)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--thresholds", type=int, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--crops", type=Path, default=CROPS_DIR, help="halmstad-crops folder")
    parser.add_argument("--out-root", type=Path, default=Path("/tmp/dedup_quality"))
    parser.add_argument("--seed", type=int, default=JOB_SEED, help="seed of the random split")
    parser.add_argument("--no-grouped", action="store_true", help="skip the grouped job run")
    parser.add_argument(
        "--job-thresholds",
        type=int,
        nargs="*",
        default=[],
        help="extra job runs (part B) with --max-hash-distance set to each of these",
    )
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument(
        "--halmstad-frame",
        type=float,
        default=MIDDLE_FRAME,
        help="part A: which frame of each video is its original, 0 (first) to 1 (last); "
        "the defaults were tuned on the middle (0.5), so another value is a held-out check",
    )
    parser.add_argument(
        "--all-originals",
        action="store_true",
        help="part A: keep the originals judged the same scene as another video's "
        "(SAME_SCENE); by default they are left out, and the figures on every original "
        "are printed beside the default run's",
    )
    parser.add_argument(
        "--embedding-weights",
        default=local_embedding_weights(),
        help="MobileNetV2 weights for the verification ('none': pHash alone); default: the "
        "shared state dict next to the checkout when present",
    )
    parser.add_argument(
        "--embedding-hash-distances",
        type=int,
        nargs="*",
        default=[0, 6, 8, 10, 12],
        help="part A: sweep the embedding SimHash candidate radius (0: off) at the default t",
    )
    parser.add_argument(
        "--grey-hash-distances",
        type=int,
        nargs="*",
        default=[],
        help="part A: sweep the grey-layout SimHash candidate radius (0: off) at the default t",
    )
    parser.add_argument(
        "--sweep-threshold",
        type=int,
        default=None,
        help="part A: the pHash radius t of the SimHash sweeps (default: the job's)",
    )
    parser.add_argument(
        "--link-similarities",
        type=float,
        nargs="*",
        default=[0.98, 0.95, 0.9],
        help="part B: redo the default run's split with embedding links at these cosines",
    )
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    if args.part in ("a", "both"):
        part_a(
            args.crops.resolve(),
            args.thresholds,
            args.embedding_weights,
            args.embedding_hash_distances,
            args.grey_hash_distances,
            args.halmstad_frame,
            args.sweep_threshold,
            args.out_root / f"cross_video_frame{args.halmstad_frame:g}.png",
            args.all_originals,
        )
    if args.part in ("b", "both"):
        part_b(
            args.crops.resolve(),
            args.out_root,
            args.seed,
            not args.no_grouped,
            args.job_thresholds,
            args.embedding_weights,
            args.link_similarities,
        )
    ray.shutdown()


if __name__ == "__main__":
    main()

"""Per-file cost of the normalisation stage, on one core: the naive way against ours.

Both ways run side by side in one process, interleaved file by file (the order of
the two flips on every file) and repeated, so machine noise hits both equally:

* naive: ``Image.open`` with a full decode, ``.convert("RGB")``, ``imagehash.phash``
  of the full image, LANCZOS resize to a longest side of 512 (shrink only, as ours),
  JPEG q90 re-encode.
* ours: ``pipeline.normalize.normalise_bytes`` (safe decode with JPEG draft mode, EXIF
  transpose, RGB, thumbnail to 512, JPEG q90, pixel sha256, channel moments) plus
  ``imagehash.phash`` of its output, decoded from the JPEG it returns (what the job
  will hash: the normalised <= 512 px image).

Inputs: camera-size JPEGs (12-24 MP) made once per run from real photos of
skimage-data (centre-cropped to the camera aspect, LANCZOS upscaled, mild gaussian
noise so the JPEG entropy is camera-like, saved q92 in a temp folder), and a sample
of the real small crops of ``../shared/data/halmstad-crops``.

Run from the repository root:

    .venv/bin/python scripts/bench/normalize_per_file.py [--crops 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from _common import SHARED_DATA, print_table
from PIL import Image

from pipeline.config import NormalizeConfig
from pipeline.normalize import normalise_bytes

SHARED = SHARED_DATA
SKIMAGE_DIR = SHARED / "messy-ingredients" / "skimage-data"
CROPS_DIR = SHARED / "halmstad-crops"
PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
)
CAMERA_SIZES = ((4000, 3000), (4896, 3264), (6000, 4000))  # 12, 16 and 24 MP
CAMERA_JPEG_QUALITY = 92
NOISE_SIGMA = 3.0  # grey levels: sensor-like grain, keeps the JPEG entropy camera-like
MAX_SIDE = 512
NAIVE_JPEG_QUALITY = 90
DEFAULT_CROPS = 1000
DEFAULT_REPEATS = 3
SPEEDUP_TARGET = 4.0
SEED = 0
MS = 1000.0


@dataclass
class Timings:
    naive: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    phash_distance: list[int] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crops", type=int, default=DEFAULT_CROPS, help="halmstad crops sampled")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="passes over a set")
    parser.add_argument(
        "--cpu", type=int, default=None, help="pin the process to this core (default: no pinning)"
    )
    return parser.parse_args(argv)


def camera_jpeg(photo: Path, size: tuple[int, int], rng: np.random.Generator) -> bytes:
    """A camera-like JPEG: the photo centre-cropped to `size`'s aspect, upscaled, noised."""
    image = Image.open(photo).convert("RGB")
    width, height = size
    scale = min(image.width / width, image.height / height)
    crop_w, crop_h = int(width * scale), int(height * scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
    pixels = np.asarray(image.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    pixels += rng.normal(0.0, NOISE_SIGMA, pixels.shape).astype(np.float32)
    noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, "JPEG", quality=CAMERA_JPEG_QUALITY)
    return buffer.getvalue()


def make_camera_set(folder: Path) -> dict[str, bytes]:
    """Write one camera JPEG per photo (sizes cycled) into `folder`; return {name: bytes}."""
    rng = np.random.default_rng(SEED)
    files = {}
    for i, name in enumerate(PHOTOS):
        size = CAMERA_SIZES[i % len(CAMERA_SIZES)]
        data = camera_jpeg(SKIMAGE_DIR / name, size, rng)
        out = folder / f"{Path(name).stem}_{size[0]}x{size[1]}.jpg"
        out.write_bytes(data)
        files[out.name] = data
    return files


def crop_set(count: int) -> dict[str, bytes]:
    paths = sorted(CROPS_DIR.rglob("*.jpg"))
    chosen = random.Random(SEED).sample(paths, min(count, len(paths)))
    return {str(p.relative_to(CROPS_DIR)): p.read_bytes() for p in sorted(chosen)}


def naive(data: bytes) -> tuple[bytes, imagehash.ImageHash]:
    """Full decode, RGB, pHash of the full image, shrink to 512, JPEG q90."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    phash = imagehash.phash(image)
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=NAIVE_JPEG_QUALITY)
    return buffer.getvalue(), phash


def ours(data: bytes, cfg: NormalizeConfig) -> tuple[bytes, imagehash.ImageHash]:
    """normalise_bytes, then pHash of the normalised image it returns."""
    result = normalise_bytes(data, cfg)
    phash = imagehash.phash(Image.open(io.BytesIO(result["image"])))
    return result["image"], phash


def timed(func: Callable[[], tuple[bytes, imagehash.ImageHash]]) -> tuple[float, object]:
    started = time.perf_counter()
    out = func()
    return time.perf_counter() - started, out


def measure(files: dict[str, bytes], repeats: int, cfg: NormalizeConfig) -> Timings:
    """Interleave naive and ours on every file; flip which goes first on every call."""
    timings = Timings()
    first = next(iter(files.values()))
    naive(first), ours(first, cfg)  # warm-up: imports, codec tables
    flip = False
    for _ in range(repeats):
        for data in files.values():
            run_naive, run_ours = (lambda d=data: naive(d)), (lambda d=data: ours(d, cfg))
            if flip:
                t_ours, (_, h_ours) = timed(run_ours)
                t_naive, (_, h_naive) = timed(run_naive)
            else:
                t_naive, (_, h_naive) = timed(run_naive)
                t_ours, (_, h_ours) = timed(run_ours)
            flip = not flip
            timings.naive.append(t_naive)
            timings.ours.append(t_ours)
            timings.phash_distance.append(h_naive - h_ours)
    return timings


def summary_row(label: str, files: dict[str, bytes], t: Timings) -> list[str]:
    naive_med, ours_med = statistics.median(t.naive), statistics.median(t.ours)
    naive_mean, ours_mean = statistics.fmean(t.naive), statistics.fmean(t.ours)
    sizes = [Image.open(io.BytesIO(d)).size for d in files.values()]
    megapixels = statistics.median(w * h for w, h in sizes) / 1e6
    return [
        label,
        str(len(files)),
        f"{megapixels:.3f}",
        f"{naive_med * MS:.1f}",
        f"{naive_mean * MS:.1f}",
        f"{ours_med * MS:.1f}",
        f"{ours_mean * MS:.1f}",
        f"{naive_med / ours_med:.2f}x",
        f"{naive_mean / ours_mean:.2f}x",
        f"{statistics.median(t.phash_distance):.0f}/{max(t.phash_distance)}",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    cfg = NormalizeConfig()
    with tempfile.TemporaryDirectory(prefix="bench-camera-") as tmp:
        print(f"generating {len(PHOTOS)} camera JPEGs in {tmp} ...", flush=True)
        sets = {"camera JPEG 12-24 MP": make_camera_set(Path(tmp))}
    sets["halmstad crops"] = crop_set(args.crops)
    rows = []
    ratios = {}
    for label, files in sets.items():
        print(f"measuring {label}: {len(files)} files x {args.repeats} passes ...", flush=True)
        timings = measure(files, args.repeats, cfg)
        rows.append(summary_row(label, files, timings))
        ratios[label] = statistics.median(timings.naive) / statistics.median(timings.ours)
    print()
    print_table(
        [
            "input",
            "files",
            "median MP",
            "naive med ms",
            "naive mean ms",
            "ours med ms",
            "ours mean ms",
            "speed-up (med)",
            "speed-up (mean)",
            "pHash dist med/max",
        ],
        rows,
    )
    camera = ratios["camera JPEG 12-24 MP"]
    verdict = "PASS" if camera >= SPEEDUP_TARGET else "FAIL"
    print(
        f"\ntarget >= {SPEEDUP_TARGET:.0f}x on camera JPEGs (median ratio): {camera:.2f}x {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Accuracy on halmstad-crops, 4 classes, with a split that keeps whole videos on one side.

Steps (each the product's own CLI, in a subprocess):
1. a lake folder with the 4 classes (Airplane stands in for Winged_Drones; Helicopter
   is left out), copied from `../shared/data/halmstad-crops`;
2. `python -m pipeline clean` with the manifest's `video` column as the group key and a
   10 % val split (whole videos too), which picks each run's best checkpoint, so the
   test split is first read by the final reports;
3. `python -m train fit` with the same draws per epoch: class-balanced
   (`--samples-per-class` = train rows / classes) and natural (`--no-balanced`), both
   with ReLU (`--activation relu`: the network the int8 export runs); `--runs` adds
   the options the issue asks to choose by measurement, each a balanced run with one
   change: label smoothing 0.1, a frozen backbone, the seed's constant learning rate,
   colour jitter 0.4;
4. `python -m train export` of each run (fp32 vs int8, size); an export refused for
   losing more than the margin (exit status 2) still writes model.json, and the table
   says so;
5. a table: accuracy, balanced accuracy, per-class recall (fp32 best checkpoint and
   int8), model size.

Input 128 px: the crops are 64-150 px (median 64-82), so 224 px would only upsample,
at about 5x the cost per image on CPU. 20 epochs (the seed's) take about an hour per
run on 2 cores; `--epochs 10` halves it. `--summarize` prints the table of existing runs.

    RAY_AUTH_MODE=disabled .venv/bin/python scripts/bench/train_halmstad.py --root /tmp/h9 \
        --val-fraction 0 --runs balanced natural
    RAY_AUTH_MODE=disabled .venv/bin/python scripts/bench/train_halmstad.py --root /tmp/h9 \
        --summarize --per-video
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CROPS = REPO.parent / "shared" / "data" / "halmstad-crops"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet_features.pth"
CLASSES = ("Airplane", "Flying_Birds", "Large_QuadCopters", "Small_QuadCopters")
INPUT_SIZE, EPOCHS, TORCH_THREADS = "128", "20", "2"  # 20: the seed's epochs
FIT_FLAGS = [
    "--lr-schedule", "cosine", "--workers", "1", "--cpus-per-worker", "1", "--num-cpus", "2",
    "--activation", "relu",
]  # fmt: skip
VAL_FRACTION = "0.1"
REFUSED = 2  # export's exit status when int8 loses more than --max-int8-drop
RUNS = {
    "balanced": ["--balanced"],
    "natural": ["--no-balanced"],
    # The "options if they help, chosen by measurement": each against `balanced`.
    "smoothing": ["--balanced", "--label-smoothing", "0.1"],
    "frozen": ["--balanced", "--freeze-backbone"],
    "constant": ["--balanced", "--lr-schedule", "constant"],  # the seed's: no schedule
    "colour": ["--balanced", "--colour-jitter", "0.4"],  # each video has its own sky
    "contrast": ["--balanced", "--contrast-gain", "8"],  # faint specks on plain sky
}
DEFAULT_RUNS = ["balanced", "natural"]
TARGET_ACCURACY, TARGET_RECALL, TARGET_MB, MARGIN = 0.90, 0.85, 3.5, 1.5
# A crop is "faint" when at most FAINT_MAX_PIXELS differ from its median grey by more
# than FAINT_GREY_LEVELS: the distant planes the halmstad crops do not show.
FAINT_GREY_LEVELS, FAINT_MAX_PIXELS = 25, 2
EVAL_BATCH = 64


def run(*argv: str, allowed: tuple[int, ...] = (0,)) -> int:
    print("$", " ".join(argv), flush=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    code = subprocess.run([sys.executable, *argv], cwd=REPO, env=env).returncode
    if code not in allowed:
        raise SystemExit(f"exit status {code}: {' '.join(argv)}")
    return code


def build_lake(root: Path) -> Path:
    lake = root / "lake"
    if not lake.is_dir():
        for name in CLASSES:
            shutil.copytree(CROPS / name, lake / name)
    return lake


def clean(root: Path, val_fraction: str) -> Path:
    out = root / "clean"
    if not (out / "_manifest.json").is_file():
        run(
            "-m", "pipeline", "clean", str(build_lake(root)), str(out), "--no-progress",
            "--group-manifest-uri", str(CROPS / "manifest.csv"),
            "--embedding-weights", str(WEIGHTS), "--val-fraction", val_fraction,
        )  # fmt: skip
    return out


def train_rows(data: Path) -> int:
    report = json.loads((data / "report.json").read_text())
    return sum(c["splits"].get("train", 0) for c in report["per_class"].values())


def fit_and_export(root: Path, data: Path, name: str, extra: list[str], sizing: list[str]) -> None:
    run_dir, model_dir = root / "runs" / name, root / "models" / name
    if not (run_dir / "metrics.json").is_file():
        per_class = ["--samples-per-class", str(train_rows(data) // len(CLASSES))]
        balanced = per_class if "--balanced" in extra else []
        run("-m", "train", "fit", str(data), str(run_dir), "--weights", str(WEIGHTS),
            *FIT_FLAGS, *sizing, *extra, *balanced)  # fmt: skip
    if not (model_dir / "model.json").is_file():
        run("-m", "train", "export", str(run_dir), str(model_dir), allowed=(0, REFUSED))


def summarize(root: Path) -> None:
    print(f"\n{'run':9s} {'model':5s} {'acc':>6s} {'bal.acc':>7s}  recall per class "
          f"({', '.join(CLASSES)})  size")  # fmt: skip
    for name in RUNS:
        if not (root / "models" / name / "model.json").is_file():
            continue
        metrics = json.loads((root / "runs" / name / "metrics.json").read_text())
        info = json.loads((root / "models" / name / "model.json").read_text())
        fp32 = [metrics["per_class"][c]["recall"] for c in CLASSES]
        int8 = [info["int8_recall"][c] for c in CLASSES]
        print(
            f"{name:9s} fp32  {metrics['accuracy']:6.3f} {metrics['balanced_accuracy']:7.3f}  "
            f"{' '.join(f'{r:.3f}' for r in fp32)}  (best epoch {metrics['best_epoch']})"
        )
        print(
            f"{'':9s} int8  {info['int8_test_accuracy']:6.3f} {sum(int8) / len(int8):7.3f}  "
            f"{' '.join(f'{r:.3f}' for r in int8)}  {info['bytes'] / 1e6:.2f} MB"
        )
        drop = (info["fp32_test_accuracy"] - info["int8_test_accuracy"]) * 100
        print(f"{'':9s} export: fp32 {info['fp32_test_accuracy']:.3f}, same weights with "
              f"ReLU {info['fp32_relu_test_accuracy']:.3f}, int8 {info['int8_test_accuracy']:.3f}, "
              f"drop {drop:.1f} points (margin 1.5), top-1 agreement "
              f"{info['int8_fp32_agreement']:.3f}; best epoch picked on "
              f"{metrics.get('selection_split', 'test')}")  # fmt: skip
        met = (
            drop <= MARGIN
            and info["int8_test_accuracy"] >= TARGET_ACCURACY
            and min(int8) >= TARGET_RECALL
            and info["bytes"] / 1e6 <= TARGET_MB
        )
        print(f"{'':9s} int8 targets (acc >= 0.90, every recall >= 0.85, <= 3.5 MB, "
              f"drop <= {MARGIN}): "
              f"{'met' if met else 'NOT met'}")  # fmt: skip


def object_pixels(image: Image.Image) -> int:
    """Pixels more than FAINT_GREY_LEVELS from the crop's median grey: the object's
    visible size, since every crop is an object on a plain sky."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    return int((np.abs(grey - np.median(grey)) > FAINT_GREY_LEVELS).sum())


def visibility(image: Image.Image) -> str:
    return "faint" if object_pixels(image) <= FAINT_MAX_PIXELS else "visible"


def split_rows(root: Path, split: str, columns: list[str]) -> list[dict]:
    rows: list[dict] = []
    for shard in sorted((root / "clean" / "images" / f"split={split}").glob("*.parquet")):
        rows += pq.read_table(shard, columns=columns).to_pylist()
    return rows


def per_video(root: Path, name: str) -> None:
    """Accuracy of run `name`'s exported model per test video, per class and the
    manifest's distance bin, and per class on faint against visible objects: on this
    data a class's recall moves with whole videos, which the per-image figures hide."""
    import torch

    from common.preprocess import EvalTransform

    model_dir = root / "models" / name
    info = json.loads((model_dir / "model.json").read_text())
    transform = EvalTransform.from_info(info)
    with open(CROPS / "manifest.csv", newline="") as f:
        manifest = {row["file"]: row for row in csv.DictReader(f)}
    model = torch.jit.load(str(model_dir / "model.pt"))
    tables: dict[str, dict[tuple[str, str], collections.Counter]] = {
        title: collections.defaultdict(collections.Counter)
        for title in ("test video", "class and distance bin", "class and object visibility")
    }
    rows = split_rows(root, "test", ["image", "label", "source_uri"])
    for start in range(0, len(rows), EVAL_BATCH):
        batch = rows[start : start + EVAL_BATCH]
        images = [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in batch]
        with torch.no_grad():
            predicted = model(torch.stack([transform(im) for im in images])).argmax(1).tolist()
        for row, image, p in zip(batch, images, predicted, strict=True):
            true, guess = info["classes"][row["label"]], info["classes"][p]
            entry = manifest.get("/".join(row["source_uri"].split("/")[-2:]), {})
            tables["test video"][(true, entry.get("video", "?"))][guess] += 1
            tables["class and distance bin"][(true, entry.get("distance_bin", "?"))][guess] += 1
            tables["class and object visibility"][(true, visibility(image))][guess] += 1
    for title, table in tables.items():
        print(f"\n{name}: accuracy per {title} (int8 model)")
        for (true, key), counts in sorted(table.items()):
            total = sum(counts.values())
            print(f"  {true:18s} {key:16s} {total:4d} {counts[true] / total:5.2f}  {dict(counts)}")


def faint_train_crops(root: Path) -> None:
    """How many train crops per class show no object: what the model learns sky as."""
    faint: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    for row in split_rows(root, "train", ["image", "class_name"]):
        with Image.open(io.BytesIO(row["image"])) as image:
            faint[row["class_name"]] += visibility(image) == "faint"
        total[row["class_name"]] += 1
    print(f"\nfaint train crops (<= {FAINT_MAX_PIXELS} pixels > {FAINT_GREY_LEVELS} grey levels "
          "from the median), per class:")  # fmt: skip
    for name in sorted(total):
        print(f"  {name:18s} {faint[name]:4d} of {total[name]:4d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/train_halmstad"))
    parser.add_argument("--summarize", action="store_true", help="only print the table")
    parser.add_argument(
        "--val-fraction",
        default=VAL_FRACTION,
        help="share of the lake cleaned into a val split that picks the checkpoint; 0: "
        "no val split, the best checkpoint by the test metric (the issue's protocol)",
    )
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=DEFAULT_RUNS)
    parser.add_argument(
        "--per-video", action="store_true", help="also print each run's accuracy per test video"
    )
    parser.add_argument("--input-size", default=INPUT_SIZE, help="network input side, px")
    parser.add_argument("--epochs", default=EPOCHS, help="epochs per fit (the seed's: 20)")
    parser.add_argument(
        "--torch-threads",
        default=TORCH_THREADS,
        help="intra-op threads per fit (Ray caps a 1-CPU worker at one thread otherwise); "
        "1 when two bench processes share the 2 cores",
    )
    args = parser.parse_args()
    sizing = ["--input-size", args.input_size, "--epochs", args.epochs]
    sizing += ["--torch-threads", args.torch_threads]
    if not args.summarize:
        data = clean(args.root, args.val_fraction)
        for name in args.runs:
            fit_and_export(args.root, data, name, RUNS[name], sizing)
    summarize(args.root)
    if args.per_video:
        faint_train_crops(args.root)
        for name in args.runs:
            if (args.root / "models" / name / "model.json").is_file():
                per_video(args.root, name)


if __name__ == "__main__":
    main()

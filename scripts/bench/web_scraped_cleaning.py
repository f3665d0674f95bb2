"""Cleaning quality on real web-search images: false drops, junk caught, off-class flagged.

The lake: every file of ``../shared/data/web-scraped/lake`` with its label by eye
(``scripts/bench/labels/web_scraped_lake.csv``: photo / junk / off_class / unsure),
plus planted:

* junk: the 100 car-brand logos of ``web-scraped/junk-logos`` and 60 clip-art drawings of
  ``messy-ingredients/openclipart-svg`` (half as SVG, half as the JPEG the job's own
  rasteriser makes of them, so the vector rule alone cannot catch them), round-robin
  over the three class folders;
* off-class photos: 40 halmstad Helicopter crops (one per video) into the two drone
  folders, 40 lake bird photos moved into the drone folders, and 11 photos of other
  things from ``messy-ingredients`` (astronaut, cat, coffee, motorbikes, ...) spread
  over all three folders.

The real job (`pipeline.job.run_clean`, defaults, local Ray, a local folder lake) cleans
it; then a lake of halmstad crops (``--halmstad-per-video`` crops of every video, all 5
classes). Printed, on the HELD-OUT fold (fold 0 of `devkit.junk_data.fold_of`,
never fitted on: the junk classifier and the off-class threshold were fitted on folds
1-4) and, for reference, on all files:

* real class photos wrongly dropped (%), by reason;
* junk caught (%): lake junk and planted junk;
* planted off-class photos flagged (recall) and precision of the off-class flags (a flag
  on a photo labelled off_class by eye counts as right, one on a class photo as wrong);
* halmstad false drops (%);
* CPU per image of the per-file work, old defaults against new, side by side in one
  process (`--cpu-files`).

    .venv/bin/python scripts/bench/web_scraped_cleaning.py [--halmstad-per-video 3]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.reasons import Rejected
from devkit.junk_data import (
    CLIPART,
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

CLASSES = ["Birds", "Large_QuadCopters", "Winged_Drones"]
DRONE_FOLDERS = ["Large_QuadCopters", "Winged_Drones"]
CLIPART_PLANTED = 60
HELICOPTERS = 40
MOVED_BIRDS = 40
OTHER_PHOTOS = [SKIMAGE / f"{n}.png" for n in ("astronaut", "chelsea", "coffee",
                "motorcycle_left", "motorcycle_right", "camera", "coins")] + [
                SKIMAGE / "rocket.jpg", PILLOW / "hopper.jpg", PILLOW / "flower.jpg",
                PILLOW / "flower2.jpg"]  # fmt: skip


@dataclass
class Planted:
    rel: str  # path in the benchmark lake: <Class>/<name>
    truth: str  # photo | junk | off_class | unsure
    origin: str  # lake | logo | clipart | helicopter | moved_bird | other_photo
    fold: int
    kind: str = ""
    source: Path | None = None
    data: bytes | None = None

    def bytes(self) -> bytes:
        return self.data if self.data is not None else self.source.read_bytes()


def rasterised(svg: Path) -> bytes | None:
    """The JPEG the job itself makes of an SVG (so the pixels are the job's)."""
    from pipeline.normalize import normalise

    try:
        return normalise(svg.read_bytes(), CleanConfig().normalize).fields["image"]
    except Rejected:
        return None


def helicopter_crops() -> list[tuple[Path, str]]:
    """The middle crop of each of the first HELICOPTERS Helicopter videos (sorted)."""
    by_video: dict[str, list[str]] = defaultdict(list)
    with open(HALMSTAD / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["class"] == "Helicopter":
                by_video[r["video"]].append(r["file"])
    picks = []
    for video in sorted(by_video)[:HELICOPTERS]:
        files = sorted(by_video[video])
        picks.append((HALMSTAD / files[len(files) // 2], video))
    return picks


def plan(labels: dict[str, tuple[str, str]]) -> list[Planted]:
    """Every file of the benchmark lake, deterministic."""
    birds = sorted(r for r, (lab, _) in labels.items() if r.startswith("Birds/") and lab == "photo")
    moved = set(birds[:: max(1, len(birds) // MOVED_BIRDS)][:MOVED_BIRDS])
    out: list[Planted] = []
    for rel, (label, kind) in sorted(labels.items()):
        if not (LAKE / rel).is_file():
            continue
        if rel in moved:
            folder = DRONE_FOLDERS[len([m for m in sorted(moved) if m < rel]) % 2]
            dest = f"{folder}/moved_{Path(rel).name}"
            out.append(Planted(dest, "off_class", "moved_bird", fold_of(rel), "bird", LAKE / rel))
        else:
            out.append(Planted(rel, label, "lake", fold_of(rel), kind, LAKE / rel))
    for i, p in enumerate(sorted(LOGOS.iterdir())):
        dest = f"{CLASSES[i % 3]}/logo_{p.name}"
        out.append(Planted(dest, "junk", "logo", fold_of(p.name), "logo", p))
    svgs = sorted(CLIPART.rglob("*.svg"))
    for i, p in enumerate(svgs[:: max(1, len(svgs) // CLIPART_PLANTED)][:CLIPART_PLANTED]):
        rel = str(p.relative_to(CLIPART))
        folder = CLASSES[i % 3]
        if i % 2:
            data = rasterised(p)
            if data is not None:
                dest = f"{folder}/clipart_{p.stem}.jpg"
                out.append(Planted(dest, "junk", "clipart", fold_of(rel), "clipart", data=data))
        else:
            dest = f"{folder}/clipart_{p.name}"
            out.append(Planted(dest, "junk", "clipart", fold_of(rel), "clipart", p))
    for i, (p, video) in enumerate(helicopter_crops()):
        dest = f"{DRONE_FOLDERS[i % 2]}/heli_{p.name}"
        out.append(Planted(dest, "off_class", "helicopter", fold_of(video), "helicopter", p))
    for i, p in enumerate(OTHER_PHOTOS):
        dest = f"{CLASSES[i % 3]}/other_{p.name}"
        out.append(Planted(dest, "off_class", "other_photo", fold_of(p.name), p.stem, p))
    return out


def write_lake(files: list[Planted], root: Path) -> None:
    for f in files:
        path = root / f.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.bytes())


def halmstad_lake(per_video: int) -> list[Planted]:
    by_video: dict[str, list[str]] = defaultdict(list)
    with open(HALMSTAD / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            by_video[r["video"]].append(r["file"])
    out = []
    for video, files in sorted(by_video.items()):
        files = sorted(files)
        step = max(1, len(files) // per_video)
        for rel in files[step // 2 :: step][:per_video]:
            out.append(Planted(rel, "photo", "halmstad", fold_of(video), rel.split("/")[0],
                               HALMSTAD / rel))  # fmt: skip
    return out


# --- the job ---------------------------------------------------------------------------


def job_config(input_uri: str, output_uri: str) -> CleanConfig:
    cfg = CleanConfig(input_uri=input_uri, output_uri=output_uri)
    cfg.dedup.embedding_weights = local_embedding_weights()
    cfg.execution.num_cpus = 2
    cfg.execution.progress = False
    return cfg


def run_job(root: Path, out: Path) -> tuple[dict[str, dict], dict, float]:
    """source path relative to the lake -> its output row; report.json; seconds."""
    from pipeline.job import run_clean
    from pipeline.output import read_table

    cfg = job_config(str(root), str(out))
    started = time.perf_counter()
    result = run_clean(cfg)
    seconds = time.perf_counter() - started
    rows = {}
    for table, status in (("images", "kept"), ("rejected", "rejected")):
        columns = ["source_uri", "class_name"] + (
            ["off_class_score", "off_class_like", "off_class_neighbour_share"]
            if table == "images" else
            ["reason", "detail", "score"])  # fmt: skip
        for r in read_table(str(out), table, cfg.storage, columns).to_pylist():
            rel = str(Path(r["source_uri"]).relative_to(root))
            rows[rel] = {**r, "status": status}
    return rows, result.report, seconds


# --- figures ---------------------------------------------------------------------------


def pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f} % ({n}/{d})" if d else "n/a"


# A copy dropped for its kept twin loses no content: not a false drop (the duplicate
# benchmark, scripts/bench/dedup_quality.py, judges those).
COPIES = ("exact_duplicate", "near_duplicate", "label_conflict")


def dropped_for_content(row: dict) -> bool:
    return row["status"] == "rejected" and row["reason"] not in COPIES


def quality(files: list[Planted], rows: dict[str, dict], held_out: bool) -> dict[str, str]:
    picked = [f for f in files if not held_out or f.fold == HELD_OUT]
    dropped = [f for f in picked if dropped_for_content(rows[f.rel])]
    photos = [f for f in picked if f.truth == "photo" and f.origin == "lake"]
    junk = [f for f in picked if f.truth == "junk"]
    planted_off = [f for f in picked if f.truth == "off_class" and f.origin != "lake"]
    flagged = [f for f in dropped if rows[f.rel]["reason"] == "off_class"]
    right = [f for f in flagged if f.truth == "off_class"]
    photo_drops = Counter(rows[f.rel]["reason"] for f in photos if f in dropped)
    return {
        "class photos wrongly dropped (copies aside)": pct(sum(photo_drops.values()), len(photos)),
        "  dropped as copies": pct(
            sum(rows[f.rel].get("reason") in COPIES for f in photos), len(photos)
        ),
        "  by reason": ", ".join(f"{k} {v}" for k, v in photo_drops.most_common()) or "-",
        "junk caught (lake + planted)": pct(sum(f in dropped for f in junk), len(junk)),
        "  lake junk caught": pct(
            sum(f in dropped for f in junk if f.origin == "lake"),
            sum(f.origin == "lake" for f in junk),
        ),  # fmt: skip
        "planted off-class flagged (recall)": pct(
            sum(rows[f.rel].get("reason") == "off_class" for f in planted_off), len(planted_off)
        ),
        "  caught by any rule": pct(sum(f in dropped for f in planted_off), len(planted_off)),
        "off-class flags right (precision)": pct(len(right), len(flagged)),
        "lake off_class labels dropped": pct(
            sum(f in dropped for f in picked if f.truth == "off_class" and f.origin == "lake"),
            sum(f.truth == "off_class" and f.origin == "lake" for f in picked),
        ),
    }


def print_quality(name: str, files: list[Planted], rows: dict[str, dict]) -> None:
    held, every = quality(files, rows, True), quality(files, rows, False)
    print(f"\n{name}\n| figure | held-out fold {HELD_OUT} | all files |\n|---|---|---|")
    for key in held:
        print(f"| {key} | {held[key]} | {every[key]} |")


SWEEP = (3.0, 4.0, 6.0, 8.0, 12.0)


def off_class_score(row: dict) -> float:
    """The row's off-class score, kept or rejected for it (NaN: not scored)."""
    value = row.get("off_class_score") if row["status"] == "kept" else (
        row.get("score") if row.get("reason") == "off_class" else None)  # fmt: skip
    return float("nan") if value is None else float(value)


def off_class_sweep(files: list[Planted], rows: dict[str, dict]) -> None:
    """The off-class decision at other thresholds, from this run's scores (a score does
    not depend on the threshold): training folds, where the default was chosen, beside
    the held-out fold. Rows dropped for junk or as copies have no say."""

    def score(f: Planted) -> float:
        return off_class_score(rows[f.rel])

    print("\noff-class threshold sweep (photos: lake class photos; recall: planted)")
    print("| threshold | folds | photos flagged | planted recall | precision |")
    print("|---|---|---|---|---|")
    for threshold in SWEEP:
        for name, pick in (
            ("1-4", lambda f: f.fold != HELD_OUT),
            ("0", lambda f: f.fold == HELD_OUT),
        ):
            scored = [(f, score(f)) for f in files if pick(f) and not np.isnan(score(f))]
            photos = [s for f, s in scored if f.truth == "photo" and f.origin == "lake"]
            planted = [s for f, s in scored if f.truth == "off_class" and f.origin != "lake"]
            flagged = [f for f, s in scored if s >= threshold]
            right = sum(f.truth == "off_class" for f in flagged)
            false_flags = pct(sum(s >= threshold for s in photos), len(photos))
            print(f"| {threshold} | {name} | {false_flags} "
                  f"| {pct(sum(s >= threshold for s in planted), len(planted))} "
                  f"| {pct(right, len(flagged))} |")  # fmt: skip


def print_misses(files: list[Planted], rows: dict[str, dict], limit: int = 40) -> None:
    """Which files went the wrong way (all folds), for a person to look at."""
    print("\nwrong way (all folds):")
    shown = 0
    for f in files:
        r = rows[f.rel]
        wrong = (
            (f.truth == "photo" and dropped_for_content(r))
            or (f.truth in ("junk", "off_class") and f.origin != "lake" and r["status"] == "kept")
            or (f.truth == "junk" and r["status"] == "kept")
        )
        if wrong and shown < limit:
            shown += 1
            what = r.get("reason") or f"kept off_class_score {r.get('off_class_score')}"
            print(
                f"  {f.truth:9} {f.origin:11} fold {f.fold} {f.rel}: {what} {r.get('detail') or ''}"
            )


def halmstad_quality(files: list[Planted], rows: dict[str, dict]) -> None:
    print(
        "\nhalmstad-crops (copies aside)\n| class | held-out fold dropped | all dropped | reasons |"
    )
    print("|---|---|---|---|")
    for cls in sorted({f.kind for f in files}) + ["all"]:
        picked = [f for f in files if cls in ("all", f.kind)]
        held = [f for f in picked if f.fold == HELD_OUT]
        drop = [f for f in picked if dropped_for_content(rows[f.rel])]
        reasons = Counter(rows[f.rel]["reason"] for f in drop)
        print(f"| {cls} | {pct(sum(f in drop for f in held), len(held))} | "
              f"{pct(len(drop), len(picked))} | {dict(reasons)} |")  # fmt: skip
    print("\nhalmstad off-class flags at other thresholds (this run's scores)")
    print("| threshold | held-out fold | all |\n|---|---|---|")
    for threshold in SWEEP:
        flags = [f for f in files if off_class_score(rows[f.rel]) >= threshold]
        held = [f for f in files if f.fold == HELD_OUT]
        print(f"| {threshold} | {pct(sum(f.fold == HELD_OUT for f in flags), len(held))} "
              f"| {pct(len(flags), len(files))} |")  # fmt: skip


# --- CPU per image, old defaults against new -------------------------------------------

OFF_CLASS_SCALE = 8  # the off-class stage timed at 1x and 8x the CPU sample's images
OLD_CHECKS = ["vector_source", "aspect_ratio", "too_small", "near_uniform", "too_dark",
              "few_colors", "flat_graphics", "too_bright"]  # fmt: skip


def ray_cpu_seconds() -> dict[int, float]:
    """CPU seconds so far of this process and of every Ray worker process, by pid: the
    off-class stage runs in Ray tasks, and their wall time on a shared machine says
    little. `cpu_between` takes the difference."""
    import os

    import psutil

    out = {os.getpid(): time.process_time()}
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"].startswith("ray::") or "default_worker.py" in " ".join(
                proc.info["cmdline"] or []
            ):
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two `ray_cpu_seconds` (a process started in between
    counts whole; one that ended in between is lost, so the figure is a lower bound)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def cpu_per_image(files: list[Planted], repeats: int) -> None:
    """Per-file work in this process, both ways interleaved file by file:
    old = normalise + signals + the old pixel rules, embedding only what passes them;
    new = normalise + signals + embedding of every decodable file + the content
    classifier + the new rules. Embedding runs per batch of 64 as in the job; the
    off-class stage's CPU (one matrix product per block) is timed on the new side."""
    import ray
    import torch

    from pipeline.embed import embedder
    from pipeline.junk import JunkConfig, verdict
    from pipeline.normalize import EMBEDDING_INPUT, add_content_scores, normalise, signals
    from pipeline.offclass import References, score_rows

    torch.set_num_threads(1)  # as in the job: each normalise task reserves one CPU
    cfg = job_config("", "")
    old_cfg = job_config("", "")
    old_cfg.junk = JunkConfig(junk_checks=OLD_CHECKS)
    embed = embedder(cfg.dedup.embedding_weights)
    data = [f.bytes() for f in files]
    totals = {"old": 0.0, "new": 0.0}
    vectors_all, kept_labels, kept_uris = [], [], []
    for rep in range(repeats):
        for start in range(0, len(data), 64):
            chunk = data[start : start + 64]
            for way in ("old", "new") if rep % 2 == 0 else ("new", "old"):
                c = old_cfg if way == "old" else cfg
                t0 = time.process_time()
                rows, inputs, names = [], [], []
                for f, b in zip(files[start : start + 64], chunk, strict=True):
                    try:
                        n = normalise(b, c.normalize)
                    except Rejected:
                        continue
                    row = {**n.fields, **signals(n, c)}
                    inputs.append(row.pop(EMBEDDING_INPUT))
                    rows.append(row)
                    names.append(f.rel)
                if way == "old":
                    todo = [i for i, r in enumerate(rows) if not verdict(r, c.junk)[0]]
                    if todo:
                        embed([inputs[i] for i in todo])
                else:
                    vectors = embed(inputs) if inputs else np.zeros((0, 1280), np.float16)
                    add_content_scores(rows, vectors, list(range(len(rows))), c)
                    for r in rows:
                        verdict(r, c.junk)
                    if rep == 0:
                        vectors_all.append(vectors)
                        kept_labels.extend(CLASSES.index(n.split("/")[0]) for n in names)
                        kept_uris.extend(names)
                totals[way] += time.process_time() - t0
    vectors = np.concatenate(vectors_all)
    labels = np.array(kept_labels, np.int32)
    uris = np.array(kept_uris, dtype=object)
    if not ray.is_initialized():
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    refs = References(vectors, labels, uris)
    score_rows(vectors, labels, uris, refs, 3, cfg.off_class)  # warm: workers, imports
    cpu_s = {}
    for copies in (1, OFF_CLASS_SCALE):  # the stage's fixed cost, then its cost per image
        v = np.tile(vectors, (copies, 1))
        y = np.tile(labels, copies)
        u = np.array([f"{x}#{k}" for k in range(copies) for x in uris], dtype=object)
        cpu = ray_cpu_seconds()
        score_rows(v, y, u, References(v, y, u), 3, cfg.off_class)
        cpu_s[copies] = cpu_between(cpu, ray_cpu_seconds())
    n = len(files) * repeats
    old, new = totals["old"] / n, totals["new"] / n
    m = len(vectors)
    marginal = (cpu_s[OFF_CLASS_SCALE] - cpu_s[1]) / (m * (OFF_CLASS_SCALE - 1))
    print(
        f"\nCPU per image ({len(files)} files x {repeats}, one process, one torch thread as "
        "in the job's 1-CPU tasks, interleaved):"
    )
    print("| way | ms per image | ratio |\n|---|---|---|")
    print(f"| old defaults (pixel rules, embed what passes) | {1000 * old:.1f} | 1.00 |")
    print(f"| new (embed every file, content classifier) | {1000 * new:.1f} | {new / old:.2f} |")
    print(
        f"| + off-class stage, cost per image beyond its fixed {cpu_s[1]:.1f} CPU-s "
        f"({m} and {m * OFF_CLASS_SCALE} images; CPU of this process and the Ray workers) | "
        f"{1000 * marginal:.2f} | {(new + marginal) / old:.2f} |"
    )
    per_image = cpu_s[1] / m
    print(f"| + off-class stage at {m} images, fixed cost included | "
          f"{1000 * per_image:.2f} | {(new + per_image) / old:.2f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--halmstad-per-video", type=int, default=3)
    parser.add_argument("--cpu-files", type=int, default=600, help="0: skip the CPU figures")
    parser.add_argument("--cpu-repeats", type=int, default=2)
    parser.add_argument("--skip-lake", action="store_true")
    parser.add_argument("--skip-halmstad", action="store_true")
    parser.add_argument("--misses", type=int, default=40)
    args = parser.parse_args(argv)
    labels = lake_labels(args.labels)
    files = plan(labels)
    print(f"benchmark lake: {len(files)} files, {Counter(f.truth for f in files)}; "
          f"planted {Counter(f.origin for f in files if f.origin != 'lake')}")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="web-scraped-bench-"))
    try:
        if not args.skip_lake:
            write_lake(files, work / "lake")
            rows, report, seconds = run_job(work / "lake", work / "clean")
            off = {
                k: v for k, v in report.get("off_class", {}).items() if k != "possible_label_issues"
            }
            print(f"job: {seconds:.0f} s; off-class: {off}")
            print_quality("web-scraped lake + planted (job defaults)", files, rows)
            off_class_sweep(files, rows)
            print_misses(files, rows, args.misses)
        if not args.skip_halmstad:
            crops = halmstad_lake(args.halmstad_per_video)
            write_lake(crops, work / "halmstad")
            rows, _, seconds = run_job(work / "halmstad", work / "halmstad-clean")
            print(f"\nhalmstad job: {len(crops)} crops, {seconds:.0f} s")
            halmstad_quality(crops, rows)
        if args.cpu_files:
            step = max(1, len(files) // args.cpu_files)
            cpu_per_image(files[::step][: args.cpu_files], args.cpu_repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

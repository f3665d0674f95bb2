"""Where a normalise task's CPU goes, step by step, per file: small crops and camera JPEGs.

The product's own batch function (`pipeline.normalize.normalise_batch`, what each
normalise task runs on its `files_per_task` files) runs in this process, as in a task:
one torch thread, the files read from a local S3 (moto on loopback, s3fs as on AWS), the
defaults with the local ImageNet weights. The batches run twice: once timed (process
CPU time, the figure per file), once under cProfile (the task's own thread), whose
cumulative times per product function give each step's share of what the reads (timed
on their own, in the task's thread pool) leave; the profiler's own overhead is spread
over the steps in proportion. Steps are named by the functions that do them, so a step
moved or renamed shows up as "the rest", never as a silent zero.

    .venv/bin/python scripts/bench/normalise_profile.py                 # 1,000 crops + camera JPEGs
    .venv/bin/python scripts/bench/normalise_profile.py --crops 250     # quicker

Reads ../shared (halmstad crops, skimage photos for the camera JPEGs, the weights).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from _common import print_table
from normalize_per_file import crop_set, make_camera_set

from common.storage import filesystem
from devkit.local_s3 import LocalS3
from devkit.weights import local_embedding_weights
from pipeline.config import CleanConfig
from pipeline.listing import list_lake
from pipeline.normalize import _fetch, normalise_batch
from pipeline.planning import with_work_columns

BUCKET = "lake"
DEFAULT_CROPS = 1000
# (step, module path suffix, function name, only when called by this function or None).
# Cumulative CPU of each; "JPEG" counts the main image's encode, "thumbnail" its own.
STEPS = (
    ("decode and shrink", "common/decode.py", "decode_within", None),
    ("JPEG of the image", "pipeline/normalize.py", "encode_jpeg", "normalise"),
    ("thumbnail", "pipeline/normalize.py", "thumbnail_jpeg", None),
    ("SHA-256 of the pixels", "pipeline/normalize.py", "pixel_sha256", None),
    ("channel moments", "pipeline/normalize.py", "channel_moments", None),
    ("junk pixel scores", "pipeline/junk/__init__.py", "score_image", None),
    ("pHash and its stability", "pipeline/dedup/signals.py", "hash_signals", None),
    ("colour layout", "pipeline/embed.py", "colour_layout", None),
    ("grey layout", "pipeline/embed.py", "grey_layout", None),
    ("embedding input", "pipeline/embed.py", "embedding_input", None),
    ("embedding forward pass", "pipeline/embed.py", "__call__", None),
    ("content classifier", "pipeline/junk_model.py", "junk_probability", None),
    ("rows into Arrow", "pipeline/normalize.py", "with_embeddings", None),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crops", type=int, default=DEFAULT_CROPS, help="halmstad crops")
    return parser.parse_args(argv)


def upload(s3: LocalS3, prefix: str, files: dict[str, bytes]) -> None:
    """Each file under s3://lake/<prefix>/<class>/<name> (camera JPEGs: one class)."""
    fs = s3.filesystem()
    for name, data in files.items():
        key = name if "/" in name else f"photos/{name}"
        fs.pipe_file(f"{BUCKET}/{prefix}/{key}", data)


def work_batches(cfg: CleanConfig, fs_listing: pa.Table) -> list[pa.Table]:
    """The snapshot with the job's work columns, in `files_per_task` batches."""
    classes = sorted({c for c in fs_listing["class_name"].to_pylist() if c})
    work = with_work_columns(fs_listing, classes, 0, cfg)
    step = cfg.execution.files_per_task
    return [work.slice(i, step) for i in range(0, work.num_rows, step)]


def profile(cfg: CleanConfig, batches: list[pa.Table]) -> tuple[float, dict[str, float]]:
    """(CPU s of the batches, timed; {step: CPU s}). The reads run in the task's thread
    pool, which cProfile does not see: they are timed on their own, and the profile
    (of the task's own thread) shares out the rest."""
    started = time.process_time()
    for batch in batches:
        normalise_batch(batch, cfg)
    timed = time.process_time() - started
    fetch = read_cpu(cfg, batches)
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    for batch in batches:
        normalise_batch(batch, cfg)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    total = sum(tt for _, _, tt, _, _ in stats.values())
    steps = {}
    for step, path, name, caller in STEPS:
        steps[step] = sum(
            _cumulative(entry, caller)
            for (file, _, func), entry in stats.items()
            if func == name and file.endswith(path)
        )
    steps["the rest (task loop, Python)"] = total - sum(steps.values())
    scale = (timed - fetch) / total  # the profiler's overhead, spread over the steps
    return timed, {"S3 GET (the task's read threads)": fetch} | {
        k: v * scale for k, v in steps.items()
    }


def read_cpu(cfg: CleanConfig, batches: list[pa.Table]) -> float:
    """CPU s of reading the batches' files as a normalise task does: `_fetch` in a pool
    of `read_window_files` threads."""
    fs, _ = filesystem(cfg.input_uri, cfg.storage)
    uris = [u for batch in batches for u in batch["source_uri"].to_pylist()]
    started = time.process_time()
    with ThreadPoolExecutor(max_workers=cfg.execution.read_window_files) as pool:
        for data in pool.map(lambda uri: _fetch(fs, uri), uris):
            assert not isinstance(data, Exception), data
    return time.process_time() - started


def _cumulative(entry: tuple, caller: str | None) -> float:
    """A function's cumulative CPU s, or only what `caller` called of it."""
    _, _, _, cumulative, callers = entry
    if caller is None:
        return cumulative
    return sum(ct for (_, _, name), (_, _, _, ct) in callers.items() if name == caller)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as in a normalise task (one CPU)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    sets = {"halmstad crops": crop_set(args.crops)}
    with tempfile.TemporaryDirectory() as tmp:
        sets["camera JPEGs 12-24 MP"] = make_camera_set(Path(tmp))
    results = {}
    with LocalS3() as s3:
        os.environ.update(s3.env())  # its credentials, as the job's environment gives them
        s3.create_bucket(BUCKET)
        for i, (label, files) in enumerate(sets.items()):
            upload(s3, f"set{i}", files)
            cfg = CleanConfig(input_uri=f"s3://{BUCKET}/set{i}", output_uri="s3://unused/out")
            cfg.storage.endpoint_url = s3.endpoint_url
            cfg.dedup.embedding_weights = local_embedding_weights()
            batches = work_batches(cfg, list_lake(cfg.input_uri, cfg.storage, concurrent=False))
            normalise_batch(batches[0].slice(0, 2), cfg)  # loads the network once
            results[label] = (len(files), *profile(cfg, batches))
    labels = list(results)
    rows = [
        [step, *(f"{1000 * results[k][2][step] / results[k][0]:.2f}" for k in labels)]
        for step in results[labels[0]][2]
    ]
    timed = (f"{1000 * results[k][1] / results[k][0]:.2f}" for k in labels)
    rows.append(["whole batch (timed)", *timed])
    counts = ", ".join(f"{k} {results[k][0]}" for k in labels)
    print(f"\nCPU ms per file, one thread; files: {counts}")
    print_table(["step", *labels], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a normalise task's CPU goes, step by step, per file: small crops and camera JPEGs.

The product's own batch function (`pipeline.normalize.normalise_batch`, what each
normalise task runs on its `files_per_task` files) runs in this process, as in a task:
one torch thread, the files read from a local S3 (moto on loopback, s3fs as on AWS), the
defaults with the local ImageNet weights: its process CPU time is the figure per file.
Then each part of it is timed on its own, on the same files, by calling the product's
function for it: the reads (`_fetch` in the task's thread pool), the per-file format
work (`normalise`), the per-file signals (`signals`) and the batch verdict
(`judged_table`: the embedding, the content classifier, the rows into Arrow); what is
left is the task's own loop. cProfile's cumulative times per function share each part
out among its steps (its overhead falls within the part, not across parts). Steps are
named by the functions that do them: one moved or renamed shows up in "the rest",
never as a silent zero.

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
from collections.abc import Callable
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
from pipeline.normalize import (
    _fetch,
    judged_table,
    normalise,
    normalise_batch,
    normalise_item,
    signals,
)
from pipeline.planning import with_work_columns

BUCKET = "lake"
DEFAULT_CROPS = 1000
# Stages of a file's work, each timed on its own by calling the product's function for
# it: (stage, its steps as (step, module path suffix, function, only when called by)).
# cProfile's cumulative times share each stage's timed CPU out among its steps.
STAGES = (
    (
        "normalise",
        (
            ("decode and shrink", "common/decode.py", "decode_within", None),
            ("JPEG of the image", "pipeline/normalize.py", "encode_jpeg", "normalise"),
            ("thumbnail", "pipeline/normalize.py", "thumbnail_jpeg", None),
            ("SHA-256 of the pixels", "pipeline/normalize.py", "pixel_sha256", None),
            ("channel moments", "pipeline/normalize.py", "channel_moments", None),
        ),
    ),
    (
        "signals",
        (
            ("junk pixel scores", "pipeline/junk/__init__.py", "score_image", None),
            ("pHash and its stability", "pipeline/dedup/signals.py", "hash_signals", None),
            ("colour layout", "pipeline/embed.py", "colour_layout", None),
            ("grey layout", "pipeline/embed.py", "grey_layout", None),
            ("embedding input", "pipeline/embed.py", "embedding_input", None),
        ),
    ),
    (
        "judged_table",
        (
            ("embedding forward pass", "pipeline/embed.py", "__call__", None),
            ("content classifier", "pipeline/junk_model.py", "junk_probability", None),
        ),
    ),
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
    """(CPU s of the task's function on the batches; {step: CPU s}). The reads are timed
    as the task does them (its thread pool); then each stage on its own, on the same
    files (the product's functions), and under cProfile for its steps' shares."""
    started = time.process_time()
    for batch in batches:
        normalise_batch(batch, cfg)
    whole = time.process_time() - started
    steps = {"S3 GET (the task's read threads)": read_cpu(cfg, batches)}
    items = [item for batch in batches for item in batch.to_pylist()]
    fs, _ = filesystem(cfg.input_uri, cfg.storage)
    data = [_fetch(fs, item["source_uri"]) for item in items]
    normalised = [normalise(d, cfg.normalize) for d in data]

    def batch_rows() -> list[list[dict]]:
        """The rows `judged_table` gets, fresh (it takes their embedding inputs)."""
        rows = [normalise_item(item, d, cfg) for item, d in zip(items, data, strict=True)]
        step = cfg.execution.files_per_task
        return [rows[i : i + step] for i in range(0, len(rows), step)]

    stages = {  # stage: (what it gets, made untimed; the stage on it)
        "normalise": (lambda: data, lambda x: [normalise(d, cfg.normalize) for d in x]),
        "signals": (lambda: normalised, lambda x: [signals(n, cfg) for n in x]),
        "judged_table": (batch_rows, lambda x: [judged_table(rows, cfg) for rows in x]),
    }
    for stage, parts in STAGES:
        prepare, run = stages[stage]
        timed = _timed(run, prepare())
        shares = _profiled_shares(run, prepare(), parts)
        steps |= {step: share * timed for step, share in shares.items()}
        steps[f"{stage}: the rest"] = timed * (1 - sum(shares.values()))
    residual = whole - sum(steps.values())
    steps["the task's own loop (the residual: within the parts' noise)"] = residual
    return whole, steps


def _timed(run: Callable[[object], object], given: object) -> float:
    started = time.process_time()
    run(given)
    return time.process_time() - started


def _profiled_shares(
    run: Callable[[object], object], given: object, parts: tuple
) -> dict[str, float]:
    """Each step's share of `run`'s profiled CPU (cumulative, this thread)."""
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    run(given)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    total = sum(tt for _, _, tt, _, _ in stats.values())
    return {
        step: sum(
            _cumulative(entry, caller)
            for (file, _, func), entry in stats.items()
            if func == name and file.endswith(path)
        )
        / total
        for step, path, name, caller in parts
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

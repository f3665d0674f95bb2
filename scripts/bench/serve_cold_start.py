"""Cold start through the Runtime Interface Emulator: process start to first answer.

Each run starts a fresh `aws-lambda-rie python -m awslambdaric
serve_lambda.handler.handler` (the image's entry point; the emulator starts Python on
the first invoke, as Lambda does on a cold start), sends one POST /predict of a 224 px
JPEG, and times from the emulator's process start to the answer. Then GET /info tells
where the init time went, as the function measured it: imports (torch dominates),
sha256 check, TorchScript load, warm-up inference, and the CPU time of each part
(interpreter + awslambdaric, imports, model), which machine load does not inflate.
For reference, a bare `python -c "import torch"` is timed between the runs.

    .venv/bin/python scripts/bench/serve_cold_start.py [--model-dir DIR] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devkit.messy_lake import encode, photo
from devkit.serve_model import bench_model
from serve_lambda.local import LocalFunction, http_event, threads_env

MS = 1000.0
SIDE = 224
PHASES = (
    "imports", "sha256_check", "model_load", "warmup_inference",
    "cpu_runtime_start", "cpu_imports", "cpu_model", "cpu_total",
)  # fmt: skip


def cold_start(model_dir: Path, image: bytes, log: Path, threads: int) -> dict[str, float]:
    function = LocalFunction(model_dir, env=threads_env(threads), log_path=log)
    started = time.perf_counter()
    with function:
        listening = time.perf_counter()
        event = http_event("POST", "/predict", {"content-type": "image/jpeg"}, image)
        answer = function.invoke(event)
        answered = time.perf_counter()
        assert answer["statusCode"] == 200, answer
        second_start = time.perf_counter()
        function.invoke(event)
        second = time.perf_counter() - second_start
        info = json.loads(function.invoke(http_event("GET", "/info", {}, b""))["body"])
    return {
        "first_answer": (answered - started) * MS,
        "emulator_listening": (listening - started) * MS,
        "first_request_round_trip": (answered - listening) * MS,
        "second_request_round_trip": second * MS,
        **{phase: info["startup_ms"][phase] for phase in PHASES},
    }


def import_torch_ms() -> tuple[float, float]:
    """(wall, CPU) of a bare `python -c "import torch"`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    wall = (time.perf_counter() - started) * MS
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * MS
    return wall, cpu


def summary(label: str, values: list[float]) -> str:
    return f"  {label}: {statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a `train export` folder (default: generated 224 px)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the function")
    args = parser.parse_args()
    model_dir = bench_model(args.model_dir)
    image = encode(photo(SIDE, SIDE, 12), "JPEG", quality=90)
    print(f"load average before: {os.getloadavg()}")
    runs, bare = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(args.runs):  # interleaved, so load changes hit both alike
            log = Path(scratch) / f"rie-{run}.log"
            runs.append(cold_start(model_dir, image, log, args.threads))
            print(f"run {run + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in runs[-1].items()))
            bare.append(import_torch_ms())
    print(f"\nmodel {model_dir}; {args.runs} cold starts, ms (median, min, max)")
    for key in runs[0]:
        print(summary(key, [run[key] for run in runs]))
    print(summary('bare `python -c "import torch"`, wall', [b[0] for b in bare]))
    print(summary('bare `python -c "import torch"`, CPU', [b[1] for b in bare]))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

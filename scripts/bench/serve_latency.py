"""Warm latency of the function's work on one core, decode included, int8 against fp32.

Wall-clock p50/p99 count waiting for a shared CPU; the CPU-time p50 (this process's
CPU seconds per request, one torch thread) is what the request costs a core. Each
iteration runs `ServedModel.predict` (safe decode with JPEG draft mode, shrink to
512, letterbox + normalise, forward pass, softmax) on the same bytes, int8 and fp32
alternating so machine noise hits both alike. fp32 is the training network
(torchvision MobileNetV2 with our head), scripted and frozen; its latency does not
depend on its weights. Also prints the model file sizes and what the serving
dependencies take on disk in this venv.

    .venv/bin/python scripts/bench/serve_latency.py [--model-dir DIR] [--iterations 300]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from devkit.messy_lake import encode, photo
from devkit.serve_model import bench_model, save_fp32
from serve_lambda.config import ServeSettings
from serve_lambda.model import (
    JIT_DEPRECATION,
    MS,
    ServedModel,
    load_model,
    set_threads,
)

WARMUP = 20
PERCENTILES = (50, 99)
ONE_MP = (1152, 864)
SMALL = (224, 224)
JPEG_QUALITY = 90
MB = 1e6
# What the Lambda image installs (serve_lambda/requirements.txt and their dependencies).
SERVING_DISTRIBUTIONS = (
    "torch", "pillow", "numpy", "awslambdaric", "simplejson", "snapshot-restore-py",
    "filelock", "typing_extensions", "sympy", "mpmath", "networkx", "jinja2", "MarkupSafe",
    "fsspec",
)  # fmt: skip
# Files of the CUDA torch build that the CPU wheel does not have.
CUDA_MARKERS = ("cuda", "nvshmem", "nvrtc", "cudnn", "nccl")


def percentile(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fp32_twin(int8: ServedModel, directory: Path) -> ServedModel:
    path = save_fp32(directory, len(int8.classes))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=FutureWarning)
        module = torch.jit.load(str(path))
    twin = ServedModel(module, int8.info, int8.transform, int8.limits)
    size = int8.transform.input_size
    for _ in range(WARMUP):
        twin.probabilities(torch.zeros(1, 3, size, size))
    return twin


def measure(models: dict[str, ServedModel], data: bytes, iterations: int) -> dict[str, dict]:
    timings: dict[str, dict[str, list[float]]] = {
        name: {"total": [], "cpu": [], "decode": [], "inference": []} for name in models
    }
    names = list(models)
    for i in range(WARMUP + iterations):
        for name in names if i % 2 == 0 else names[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            result = models[name].predict(data)
            total = (time.perf_counter() - start) * MS
            cpu = (time.process_time() - cpu_start) * MS
            if i >= WARMUP:
                timings[name]["total"].append(total)
                timings[name]["cpu"].append(cpu)
                timings[name]["decode"].append(result.decode_ms)
                timings[name]["inference"].append(result.inference_ms)
    return timings


def installed_bytes(distribution: str) -> tuple[int, int]:
    """(all files, CUDA-only files) of an installed distribution, from its RECORD."""
    files = importlib.metadata.distribution(distribution).files or []
    total = cuda = 0
    for file in files:
        size = file.size or 0
        total += size
        if any(marker in str(file).lower() for marker in CUDA_MARKERS):
            cuda += size
    return total, cuda


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a `train export` folder (default: generated 224 px)")
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    model_dir = bench_model(args.model_dir)
    set_threads(1)
    int8 = load_model(ServeSettings(model_dir=str(model_dir), torch_threads=1))
    print(f"model {model_dir}: {int8.info['input_size']} px, {len(int8.classes)} classes")
    print(f"torch threads: {torch.get_num_threads()}, engine {torch.backends.quantized.engine}")
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = fp32_twin(int8, Path(scratch))
        fp32_bytes = (Path(scratch) / "model_fp32.pt").stat().st_size
        images = {
            f"{ONE_MP[0]}x{ONE_MP[1]} JPEG": encode(
                photo(*ONE_MP, 11), "JPEG", quality=JPEG_QUALITY
            ),
            f"{SMALL[0]}x{SMALL[1]} JPEG": encode(photo(*SMALL, 12), "JPEG", quality=JPEG_QUALITY),
        }
        print(f"\nwarm latency, ms, {args.iterations} requests each (after {WARMUP} warm-up)")
        print("| image | model | p50 | p99 | mean | CPU p50 | decode p50 | inference p50 |")
        print("|---|---|---|---|---|---|---|---|")
        for label, data in images.items():
            timings = measure({"int8": int8, "fp32": fp32}, data, args.iterations)
            for name, parts in timings.items():
                total = parts["total"]
                print(
                    f"| {label} ({len(data) / 1000:.0f} KB) | {name} "
                    f"| {percentile(total, 50):.2f} | {percentile(total, 99):.2f} "
                    f"| {statistics.fmean(total):.2f} | {percentile(parts['cpu'], 50):.2f} "
                    f"| {percentile(parts['decode'], 50):.2f} "
                    f"| {percentile(parts['inference'], 50):.2f} |"
                )
    print(f"load average after: {os.getloadavg()}")
    print("\nmodel files")
    print(f"  int8 model.pt: {(model_dir / 'model.pt').stat().st_size / MB:.2f} MB")
    print(f"  fp32 TorchScript (same network, frozen): {fp32_bytes / MB:.2f} MB")
    print("\nserving dependencies installed in this venv (MB; torch here is the CUDA build)")
    grand = grand_cuda = 0
    for name in SERVING_DISTRIBUTIONS:
        total, cuda = installed_bytes(name)
        grand, grand_cuda = grand + total, grand_cuda + cuda
        extra = f" (of which CUDA-only files {cuda / MB:.0f})" if cuda else ""
        print(f"  {name}: {total / MB:.1f}{extra}")
    print(
        f"  total: {grand / MB:.0f}; without the CUDA-only files: {(grand - grand_cuda) / MB:.0f}"
    )


if __name__ == "__main__":
    main()

"""A real exported model without a training run, for the serving tests and benchmarks.

The same steps as `python -m train export` after training (`train.export.quantize`,
`save_torchscript`, `write_model_json`), on a deterministic randomly-initialised
MobileNetV2 calibrated on generated photos: the file is what the Lambda serves in
production, only the weights mean nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from devkit.messy_lake import encode, photo
from devkit.sample_lake import DEMO_CLASSES

CALIBRATION_IMAGES = 8
CALIBRATION_SIDE = 160
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
UNUSED_OBSERVER = "must run observer before calling calculate_qparams"


def calibration_images(count: int = CALIBRATION_IMAGES) -> list[bytes]:
    return [
        encode(photo(CALIBRATION_SIDE, CALIBRATION_SIDE, seed), "JPEG") for seed in range(count)
    ]


def fp32_network(num_classes: int, seed: int = 0) -> torch.nn.Module:
    """The training network (torchvision MobileNetV2 with our head), seeded."""
    from torchvision.models import mobilenet_v2

    from train.model import replace_head

    torch.manual_seed(seed)
    model = mobilenet_v2(weights=None)
    replace_head(model, num_classes, dropout=0.0)
    return model.eval()


def build_model(
    out: Path, input_size: int, classes: tuple[str, ...] = DEMO_CLASSES, seed: int = 0
) -> dict[str, Any]:
    """Write out/model.pt (int8 TorchScript) and out/model.json; returns model.json."""
    from train.config import ExportSection
    from train.export import deprecations_silenced, quantize, save_torchscript, write_model_json
    from train.presets import eval_transform

    transform = eval_transform(input_size, MEAN, STD)
    state = {"model": fp32_network(len(classes), seed).state_dict()}
    with deprecations_silenced(), warnings.catch_warnings():
        # torchvision's quantizable MobileNetV2 has an observer no forward pass reaches.
        warnings.filterwarnings("ignore", message=UNUSED_OBSERVER, category=UserWarning)
        int8 = quantize(state, len(classes), calibration_images(), transform, ExportSection())
        save_torchscript(int8, out)
    return write_model_json(
        out,
        {
            "classes": list(classes),
            "input_size": input_size,
            "mean": list(MEAN),
            "std": list(STD),
            "pad": "mean colour (common.preprocess)",
            "backend": ExportSection().backend,
            "trained_epochs": 0,
            "data_run_id": f"generated-seed-{seed}",
        },
    )


def save_fp32(out: Path, num_classes: int = len(DEMO_CLASSES)) -> Path:
    """The fp32 network scripted the same way, for the int8-vs-fp32 latency comparison."""
    from train.export import deprecations_silenced

    path = out / "model_fp32.pt"
    with deprecations_silenced():
        scripted = torch.jit.script(fp32_network(num_classes))
        scripted = torch.jit.freeze(scripted)
        torch.jit.save(scripted, str(path))
    return path


BENCH_INPUT_SIZE = 224
BENCH_MODEL_DIR = Path(__file__).resolve().parent.parent / "out" / "bench" / "serve-model-224"


def bench_model(model_dir: str | None) -> Path:
    """`model_dir` (a real `train export`) when given, else a generated 224 px model,
    built once into out/bench/ (latency and size do not depend on the weights)."""
    if model_dir:
        return Path(model_dir)
    if not (BENCH_MODEL_DIR / "model.json").exists():
        build_model(BENCH_MODEL_DIR, BENCH_INPUT_SIZE)
    return BENCH_MODEL_DIR


# A fresh interpreter imports the handler (as Lambda's init phase does: the model is
# loaded), then sends one image through it. The peak is VmHWM, the high-water RSS of the
# process's own memory: getrusage's ru_maxrss would start at the RSS of the parent that
# forked it (Linux carries it over fork and exec), i.e. at pytest's.
_PEAK_RSS = """
import base64, json, sys
from pathlib import Path

def peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

import serve_lambda.handler as h
assert not isinstance(h.STATE, Exception), h.STATE
data = Path(sys.argv[1]).read_bytes()
event = {"version": "2.0", "rawPath": "/predict", "headers": {"content-type": "image/png"},
         "requestContext": {"http": {"method": "POST", "path": "/predict"}},
         "body": base64.b64encode(data).decode(), "isBase64Encoded": True}
del data
loaded = peak_mb()
answer = h.handler(event, None)
body = json.loads(answer["body"])
print(json.dumps({"status": answer["statusCode"], "error": body.get("error"),
                  "loaded_mb": loaded, "peak_mb": peak_mb()}))
"""
PEAK_RSS_TIMEOUT_S = 300


def handler_peak_rss(image: Path, model_dir: Path, env: dict[str, str] | None = None) -> dict:
    """Status and peak RSS (MB) of a fresh handler process that answered `image`:
    {"status", "error", "loaded_mb" (after the model loaded), "peak_mb"}."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    child_env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "LAKECLEAN_MODEL_DIR": str(model_dir),
        "LAKECLEAN_TORCH_THREADS": "1",
        **(env or {}),
    }
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(image)],
        capture_output=True,
        text=True,
        timeout=PEAK_RSS_TIMEOUT_S,
        env=child_env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])

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

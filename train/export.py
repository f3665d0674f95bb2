"""`export`: the best checkpoint of a run -> int8 TorchScript `model.pt` + `model.json`.

Post-training static quantization of torchvision's quantizable MobileNetV2 (conv-bn-relu
fused, x86/fbgemm observers) from block `float_blocks` on, the leading blocks kept in
fp32 (their activations are heavy-tailed on small objects: docs/history.md, section
9), calibrated on train images with the evaluation transform, scripted, saved,
reloaded and evaluated against the fp32 model on the test split. The export fails when
int8 loses more than `max_int8_drop` accuracy points.

Note: the quantizable network uses ReLU where the trained one has ReLU6 (torchvision
replaces them so they fuse); the fp32 accuracy of both is recorded.
"""

from __future__ import annotations

import json
import platform
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch.ao.quantization import (
    HistogramObserver,
    QConfig,
    QuantStub,
    convert,
    get_default_qconfig,
    prepare,
)
from torchvision.models.quantization import mobilenet_v2 as quantizable_mobilenet_v2

from common.dataset import TEST, TRAIN, read_manifest, read_shards, split_uris
from common.model_files import MODEL_FILE, MODEL_JSON, file_sha256
from common.preprocess import EvalTransform
from common.storage import StorageConfig
from train.checkpoint import (
    DEFAULT_ACTIVATION,
    CheckpointError,
    best_checkpoint_of_run,
    load_checkpoint,
    model_from_state,
)
from train.config import ExportConfig, ExportSection
from train.model import replace_head
from train.reports import predict, predict_each

PERCENT = 100.0
# Calibration draws its images from this many randomly chosen shards (each holds one
# cleaning task's files of one class): enough to see every class, never the whole split.
CALIBRATION_SHARDS = 64
# Deprecation notices of the APIs this module exists to call, by message and category;
# nothing else is silenced.
DEPRECATIONS = (
    (r"`torch\.jit\.\w+` is deprecated", FutureWarning),
    (r"torch\.ao\.quantization is deprecated", DeprecationWarning),
    (r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized", UserWarning),
    (r"Please use quant_min and quant_max to specify the range for observers", UserWarning),
)


class ExportError(Exception):
    """The export cannot run or the int8 model is not good enough (exit status 2)."""


@contextmanager
def deprecations_silenced() -> Iterator[None]:
    """Only within the export: the caller's warning filters are restored after it."""
    with warnings.catch_warnings():
        for message, category in DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def quantizable_from_state(state: dict[str, Any], num_classes: int) -> torch.nn.Module:
    """torchvision's quantizable MobileNetV2 (ReLU where the trained one has ReLU6, so
    activations fuse into convolutions) holding the trained fp32 weights."""
    model = quantizable_mobilenet_v2(weights=None, quantize=False)
    replace_head(model, num_classes, dropout=0.0)
    model.load_state_dict(state["model"])
    return model.eval()


def qconfig(cfg: ExportSection) -> QConfig:
    """The backend's default (per-channel weights, histogram-calibrated activations),
    with the activation range as configured: the default's 7-bit activations guard
    against int16 saturation on x86 CPUs without VNNI, and cost accuracy on CPUs with it."""
    default = get_default_qconfig(cfg.backend)
    activation = HistogramObserver.with_args(reduce_range=cfg.reduce_range)
    return QConfig(activation=activation, weight=default.weight)


def keep_leading_blocks_float(model: torch.nn.Module, blocks: int) -> None:
    """Leave `features[:blocks]` in fp32 and quantize from their output on: the input
    stub stays an identity and a new stub quantizes after the last float block."""
    if blocks <= 0:
        return
    if blocks >= len(model.features):
        raise ExportError(f"--float-blocks {blocks}: the network has {len(model.features)}")
    model.quant.qconfig = None
    for block in model.features[:blocks]:
        block.qconfig = None
    model.features[blocks - 1] = torch.nn.Sequential(model.features[blocks - 1], QuantStub())


def skip_unused_adds(model: torch.nn.Module) -> None:
    """torchvision gives every block a residual add, also the blocks that never add:
    observing those would convert an add that saw no data (torch warns about it)."""
    for block in model.features:
        if hasattr(block, "skip_add") and not block.use_res_connect:
            block.skip_add.qconfig = None


def quantize(
    state: dict[str, Any],
    num_classes: int,
    calibration: list[bytes],
    transform: EvalTransform,
    cfg: ExportSection,
) -> torch.nn.Module:
    """Static int8 (after `cfg.float_blocks` fp32 blocks): fuse, observe the
    calibration images, convert."""
    torch.backends.quantized.engine = cfg.backend
    model = quantizable_from_state(state, num_classes)
    model.fuse_model(is_qat=False)
    model.qconfig = qconfig(cfg)
    skip_unused_adds(model)
    keep_leading_blocks_float(model, cfg.float_blocks)
    prepare(model, inplace=True)
    predict(model, calibration, transform, cfg.batch_size)
    return convert(model, inplace=False)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((predictions == labels).mean()) if len(labels) else 0.0


def recall_per_class(predictions: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Each class's recall: the seed's weak spot (Small_QuadCopters) shows here first."""
    return {
        name: float((predictions[labels == k] == k).mean()) if (labels == k).any() else 0.0
        for k, name in enumerate(classes)
    }


def read_images(
    meta: dict[str, Any],
    split: str,
    storage: StorageConfig,
    limit: int | None = None,
    seed: int = 0,
):
    """(JPEG bytes, labels) of a split of the data set the run trained on; with `limit`,
    a seeded random sample of rows from a random subset of the shards. The cleaning job
    writes shards by class, so the first rows would calibrate on one or two classes."""
    manifest = read_manifest(meta["data_uri"], storage)
    if manifest is None:
        raise ExportError(f"{meta['data_uri']}: the training data is gone")
    uris = split_uris(meta["data_uri"], manifest, split)
    rng = np.random.default_rng(seed)
    if limit is not None:
        uris = list(rng.permutation(uris))[:CALIBRATION_SHARDS]
    table = read_shards(uris, storage, columns=["image", "label"])
    if limit is not None and table.num_rows > limit:
        table = table.take(np.sort(rng.choice(table.num_rows, size=limit, replace=False)))
    return table["image"].to_pylist(), np.asarray(table["label"].to_pylist(), dtype=np.int64)


def save_torchscript(model: torch.nn.Module, out: Path) -> Path:
    """Script and save `model` as `out/model.pt` (what the Lambda loads)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_FILE
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def write_model_json(out: Path, info: dict[str, Any]) -> dict[str, Any]:
    """`out/model.json`: `info` plus the saved file's name, size and sha256 (the Lambda
    checks it before serving) and the library versions; returns what it wrote."""
    path = out / MODEL_FILE
    full = {
        **info,
        "file": MODEL_FILE,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
    }
    (out / MODEL_JSON).write_text(json.dumps(full, indent=2))
    return full


def run_export(cfg: ExportConfig) -> dict[str, Any]:
    """Write model.pt and model.json; returns model.json's content."""
    with deprecations_silenced():
        return export_model(cfg)


def export_model(cfg: ExportConfig) -> dict[str, Any]:
    try:
        best = best_checkpoint_of_run(cfg.run_uri, cfg.storage)
    except CheckpointError as err:
        raise ExportError(str(err)) from err
    state, meta = load_checkpoint(best)
    classes = meta["classes"]
    transform = EvalTransform.from_info(meta)
    calibration, _ = read_images(
        meta, TRAIN, cfg.storage, cfg.export.calibration_images, cfg.export.seed
    )
    test_images, test_labels = read_images(meta, TEST, cfg.storage, None)
    int8 = quantize(state, len(classes), calibration, transform, cfg.export)
    out = Path(cfg.model_dir)
    reloaded = torch.jit.load(str(save_torchscript(int8, out)))
    fp32_pred, int8_pred, relu_pred = predict_each(
        [
            model_from_state(state, len(classes), meta.get("activation", DEFAULT_ACTIVATION)),
            reloaded,
            # The quantizable network in fp32: what the ReLU6 -> ReLU swap alone costs.
            quantizable_from_state(state, len(classes)),
        ],
        test_images,
        transform,
        cfg.export.batch_size,
    )
    info = write_model_json(
        out,
        {
            "classes": classes,
            "input_size": meta["input_size"],
            "mean": meta["mean"],
            "std": meta["std"],
            "contrast_gain": transform.contrast_gain,
            "pad": "mean colour (common.preprocess)",
            "fp32_test_accuracy": accuracy(fp32_pred, test_labels),
            "fp32_relu_test_accuracy": accuracy(relu_pred, test_labels),
            "int8_test_accuracy": accuracy(int8_pred, test_labels),
            "int8_fp32_agreement": accuracy(int8_pred, fp32_pred),
            "fp32_recall": recall_per_class(fp32_pred, test_labels, classes),
            "int8_recall": recall_per_class(int8_pred, test_labels, classes),
            "test_images": len(test_labels),
            "trained_epochs": state["epoch"],
            "backend": cfg.export.backend,
            "reduce_range": cfg.export.reduce_range,
            "float_blocks": cfg.export.float_blocks,
            "data_uri": meta["data_uri"],
            "data_run_id": meta.get("data_run_id"),
        },
    )
    drop = (info["fp32_test_accuracy"] - info["int8_test_accuracy"]) * PERCENT
    if drop > cfg.export.max_int8_drop:
        raise ExportError(
            f"int8 loses {drop:.1f} accuracy points (> {cfg.export.max_int8_drop}): "
            f"fp32 {info['fp32_test_accuracy']:.3f}, int8 {info['int8_test_accuracy']:.3f}"
        )
    return info

"""The exported model as the function serves it: loaded once, checked, warmed up.

`model.json` (written by `train/export.py`) carries the classes, the evaluation
transform's parameters and the sha256 of `model.pt`; a file that does not match is
never served. Bytes become a tensor exactly as training evaluated: the cleaning job's
decoding rules and shrink (`common.decode`), then the shared `EvalTransform`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.decode import Decoded, DecodeLimits, decode_within
from common.model_files import MODEL_FILE, MODEL_JSON, file_sha256
from common.preprocess import EvalTransform
from serve_lambda.config import SOURCE_SIDE, ServeSettings

log = logging.getLogger(__name__)

MS = 1000.0
REQUIRED_KEYS = ("classes", "input_size", "mean", "std", "sha256")
# Shown by GET /info: what a caller may want to know, nothing about the build machine.
PUBLIC_KEYS = (
    "classes",
    "input_size",
    "sha256",
    "bytes",
    "backend",
    "int8_test_accuracy",
    "fp32_test_accuracy",
    "trained_epochs",
    "data_run_id",
    "versions",
)
# TorchScript is deprecated but is what `train export` writes; only this notice is muted.
JIT_DEPRECATION = r"`torch\.jit\.load` is deprecated"


class ModelError(Exception):
    """The model folder cannot be served (missing file, bad model.json, sha mismatch)."""


@dataclass(frozen=True)
class Prediction:
    label: int
    class_name: str
    probabilities: list[float]
    decoded: Decoded
    decode_ms: float
    inference_ms: float


def read_info(model_dir: Path) -> dict[str, Any]:
    """model.json, checked for what serving needs and against model.pt's sha256."""
    try:
        info = json.loads((model_dir / MODEL_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{model_dir / MODEL_JSON}: {exc}") from exc
    missing = [key for key in REQUIRED_KEYS if key not in info]
    if missing:
        raise ModelError(f"{model_dir / MODEL_JSON} lacks {', '.join(missing)}")
    path = model_dir / info.get("file", MODEL_FILE)
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    if actual != info["sha256"]:
        raise ModelError(f"{path} has sha256 {actual}, model.json says {info['sha256']}")
    return info


def prepare(data: bytes, limits: DecodeLimits) -> Decoded:
    """Untrusted bytes -> upright RGB at most SOURCE_SIDE on its longest side, as the
    cleaning job stores training images (raises `Rejected` with the reason)."""
    return decode_within(data, limits, SOURCE_SIDE)


@dataclass
class ServedModel:
    module: torch.jit.ScriptModule
    info: dict[str, Any]
    transform: EvalTransform
    limits: DecodeLimits
    startup_ms: dict[str, float] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    def tensor(self, data: bytes) -> tuple[torch.Tensor, Decoded]:
        """The network's input for `data` (1 x C x H x W) and what was decoded."""
        decoded = prepare(data, self.limits)
        return self.transform(decoded.image).unsqueeze(0), decoded

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        # TorchScript's profiling executor would spend ~0.4 s of CPU optimising the graph
        # over the first two calls and gains nothing on quantized ops (measured: the
        # same steady latency), so the graph runs as scripted.
        with torch.jit.optimized_execution(False):
            return torch.softmax(self.module(batch).float(), dim=1)[0]

    def predict(self, data: bytes) -> Prediction:
        start = time.perf_counter()
        batch, decoded = self.tensor(data)
        decoded_at = time.perf_counter()
        probs = self.probabilities(batch)
        done = time.perf_counter()
        label = int(probs.argmax())
        return Prediction(
            label=label,
            class_name=self.classes[label],
            probabilities=probs.tolist(),
            decoded=decoded,
            decode_ms=(decoded_at - start) * MS,
            inference_ms=(done - decoded_at) * MS,
        )

    def public_info(self) -> dict[str, Any]:
        info = {key: self.info[key] for key in PUBLIC_KEYS if key in self.info}
        return {**info, "version": self.info["sha256"][:12]}


def set_threads(threads: int) -> None:
    """Intra-op threads for Lambda's vCPUs; one inter-op thread (one image at a time)."""
    torch.set_num_threads(threads)
    # Raises when already set, or when parallel work already ran in this process.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def load_model(settings: ServeSettings) -> ServedModel:
    """Read, check, load and warm up the model (once per container)."""
    model_dir = Path(settings.model_dir)
    started = time.perf_counter()
    set_threads(settings.threads())
    info = read_info(model_dir)
    checked = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=FutureWarning)
            module = torch.jit.load(str(model_dir / info.get("file", MODEL_FILE)), "cpu")
    except (RuntimeError, OSError) as exc:
        raise ModelError(f"{model_dir}: TorchScript load failed: {exc}") from exc
    module.eval()
    loaded = time.perf_counter()
    transform = EvalTransform.from_info(info)
    served = ServedModel(module, info, transform, settings.decode_limits())
    # The first forward pass allocates and packs what later ones reuse: pay it in
    # Lambda's init phase rather than in the first caller's request.
    size = transform.input_size
    served.probabilities(torch.zeros(1, 3, size, size))
    warmed = time.perf_counter()
    served.startup_ms = {
        "sha256_check": (checked - started) * MS,
        "model_load": (loaded - checked) * MS,
        "warmup_inference": (warmed - loaded) * MS,
    }
    log.info("model %s loaded: %s", info["sha256"][:12], served.startup_ms)
    return served

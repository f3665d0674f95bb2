"""TensorBoard written by rank 0 while the run trains, copied into RUN_URI every epoch.

The event files are written to a local folder (SummaryWriter cannot write to every
fsspec target) and copied after each epoch to RUN_URI/tensorboard/<run name>/, the
run name being RUN_URI's last part, so `tensorboard --logdir .../tensorboard` shows a
live run under its own name. A resumed run adds an event file to the same folder and
continues the step counts from the checkpoint's history.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from common.dataset import SPLITS
from common.preprocess import decode_rgb
from common.storage import StorageConfig, filesystem, join
from train.presets import augment, train_transform

TENSORBOARD_DIR = "tensorboard"


def run_name(run_uri: str) -> str:
    """The last non-empty part of RUN_URI ('s3://b/runs/demo/' -> 'demo')."""
    parts = [p for p in run_uri.replace("\\", "/").split("/") if p not in ("", ".")]
    return parts[-1] if parts else "run"


def tensorboard_uri(run_uri: str) -> str:
    return join(join(run_uri, TENSORBOARD_DIR), run_name(run_uri))


def square(pixels: np.ndarray, side: int) -> np.ndarray:
    """HWC uint8 -> HWC float in [0, 1], resized to side x side (for a grid)."""
    image = Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def sample_views(
    sample: Sequence[tuple[bytes, int]], cfg: Any, mean: Sequence[float], std: Sequence[float]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A mixed batch as decoded, and after one draw of the training augmentation (HWC in
    [0, 1]); `cfg` is the TrainConfig."""
    size = cfg.model.input_size
    transform = train_transform(size, mean, std, cfg.data)
    before, after = [], []
    for blob, _ in sample:
        pixels = decode_rgb(blob)
        before.append(square(pixels, size))
        chw = augment(transform, pixels)
        hwc = chw.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
        after.append(np.clip(hwc, 0.0, 1.0).astype(np.float32))
    return before, after


class LiveBoard:
    """Rank 0's writer; every method is a no-op on other ranks."""

    def __init__(self, rank: int, run_uri: str, storage: StorageConfig, step: int = 0) -> None:
        self.enabled = rank == 0
        self.run_uri, self.storage, self.step = run_uri, storage, step
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._tmp = tempfile.TemporaryDirectory(prefix="tensorboard-")
        self.writer = SummaryWriter(log_dir=self._tmp.name)

    def samples(self, before: list[np.ndarray], after: list[np.ndarray], epoch: int) -> None:
        if not self.enabled or not before:
            return
        views = (("samples/before_augmentation", before), ("samples/after_augmentation", after))
        for tag, images in views:
            batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
            self.writer.add_images(tag, batch, epoch)

    def batch_loss(self, loss: float) -> None:
        if self.enabled:
            self.writer.add_scalar("batch/train_loss", loss, self.step)
            self.step += 1

    def epoch(self, metrics: dict[str, Any]) -> None:
        """Per-epoch losses, accuracies and lr, then a copy into RUN_URI."""
        if not self.enabled:
            return
        epoch = metrics["epoch"]
        for split in SPLITS:
            if f"{split}_loss" in metrics:
                self.writer.add_scalar(f"epoch/{split}_loss", metrics[f"{split}_loss"], epoch)
                self.writer.add_scalar(
                    f"epoch/{split}_accuracy", metrics[f"{split}_accuracy"], epoch
                )
        self.writer.add_scalar("epoch/lr", metrics["lr"], epoch)
        self.writer.flush()
        self.upload()

    def upload(self) -> None:
        fs, root = filesystem(tensorboard_uri(self.run_uri), self.storage)
        fs.makedirs(root, exist_ok=True)
        for path in sorted(Path(self._tmp.name).glob("*")):
            fs.put_file(str(path), join(root, path.name))

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.upload()
            self._tmp.cleanup()

"""The checkpoint format of `fit`, in one place: what a checkpoint folder holds, how it
is written and read, and which of a run's checkpoints is the best.

Ray Train keeps a run's checkpoints under RUN_URI/ray/ (`RUN_NAME`). Rank 0 writes one
per epoch (`train.loop`), a folder of two files:

    checkpoint.pt   the training state (torch.save): model (the bare network's state
                    dict), optimizer, optimizer_name, scheduler, epoch (epochs done)
                    and history (every epoch's metrics so far): what --resume needs
    meta.json       what the reports and the export need besides the weights: classes,
                    input_size, activation, mean, std, data_uri, data_run_id,
                    selection_split and the run's config

Every epoch reports `SCORE`, the accuracy on the selection split (val when the data set
has one, else test); Ray Train keeps checkpoints by it, and the best checkpoint (the
reports' and the export's) is the one with the highest score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray.train
import torch
from pyarrow.fs import FSSpecHandler, PyFileSystem
from torchvision.models import mobilenet_v2

from common.storage import StorageConfig, filesystem, join
from train.model import replace_head, use_activation

RUN_NAME = "ray"  # Ray Train's run folder inside RUN_URI
CHECKPOINT_FILE = "checkpoint.pt"
META_FILE = "meta.json"
SCORE = "selection_accuracy"
# Runs written before checkpoints were scored on a selection split scored on test.
LEGACY_SCORE = "test_accuracy"
# Checkpoints written before the activation was recorded trained torchvision's ReLU6.
DEFAULT_ACTIVATION = "relu6"


class CheckpointError(Exception):
    """RUN_URI holds no run, or a run without a checkpoint."""


def run_storage(run_uri: str, storage: StorageConfig) -> tuple[str, Any]:
    """RunConfig's storage_path and filesystem: the job's fsspec settings (endpoint...)
    wrapped for pyarrow, so S3-compatible endpoints work for checkpoints too."""
    fs, path = filesystem(run_uri, storage)
    return path, PyFileSystem(FSSpecHandler(fs))


def save_checkpoint(directory: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    torch.save(state, directory / CHECKPOINT_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))


def load_state(checkpoint: ray.train.Checkpoint | None) -> dict[str, Any] | None:
    """The training state alone (a worker resuming), or None without a checkpoint."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu")


def load_checkpoint(checkpoint: ray.train.Checkpoint) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training state, meta) of a checkpoint."""
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu")
        meta = json.loads((Path(directory) / META_FILE).read_text())
    return state, meta


def model_from_state(
    state: dict[str, Any], num_classes: int, activation: str = DEFAULT_ACTIVATION
) -> torch.nn.Module:
    """The fp32 network of a checkpoint (as trained: see `meta["activation"]`), in eval mode."""
    model = use_activation(mobilenet_v2(weights=None), activation)
    replace_head(model, num_classes, dropout=0.0)
    model.load_state_dict(state["model"])
    return model.eval()


def checkpoint_score(metrics: dict[str, Any]) -> float:
    return float(metrics.get(SCORE, metrics.get(LEGACY_SCORE, 0.0)))


def best_checkpoint(result: ray.train.Result) -> ray.train.Checkpoint | None:
    """The kept checkpoint with the highest selection accuracy (val, else test); the
    latest if none was scored (None when the run has none)."""
    scored = result.best_checkpoints or []
    if not scored:
        return result.checkpoint
    return max(scored, key=lambda pair: checkpoint_score(pair[1]))[0]


def best_checkpoint_of_run(run_uri: str, storage: StorageConfig) -> ray.train.Checkpoint:
    """`best_checkpoint` of the run stored in RUN_URI (a finished or stopped `fit`)."""
    path, fs = run_storage(join(run_uri, RUN_NAME), storage)
    try:
        result = ray.train.Result.from_path(path, storage_filesystem=fs)
    except RuntimeError as exc:
        raise CheckpointError(f"{run_uri}: no training run ({exc})") from exc
    best = best_checkpoint(result)
    if best is None:
        raise CheckpointError(f"{run_uri}: the run has no checkpoint")
    return best

"""The per-worker training loop, in the shape of Ray Train's PyTorch examples.

Each epoch: train on this worker's share of the (balanced, augmented) train split,
sum the counts over all workers, evaluate the whole selection split (val, else test)
on rank 0, and report once with a checkpoint written by rank 0. The label histogram of
the batches every worker saw is part of the metrics, so the sampler can be checked
from outside.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel

from train.config import OptimSection, TrainConfig
from train.model import build_model

CHECKPOINT_FILE = "checkpoint.pt"
META_FILE = "meta.json"
TRAIN, VAL, TEST = "train", "val", "test"
# The per-epoch metric Ray Train keeps checkpoints by: the accuracy on the selection
# split (val when the data has one, else test).
SCORE = "selection_accuracy"


@dataclass
class EpochStats:
    """Sums over every worker's batches of one pass."""

    loss: float
    correct: int
    seen: int
    label_counts: list[int]
    batch_losses: list[float]
    # Gradient norms of this worker's steps, before any clipping: largest and mean.
    grad_norm_max: float = 0.0
    grad_norm_mean: float = 0.0
    # Seconds this worker waited for its next batch (torchvision's references call it
    # "data time"): near zero when the data path keeps up with the step.
    data_wait: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss / self.seen if self.seen else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen if self.seen else 0.0


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimSection
) -> torch.optim.lr_scheduler.LRScheduler:
    """The configured per-epoch schedule ('constant' keeps the seed's fixed lr)."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=cfg.lr_step_epochs, gamma=cfg.lr_step_gamma
        )
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def make_average(model: nn.Module, cfg: OptimSection) -> AveragedModel | None:
    """An exponential moving average of the weights and the batch-norm statistics, as
    torchvision's references keep one (`--model-ema`), or None when `ema_decay` is 0.
    Why: an average sits in a flatter region than the last step's weights, which often
    generalises better to unseen domains (SWA, SWAD); on halmstad's unseen recordings it
    did not (docs/benchmarks.md, section 9). Every worker holds the same weights after
    DDP's all-reduce, so each updates its own copy in step."""
    if cfg.ema_decay <= 0:
        return None
    decay = cfg.ema_decay

    def ema(averaged: torch.Tensor, current: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return decay * averaged + (1.0 - decay) * current

    return AveragedModel(model, avg_fn=ema, use_buffers=True)


def backbone_held(model: nn.Module, epoch: int, cfg: OptimSection) -> list[nn.Parameter]:
    """The backbone's parameters during the first `head_epochs` epochs (only the new
    head trains then), else none."""
    return list(unwrap(model).features.parameters()) if epoch < cfg.head_epochs else []


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a vector over all workers (identity with a single process)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def reduce_stats(
    loss: float, correct: int, seen: int, counts: torch.Tensor, device: torch.device
) -> tuple[float, int, int, list[int]]:
    summed = all_sum([loss, correct, seen, *counts.tolist()], device)
    return summed[0], int(summed[1]), int(summed[2]), [int(c) for c in summed[3:]]


def train_epoch(
    model: nn.Module,
    batches: Any,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    num_classes: int,
    device: torch.device,
    average: AveragedModel | None = None,
    clip_grad_norm: float = 0.0,
    held: Sequence[nn.Parameter] = (),
) -> EpochStats:
    """One pass over this worker's batches. `held`: parameters whose gradients are
    dropped after the all-reduce, so the optimizer and the norm skip them entirely (no
    step, no momentum, no weight decay); dropping gradients instead of switching
    `requires_grad` leaves DistributedDataParallel's hooks as they were built."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    counts = torch.zeros(num_classes, dtype=torch.int64)
    batch_losses: list[float] = []
    norms: list[float] = []
    params = [p for p in model.parameters() if p.requires_grad]  # None grads are skipped
    max_norm = clip_grad_norm if clip_grad_norm > 0 else float("inf")
    data_wait = 0.0
    waited_from = time.perf_counter()
    for batch in batches:
        data_wait += time.perf_counter() - waited_from
        images, labels = batch["image"].to(device), batch["label"].to(device)
        with torch.autocast(device.type, enabled=scaler.is_enabled()):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        for p in held:
            p.grad = None
        scaler.unscale_(optimizer)  # true gradients, for the norm and the clip
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)))
        scaler.step(optimizer)
        scaler.update()
        if average is not None:
            average.update_parameters(unwrap(model))
        batch_losses.append(loss.item())
        loss_sum += loss.item() * len(labels)
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += len(labels)
        counts += torch.bincount(labels.cpu(), minlength=num_classes)
        waited_from = time.perf_counter()
    totals = reduce_stats(loss_sum, correct, seen, counts, device)
    grad_norms = (max(norms), sum(norms) / len(norms)) if norms else (0.0, 0.0)
    return EpochStats(*totals, batch_losses, *grad_norms, data_wait)


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Any, criterion: nn.Module, num_classes: int, device: torch.device
) -> EpochStats:
    """Local evaluation of a whole split (no collectives: rank 0 only)."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for batch in batches:
        images, labels = batch["image"].to(device), batch["label"].to(device)
        logits = model(images)
        loss_sum += criterion(logits, labels).item() * len(labels)
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += len(labels)
        counts += torch.bincount(labels.cpu(), minlength=num_classes)
    return EpochStats(loss_sum, correct, seen, counts.tolist(), [])


def evaluate_on_rank0(
    rank: int,
    model: nn.Module,
    eval_data: Any,
    criterion: nn.Module,
    cfg: TrainConfig,
    classes: list[str],
    device: torch.device,
) -> EpochStats:
    """The evaluation split is not split across workers (Ray Train's split drops rows to
    make shards equal, which would bias the metrics): rank 0 evaluates all of it."""
    if rank != 0:
        return EpochStats(0.0, 0, 0, [0] * len(classes), [])
    batches = eval_data.iter_torch_batches(batch_size=cfg.optim.batch_size)
    return evaluate(model, batches, criterion, len(classes), device)


def save_checkpoint(directory: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    torch.save(state, directory / CHECKPOINT_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))


def load_state(checkpoint: ray.train.Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel, for a portable state dict."""
    return model.module if hasattr(model, "module") else model


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; `config`: cfg (TrainConfig), classes, meta (for reports;
    its `selection_split` names the split evaluated every epoch)."""
    cfg: TrainConfig = config["cfg"]
    classes: list[str] = config["classes"]
    selection = config["meta"]["selection_split"]
    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    torch.manual_seed(cfg.run.seed)
    model, _ = build_model(len(classes), cfg.model)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
    )
    scheduler = make_scheduler(optimizer, cfg.optim)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.scaling.gpu)
    average = make_average(unwrap(model), cfg.optim)
    start_epoch, history = 0, []
    state = load_state(ray.train.get_checkpoint())
    if state is not None:
        restore_weights(state, model, average)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
    rank = ray.train.get_context().get_world_rank()
    train_shard = ray.train.get_dataset_shard(TRAIN)
    eval_shard = ray.train.get_dataset_shard(selection)
    for epoch in range(start_epoch, cfg.optim.epochs):
        started = time.perf_counter()
        train_batches = train_shard.iter_torch_batches(
            batch_size=cfg.optim.batch_size,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer,
        )
        lr = optimizer.param_groups[0]["lr"]
        head_only = backbone_held(model, epoch, cfg.optim)
        train = train_epoch(
            model,
            train_batches,
            criterion,
            optimizer,
            scaler,
            len(classes),
            device,
            average,
            cfg.optim.clip_grad_norm,
            head_only,
        )
        train_seconds = time.perf_counter() - started
        scheduler.step()
        evaluated = unwrap(model) if average is None else average.module
        held = evaluate_on_rank0(rank, evaluated, eval_shard, criterion, cfg, classes, device)
        seconds = time.perf_counter() - started
        metrics = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train.mean_loss,
            "train_accuracy": train.accuracy,
            f"{selection}_loss": held.mean_loss,
            f"{selection}_accuracy": held.accuracy,
            SCORE: held.accuracy,
            "train_images": train.seen,
            "train_label_counts": train.label_counts,
            "seconds": seconds,
            "train_seconds": train_seconds,
            # Training alone (data path included, evaluation excluded): what the
            # throughput benchmark compares against synthetic tensors.
            "images_per_second": train.seen / train_seconds if train_seconds else 0.0,
            "data_wait_seconds_rank0": train.data_wait,
            "grad_norm_max_rank0": train.grad_norm_max,
            "grad_norm_mean_rank0": train.grad_norm_mean,
            "backbone_held": bool(head_only),
            # Shows where rank 0 ran, and that a restarted worker group continued the run.
            "rank0_process": f"{socket.gethostname()}:{os.getpid()}",
        }
        history.append({**metrics, "batch_losses_rank0": train.batch_losses})
        report_epoch(rank, metrics, model, average, optimizer, scheduler, history, config["meta"])
        if rank == 0:
            print(
                f"epoch {epoch + 1}/{cfg.optim.epochs}  train loss {train.mean_loss:.4f} "
                f"acc {train.accuracy:.3f}  {selection} loss {held.mean_loss:.4f} "
                f"acc {held.accuracy:.3f}  {metrics['images_per_second']:.1f} img/s "
                f"(waited {train.data_wait:.1f} of {train_seconds:.1f} s for data)",
                flush=True,
            )


def weights_state(model: nn.Module, average: AveragedModel | None) -> dict[str, Any]:
    """`model`: the weights every reader of a checkpoint evaluates (reports, export),
    the average when there is one; the trained weights and the average's update count
    are kept beside it for `--resume`."""
    if average is None:
        return {"model": unwrap(model).state_dict()}
    return {
        "model": average.module.state_dict(),
        "trained_model": unwrap(model).state_dict(),
        "average_updates": int(average.n_averaged),
    }


def restore_weights(state: dict[str, Any], model: nn.Module, average: AveragedModel | None) -> None:
    """The inverse of `weights_state`; a run resumed with an average it did not keep
    starts the average from the trained weights."""
    unwrap(model).load_state_dict(state.get("trained_model", state["model"]))
    if average is not None and "trained_model" in state:
        average.module.load_state_dict(state["model"])
        average.n_averaged.fill_(state["average_updates"])


def report_epoch(
    rank: int,
    metrics: dict[str, Any],
    model: nn.Module,
    average: AveragedModel | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: list[dict[str, Any]],
    meta: dict[str, Any],
) -> None:
    """Every worker reports (it is a barrier); only rank 0 writes the checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            state = {
                **weights_state(model, average),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": metrics["epoch"],
                "history": history,
            }
            save_checkpoint(Path(tmp), state, meta)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)

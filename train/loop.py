"""The per-worker training loop, in the shape of Ray Train's PyTorch examples.

Each epoch: train on this worker's share of the (balanced, augmented) train split,
sum the counts over all workers, evaluate the whole selection split (val, else test)
on rank 0, and report once with a checkpoint written by rank 0. The label histogram of
the batches every worker saw is part of the metrics, so the sampler can be checked
from outside.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from common.dataset import TRAIN
from train.checkpoint import SCORE, load_state, save_checkpoint
from train.config import OptimSection, TrainConfig
from train.guards import STOP_REASON, Beat, divergence, write_stop
from train.live import LiveBoard
from train.model import build_model
from train.optim import make_optimizer, make_scheduler, scaled_lr, use_flag_lr


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
    # Steps skipped because the loss or the gradient was not finite (all workers).
    nonfinite_steps: int = 0

    @property
    def mean_loss(self) -> float:
        return self.loss / self.seen if self.seen else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen if self.seen else 0.0


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


def train_epoch(
    model: nn.Module,
    batches: Any,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    num_classes: int,
    device: torch.device,
    clip_grad_norm: float = 0.0,
    held: Sequence[nn.Parameter] = (),
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_batch: Callable[[float], None] | None = None,
) -> EpochStats:
    """One pass over this worker's batches. `held`: parameters whose gradients are
    dropped after the all-reduce, so the optimizer and the norm skip them entirely (no
    step, no momentum, no weight decay); dropping gradients instead of switching
    `requires_grad` leaves DistributedDataParallel's hooks as they were built. A step
    whose gradient norm is not finite is skipped (the norm is taken after the
    all-reduce, so every worker skips the same steps and the weights stay equal); the
    epoch counts them and the run stops after it. `on_batch(loss)` follows each step."""
    model.train()
    loss_sum, correct, seen, skipped = 0.0, 0, 0, 0
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
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        value = loss.item()
        if scaler.is_enabled():  # the scaler skips overflowing steps itself
            skipped += not math.isfinite(value)
            scaler.step(optimizer)
        elif math.isfinite(norm):
            scaler.step(optimizer)
        else:
            skipped += 1
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        if math.isfinite(norm):
            norms.append(norm)
        batch_losses.append(value)
        loss_sum += value * len(labels)
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += len(labels)
        counts += torch.bincount(labels.cpu(), minlength=num_classes)
        if on_batch is not None:
            on_batch(value)
        waited_from = time.perf_counter()
    summed = all_sum([loss_sum, correct, seen, skipped, *counts.tolist()], device)
    grad_norms = (max(norms), sum(norms) / len(norms)) if norms else (0.0, 0.0)
    return EpochStats(
        summed[0],
        int(summed[1]),
        int(summed[2]),
        [int(c) for c in summed[4:]],
        batch_losses,
        *grad_norms,
        data_wait,
        int(summed[3]),
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Any,
    criterion: nn.Module,
    num_classes: int,
    device: torch.device,
    on_batch: Callable[[], None] | None = None,
) -> EpochStats:
    """Local evaluation of a whole split (no collectives: rank 0 only)."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for batch in batches:
        if on_batch is not None:
            on_batch()
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
    on_batch: Callable[[], None] | None = None,
) -> EpochStats:
    """The evaluation split is not split across workers (Ray Train's split drops rows to
    make shards equal, which would bias the metrics): rank 0 evaluates all of it."""
    if rank != 0:
        return EpochStats(0.0, 0, 0, [0] * len(classes), [])
    batches = eval_data.iter_torch_batches(batch_size=cfg.optim.batch_size)
    return evaluate(model, batches, criterion, len(classes), device, on_batch)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel, for a portable state dict."""
    return model.module if hasattr(model, "module") else model


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; `config`: cfg (TrainConfig), classes, meta (for reports;
    its `selection_split` names the split evaluated every epoch), steps_per_epoch (the
    driver's estimate, for the per-step schedule), beacon (the stall watch's actor),
    sample ([(jpeg, label)]: a batch mixing every class, for TensorBoard)."""
    cfg: TrainConfig = config["cfg"]
    classes: list[str] = config["classes"]
    selection = config["meta"]["selection_split"]
    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    torch.manual_seed(cfg.run.seed)
    model, _ = build_model(len(classes), cfg.model)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    lr = scaled_lr(cfg.optim, context.get_world_size())
    optimizer = make_optimizer(model, cfg.optim, lr)
    scheduler = make_scheduler(optimizer, cfg.optim, config["steps_per_epoch"])
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.scaling.gpu)
    start_epoch, history = 0, []
    state = load_state(ray.train.get_checkpoint())
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        if state.get("optimizer_name") == cfg.optim.optimizer:  # else: a fresh optimizer
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        use_flag_lr(optimizer, scheduler, lr)
        start_epoch, history = state["epoch"], state["history"]
    rank = context.get_world_rank()
    beat = Beat(config.get("beacon"))
    board = LiveBoard(
        rank, cfg.run_uri, cfg.storage, sum(len(h["batch_losses_rank0"]) for h in history)
    )
    if start_epoch == 0 and rank == 0:
        board.samples(*config.get("sample_views", ([], [])), epoch=0)
    train_shard = ray.train.get_dataset_shard(TRAIN)
    eval_shard = ray.train.get_dataset_shard(selection)

    def on_train_batch(loss: float) -> None:
        beat()
        board.batch_loss(loss)

    for epoch in range(start_epoch, cfg.optim.epochs):
        started = time.perf_counter()
        train_batches = train_shard.iter_torch_batches(
            batch_size=cfg.optim.batch_size,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer,
        )
        epoch_lr = optimizer.param_groups[0]["lr"]
        head_only = backbone_held(model, epoch, cfg.optim)
        train = train_epoch(
            model,
            train_batches,
            criterion,
            optimizer,
            scaler,
            len(classes),
            device,
            cfg.optim.clip_grad_norm,
            head_only,
            scheduler,
            on_train_batch,
        )
        train_seconds = time.perf_counter() - started
        held = evaluate_on_rank0(
            rank, unwrap(model), eval_shard, criterion, cfg, classes, device, beat
        )
        seconds = time.perf_counter() - started
        metrics = {
            "epoch": epoch + 1,
            "lr": epoch_lr,
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
            "nonfinite_steps": train.nonfinite_steps,
            "backbone_held": bool(head_only),
            # Shows where rank 0 ran, and that a restarted worker group continued the run.
            "rank0_process": f"{socket.gethostname()}:{os.getpid()}",
        }
        # Every worker sees the same summed figures, so all of them stop together.
        stop = divergence([*history, metrics], cfg.optim.divergence_epochs, lr)
        if stop:
            metrics[STOP_REASON] = stop
            if rank == 0:
                write_stop(cfg.run_uri, cfg.storage, stop, epoch + 1)
        else:
            history.append({**metrics, "batch_losses_rank0": train.batch_losses})
        board.epoch(metrics)
        if rank == 0:
            print(progress_line(metrics, cfg.optim.epochs, selection, held), flush=True)
        report_epoch(rank, metrics, model, optimizer, scheduler, history, config["meta"], stop)
        if stop:
            break
    board.close()


def progress_line(metrics: dict[str, Any], epochs: int, selection: str, held: EpochStats) -> str:
    return (
        f"epoch {metrics['epoch']}/{epochs}  lr {metrics['lr']:.2e}  train loss "
        f"{metrics['train_loss']:.4f} acc {metrics['train_accuracy']:.3f}  {selection} loss "
        f"{held.mean_loss:.4f} acc {held.accuracy:.3f}  {metrics['images_per_second']:.1f} "
        f"img/s (waited {metrics['data_wait_seconds_rank0']:.1f} of "
        f"{metrics['train_seconds']:.1f} s for data)"
    )


def report_epoch(
    rank: int,
    metrics: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: list[dict[str, Any]],
    meta: dict[str, Any],
    stop: str | None = None,
) -> None:
    """Every worker reports (it is a barrier); only rank 0 writes the checkpoint, and
    not for an epoch that stopped the run (its weights are the diverged ones: the last
    checkpoint stays the one `--resume` continues from)."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0 and not stop:
            state = {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "optimizer_name": meta["config"]["optim"]["optimizer"],
                "scheduler": scheduler.state_dict(),
                "epoch": metrics["epoch"],
                "history": history,
            }
            save_checkpoint(Path(tmp), state, meta)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)

"""The optimizer and the learning-rate schedule of `fit`: AdamW (or SGD), a linear
warm-up then the schedule, stepped per batch, and --lr scaled with the global batch."""

from __future__ import annotations

import math

import torch
from torch import nn

from train.config import OptimSection

REFERENCE_BATCH = 32  # --lr is the learning rate of a global batch of this many images


def scaled_lr(cfg: OptimSection, workers: int) -> float:
    """--lr for the global batch (batch size x workers): linear scaling for SGD (Goyal
    et al. 2017), square-root scaling for AdamW (Malladi et al. 2022)."""
    ratio = cfg.batch_size * workers / REFERENCE_BATCH
    return cfg.lr * (math.sqrt(ratio) if cfg.optimizer == "adamw" else ratio)


def make_optimizer(model: nn.Module, cfg: OptimSection, lr: float) -> torch.optim.Optimizer:
    """AdamW or SGD; biases and batch-norm parameters get no weight decay (the usual
    practice, as torchvision's references' --norm-weight-decay 0)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def lr_factor(step: int, steps_per_epoch: int, cfg: OptimSection) -> float:
    """The learning rate of `step` as a share of the peak: a linear warm-up over
    `warmup_epochs`, then the schedule over the remaining steps."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.lr_schedule == "cosine":
        rest = max(1, cfg.epochs * steps_per_epoch - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / rest)))
    return 1.0


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimSection, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule (`lr_factor`); `steps_per_epoch` is the driver's estimate."""
    steps = max(1, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, cfg))


def use_flag_lr(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float
) -> None:
    """After a resume: the flags' peak learning rate at the checkpoint's place in the
    schedule, so a diverged run can continue from its last checkpoint with a lower --lr."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, lr * factor

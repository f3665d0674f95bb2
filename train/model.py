"""MobileNetV2 from torchvision with a new head for the data set's classes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from train.config import DEFAULT_WEIGHTS, NO_WEIGHTS, ModelSection

log = logging.getLogger(__name__)
BACKBONE_PREFIX = "features."


@dataclass
class WeightsReport:
    """What a local state dict did and did not provide, so a wrong file is noticed."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def load_backbone(model: nn.Module, path: str) -> WeightsReport:
    """Load the `features.*` entries of a local state dict (a full or a backbone-only
    one); the head is always new, so classifier entries are ignored, not reported."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = {k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    result = model.load_state_dict(backbone, strict=False)
    missing = [k for k in result.missing_keys if k.startswith(BACKBONE_PREFIX)]
    unexpected = [k for k in state if not k.startswith((BACKBONE_PREFIX, "classifier."))]
    report = WeightsReport(path, missing, [*result.unexpected_keys, *unexpected])
    if report.missing or report.unexpected:
        log.warning(
            "weights %s: %d backbone keys missing %s, %d unexpected %s",
            path,
            len(report.missing),
            report.missing[:5],
            len(report.unexpected),
            report.unexpected[:5],
        )
    return report


def build_model(num_classes: int, cfg: ModelSection) -> tuple[nn.Module, WeightsReport]:
    """The network with its initial weights and a freshly initialised head."""
    if cfg.weights == DEFAULT_WEIGHTS:
        model = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V2)
        report = WeightsReport(str(MobileNet_V2_Weights.IMAGENET1K_V2))
    elif cfg.weights == NO_WEIGHTS:
        model, report = mobilenet_v2(weights=None), WeightsReport(NO_WEIGHTS)
    else:
        model = mobilenet_v2(weights=None)
        report = load_backbone(model, cfg.weights)
    replace_head(model, num_classes, cfg.dropout)
    if cfg.freeze_backbone:
        model.features.requires_grad_(False)
    return model, report


def replace_head(model: nn.Module, num_classes: int, dropout: float) -> None:
    """torchvision's classifier layout (Dropout, Linear) sized for our classes."""
    model.classifier = nn.Sequential(
        nn.Dropout(p=dropout), nn.Linear(model.last_channel, num_classes)
    )

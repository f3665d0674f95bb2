"""MobileNetV2 from torchvision with a new head for the data set's classes."""

from __future__ import annotations

from torch import nn

from common.backbone import WeightsReport, mobilenet_v2_backbone
from train.config import ModelSection


def build_model(num_classes: int, cfg: ModelSection) -> tuple[nn.Module, WeightsReport]:
    """The network with its initial weights and a freshly initialised head."""
    model, report = mobilenet_v2_backbone(cfg.weights)
    replace_head(model, num_classes, cfg.dropout)
    if cfg.freeze_backbone:
        model.features.requires_grad_(False)
    return model, report


def replace_head(model: nn.Module, num_classes: int, dropout: float) -> None:
    """torchvision's classifier layout (Dropout, Linear) sized for our classes."""
    model.classifier = nn.Sequential(
        nn.Dropout(p=dropout), nn.Linear(model.last_channel, num_classes)
    )

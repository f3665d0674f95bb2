"""MobileNetV2 from torchvision with a new head for the data set's classes."""

from __future__ import annotations

from torch import nn

from common.backbone import WeightsReport, mobilenet_v2_backbone
from train.config import ModelSection


def build_model(num_classes: int, cfg: ModelSection) -> tuple[nn.Module, WeightsReport]:
    """The network with its initial weights and a freshly initialised head."""
    model, report = mobilenet_v2_backbone(cfg.weights)
    replace_head(model, num_classes, cfg.dropout)
    use_activation(model, cfg.activation)
    if cfg.freeze_backbone:
        model.features.requires_grad_(False)
    return model, report


def replace_head(model: nn.Module, num_classes: int, dropout: float) -> None:
    """torchvision's classifier layout (Dropout, Linear) sized for our classes."""
    model.classifier = nn.Sequential(
        nn.Dropout(p=dropout), nn.Linear(model.last_channel, num_classes)
    )


def use_activation(model: nn.Module, activation: str) -> nn.Module:
    """Swap torchvision's ReLU6 for ReLU in place when asked: the quantizable network
    fuses conv-bn-ReLU, so a model trained with ReLU exports without a swap."""
    if activation == "relu":
        for parent in model.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.ReLU6):
                    setattr(parent, name, nn.ReLU(inplace=True))
    return model

"""The MobileNetV2 ImageNet backbone both jobs start from, and how its weights are found.

Why shared: training fine-tunes this network and the cleaning job embeds images with
it to verify near duplicates. Both accept the same weights setting, so one lake and
one offline cluster need one weights file, loaded by one function.

Weights setting: 'default' = torchvision's IMAGENET1K_V2 (downloaded once into the
torch cache, so it needs the internet the first time), 'none' = random init, or the
path of a local state dict (a full one or a backbone-only `features.*` one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads lazily: the CLIs import this for --help
    from torch import nn

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "default"
NO_WEIGHTS = "none"
BACKBONE_PREFIX = "features."


class WeightsUnavailable(RuntimeError):
    """The weights setting names weights this machine cannot load."""


@dataclass
class WeightsReport:
    """What a local state dict did and did not provide, so a wrong file is noticed."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def warn(self) -> None:
        """Log what the file lacked or had extra, if anything (also where the weights
        were loaded in a Ray task: the driver logs the report it got back)."""
        if self.missing or self.unexpected:
            log.warning(
                "weights %s: %d backbone keys missing %s, %d unexpected %s",
                self.source,
                len(self.missing),
                self.missing[:5],
                len(self.unexpected),
                self.unexpected[:5],
            )


def load_backbone(model: nn.Module, path: str) -> WeightsReport:
    """Load the `features.*` entries of a local state dict (a full or a backbone-only
    one); the head is always new, so classifier entries are ignored, not reported."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = {k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    result = model.load_state_dict(backbone, strict=False)
    missing = [k for k in result.missing_keys if k.startswith(BACKBONE_PREFIX)]
    unexpected = [k for k in state if not k.startswith((BACKBONE_PREFIX, "classifier."))]
    report = WeightsReport(path, missing, [*result.unexpected_keys, *unexpected])
    report.warn()
    return report


def mobilenet_v2_backbone(weights: str) -> tuple[nn.Module, WeightsReport]:
    """torchvision's MobileNetV2 with the initial weights `weights` names.

    Raises WeightsUnavailable with what to do instead when they cannot be loaded (no
    internet for 'default', a missing file), rather than silently running on others.
    """
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    try:
        if weights == DEFAULT_WEIGHTS:
            model = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V2)
            return model, WeightsReport(str(MobileNet_V2_Weights.IMAGENET1K_V2))
        if weights == NO_WEIGHTS:
            return mobilenet_v2(weights=None), WeightsReport(NO_WEIGHTS)
        model = mobilenet_v2(weights=None)
        return model, load_backbone(model, weights)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise WeightsUnavailable(
            f"cannot load MobileNetV2 weights {weights!r} ({type(exc).__name__}: {exc}); "
            f"'{DEFAULT_WEIGHTS}' downloads torchvision's IMAGENET1K_V2 once into the torch "
            "cache, so offline pass a local state-dict path instead"
        ) from exc

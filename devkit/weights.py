"""Which MobileNetV2 weights the tests, benchmarks and demo give the cleaning job.

The product's default ('default': torchvision's IMAGENET1K_V2) is downloaded on first
use, and the job stops with an error when it cannot be. Development machines here are
offline but hold a backbone-only state dict next to the checkout; a fresh clone has
neither, and then runs with 'none' (no embedding verification: pHash alone).
"""

from __future__ import annotations

from pathlib import Path

from common.backbone import NO_WEIGHTS

SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "weights"
    / "mobilenet_v2_imagenet_features.pth"
)


def local_embedding_weights() -> str:
    """The shared state dict's path when this machine has it, else 'none'."""
    return str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else NO_WEIGHTS


def embedding_args() -> list[str]:
    """The `clean` flags that pick `local_embedding_weights()`."""
    return ["--embedding-weights", local_embedding_weights()]

"""The embedding network of a cleaning run: built once, in a Ray task, and shared
through the object store with the normalise tasks.

Why not `pipeline.embed.embedder` in every process: building MobileNetV2 imports
torchvision, which costs ~160 MiB per process (torchvision.ops pulls in torch._dynamo,
sympy and triton), on top of ~470 MiB for torch itself; the driver only has to know
that the weights load, and a normalise worker only has to run the network. So one task
whose process exits after it (`max_calls=1`, taking torchvision with it) loads the
weights, folds the network (`pipeline.embed.for_inference`) and traces it with torch.fx
into a GraphModule of plain torch.nn layers: the same layers, called in the same order,
so the same embeddings to the bit (tests/test_dedup.py). The task returns it pickled:
the driver puts those bytes in the object store without importing torch, and each
worker unpickles them once, with torch but without torchvision.

A local state dict (what offline clusters and the benchmarks use) needs no torchvision
at all: the same layers under the same names are built here (`plain_mobilenet_v2`), in
a worker of the normalise tasks' kind that stays one, so no process starts and exits
for the build (~5 CPU-s: Python, Ray, torch and torchvision imported for one task).
Only 'default' (torchvision's download) and 'none' (its random init), or a file these
layers cannot load, take the torchvision task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ray

from common.backbone import (
    DEFAULT_WEIGHTS,
    NO_WEIGHTS,
    WeightsReport,
    WeightsUnavailable,
    load_backbone,
    mobilenet_v2_backbone,
)
from pipeline.embed import Embedder, for_inference

if TYPE_CHECKING:
    from torch import nn

# With the embedding on, the normalise tasks run in worker processes of their own (a
# runtime_env of their own): those hold torch and the network (~600 MiB), and Ray would
# otherwise hand them the later stages' tasks too, whose arrays then come on top. Idle
# after the stage, they are stopped by Ray (it keeps at most num_cpus idle workers).
EMBEDDING_WORKERS = {"env_vars": {"LAKECLEAN_WORKERS": "normalise-embedding"}}
# The reference this worker process last deserialised, and its network.
_LOADED: dict[str, Embedder] = {}


@ray.remote(num_cpus=1, max_calls=1)
def _build(weights: str) -> tuple[WeightsReport | str, bytes | None]:
    """(what loading reported, or why it failed; the traced network, pickled)."""
    try:
        model, report = mobilenet_v2_backbone(weights)
    except WeightsUnavailable as exc:
        return str(exc), None
    return report, _traced(model)


@ray.remote(num_cpus=1)
def _build_plain(weights: str) -> tuple[WeightsReport | None, bytes | None]:
    """(what loading reported; the network pickled as `_build` pickles it) from a local
    state dict, without torchvision; (None, None) where these layers cannot load it."""
    model = plain_mobilenet_v2()
    try:
        report = load_backbone(model, weights)
    except (OSError, RuntimeError, ValueError):  # missing file, other shapes, not a state dict
        return None, None
    return report, _traced(model)


def _traced(model: nn.Module) -> bytes:
    """The folded `features`, traced with torch.fx into plain torch.nn layers, as bytes:
    the driver holds them without torch (`shared_features`)."""
    from torch.fx import symbolic_trace

    return ray.cloudpickle.dumps(symbolic_trace(for_inference(model.features.eval())))


def plain_mobilenet_v2() -> nn.Module:
    """torchvision's MobileNetV2 `features` (width 1.0), its layers under its names (the
    state dict's `features.*` keys), built from torch.nn alone: an object with the same
    modules, run in the same order, as `symbolic_trace` makes of torchvision's."""
    from torch import nn

    residual_block = _inverted_residual_class()

    def conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Module:
        """torchvision's Conv2dNormActivation: convolution, batch norm, ReLU6."""
        padding = (kernel - 1) // 2
        return nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )

    layers = [conv(3, 32, stride=2)]
    channels = 32
    for expand, out, repeats, first_stride in MOBILENET_V2_BLOCKS:
        for i in range(repeats):
            hidden = channels * expand
            stride = first_stride if i == 0 else 1
            block = [conv(channels, hidden, kernel=1)] if expand != 1 else []
            block += [
                conv(hidden, hidden, stride=stride, groups=hidden),
                nn.Conv2d(hidden, out, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out),
            ]
            keeps_shape = stride == 1 and channels == out
            layers.append(residual_block(nn.Sequential(*block), keeps_shape))
            channels = out
    layers.append(conv(channels, 1280, kernel=1))
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    return model


# torchvision's MobileNetV2 settings: expansion, output channels, repeats, first stride.
MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _inverted_residual_class() -> type:
    """torchvision's InvertedResidual without torchvision: `conv`, plus the input where
    the block keeps its shape (defined on first use: torch loads lazily; the traced
    network holds none of it, only its layers)."""
    from torch import nn

    class _InvertedResidual(nn.Module):
        def __init__(self, conv: nn.Module, residual: bool) -> None:
            super().__init__()
            self.conv = conv
            self.residual = residual

        def forward(self, x):  # noqa: ANN001, ANN202 - a torch.Tensor
            return x + self.conv(x) if self.residual else self.conv(x)

    return _InvertedResidual


def shared_features(weights: str) -> ray.ObjectRef:
    """The traced network for `weights`, pickled, in the object store. Raises
    common.backbone.WeightsUnavailable (before any file is processed) when the weights
    cannot be loaded; a state dict with missing or unexpected keys is logged here.

    The driver puts the bytes itself: the object then lives on the driver's node, not
    on the worker node that built it. A task's result lost with its node is rebuilt by
    Ray re-running the task, but a task's worker waiting for the network while the
    rebuild waited for a CPU hung a run whose node died (tests/test_cluster.py)."""
    if weights not in (DEFAULT_WEIGHTS, NO_WEIGHTS):
        # In a worker of the normalise tasks' kind, which runs them next.
        report, network = ray.get(
            _build_plain.options(runtime_env=EMBEDDING_WORKERS).remote(weights)
        )
        if report is not None:
            report.warn()
            return ray.put(network)
    # A fresh process of the normalise tasks' kind, which exits after this task; for a
    # file the plain layers could not load, it also says why.
    report, network = ray.get(_build.options(runtime_env=EMBEDDING_WORKERS).remote(weights))
    if isinstance(report, str):
        raise WeightsUnavailable(report)
    report.warn()
    return ray.put(network)


def load_features(features: ray.ObjectRef) -> nn.Module:
    """The network `shared_features` stored, unpickled (imports torch, not torchvision)."""
    return ray.cloudpickle.loads(ray.get(features))


def shared_embedder(features: ray.ObjectRef) -> Embedder:
    """The network `shared_features` stored, deserialised once per worker process."""
    key = features.hex()
    if key not in _LOADED:
        _LOADED.clear()  # one run's network at a time
        _LOADED[key] = Embedder(load_features(features))
    return _LOADED[key]

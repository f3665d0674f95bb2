"""The embedding network of a cleaning run: built once, in a Ray task, and shared
through the object store with the normalise tasks.

Why not `pipeline.embed.embedder` in every process: building MobileNetV2 imports
torchvision, which costs ~160 MiB per process (torchvision.ops pulls in torch._dynamo,
sympy and triton), on top of ~470 MiB for torch itself; the driver only has to know
that the weights load, and a normalise worker only has to run the network. So one task
whose process exits after it (`max_calls=1`, taking torchvision with it) loads the
weights, folds the network (`pipeline.embed.for_inference`) and traces it with torch.fx
into a GraphModule of plain torch.nn layers: the same layers, called in the same order,
so the same embeddings to the bit (tests/test_dedup.py). The driver holds only the
object's reference and never imports torch; each worker deserialises it once, with
torch but without torchvision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ray

from common.backbone import WeightsReport, WeightsUnavailable, mobilenet_v2_backbone
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


@ray.remote(num_cpus=1, max_calls=1, num_returns=2)
def _build(weights: str) -> tuple[WeightsReport | str, nn.Module | None]:
    """(what loading reported, or why it failed; the traced network)."""
    try:
        model, report = mobilenet_v2_backbone(weights)
    except WeightsUnavailable as exc:
        return str(exc), None
    from torch.fx import symbolic_trace

    return report, symbolic_trace(for_inference(model.features.eval()))


def shared_features(weights: str) -> ray.ObjectRef:
    """The traced network for `weights`, in the object store. Raises
    common.backbone.WeightsUnavailable (before any file is processed) when the weights
    cannot be loaded; a state dict with missing or unexpected keys is logged here."""
    # A fresh process of the normalise tasks' kind, which exits after this task.
    report_ref, features = _build.options(runtime_env=EMBEDDING_WORKERS).remote(weights)
    report = ray.get(report_ref)
    if isinstance(report, str):
        raise WeightsUnavailable(report)
    report.warn()
    return features


def shared_embedder(features: ray.ObjectRef) -> Embedder:
    """The network `shared_features` stored, deserialised once per worker process."""
    key = features.hex()
    if key not in _LOADED:
        _LOADED.clear()  # one run's network at a time
        _LOADED[key] = Embedder(ray.get(features))
    return _LOADED[key]

"""The embedding as a Ray Data stage of its own, where GPU nodes exist
(`execution.embedding_device` 'gpu'; 'cpu-actors': the same stage on CPUs).

By default each normalise task embeds its own rows on its CPU (`pipeline.normalize`).
On a cluster with GPU nodes the network runs far faster there, so with this stage the
normalise tasks stop before the embedding: their rows leave unjudged, carrying the
embedding input (the image squashed to `embedding_side`, raw uint8) and their junk
scores at full precision. A pool of actors, each holding the network on its device,
then embeds a batch, sets the content score from the embeddings, gives every row its
junk verdict and fills the embedding column: the same functions as the normalise task
(`pipeline.normalize.judged_table`), so the same rows come out of the same sink.

The content score needs the embedding, and the verdict needs the content score: that
is why the whole verdict moves into this stage. The normalise tasks then import no
torch at all (~600 MiB less per normalise worker); only the actors do.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray

from pipeline.config import EMBED_ON_GPU, CleanConfig
from pipeline.embed import Embedder
from pipeline.embed_task import load_features
from pipeline.normalize import EMBEDDING_INPUT, judged_table, score_columns
from pipeline.sink import StageFailed
from pipeline.tables import work_schema

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

CHANNELS = 3  # embedding inputs are RGB


def pending_schema(cfg: CleanConfig) -> pa.Schema:
    """The work schema with the junk scores as float64 and the embedding input as bytes:
    the verdict compares the scores against their thresholds as the normalise task
    computed them (float32 would move a score sitting on a threshold)."""
    scores = score_columns(cfg)
    fields = [
        pa.field(f.name, pa.float64()) if f.name in scores else f for f in work_schema(scores)
    ]
    return pa.schema([*fields, pa.field(EMBEDDING_INPUT, pa.binary())])


def pending_table(rows: list[dict[str, Any]], cfg: CleanConfig) -> pa.Table:
    """A normalise task's rows before their verdict, embedding inputs as raw bytes."""
    for row in rows:
        array = row.get(EMBEDDING_INPUT)
        if array is not None:
            row[EMBEDDING_INPUT] = array.tobytes()
    return pa.Table.from_pylist(rows, schema=pending_schema(cfg))


def pending_rows(table: pa.Table, cfg: CleanConfig) -> list[dict[str, Any]]:
    """`pending_table` back into the rows the normalise task had."""
    side = cfg.dedup.embedding_side
    rows = table.to_pylist()
    for row in rows:
        data = row[EMBEDDING_INPUT]
        if data is None:
            del row[EMBEDDING_INPUT]
        else:
            row[EMBEDDING_INPUT] = np.frombuffer(data, np.uint8).reshape(side, side, CHANNELS)
    return rows


class EmbedBatches:
    """Ray Data actor: pending rows in, judged work rows with embeddings out (same count).
    The network is deserialised and moved to `device` once, when the actor starts."""

    def __init__(self, cfg: CleanConfig, features: ray.ObjectRef | nn.Module, device: str):
        import torch

        if isinstance(features, ray.ObjectRef):
            features = load_features(features)
        if device == "cuda":
            # TF32 convolutions (on by default on Ampere and later) keep 10 bits of
            # mantissa: embeddings further from the CPU ones that the kept index and
            # the junk classifier were computed with. Full float32 costs little here.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.cfg = cfg
        self.embed = Embedder(features.to(device), device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return judged_table(pending_rows(batch, self.cfg), self.cfg, self.embed)


def embedding_stage(
    dataset: ray.data.Dataset, cfg: CleanConfig, features: ray.ObjectRef
) -> ray.data.Dataset:
    """`dataset` (pending rows) through the actor pool. Batches of `files_per_task` rows:
    what one normalise task embeds in the default path, and whole blocks as they come."""
    run = cfg.execution
    gpu = run.embedding_device == EMBED_ON_GPU
    device = "cuda" if gpu else "cpu"
    return dataset.map_batches(
        EmbedBatches,
        fn_constructor_kwargs={"cfg": cfg, "features": features, "device": device},
        batch_format="pyarrow",
        batch_size=max(1, run.files_per_task),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=run.embedding_actors),
        # One CPU each (one torch thread, as in a normalise task): never fused with the
        # normalise tasks, whose remote args differ.
        num_cpus=1,
        num_gpus=run.embedding_gpus_per_actor if gpu else None,
    )


def reachable_gpus() -> tuple[float, float | None]:
    """(GPUs in the cluster now, GPUs its autoscaler may add: None when it says nothing)."""
    now = float(ray.cluster_resources().get("GPU", 0))
    try:  # what Ray Data itself reads to plan for an autoscaling cluster
        limits = ray._private.state.state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: unknown is an answer too
        limits = None
    return now, None if limits is None else float(limits.get("GPU", 0))


def require_gpus(cfg: CleanConfig) -> None:
    """Stop (StageFailed, exit 2) before any file is read when no embedding actor could
    ever get its GPUs: Ray Data would wait for them forever. A cluster whose autoscaler
    may add GPU nodes, or that does not say, is waited for."""
    run = cfg.execution
    if run.embedding_device != EMBED_ON_GPU:
        return
    need = run.embedding_gpus_per_actor
    now, most = reachable_gpus()
    if now >= need:
        return
    if most is not None and most >= need:
        log.info("the embedding stage waits for the autoscaler to start a GPU node")
        return
    joined = run.ray_address or os.environ.get("RAY_ADDRESS")
    if most is None and joined:
        log.warning("no GPU in the cluster yet: the embedding stage waits for one")
        return
    raise StageFailed(
        f"--embedding-device gpu: each embedding actor needs {need:g} GPU, and this Ray "
        f"has {now:g}{'' if most is None else f' (its autoscaler: at most {most:g})'}; "
        "run on a cluster with GPU nodes, or use --embedding-device cpu"
    )

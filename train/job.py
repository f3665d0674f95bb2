"""`fit`: read the cleaning job's manifest, build the Ray datasets, run the TorchTrainer,
then write the reports into RUN_URI."""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.train import (
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from common import logs
from common.backbone import DEFAULT_WEIGHTS, NO_WEIGHTS
from common.config import to_dict
from common.dataset import MANIFEST, TEST, TRAIN, VAL, OutputError, read_manifest, split_uris
from common.ray_runtime import ensure_ray
from common.storage import StorageConfig, filesystem, join
from train import data
from train.checkpoint import RUN_NAME, SCORE, best_checkpoint, run_storage
from train.config import TrainConfig, validate
from train.guards import StallWatch, read_stop, start_beacon
from train.live import sample_views
from train.loop import train_loop_per_worker
from train.presets import eval_transform
from train.resources import ResourceError, cluster_nodes, plan_worker_cpus

log = logging.getLogger(__name__)


class FitError(Exception):
    """The job as a whole cannot run: one-line message, exit status 2."""


@dataclass
class FitResult:
    run_uri: str
    metrics: dict[str, Any]
    report: dict[str, Any]


def run_exists(run_uri: str, storage: StorageConfig) -> bool:
    fs, path = filesystem(join(run_uri, RUN_NAME), storage)
    return fs.exists(path)


def check_run_state(cfg: TrainConfig) -> None:
    """A new run never mixes into an old one; --resume needs one to continue."""
    exists = run_exists(cfg.run_uri, cfg.storage)
    if exists and not cfg.run.resume:
        raise FitError(f"{cfg.run_uri} already holds a run: pass --resume or another RUN_URI")
    if cfg.run.resume and not exists:
        raise FitError(f"--resume: no run in {cfg.run_uri} to continue")


def check_settings(cfg: TrainConfig) -> None:
    """Every setting in its range and the rules between them (`train.config.validate`)."""
    try:
        validate(cfg)
    except ValueError as err:
        raise FitError(f"bad configuration: {err}") from err


@dataclass
class DataSetInfo:
    """What the driver learns about the data set before Ray starts."""

    manifest: dict[str, Any]
    counts: dict[int, int]  # train rows per label
    sample: list[tuple[bytes, int]]  # a train batch mixing every class, for the figures


def read_dataset_manifest(cfg: TrainConfig) -> dict[str, Any]:
    """The published manifest, checked for what training reads from it."""
    try:
        manifest = read_manifest(cfg.data_uri, cfg.storage)
    except (ValueError, OSError, OutputError) as err:  # JSON and Unicode errors included
        raise FitError(
            f"{cfg.data_uri}/{MANIFEST} is damaged ({type(err).__name__}: {err}); "
            "run the cleaning job again"
        ) from err
    if manifest is None:
        raise FitError(f"{cfg.data_uri} has no published cleaning output ({MANIFEST})")
    try:
        classes, stats = manifest["classes"], manifest["channel_stats"]
        if not (isinstance(classes, list) and len(stats["mean"]) == len(stats["std"]) == 3):
            raise TypeError("classes or channel_stats malformed")
        split_uris(cfg.data_uri, manifest, TRAIN)
    except (KeyError, TypeError, AttributeError) as err:
        raise FitError(
            f"{cfg.data_uri}/{MANIFEST} is damaged (missing or malformed {err}); "
            "run the cleaning job again"
        ) from err
    if len(classes) < 2:
        raise FitError(
            f"{cfg.data_uri} has {len(classes)} class(es) ({', '.join(classes) or 'none'}): "
            "a classifier needs at least two; add class folders to the lake"
        )
    return manifest


def check_shards_exist(cfg: TrainConfig, uris: list[str]) -> None:
    """Every shard the run reads is there (one HEAD per shard, in parallel)."""
    fs, _ = filesystem(cfg.data_uri, cfg.storage)
    with ThreadPoolExecutor(max_workers=16) as pool:
        present = list(pool.map(lambda u: fs.exists(fs._strip_protocol(u)), uris))
    missing = [u for u, ok in zip(uris, present, strict=True) if not ok]
    if missing:
        raise FitError(
            f"{len(missing)} shard(s) of {cfg.data_uri} listed in {MANIFEST} are missing, "
            f"e.g. {missing[0]}; run the cleaning job again"
        )


def load_dataset(cfg: TrainConfig) -> DataSetInfo:
    """The manifest, its shards and the train labels, checked on the driver before Ray
    starts: a damaged or unusable data set is one line and exit status 2."""
    manifest = read_dataset_manifest(cfg)
    train_uris = split_uris(cfg.data_uri, manifest, TRAIN)
    if not train_uris:
        raise FitError(f"{cfg.data_uri} has no train split")
    if not split_uris(cfg.data_uri, manifest, TEST):
        raise FitError(f"{cfg.data_uri} has no test split")
    selection = split_uris(cfg.data_uri, manifest, selection_split(cfg, manifest))
    test = split_uris(cfg.data_uri, manifest, TEST)
    check_shards_exist(cfg, sorted(set(train_uris + selection + test)))
    try:
        labels, shards = data.train_labels(train_uris, cfg.storage)
    except Exception as err:  # noqa: BLE001 - any unreadable shard is the same user error
        raise FitError(f"a train shard of {cfg.data_uri} cannot be read: {err}") from err
    counts = {label: labels.count(label) for label in sorted(set(labels))}
    if len(counts) < 2:
        names = [manifest["classes"][label] for label in counts]
        raise FitError(
            f"the train split of {cfg.data_uri} holds {len(counts)} class(es) "
            f"({', '.join(names) or 'none'}): a classifier needs at least two"
        )
    sample = data.mixed_sample(labels, shards, cfg.storage, cfg.run.report_images)
    return DataSetInfo(manifest, counts, sample)


def selection_split(cfg: TrainConfig, manifest: dict[str, Any]) -> str:
    """The split that picks the best checkpoint: val when the cleaning job made one
    (`--val-fraction`), so the test split stays unseen until the final reports and the
    export; else test, as the seed did (its figures are then the best of many looks)."""
    return VAL if split_uris(cfg.data_uri, manifest, VAL) else TEST


def build_datasets(cfg: TrainConfig, info: DataSetInfo) -> tuple[dict[str, ray.data.Dataset], int]:
    """The Ray datasets, and the train rows one epoch draws (for the per-step schedule)."""
    manifest = info.manifest
    stats = manifest["channel_stats"]
    rates = None
    rows = sum(info.counts.values())
    if cfg.data.balanced:
        rates = data.balance_rates(info.counts, cfg.data.samples_per_class, cfg.data.balance_power)
        rows = round(sum(rates[label] * n for label, n in info.counts.items()))
        log.info("balanced sampling: train counts %s, repeats per row %s", info.counts, rates)
    train = data.train_dataset(
        split_uris(cfg.data_uri, manifest, TRAIN),
        cfg.storage,
        rates,
        cfg.model.input_size,
        stats["mean"],
        stats["std"],
        cfg.data,
    )
    transform = eval_transform(cfg.model.input_size, stats["mean"], stats["std"])
    selection = selection_split(cfg, manifest)
    held_out = data.eval_dataset(
        split_uris(cfg.data_uri, manifest, selection),
        cfg.storage,
        transform,
        cfg.data.augment_batch_size,
    )
    return {TRAIN: train, selection: held_out}, rows


def steps_per_epoch(cfg: TrainConfig, rows: int) -> int:
    """Batches each worker trains per epoch (Ray Train splits the rows equally)."""
    return max(1, math.ceil(rows // cfg.scaling.workers / cfg.optim.batch_size))


def joined_cluster(cfg: TrainConfig) -> bool:
    """A cluster the job joined may grow (an autoscaler); a local Ray will not."""
    return bool(cfg.scaling.ray_address or os.environ.get("RAY_ADDRESS"))


def with_worker_cpus(cfg: TrainConfig) -> TrainConfig:
    """The config with the CPUs each worker reserves decided against the cluster
    (`train.resources`): an automatic share, or FitError when the workers cannot run.
    On a joined cluster that does not fit yet, a warning: an autoscaler may add nodes,
    and the stall watch stops the run if none come."""
    scaling = cfg.scaling
    try:
        cpus = plan_worker_cpus(scaling, cluster_nodes(scaling.worker_resource))
    except ResourceError as err:
        if not joined_cluster(cfg):
            raise FitError(str(err)) from err
        log.warning("%s (waiting for the cluster to grow)", err)
        cpus = scaling.cpus_per_worker or 1.0
    log.info("%d worker(s) x %g CPU reserved", scaling.workers, cpus)
    return replace(cfg, scaling=replace(scaling, cpus_per_worker=cpus))


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """What each Ray Train worker reserves (GPUs come from use_gpu)."""
    resources = {"CPU": cfg.scaling.cpus_per_worker or 1.0}
    if cfg.scaling.worker_resource:
        resources[cfg.scaling.worker_resource] = 1.0
    return resources


def with_absolute_weights(cfg: TrainConfig) -> TrainConfig:
    """A relative --weights path means the driver's cwd; workers start elsewhere."""
    path = Path(cfg.model.weights)
    if cfg.model.weights in (DEFAULT_WEIGHTS, NO_WEIGHTS) or not path.is_file():
        return cfg
    return replace(cfg, model=replace(cfg.model, weights=str(path.resolve())))


def make_trainer(
    cfg: TrainConfig,
    info: DataSetInfo,
    datasets: dict[str, ray.data.Dataset],
    steps: int,
    beacon: Any,
) -> TorchTrainer:
    cfg = with_absolute_weights(cfg)
    manifest = info.manifest
    storage_path, storage_fs = run_storage(cfg.run_uri, cfg.storage)
    stats = manifest["channel_stats"]
    meta = {
        "classes": manifest["classes"],
        "input_size": cfg.model.input_size,
        "activation": cfg.model.activation,
        "mean": stats["mean"],
        "std": stats["std"],
        "data_uri": cfg.data_uri,
        "data_run_id": manifest.get("run_id"),
        "selection_split": selection_split(cfg, manifest),
        "config": to_dict(cfg),
    }
    loop_config = {
        "cfg": cfg,
        "classes": manifest["classes"],
        "meta": meta,
        "steps_per_epoch": steps,
        "beacon": beacon,
        "sample_views": sample_views(info.sample, cfg, stats["mean"], stats["std"]),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.workers,
            use_gpu=cfg.scaling.gpu,
            resources_per_worker=worker_resources(cfg),
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            # Ray Train's own INFO lines (resources requested, checkpoint written) only
            # with --verbose; the job prints one line per epoch itself.
            logging_config=LoggingConfig(log_level="INFO" if logs.verbose() else "WARNING"),
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.run.checkpoints_to_keep,
                checkpoint_score_attribute=SCORE,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[TRAIN]),
    )


STALL_HINT = (
    "check that Ray Data gets CPUs (--workers, --cpus-per-worker; `ray status`) and that "
    "DATA_URI is readable"
)


def train(cfg: TrainConfig, info: DataSetInfo) -> ray.train.Result:
    """Ray Train's fit under the stall watch; a stall is a FitError."""
    datasets, rows = build_datasets(cfg, info)
    beacon = start_beacon()
    trainer = make_trainer(cfg, info, datasets, steps_per_epoch(cfg, rows), beacon)
    with StallWatch(beacon, cfg.scaling.stall_minutes, STALL_HINT) as watch:
        try:
            result = trainer.fit()
        except (SystemExit, KeyboardInterrupt, Exception) as err:
            if watch.fired:
                raise FitError(watch.fired) from err
            raise
    if watch.fired:
        raise FitError(watch.fired)
    if result.error is not None:
        raise result.error
    return result


def run_fit(cfg: TrainConfig) -> FitResult:
    """The whole job; raises FitError when it cannot run. Every check that needs no
    cluster runs before Ray starts."""
    from train.reports import write_reports  # matplotlib & co: only once training ran

    check_settings(cfg)
    check_run_state(cfg)
    info = load_dataset(cfg)
    ensure_ray(cfg.scaling.ray_address, cfg.scaling.num_cpus, log_to_driver=True)
    cfg = with_worker_cpus(cfg)
    read_stop(cfg.run_uri, cfg.storage, clear=True)  # a resumed run's earlier stop
    result = train(cfg, info)
    stopped = read_stop(cfg.run_uri, cfg.storage)
    if stopped and result.checkpoint is None:
        raise FitError(f"{stopped} (no epoch finished before: no checkpoint to report)")
    best = best_checkpoint(result)
    report = write_reports(
        cfg, info.manifest, latest=result.checkpoint, best=best, sample=info.sample
    )
    if stopped:
        raise FitError(
            f"{stopped}; reports and `export` use the best checkpoint so far "
            f"(epoch {report['best_epoch']})"
        )
    return FitResult(cfg.run_uri, dict(result.metrics or {}), report)

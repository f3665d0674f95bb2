"""`fit`: read the cleaning job's manifest, build the Ray datasets, run the TorchTrainer,
then write the reports into RUN_URI."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from pyarrow.fs import FSSpecHandler, PyFileSystem
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from common.backbone import DEFAULT_WEIGHTS, NO_WEIGHTS
from common.config import to_dict
from common.ray_runtime import ensure_ray
from common.storage import StorageConfig, filesystem, join
from pipeline.output import read_manifest
from train import data
from train.config import TrainConfig
from train.loop import SCORE, TEST, TRAIN, VAL, train_loop_per_worker
from train.presets import eval_transform, train_transform

log = logging.getLogger(__name__)
RUN_NAME = "ray"  # Ray Train's run folder inside RUN_URI
# Runs written before checkpoints were scored on a selection split scored on test.
LEGACY_SCORE = "test_accuracy"


class FitError(Exception):
    """The job as a whole cannot run: one-line message, exit status 2."""


@dataclass
class FitResult:
    run_uri: str
    metrics: dict[str, Any]
    report: dict[str, Any]


def run_storage(run_uri: str, storage: StorageConfig) -> tuple[str, Any]:
    """RunConfig's storage_path and filesystem: the job's fsspec settings (endpoint...)
    wrapped for pyarrow, so S3-compatible endpoints work for checkpoints too."""
    fs, path = filesystem(run_uri, storage)
    return path, PyFileSystem(FSSpecHandler(fs))


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


# Any valid statistics: the probe transform only has to be built, never applied.
PROBE_MEAN, PROBE_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def check_augmentations(cfg: TrainConfig) -> None:
    """Build the training transform once on the driver: a bad augmentation setting
    fails here, with its flag named, not later inside a Ray Data task."""
    try:
        train_transform(cfg.model.input_size, PROBE_MEAN, PROBE_STD, cfg.data)
    except ValueError as err:
        raise FitError(f"invalid augmentation setting: {err}") from err


def check_sampling(cfg: TrainConfig) -> None:
    """Work out one balanced draw on the driver: a bad setting fails here, with its flag
    named, not later when the datasets are built."""
    try:
        data.balance_rates({0: 1}, cfg.data.samples_per_class, cfg.data.balance_power)
    except ValueError as err:
        raise FitError(f"invalid --balance-power: {err}") from err


def check_head_epochs(cfg: TrainConfig) -> None:
    """Head-only epochs must leave at least one epoch for the whole network; a head that
    never stops training alone is --freeze-backbone."""
    if not 0 <= cfg.optim.head_epochs < cfg.optim.epochs:
        raise FitError(
            f"invalid --head-epochs {cfg.optim.head_epochs}: it must be at least 0 and "
            f"below --epochs ({cfg.optim.epochs}); use --freeze-backbone to train only the head"
        )


def load_dataset_manifest(cfg: TrainConfig) -> dict[str, Any]:
    manifest = read_manifest(cfg.data_uri, cfg.storage)
    if manifest is None:
        raise FitError(f"{cfg.data_uri} has no published cleaning output (_manifest.json)")
    if not data.split_uris(cfg.data_uri, manifest, TRAIN):
        raise FitError(f"{cfg.data_uri} has no train split")
    if not data.split_uris(cfg.data_uri, manifest, TEST):
        raise FitError(f"{cfg.data_uri} has no test split")
    return manifest


def selection_split(cfg: TrainConfig, manifest: dict[str, Any]) -> str:
    """The split that picks the best checkpoint: val when the cleaning job made one
    (`--val-fraction`), so the test split stays unseen until the final reports and the
    export; else test, as the seed did (its figures are then the best of many looks)."""
    return VAL if data.split_uris(cfg.data_uri, manifest, VAL) else TEST


def checkpoint_score(metrics: dict[str, Any]) -> float:
    return float(metrics.get(SCORE, metrics.get(LEGACY_SCORE, 0.0)))


def build_datasets(cfg: TrainConfig, manifest: dict[str, Any]) -> dict[str, ray.data.Dataset]:
    stats = manifest["channel_stats"]
    train_uris = data.split_uris(cfg.data_uri, manifest, TRAIN)
    rates = None
    if cfg.data.balanced:
        counts = data.class_counts(train_uris, cfg.storage)
        rates = data.balance_rates(counts, cfg.data.samples_per_class, cfg.data.balance_power)
        log.info("balanced sampling: train counts %s, repeats per row %s", counts, rates)
    train = data.train_dataset(
        train_uris,
        cfg.storage,
        rates,
        cfg.model.input_size,
        stats["mean"],
        stats["std"],
        cfg.data,
    )
    transform = eval_transform(
        cfg.model.input_size, stats["mean"], stats["std"], cfg.data.contrast_gain
    )
    selection = selection_split(cfg, manifest)
    held_out = data.eval_dataset(
        data.split_uris(cfg.data_uri, manifest, selection),
        cfg.storage,
        transform,
        cfg.data.augment_batch_size,
    )
    return {TRAIN: train, selection: held_out}


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """What each Ray Train worker reserves (GPUs come from use_gpu)."""
    resources = {"CPU": cfg.scaling.cpus_per_worker}
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
    cfg: TrainConfig, manifest: dict[str, Any], datasets: dict[str, ray.data.Dataset]
) -> TorchTrainer:
    cfg = with_absolute_weights(cfg)
    storage_path, storage_fs = run_storage(cfg.run_uri, cfg.storage)
    meta = {
        "classes": manifest["classes"],
        "input_size": cfg.model.input_size,
        "activation": cfg.model.activation,
        "mean": manifest["channel_stats"]["mean"],
        "std": manifest["channel_stats"]["std"],
        "contrast_gain": cfg.data.contrast_gain,
        "data_uri": cfg.data_uri,
        "data_run_id": manifest.get("run_id"),
        "selection_split": selection_split(cfg, manifest),
        "config": to_dict(cfg),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "classes": manifest["classes"], "meta": meta},
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.workers,
            use_gpu=cfg.scaling.gpu,
            resources_per_worker=worker_resources(cfg),
        ),
        run_config=RunConfig(
            name=RUN_NAME,
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


def best_checkpoint(result: ray.train.Result) -> ray.train.Checkpoint:
    """The kept checkpoint with the highest selection accuracy (the latest if none scored)."""
    scored = result.best_checkpoints or []
    if not scored:
        return result.checkpoint
    return max(scored, key=lambda pair: checkpoint_score(pair[1]))[0]


def run_fit(cfg: TrainConfig) -> FitResult:
    """The whole job; raises FitError when it cannot run."""
    from train.reports import write_reports  # matplotlib & co: only once training ran

    check_run_state(cfg)
    check_augmentations(cfg)
    check_sampling(cfg)
    check_head_epochs(cfg)
    manifest = load_dataset_manifest(cfg)
    ensure_ray(cfg.scaling.ray_address, cfg.scaling.num_cpus, log_to_driver=True)
    trainer = make_trainer(cfg, manifest, build_datasets(cfg, manifest))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    report = write_reports(cfg, manifest, latest=result.checkpoint, best=best_checkpoint(result))
    return FitResult(cfg.run_uri, dict(result.metrics or {}), report)

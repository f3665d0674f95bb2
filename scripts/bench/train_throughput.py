"""Training throughput: the full data path against the same model fed synthetic tensors.

The real path is the fit job's own: Parquet shards -> class-balanced draw -> decode ->
albumentations -> Ray Train's dataset shard -> the training step. The synthetic path
feeds random float32 tensors of the same shape and count through the same Ray Data ->
Ray Train plumbing, so the ratio isolates what decoding and augmenting cost the step.
Both use the fit job's `make_trainer` and `train_loop_per_worker`; the test split is cut
to a few rows so the per-epoch evaluation barely counts, and the figure is the loop's
own `images_per_second` (the train pass only) of the last epoch, after a warm-up epoch.
Runs alternate real / synthetic so the shared machine's noise hits both alike.

    RAY_AUTH_MODE=disabled .venv/bin/python scripts/bench/train_throughput.py \\
        /tmp/h4/clean --weights ../shared/weights/mobilenet_v2_imagenet_features.pth \\
        --input-size 128 --samples-per-class 150 --torch-threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from common.config import add_config_args, config_from_args
from common.dataset import TRAIN
from common.ray_runtime import ensure_ray
from train.config import TrainConfig
from train.job import build_datasets, load_dataset, make_trainer, steps_per_epoch, with_worker_cpus

EVAL_ROWS = 32  # the per-epoch test pass: kept negligible
EPOCHS = 2  # one warm-up epoch (worker start, first blocks), one measured


def synthetic_train(rows: int, input_size: int, num_classes: int, batch_rows: int):
    """Random normalised-looking tensors, made in Ray Data tasks like the real ones."""
    import ray

    def make(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng()
        n = len(batch["id"])
        shape = (n, 3, input_size, input_size)
        return {
            "image": rng.standard_normal(shape, dtype=np.float32),
            "label": rng.integers(0, num_classes, n, dtype=np.int64),
        }

    return ray.data.range(rows).map_batches(make, batch_size=batch_rows, batch_format="numpy")


def one_run(cfg: TrainConfig, synthetic: bool, run_dir: Path) -> float:
    """Last-epoch training images/s of one short fit."""
    cfg = with_worker_cpus(replace(cfg, run_uri=str(run_dir)))
    info = load_dataset(cfg)
    datasets, _ = build_datasets(cfg, info)
    rows = datasets[TRAIN].count()  # one epoch's draw (balanced or not)
    if synthetic:
        datasets[TRAIN] = synthetic_train(
            rows, cfg.model.input_size, len(info.manifest["classes"]), cfg.data.augment_batch_size
        )
    held_out = next(name for name in datasets if name != TRAIN)  # val or test
    datasets[held_out] = datasets[held_out].limit(EVAL_ROWS)
    trainer = make_trainer(cfg, info, datasets, steps_per_epoch(cfg, rows), beacon=None)
    result = trainer.fit()
    if result.error is not None:
        raise SystemExit(f"fit failed: {result.error}")
    figure = float(result.metrics["images_per_second"])
    wait = float(result.metrics["data_wait_seconds_rank0"])
    seconds = float(result.metrics["train_seconds"])
    print(f"  {'synthetic' if synthetic else 'data path':9s}  {rows} rows/epoch  "
          f"{figure:6.1f} img/s  waited {wait:.1f} of {seconds:.1f} s for data",
          flush=True)  # fmt: skip
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_uri", help="a cleaning job's output")
    parser.add_argument("--rounds", type=int, default=2, help="real/synthetic pairs")
    add_config_args(parser, TrainConfig, skip=("data_uri", "run_uri"))
    args = parser.parse_args()
    rounds = args.__dict__.pop("rounds")
    cfg = config_from_args(TrainConfig, args, run_uri="per-round")  # each round sets its own
    cfg = replace(cfg, optim=replace(cfg.optim, epochs=EPOCHS))
    ensure_ray(cfg.scaling.ray_address, cfg.scaling.num_cpus, log_to_driver=False)
    real, fake = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            real.append(one_run(cfg, False, Path(tmp) / f"real{i}"))
            fake.append(one_run(cfg, True, Path(tmp) / f"synthetic{i}"))
    ratios = [r / f for r, f in zip(real, fake, strict=True)]
    print(
        f"\ninput {cfg.model.input_size}px, batch {cfg.optim.batch_size}, "
        f"{cfg.scaling.workers} worker(s) x {cfg.scaling.cpus_per_worker} CPU\n"
        f"data path  median {statistics.median(real):.1f} img/s  {real}\n"
        f"synthetic  median {statistics.median(fake):.1f} img/s  {fake}\n"
        f"ratio per round {[round(r, 3) for r in ratios]}  "
        f"median {statistics.median(ratios):.3f} (target >= 0.85)"
    )


if __name__ == "__main__":
    main()

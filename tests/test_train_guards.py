"""The training job's guards: settings and data checked before Ray starts, the workers'
CPUs against the cluster's, the stall watchdog, divergence, and live TensorBoard.

The data sets here are written directly in the cleaning job's published layout
(_manifest.json + Parquet shards of committed crops), so these tests need neither the
cleaning job nor S3, and each check can be given exactly the damage it is about."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray_train_polls import quick_train_polls  # noqa: F401 - autouse: Ray Train polls faster

from devkit.sample_lake import COMMITTED_CROPS, DEMO_CLASSES
from train import guards
from train.cli import main as train_main
from train.config import ScalingSection
from train.guards import divergence
from train.resources import Node, ResourceError, plan_worker_cpus

SIZE = 32
TINY = ["--input-size", str(SIZE), "--batch-size", "8", "--weights", "none"]
QUICK_S = 10  # a bad setting: one line within seconds (no Ray, no torch import)
# A bad data set: found before Ray starts, after importing the job (torch, Ray: slow
# on a loaded 2-core machine).
DATA_CHECK_S = 90
PER_CLASS = {"train": 8, "test": 3}
POLL_S = 0.2
LIVE_EPOCHS = 2  # the shared run's: TensorBoard gets a second epoch's scalars
# A stall test's run can never place its workers: its controller never runs the graceful
# abort, so the watchdog always ends it by killing the controller after ABORT_GRACE_S.
STALL_ABORT_GRACE_S = 2.0


def write_dataset(root: Path, classes: tuple[str, ...] = DEMO_CLASSES[:2]) -> Path:
    """A cleaned data set as the cleaning job publishes it: one shard per class and split."""
    files = []
    for label, name in enumerate(classes):
        crops = sorted((COMMITTED_CROPS / name).glob("*.jpg"))
        start = 0
        for split, count in PER_CLASS.items():
            chosen = crops[start : start + count]
            start += count
            rel = f"images/split={split}/{name}.parquet"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            table = pa.table(
                {
                    "image": pa.array([p.read_bytes() for p in chosen], pa.binary()),
                    "label": pa.array([label] * len(chosen), pa.int32()),
                }
            )
            pq.write_table(table, root / rel)
            files.append(rel)
    manifest = {
        "run_id": "fabricated",
        "classes": list(classes),
        "channel_stats": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "files": {"images": files, "rejected": [], "index": []},
    }
    (root / "_manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "clean")


def quick_failure(capsys, argv: list[str], within_s: float = QUICK_S) -> str:
    """Run `train` and return its one-line error; it must fail with exit 2, in seconds."""
    started = time.monotonic()
    assert train_main(argv) == 2
    assert time.monotonic() - started < within_s
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--lr", "-1"], "--lr"),
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "3", "--head-epochs", "3"], "--head-epochs"),
        (["--workers", "0"], "--workers"),
        (["--cpus-per-worker", "0"], "--cpus-per-worker"),
        (["--input-size", "8"], "--input-size"),
        (["--label-smoothing", "1"], "--label-smoothing"),
        (["--warmup-epochs", "5", "--epochs", "2"], "--warmup-epochs"),
        (["--stall-minutes", "0"], "--stall-minutes"),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_flag(capsys, data, tmp_path, flags, named):
    line = quick_failure(capsys, ["fit", str(data), str(tmp_path / "run"), *TINY, *flags])
    assert named in line


def test_a_bad_export_setting_is_one_line_too(capsys, tmp_path):
    line = quick_failure(
        capsys, ["export", str(tmp_path), str(tmp_path / "m"), "--batch-size", "0"]
    )
    assert "--batch-size" in line


def test_a_damaged_manifest_is_one_line(capsys, data, tmp_path):
    (data / "_manifest.json").write_text('{"classes": ["a", "b"], "files": {')
    assert "_manifest.json is damaged" in quick_failure(
        capsys, ["fit", str(data), str(tmp_path / "run"), *TINY], DATA_CHECK_S
    )
    (data / "_manifest.json").write_text(json.dumps({"classes": ["a", "b"]}))
    assert "_manifest.json is damaged" in quick_failure(
        capsys, ["fit", str(data), str(tmp_path / "run"), *TINY], DATA_CHECK_S
    )


def test_a_missing_shard_is_one_line_naming_it(capsys, data, tmp_path):
    (data / "images/split=test/Flying_Birds.parquet").unlink()
    line = quick_failure(capsys, ["fit", str(data), str(tmp_path / "run"), *TINY], DATA_CHECK_S)
    assert "missing" in line and "Flying_Birds.parquet" in line


def test_a_one_class_data_set_cannot_be_fitted(capsys, tmp_path):
    one = write_dataset(tmp_path / "one", DEMO_CLASSES[:1])
    line = quick_failure(capsys, ["fit", str(one), str(tmp_path / "run"), *TINY], DATA_CHECK_S)
    assert "at least two" in line and DEMO_CLASSES[0] in line
    # Two classes listed, but every train row is one of them.
    two = write_dataset(tmp_path / "two")
    manifest = json.loads((two / "_manifest.json").read_text())
    manifest["files"]["images"].remove(f"images/split=train/{DEMO_CLASSES[1]}.parquet")
    (two / "_manifest.json").write_text(json.dumps(manifest))
    line = quick_failure(capsys, ["fit", str(two), str(tmp_path / "run2"), *TINY], DATA_CHECK_S)
    assert "train split" in line and "at least two" in line


def scaling(**kwargs) -> ScalingSection:
    return ScalingSection(**kwargs)


def test_workers_leave_a_cpu_to_ray_data():
    two_cpus = [Node(2.0)]
    assert plan_worker_cpus(scaling(workers=2), two_cpus) == pytest.approx(0.5)
    assert plan_worker_cpus(scaling(workers=1), two_cpus) == pytest.approx(1.0)
    assert plan_worker_cpus(scaling(workers=3), two_cpus) == pytest.approx(0.3)
    assert plan_worker_cpus(scaling(workers=4), [Node(16.0)]) == pytest.approx(1.0)
    with pytest.raises(ResourceError, match="--workers 2 x --cpus-per-worker 1.*--workers"):
        plan_worker_cpus(scaling(workers=2, cpus_per_worker=1.0), two_cpus)
    with pytest.raises(ResourceError, match="do not fit.*--cpus-per-worker"):
        plan_worker_cpus(scaling(workers=3, cpus_per_worker=1.0), two_cpus)
    with pytest.raises(ResourceError, match="lower --workers"):
        plan_worker_cpus(scaling(workers=40), two_cpus)
    with pytest.raises(ResourceError, match="--gpu"):
        plan_worker_cpus(scaling(workers=2, gpu=True), [Node(8.0, gpus=1.0)])
    # Workers on GPU nodes, Ray Data on the CPU head: fits.
    nodes = [Node(4.0), Node(4.0, gpus=1.0, custom=1.0), Node(4.0, gpus=1.0, custom=1.0)]
    assert plan_worker_cpus(scaling(workers=2, gpu=True, worker_resource="trainer"), nodes) == 1.0


def history_row(epoch: int, loss: float, accuracy: float, **extra) -> dict:
    return {"epoch": epoch, "train_loss": loss, "train_accuracy": accuracy, **extra}


def test_divergence_rules():
    rising = [history_row(1, 1.0, 0.6), history_row(2, 1.2, 0.5), history_row(3, 1.5, 0.4)]
    assert "rose" in divergence(rising, 2, 0.1) and "--lr" in divergence(rising, 2, 0.1)
    assert divergence(rising[:2], 2, 0.1) is None  # one bad epoch is noise
    assert divergence(rising, 0, 0.1) is None  # off
    noisy = [history_row(1, 1.0, 0.6), history_row(2, 1.2, 0.65), history_row(3, 1.5, 0.4)]
    assert divergence(noisy, 2, 0.1) is None  # the accuracy rose in between
    drift = [history_row(1, 1.316, 0.6), history_row(2, 1.337, 0.5), history_row(3, 1.409, 0.4)]
    assert divergence(drift, 2, 0.1) is None  # a 7 % drift is noise on tiny data
    assert "non-finite" in divergence([history_row(1, math.nan, 0.3)], 2, 0.1)
    assert "non-finite" in divergence([history_row(1, 1.0, 0.3, nonfinite_steps=2)], 2, 0.1)
    held = [history_row(1, 0.5, 0.9, backbone_held=True), *rising[1:]]
    assert divergence(held, 2, 0.1) is None  # the head-only epoch is not compared


class LiveRun(NamedTuple):
    data: Path
    run: Path
    rc: int | None
    seen_live: bool  # event files in the run before its metrics.json: written while it ran


@pytest.fixture(scope="module")
def live_run(tmp_path_factory, ray_session) -> LiveRun:
    """Two epochs by two workers with default flags, watched from another thread while
    they train. One fit for three tests: the issue's hang (two workers on two CPUs),
    live TensorBoard, and the checkpoints the divergence test resumes (from a copy)."""
    root = tmp_path_factory.mktemp("live")
    data, run = write_dataset(root / "clean"), root / "runs" / "live-demo"
    outcome: dict[str, int] = {}
    argv = ["fit", str(data), str(run), *TINY, "--workers", "2", "--epochs", str(LIVE_EPOCHS)]
    thread = threading.Thread(target=lambda: outcome.setdefault("rc", train_main(argv)))
    thread.start()
    board = run / "tensorboard" / "live-demo"  # named after RUN_URI
    seen_live = False
    while thread.is_alive():
        if list(board.glob("*tfevents*")) and not (run / "metrics.json").exists():
            seen_live = True
        time.sleep(POLL_S)
    thread.join()
    return LiveRun(data, run, outcome.get("rc"), seen_live)


def test_two_workers_with_default_flags_finish_on_two_cpus(live_run):
    """The issue's hang: two workers that reserved a CPU each starved Ray Data."""
    assert live_run.rc == 0
    assert json.loads((live_run.run / "metrics.json").read_text())["epochs"] == LIVE_EPOCHS


@pytest.mark.usefixtures("ray_session")
def test_explicit_workers_that_starve_ray_data_fail_in_seconds(data, tmp_path, capsys):
    argv = ["fit", str(data), str(tmp_path / "run"), *TINY, "--workers", "2"]
    line = quick_failure(capsys, [*argv, "--cpus-per-worker", "1"], DATA_CHECK_S)
    assert "--workers" in line and "--cpus-per-worker" in line


@pytest.mark.usefixtures("ray_session")
def test_the_stall_watchdog_stops_a_run_that_gets_no_batch(data, tmp_path, capsys, monkeypatch):
    """Workers that can never be placed (a joined cluster is allowed to wait for an
    autoscaler) are a stall: the watchdog ends the run with a message."""
    import ray

    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    monkeypatch.setattr(guards, "ABORT_GRACE_S", STALL_ABORT_GRACE_S)
    started = time.monotonic()
    argv = ["fit", str(data), str(tmp_path / "run"), *TINY, "--workers", "3"]
    rc = train_main([*argv, "--cpus-per-worker", "1", "--stall-minutes", "0.05"])
    assert rc == 2
    assert time.monotonic() - started < 120
    err = capsys.readouterr().err
    assert "training stalled: no batch for" in err and "--workers" in err


def test_an_absurd_learning_rate_stops_the_run_and_the_best_checkpoint_exports(
    live_run, tmp_path, capsys
):
    assert live_run.rc == 0
    best = json.loads((live_run.run / "metrics.json").read_text())["best_epoch"]
    run = tmp_path / "run"
    shutil.copytree(live_run.run, run)  # Ray Train's snapshot names checkpoints relative to it
    argv = ["fit", str(live_run.data), str(run), *TINY, "--epochs", "4", "--resume"]
    assert train_main([*argv, "--lr", "1e38"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    diverged = f"non-finite in epoch {LIVE_EPOCHS + 1}"
    assert diverged in err and "--lr" in err and f"(epoch {best})" in err, err
    history = json.loads((run / "history.json").read_text())
    # The diverged epoch left no checkpoint.
    assert [row["epoch"] for row in history] == list(range(1, LIVE_EPOCHS + 1))
    model = tmp_path / "model"
    args = ["export", str(run), str(model), "--calibration-images", "8", "--max-int8-drop", "100"]
    assert train_main(args) == 0
    assert (model / "model.pt").is_file()


def test_tensorboard_is_written_while_the_run_trains(live_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert live_run.rc == 0 and live_run.seen_live
    board = live_run.run / "tensorboard" / "live-demo"
    events = EventAccumulator(str(board), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"batch/train_loss", "epoch/train_loss", "epoch/test_accuracy", "epoch/lr"} <= set(
        tags["scalars"]
    )
    assert [e.step for e in events.Scalars("epoch/train_accuracy")] == list(
        range(1, LIVE_EPOCHS + 1)
    )
    assert {"samples/before_augmentation", "samples/after_augmentation"} <= set(tags["images"])


def test_the_learning_rate_warms_up_then_follows_the_cosine_per_step():
    from train.config import OptimSection
    from train.optim import lr_factor, scaled_lr

    cfg = OptimSection(epochs=4, warmup_epochs=1.0, lr_schedule="cosine")
    factors = [lr_factor(step, 10, cfg) for step in range(40)]
    assert factors[0] < 0.1 and factors[9] == pytest.approx(10 / 11)  # warming up
    assert factors[10] == pytest.approx(1.0)  # the peak, then down
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[-1] < 0.01
    # --lr is per 32 images: linear scaling for SGD, square root for AdamW.
    sgd = OptimSection(optimizer="sgd", lr=0.01, batch_size=16)
    assert scaled_lr(sgd, workers=4) == pytest.approx(0.02)
    adamw = OptimSection(optimizer="adamw", lr=0.001, batch_size=32)
    assert scaled_lr(adamw, workers=4) == pytest.approx(0.002)


def test_the_sample_batch_mixes_every_class(tmp_path):
    from common.storage import StorageConfig
    from train.data import mixed_sample, train_labels

    root = write_dataset(tmp_path / "clean", DEMO_CLASSES)
    uris = [str(root / f"images/split=train/{name}.parquet") for name in DEMO_CLASSES]
    labels, shards = train_labels(uris, StorageConfig())
    sample = mixed_sample(labels, shards, StorageConfig(), 8)
    assert [label for _, label in sample] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert len({blob for blob, _ in sample}) == 8
    assert {label for _, label in mixed_sample(labels, shards, StorageConfig(), 2)} == {0, 1, 2, 3}

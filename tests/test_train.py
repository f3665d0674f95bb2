"""The training job end to end on the real local Ray and S3 endpoint: a tiny fit from
data the cleaning job wrote, its reports, resume, and the class-balanced sampler."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from ray_train_polls import quick_train_polls  # noqa: F401 - autouse: Ray Train polls faster
from torch import nn

from common.config import _leaf_fields
from common.dataset import TRAIN, read_manifest, split_uris
from common.storage import StorageConfig
from devkit.local_s3 import upload_files
from devkit.sample_lake import COMMITTED_CROPS, DEMO_CLASSES
from devkit.weights import embedding_args
from pipeline.cli import main as clean_main
from train.checkpoint import CHECKPOINT_FILE
from train.cli import main as train_main
from train.config import ExportConfig, ExportSection, ModelSection, OptimSection, TrainConfig
from train.data import balance_rates, class_counts, epoch_draw, read_split
from train.job import FitError, check_settings
from train.loop import train_epoch

pytestmark = pytest.mark.usefixtures("ray_session")

# An imbalanced lake on purpose, so the balanced sampler has something to fix.
IMAGES_PER_CLASS = dict(zip(DEMO_CLASSES, (12, 12, 6, 3), strict=True))
WORKERS, SIZE = 2, 64
EPOCHS_DRAWN = 3
NOISE_SDS = 4
ANY_DROP = 100  # accuracy points: a 2-epoch random-init model is not the point here
KILL_EPOCHS = 3  # the kill lands in epoch 2; the epochs after it need a new group
KILL_POLL_S = 0.2
KILL_TIMEOUT_S = 240  # each of: the first checkpoint registered, the rest of the run
MOST = 0.5  # share of test images where int8 and fp32 agree on the top class
STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # mean, std of the random-weight checks
# Where converted int8 convolutions live (fused conv-ReLU, and plain conv).
QUANTIZED = ("torch.ao.nn.intrinsic.quantized.", "torch.ao.nn.quantized.modules.conv")
TINY = [
    "--workers", str(WORKERS), "--cpus-per-worker", "0.5",
    "--input-size", str(SIZE), "--batch-size", "8", "--weights", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(s3) -> str:
    bucket = "train-data"
    s3.create_bucket(bucket)
    files = {}
    for name, count in IMAGES_PER_CLASS.items():
        for path in sorted((COMMITTED_CROPS / name).glob("*.jpg"))[:count]:
            files[f"{name}/{path.name}"] = path.read_bytes()
    upload_files(s3.filesystem(), f"{bucket}/raw", files)
    out = f"s3://{bucket}/clean"
    args = ["clean", f"s3://{bucket}/raw", out, "--endpoint-url", s3.endpoint_url, "--no-progress"]
    args += embedding_args()
    assert clean_main(args) == 0
    return out


def fit(dataset: str, run_uri: str, *extra: str) -> int:
    return train_main(["fit", dataset, run_uri, *TINY, *extra])


def read_json(s3, uri: str) -> dict | list:
    return json.loads(s3.filesystem().cat_file(uri.removeprefix("s3://")))


@pytest.fixture(scope="module")
def balanced_run(s3, dataset) -> str:
    run = "s3://train-data/runs/balanced"
    assert fit(dataset, run, "--epochs", "1") == 0
    return run


def test_fit_writes_every_report(s3, balanced_run):
    fs = s3.filesystem()
    root = balanced_run.removeprefix("s3://")
    metrics = read_json(s3, f"{balanced_run}/metrics.json")
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "balanced_accuracy" in metrics
    assert set(metrics["per_class"]) == set(DEMO_CLASSES)
    assert {"precision", "recall", "f1"} <= set(metrics["per_class"]["Airplane"])
    assert "Small_QuadCopters" in fs.cat_file(f"{root}/classification_report.txt").decode()
    for name in (
        "confusion_matrix.png",
        "misclassified.png",
        "samples_before_augmentation.png",
        "samples_after_augmentation.png",
    ):
        with fs.open(f"{root}/{name}", "rb") as f:
            Image.open(f).verify()
    events = fs.find(f"{root}/tensorboard")
    assert any("tfevents" in p for p in events)
    assert fs.find(f"{root}/ray")  # Ray Train's checkpoints
    assert metrics["selection_split"] == "test"  # no val split in this data set
    for row in read_json(s3, f"{balanced_run}/history.json"):
        assert 0.0 <= row["data_wait_seconds_rank0"] <= row["train_seconds"]


def test_a_val_split_picks_the_checkpoint_and_test_is_left_for_the_reports(s3, dataset):
    with_val = f"{dataset}_val"
    args = ["clean", dataset.replace("/clean", "/raw"), with_val, "--val-fraction", "0.25"]
    args += ["--endpoint-url", s3.endpoint_url, "--no-progress", *embedding_args()]
    assert clean_main(args) == 0
    run = "s3://train-data/runs/val"
    assert fit(with_val, run, "--epochs", "1") == 0
    for row in read_json(s3, f"{run}/history.json"):
        assert row["selection_accuracy"] == row["val_accuracy"] and "test_accuracy" not in row
    metrics = read_json(s3, f"{run}/metrics.json")
    splits = read_json(s3, f"{with_val}/report.json")["per_class"].values()
    assert metrics["selection_split"] == "val"
    assert metrics["test_images"] == sum(c["splits"].get("test", 0) for c in splits) > 0


def test_resume_continues_the_epoch_count(s3, dataset, balanced_run):
    assert fit(dataset, balanced_run, "--epochs", "1") == 2  # a run is there: no overwrite
    assert fit(dataset, balanced_run, "--epochs", "2", "--resume") == 0
    history = read_json(s3, f"{balanced_run}/history.json")
    assert [row["epoch"] for row in history] == [1, 2]
    assert read_json(s3, f"{balanced_run}/metrics.json")["epochs"] == 2


def test_export_writes_an_int8_torchscript_model(s3, balanced_run, tmp_path):
    import torch

    args = ["export", balanced_run, str(tmp_path), "--calibration-images", "16"]
    assert train_main([*args, "--max-int8-drop", str(ANY_DROP)]) == 0
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["classes"] == read_json(s3, f"{balanced_run}/metrics.json")["classes"]
    assert info["input_size"] == SIZE and len(info["mean"]) == len(info["std"]) == 3
    assert info["int8_fp32_agreement"] >= MOST
    model = torch.jit.load(str(tmp_path / "model.pt"))
    logits = model(torch.zeros(1, 3, SIZE, SIZE))
    assert logits.shape == (1, len(info["classes"]))
    assert {"torch", "torchvision"} <= set(info["versions"]) and len(info["sha256"]) == 64
    assert info["float_blocks"] == ExportSection().float_blocks
    assert info["contrast_gain"] == 1.0  # the handler reads it: training applies no gain


def quantized_with(float_blocks: int):
    """A random-weight network through the export's quantization, `float_blocks` kept fp32."""
    from dataclasses import replace

    from train.export import deprecations_silenced, quantize
    from train.model import build_model
    from train.presets import eval_transform

    model, _ = build_model(3, ModelSection(weights="none", activation="relu"))
    images = []
    for seed in range(4):
        buffer = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, "JPEG")
        images.append(buffer.getvalue())
    cfg = replace(ExportSection(), float_blocks=float_blocks)
    with deprecations_silenced():
        return quantize({"model": model.state_dict()}, 3, images, eval_transform(SIZE, *STATS), cfg)


def test_the_leading_blocks_stay_float_and_the_rest_is_int8():
    import torch

    from train.export import deprecations_silenced

    def quantized_convs(model) -> list[str]:
        return [n for n, m in model.named_modules() if type(m).__module__.startswith(QUANTIZED)]

    mixed, whole = quantized_with(2), quantized_with(0)
    assert not any(n.startswith(("features.0.", "features.1.")) for n in quantized_convs(mixed))
    assert any(n.startswith("features.2.") for n in quantized_convs(mixed))
    assert any(n.startswith("features.0.") for n in quantized_convs(whole))
    for model in (mixed, whole):
        with deprecations_silenced():
            scripted = torch.jit.script(model)
        assert scripted(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 3)
    with pytest.raises(Exception, match="float-blocks"):
        quantized_with(19)


def test_export_fails_loudly_beyond_the_accuracy_margin(balanced_run, tmp_path, capsys):
    args = ["export", balanced_run, str(tmp_path), "--calibration-images", "8"]
    assert train_main([*args, "--max-int8-drop", str(-ANY_DROP)]) == 2
    assert "int8 loses" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    for command, config in (("fit", TrainConfig), ("export", ExportConfig)):
        with pytest.raises(SystemExit):
            train_main([command, "--help"])
        out = capsys.readouterr().out
        for path, _, _ in _leaf_fields(config):
            if path[-1] not in ("data_uri", "run_uri", "model_dir"):
                assert "--" + path[-1].replace("_", "-") in out, path


def train_counts(s3, dataset: str) -> list[int]:
    manifest = read_json(s3, f"{dataset}/_manifest.json")
    report = read_json(s3, f"{dataset}/report.json")
    return [report["per_class"][name]["splits"].get("train", 0) for name in manifest["classes"]]


def assert_balanced(counts: list[int], raw: list[int], dropped: int) -> None:
    """Every class drawn as often as the largest, within the sampler's Bernoulli noise
    on the fractional repeats (4 sd) plus the rows Ray Train's equal split drops."""
    target = max(raw)
    for count, n in zip(counts, raw, strict=True):
        fraction = target / n % 1
        sd = math.sqrt(n * fraction * (1 - fraction))
        assert abs(count - target) <= dropped + NOISE_SDS * sd, (counts, raw)


def drawn_labels(dataset: str, balanced: bool, drawn: bool = True) -> np.ndarray:
    """The labels of one epoch's draw, in order (what the workers share, before decoding);
    `drawn=False`: the rows as the shards hold them."""
    storage = StorageConfig()
    manifest = read_manifest(dataset, storage)
    uris = split_uris(dataset, manifest, TRAIN)
    rates = balance_rates(class_counts(uris, storage), None) if balanced else None
    ds = read_split(uris, storage)
    ds = epoch_draw(ds, rates) if drawn else ds
    return np.concatenate([b["label"] for b in ds.iter_batches(batch_size=None)])


def label_histogram(dataset: str, balanced: bool) -> list[int]:
    return np.bincount(drawn_labels(dataset, balanced), minlength=len(DEMO_CLASSES)).tolist()


def test_global_shuffle_mixes_the_one_class_shards(dataset):
    """The cleaning job writes shards by class: shuffling blocks alone leaves one-class
    runs (one-class batches: unstable SGD and skewed BatchNorm statistics)."""
    changes = {
        drawn: int((np.diff(drawn_labels(dataset, drawn, drawn)) != 0).sum())
        for drawn in (False, True)
    }
    assert changes[True] > 2 * changes[False], changes


def test_the_draw_streams_in_small_blocks(dataset):
    """A small split shuffles into one block; cut into blocks of the augment batch, the
    decode tasks stream into training instead of the first batch waiting for the epoch."""
    storage = StorageConfig()
    uris = split_uris(dataset, read_manifest(dataset, storage), TRAIN)
    rows = read_split(uris, storage).materialize()
    whole = [len(b["label"]) for b in epoch_draw(rows, None).iter_batches(batch_size=None)]
    cut = epoch_draw(rows, None, block_rows=4).iter_batches(batch_size=None)
    sizes = [len(b["label"]) for b in cut]
    assert max(whole) > 4 and max(sizes) <= 4
    assert sum(sizes) == sum(whole)


def test_balanced_fit_saw_every_class_equally(s3, dataset, balanced_run):
    raw = train_counts(s3, dataset)
    assert len(set(raw)) > 1  # the fixture is imbalanced
    for row in read_json(s3, f"{balanced_run}/history.json"):  # both workers' batches
        assert_balanced(row["train_label_counts"], raw, dropped=WORKERS - 1)


def test_sampler_balances_only_when_asked(s3, dataset):
    raw = train_counts(s3, dataset)
    assert label_histogram(dataset, balanced=False) == raw
    for _ in range(EPOCHS_DRAWN):  # fresh draws every epoch
        assert_balanced(label_histogram(dataset, balanced=True), raw, dropped=0)


def test_the_balance_power_moves_the_draw_from_balanced_to_natural():
    counts = {0: 1600, 1: 400, 2: 100}
    draws = {
        power: {c: rate * counts[c] for c, rate in balance_rates(counts, None, power).items()}
        for power in (0.0, 0.5, 1.0)
    }
    assert draws[0.0] == pytest.approx({0: 1600, 1: 1600, 2: 1600})
    assert draws[1.0] == pytest.approx(counts)  # every row once: the natural draw
    assert draws[0.5] == pytest.approx({0: 1600, 1: 800, 2: 400})  # square-root sampling
    assert balance_rates(counts, 800, 0.5)[0] == pytest.approx(0.5)  # scaled, majority halved


@pytest.mark.parametrize("power", [-0.1, 1.5])
def test_a_balance_power_outside_0_1_fails_before_training(power: float):
    cfg = TrainConfig(data_uri="s3://d", run_uri="s3://r")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, balance_power=power))
    with pytest.raises(FitError, match="balance-power"):
        check_settings(cfg)


def test_clipping_bounds_each_step_and_the_largest_norm_is_reported():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    batches = [{"image": 100 * torch.randn(8, 4), "label": torch.zeros(8, dtype=torch.long)}]

    def one_step(clip: float) -> tuple[float, float]:
        """Length of the plain SGD step (lr 1, no momentum: the gradient itself), and
        the norm the epoch reports."""
        trained = copy.deepcopy(model)
        before = nn.utils.parameters_to_vector(trained.parameters()).detach().clone()
        stats = train_epoch(
            trained,
            batches,
            nn.CrossEntropyLoss(),
            torch.optim.SGD(trained.parameters(), lr=1.0),
            torch.amp.GradScaler("cpu", enabled=False),
            2,
            torch.device("cpu"),
            clip_grad_norm=clip,
        )
        after = nn.utils.parameters_to_vector(trained.parameters()).detach()
        return float((after - before).norm()), stats.grad_norm_max

    free_step, norm = one_step(0.0)
    clipped_step, norm_before_clip = one_step(0.5)
    assert norm > 0.5  # the planted batch's gradient is large
    assert free_step == pytest.approx(norm, rel=1e-4)
    assert norm_before_clip == pytest.approx(norm)
    assert clipped_step == pytest.approx(0.5, rel=1e-4)


def test_head_epochs_hold_the_backbone_still_and_then_release_it():
    """Linear probing, then fine-tuning: during a head epoch the backbone does not move
    even with momentum and weight decay, and the norm is the head's alone."""
    from train.loop import backbone_held
    from train.model import build_model

    torch.manual_seed(0)
    model, _ = build_model(2, ModelSection(weights="none", input_size=32))
    batches = [
        {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])} for _ in range(2)
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    cfg = OptimSection(epochs=3, head_epochs=1)

    def vector(module: nn.Module) -> torch.Tensor:
        return nn.utils.parameters_to_vector(module.parameters()).detach().clone()

    def epoch(number: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        backbone, head = vector(model.features), vector(model.classifier)
        held = backbone_held(model, number, cfg)
        stats = train_epoch(
            model,
            batches,
            nn.CrossEntropyLoss(),
            optimizer,
            torch.amp.GradScaler("cpu", enabled=False),
            2,
            torch.device("cpu"),
            held=held,
        )
        moved = vector(model.features) - backbone, vector(model.classifier) - head
        return *moved, stats.grad_norm_max

    backbone_step, head_step, head_norm = epoch(0)
    assert backbone_step.abs().max() == 0
    assert head_step.abs().max() > 0
    assert head_norm > 0
    backbone_step, head_step, _ = epoch(1)
    assert backbone_step.abs().max() > 0  # released after the head epoch
    assert head_step.abs().max() > 0
    assert backbone_held(model, 1, cfg) == []


@pytest.mark.parametrize("head_epochs", [-1, 3])
def test_head_epochs_must_leave_the_network_an_epoch(head_epochs: int):
    cfg = TrainConfig(data_uri="s3://d", run_uri="s3://r")
    optim = dataclasses.replace(cfg.optim, epochs=3, head_epochs=head_epochs)
    with pytest.raises(FitError, match="head-epochs"):
        check_settings(dataclasses.replace(cfg, optim=optim))


def rank0_pid_once_checkpointed(s3, run_uri: str, timeout_s: float) -> int:
    """Rank 0's pid as the first checkpoint recorded it, read once Ray Train has
    registered that checkpoint (its checkpoint manager's snapshot is written then), so a
    restart resumes from it."""
    import torch
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    fs = s3.filesystem()
    ray_dir = f"{run_uri.removeprefix('s3://')}/ray"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        files = fs.find(ray_dir)  # no listing cache: what is there now
        registered = f"{ray_dir}/{CHECKPOINT_MANAGER_SNAPSHOT_FILENAME}" in files
        found = [f for f in files if f.endswith(f"/{CHECKPOINT_FILE}")]
        if registered and found:
            with fs.open(sorted(found)[0], "rb") as f:
                state = torch.load(io.BytesIO(f.read()), map_location="cpu")
            return int(state["history"][-1]["rank0_process"].rsplit(":", 1)[1])
        time.sleep(KILL_POLL_S)
    raise AssertionError("no checkpoints in time")


def test_a_killed_worker_is_survived(s3, dataset):
    run = "s3://train-data/runs/killed"
    outcome: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("rc", fit(dataset, run, "--epochs", str(KILL_EPOCHS)))
    )
    thread.start()
    killed = rank0_pid_once_checkpointed(s3, run, timeout_s=KILL_TIMEOUT_S)
    os.kill(killed, signal.SIGKILL)  # what a lost node does to its worker
    thread.join(timeout=KILL_TIMEOUT_S)
    assert outcome.get("rc") == 0
    history = read_json(s3, f"{run}/history.json")
    assert [row["epoch"] for row in history] == list(range(1, KILL_EPOCHS + 1))
    pids = [int(row["rank0_process"].rsplit(":", 1)[1]) for row in history]
    # Epoch 1 came from the killed process and survived in the checkpoint; a new
    # worker group resumed from it and finished the run.
    assert pids[0] == killed and pids[-1] != killed, (pids, killed)

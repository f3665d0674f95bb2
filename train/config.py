"""Settings of the training job: one typed config, a TOML file and flags mapped onto it."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from common.backbone import DEFAULT_WEIGHTS
from common.config import option, section
from common.storage import StorageConfig

SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("sgd", "adamw")
ACTIVATIONS = ("relu6", "relu")
MIN_INPUT_SIZE = 32  # MobileNetV2 halves the side five times


@dataclass
class ScalingSection:
    workers: int = option(1, "Ray Train workers (one process each; one GPU each with --gpu)")
    cpus_per_worker: float | None = option(
        None,
        "CPUs reserved per worker (fractions are fine). Default: 1, or less on a small "
        "cluster, so that one CPU stays free for Ray Data's decode and augmentation tasks "
        "(workers that reserve every CPU starve them and the run would wait forever)",
    )
    gpu: bool = option(False, "Train on GPUs (nccl, mixed precision)")
    worker_resource: str | None = option(
        None,
        "Custom Ray resource each worker also takes one unit of, so workers land only on "
        "nodes that advertise it (cluster.yaml's GPU nodes: 'trainer')",
    )
    ray_address: str | None = option(
        None, "Ray cluster to join ('auto' inside one); default: RAY_ADDRESS, else a local Ray"
    )
    num_cpus: int | None = option(None, "CPUs for a local Ray started by this job")
    torch_threads: int | None = option(
        None,
        "Intra-op threads per worker (default: what Ray sets from --cpus-per-worker, "
        "at least 1); more than the reserved CPUs can pay off when decoding is light",
    )
    stall_minutes: float = option(
        10.0,
        "Stop the run with an error when no training or evaluation batch arrived for this "
        "many minutes (worker start-up included): a stalled data path fails, never waits",
    )


@dataclass
class ModelSection:
    weights: str = option(
        DEFAULT_WEIGHTS,
        "Initial weights: 'default' = torchvision's IMAGENET1K_V2 (downloaded once into "
        "the torch cache), 'none' = random init, or a local state-dict path (a "
        "backbone-only `features.*` dict is fine)",
    )
    input_size: int = option(224, "Side of the square network input, in pixels")
    activation: str = option(
        "relu6",
        "Activation of the backbone: torchvision's 'relu6', or 'relu', what the int8 export's "
        "quantizable MobileNetV2 runs (so the export swaps nothing)",
        choices=ACTIVATIONS,
    )
    freeze_backbone: bool = option(False, "Train only the new classifier head")
    dropout: float = option(0.2, "Dropout before the classifier head (torchvision's default)")


@dataclass
class OptimSection:
    epochs: int = option(20, "Epochs to train (the total, including resumed ones)")
    batch_size: int = option(32, "Images per batch on each worker")
    optimizer: str = option(
        "adamw",
        "'adamw' (decoupled weight decay; steps of a similar size whatever the gradient's "
        "scale, so a fresh head's large early gradients cannot throw the pretrained "
        "weights far) or 'sgd' with --momentum (docs/history.md, training)",
        choices=OPTIMIZERS,
    )
    lr: float = option(
        0.0005,
        "Peak learning rate, for a global batch of 32 images: scaled by "
        "batch-size x workers / 32 (the square root of that for AdamW)",
    )
    momentum: float = option(0.9, "With --optimizer sgd: momentum")
    weight_decay: float = option(0.05, "Weight decay (AdamW's decoupled one; SGD's L2)")
    label_smoothing: float = option(0.1, "CrossEntropy label smoothing")
    lr_schedule: str = option(
        "cosine", "Learning-rate schedule after the warm-up, per step", choices=SCHEDULES
    )
    warmup_epochs: float = option(
        1.0,
        "Epochs over which the learning rate rises linearly from near 0 to --lr, step by "
        "step, before the schedule; 0 = off",
    )
    clip_grad_norm: float = option(
        5.0,
        "Largest gradient norm of a step: a larger gradient is scaled down to it before the "
        "step (torchvision's references' --clip-grad-norm), so one bad batch cannot throw "
        "the weights far; 0 = off. Each epoch's largest and mean norm are in history.json",
    )
    head_epochs: int = option(
        0,
        "Epochs at the start that train only the new head, the backbone held still (its "
        "gradients are dropped, its batch-norm statistics still adapt), before the whole "
        "network trains: linear probing, then fine-tuning (Kumar et al. 2022); 0 = off",
    )
    divergence_epochs: int = option(
        2,
        "Stop the run when the train loss rose (by 15 % or more in all) and the train "
        "accuracy fell this many epochs in a row (a non-finite loss stops it at once); "
        "0 = only non-finite losses",
    )


@dataclass
class DataSection:
    balanced: bool = option(
        True,
        "Class-balanced epochs: every class drawn as often as the largest one, minority "
        "images repeated, each draw freshly augmented",
    )
    samples_per_class: int | None = option(
        None, "With --balanced: draws per class and epoch (default: the largest class's size)"
    )
    balance_power: float = option(
        0.0,
        "With --balanced: how far the draw leans back toward the natural class shares: "
        "class c gets samples_per_class x (n_c / largest n)^q draws, so 0 balances fully, "
        "0.5 is square-root sampling (minority classes raised, the majority's share kept "
        "larger) and 1 is the natural draw (docs/history.md, training)",
    )
    shuffle_buffer: int = option(256, "Rows in each worker's local shuffle buffer")
    augment_batch_size: int = option(32, "Rows per Ray Data decode/augment task batch")
    cutout_fraction: float = option(
        0.25, "Largest CoarseDropout hole, as a fraction of the input side"
    )
    rotate_degrees: float = option(30.0, "Largest random rotation, in degrees")
    colour_jitter: float = option(
        0.0,
        "Random brightness, contrast and saturation change up to this share (hue a quarter "
        "of it), on 4 in 5 draws; 0 = off. Helps when the "
        "background's colour differs between recordings (docs/history.md, training)",
    )


@dataclass
class RunSection:
    resume: bool = option(False, "Continue the run in RUN_URI from its latest checkpoint")
    seed: int = option(0, "Seed for weights of the new head and the run's randomness")
    checkpoints_to_keep: int = option(
        2, "Checkpoints kept: the best by selection accuracy (val, else test) and the latest"
    )
    max_failures: int = option(2, "Worker failures survived (the run restarts from a checkpoint)")
    report_images: int = option(8, "Images per class in the misclassified / sample grids")


@dataclass
class TrainConfig:
    data_uri: str = option("", "The cleaning job's output (its _manifest.json's folder)")
    run_uri: str = option("", "Where checkpoints, TensorBoard logs and reports go")
    storage: StorageConfig = section(StorageConfig)
    scaling: ScalingSection = section(ScalingSection)
    model: ModelSection = section(ModelSection)
    optim: OptimSection = section(OptimSection)
    data: DataSection = section(DataSection)
    run: RunSection = section(RunSection)

    def validate(self) -> None:
        """See `validate`: a pluggable hook for a general settings check."""
        validate(self)


@dataclass
class ExportSection:
    backend: str = option("x86", "Quantized engine (x86 = fbgemm with AVX-512 VNNI paths)")
    calibration_images: int = option(
        256, "Train images the observers see (a seeded random sample across classes)"
    )
    seed: int = option(0, "Seed of the calibration sample")
    reduce_range: bool = option(
        False,
        "7-bit activations: set it to serve on x86 CPUs without AVX-512 VNNI (fbgemm's "
        "int16 accumulation can saturate there); off, int8 keeps more accuracy on CPUs "
        "with VNNI (docs/history.md, training section)",
    )
    float_blocks: int = option(
        4,
        "Leading MobileNetV2 blocks (features.0 .. N-1) kept in fp32. On small objects "
        "against plain backgrounds their activations are heavy-tailed (the object is the "
        "tail) and 8-bit activations lose it; 0 quantizes the whole network "
        "(docs/history.md, training section)",
    )
    batch_size: int = option(32, "Images per inference batch while calibrating and testing")
    max_int8_drop: float = option(
        1.5, "Fail when int8 test accuracy is lower than fp32's by more than these points"
    )


@dataclass
class ExportConfig:
    run_uri: str = option("", "A `fit` run")
    model_dir: str = option("", "Local folder for model.pt and model.json")
    storage: StorageConfig = section(StorageConfig)
    export: ExportSection = section(ExportSection)

    def validate(self) -> None:
        """See `validate`."""
        validate(self)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# (field, test, what it must be): every numeric setting of both commands, checked on the
# driver before Ray starts, so a bad value is one line naming its flag, not a traceback.
def _at_least(low: float) -> tuple[Any, str]:
    return (lambda v: v >= low), f"at least {low:g}"


def _within(low: float, high: float, high_open: bool = False) -> tuple[Any, str]:
    if high_open:
        return (lambda v: low <= v < high), f"in [{low:g}, {high:g})"
    return (lambda v: low <= v <= high), f"in [{low:g}, {high:g}]"


_POSITIVE = ((lambda v: v > 0), "above 0")
RULES: dict[str, tuple[Any, str]] = {
    "workers": _at_least(1),
    "cpus_per_worker": _POSITIVE,
    "num_cpus": _at_least(1),
    "torch_threads": _at_least(1),
    "stall_minutes": _POSITIVE,
    "input_size": _at_least(MIN_INPUT_SIZE),
    "dropout": _within(0, 1, high_open=True),
    "epochs": _at_least(1),
    "batch_size": _at_least(1),
    "lr": _POSITIVE,
    "momentum": _within(0, 1, high_open=True),
    "weight_decay": _at_least(0),
    "label_smoothing": _within(0, 1, high_open=True),
    "warmup_epochs": _at_least(0),
    "clip_grad_norm": _at_least(0),
    "head_epochs": _at_least(0),
    "divergence_epochs": _at_least(0),
    "samples_per_class": _at_least(1),
    "balance_power": _within(0, 1),
    "shuffle_buffer": _at_least(0),
    "augment_batch_size": _at_least(1),
    "cutout_fraction": _within(0.05, 1),
    "rotate_degrees": _within(0, 180),
    "colour_jitter": _at_least(0),
    "checkpoints_to_keep": _at_least(1),
    "max_failures": _at_least(-1),
    "report_images": _at_least(0),
    "calibration_images": _at_least(1),
    "float_blocks": _within(0, 18),
}


def _leaves(config: Any) -> list[tuple[str, Any]]:
    """(field name, value) of every setting, sections flattened (names are unique)."""
    out: list[tuple[str, Any]] = []
    for f in fields(config):
        value = getattr(config, f.name)
        out += _leaves(value) if is_dataclass(value) else [(f.name, value)]
    return out


def validate(config: TrainConfig | ExportConfig) -> None:
    """Raise ValueError naming the flag of the first bad setting: each value within its
    range (None = the documented automatic choice), then the rules between settings."""
    for name, value in _leaves(config):
        if name in ("data_uri", "run_uri", "model_dir") and not value:
            raise ValueError(f"{name.upper()} is empty")
        if name not in RULES or value is None or isinstance(value, bool):
            continue
        test, what = RULES[name]
        if not (math.isfinite(value) and test(value)):
            raise ValueError(f"{_flag(name)} must be {what}, got {value!r}")
    if isinstance(config, TrainConfig):
        optim = config.optim
        if optim.head_epochs >= optim.epochs:
            raise ValueError(
                f"--head-epochs ({optim.head_epochs}) must be below --epochs ({optim.epochs}): "
                "the whole network needs at least one epoch (--freeze-backbone trains only "
                "the head)"
            )
        if optim.warmup_epochs > optim.epochs:
            raise ValueError(
                f"--warmup-epochs ({optim.warmup_epochs:g}) must not exceed --epochs "
                f"({optim.epochs})"
            )

"""Settings of the training job: one typed config, a TOML file and flags mapped onto it."""

from __future__ import annotations

from dataclasses import dataclass

from common.backbone import DEFAULT_WEIGHTS
from common.config import option, section
from common.storage import StorageConfig

SCHEDULES = ("constant", "cosine", "step")
SHUFFLES = ("global", "blocks")
ACTIVATIONS = ("relu6", "relu")


@dataclass
class ScalingSection:
    workers: int = option(1, "Ray Train workers (one process each; one GPU each with --gpu)")
    cpus_per_worker: float = option(
        1.0,
        "CPUs reserved per worker; fractions leave CPUs to Ray Data's decode and "
        "augmentation tasks on small machines",
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
    lr: float = option(0.001, "SGD learning rate (per worker batch; not scaled by workers)")
    momentum: float = option(0.95, "SGD momentum")
    weight_decay: float = option(0.0, "SGD weight decay")
    label_smoothing: float = option(0.0, "CrossEntropy label smoothing")
    lr_schedule: str = option(
        "constant", "Learning-rate schedule over the epochs", choices=SCHEDULES
    )
    lr_step_epochs: int = option(7, "With --lr-schedule step: epochs between decays")
    lr_step_gamma: float = option(0.1, "With --lr-schedule step: decay factor")
    clip_grad_norm: float = option(
        0.0,
        "Largest gradient norm of a step: a larger gradient is scaled down to it before the "
        "step (torchvision's references' --clip-grad-norm), so one bad batch cannot throw "
        "the weights far at a large learning rate; 0 = off. Each epoch's largest and mean "
        "norm are in history.json either way",
    )
    head_epochs: int = option(
        0,
        "Epochs at the start that train only the new head, the backbone held still (its "
        "gradients are dropped, its batch-norm statistics still adapt), before the whole "
        "network trains: linear probing, then fine-tuning (Kumar et al. 2022), so a random "
        "head's first large gradients do not distort the pretrained features; 0 = off",
    )
    ema_decay: float = option(
        0.0,
        "Evaluate, checkpoint and export an exponential moving average of the weights, "
        "updated every step with this decay (torchvision's references' model EMA; 0.995 "
        "averages about the last 200 steps); 0 = off, the trained weights themselves "
        "(docs/benchmarks.md, training)",
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
        "larger) and 1 is the natural draw (docs/benchmarks.md, training)",
    )
    shuffle: str = option(
        "global",
        "Per-epoch order of the train rows: 'global' shuffles the (still compressed) rows "
        "across all shards, 'blocks' only randomises shard order (cheaper on huge data "
        "sets, but the cleaning job writes shards by class, so batches come out one-class)",
        choices=SHUFFLES,
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
        "of it), on 4 in 5 draws; 0 = off, the seed's augmentations. Helps when the "
        "background's colour differs between recordings (docs/benchmarks.md, training)",
    )
    downscale_min: float = option(
        1.0,
        "Smallest factor of a random resolution loss (the image shrunk by a factor between "
        "this and 1, then enlarged back), on half the draws; 1 = off, the seed's "
        "augmentations. Why: distant objects of unseen recordings arrive as few, soft "
        "pixels, while nearer ones teach sharp detail (docs/benchmarks.md, training)",
    )
    contrast_gain: float = option(
        1.0,
        "Largest contrast gain of the input preprocessing, in training and serving alike: "
        "each image's differences from its mean colour are scaled until its brightness "
        "range fills 0-255, by at most this factor, so faint small objects on plain sky "
        "stand out; 1 = off (docs/benchmarks.md, training)",
    )


@dataclass
class RunSection:
    resume: bool = option(False, "Continue the run in RUN_URI from its latest checkpoint")
    seed: int = option(0, "Seed for weights of the new head and the run's randomness")
    checkpoints_to_keep: int = option(
        2, "Checkpoints kept: the best by test accuracy and the latest"
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
        "with VNNI (docs/benchmarks.md, training section)",
    )
    float_blocks: int = option(
        4,
        "Leading MobileNetV2 blocks (features.0 .. N-1) kept in fp32. On small objects "
        "against plain backgrounds their activations are heavy-tailed (the object is the "
        "tail) and 8-bit activations lose it; 0 quantizes the whole network "
        "(docs/benchmarks.md, training section)",
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

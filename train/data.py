"""Ray Data datasets from the cleaning job's shards: decode and augment in Ray Data
tasks, so the training loop only moves tensors.

Class-balanced epochs: every train row is repeated `rate[label]` times per epoch,
where rate = draws per class / the class's size. The whole part of the rate is
deterministic, the fraction a fresh Bernoulli draw, so the largest class appears once
per image and minority classes are oversampled with replacement; per-class totals are
balanced to within the Bernoulli noise of the fractional part. Each repeat is augmented
independently, and because Ray Train re-executes the dataset every epoch, every epoch
gets new draws. It needs no driver-side index: rows stream, so it scales with the data.
Ray Train then splits each epoch's rows equally across workers, dropping fewer rows
than there are workers.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence

import numpy as np
import ray.data
from PIL import Image
from pyarrow.fs import FSSpecHandler, PyFileSystem

from common.dataset import read_shards
from common.preprocess import EvalTransform, decode_rgb
from common.storage import StorageConfig, filesystem
from train.config import DataSection
from train.presets import augment, train_transform

COLUMNS = ["image", "label"]


def read_split(uris: list[str], storage: StorageConfig) -> ray.data.Dataset:
    """JPEG bytes and labels of the given shards, through the job's storage settings."""
    fs, _ = filesystem(uris[0], storage)
    paths = [fs._strip_protocol(u) for u in uris]
    return ray.data.read_parquet(
        paths, filesystem=PyFileSystem(FSSpecHandler(fs)), partitioning=None
    ).select_columns(COLUMNS)


def class_counts(uris: list[str], storage: StorageConfig) -> dict[int, int]:
    """Rows per label, from the label column only (no pixels read)."""
    labels = read_shards(uris, storage, columns=["label"])["label"].to_pylist()
    return dict(Counter(labels))


def balance_rates(
    counts: dict[int, int], per_class: int | None, power: float = 0.0
) -> dict[int, float]:
    """Repeats per row so class c contributes per_class x (n_c / n_max)^power rows
    (per_class defaults to the largest class's size, n_max) per epoch: power 0 draws
    every class equally, 1 keeps the natural shares, between them the minority classes
    are raised less than fully (square-root sampling at 0.5)."""
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"balance power must be within [0, 1], got {power}")
    largest = max(counts.values())
    target = per_class or largest
    return {label: target * (n / largest) ** power / n for label, n in counts.items() if n}


def repeat_rows(batch: dict[str, np.ndarray], rates: dict[int, float]) -> dict[str, np.ndarray]:
    """Repeat each row floor(rate) times plus once more with probability frac(rate).
    Unseeded on purpose: each epoch's execution must draw anew."""
    rate = np.array([rates[int(label)] for label in batch["label"]], dtype=np.float64)
    rng = np.random.default_rng()
    copies = np.floor(rate).astype(np.int64) + (rng.random(len(rate)) < rate % 1)
    return {key: np.repeat(values, copies, axis=0) for key, values in batch.items()}


def augment_batch(
    batch: dict[str, np.ndarray],
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    data: DataSection,
) -> dict[str, np.ndarray]:
    """Decode and augment a batch: one fresh random draw per row."""
    transform = train_transform(input_size, mean, std, data)
    images = [augment(transform, decode_rgb(blob)) for blob in batch["image"]]
    return {"image": np.stack(images), "label": batch["label"].astype(np.int64)}


def eval_batch(batch: dict[str, np.ndarray], transform: EvalTransform) -> dict[str, np.ndarray]:
    """Decode and apply the evaluation transform (the Lambda's)."""
    images = [transform.array(Image.open(io.BytesIO(blob))) for blob in batch["image"]]
    return {"image": np.stack(images), "label": batch["label"].astype(np.int64)}


def epoch_draw(
    ds: ray.data.Dataset, rates: dict[int, float] | None, block_rows: int | None = None
) -> ray.data.Dataset:
    """One epoch's draw of rows (all of them, once, when `rates` is None), in a fresh
    random order. The shuffle is global (the cleaning job writes shards by class, so
    shuffling shard order alone gives one-class batches, which did not learn: docs/
    history.md, training); it moves compressed rows, before decoding, and comes after
    the repeats so a minority image's copies land in different batches. With
    `block_rows`, the draw is cut into blocks of that many rows, so decoding runs as
    many small tasks that stream into training instead of one task per shuffled block
    (a small split shuffles into a single block: the first batch would wait for the
    whole epoch to be augmented)."""
    if rates is not None:
        ds = ds.map_batches(repeat_rows, fn_kwargs={"rates": rates}, batch_format="numpy")
    ds = ds.random_shuffle()
    return ds.repartition(target_num_rows_per_block=block_rows) if block_rows else ds


def train_dataset(
    uris: list[str],
    storage: StorageConfig,
    rates: dict[int, float] | None,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    data: DataSection,
) -> ray.data.Dataset:
    """The train split, balanced when `rates` is given, augmented per draw. The
    compressed rows are read once into Ray's object store (spilled to disk when it
    fills), not listed and read again from storage every epoch: each epoch's draw,
    shuffle and augmentation start from there."""
    compressed = read_split(uris, storage).materialize()
    draw = epoch_draw(compressed, rates, data.augment_batch_size)
    return draw.map_batches(
        augment_batch,
        fn_kwargs={"input_size": input_size, "mean": mean, "std": std, "data": data},
        batch_size=data.augment_batch_size,
        batch_format="numpy",
    )


def eval_dataset(
    uris: list[str], storage: StorageConfig, transform: EvalTransform, batch_rows: int
) -> ray.data.Dataset:
    """A split through the evaluation transform, for per-epoch metrics; its compressed
    rows are read once, like the train split's."""
    return (
        read_split(uris, storage)
        .materialize()
        .map_batches(
            eval_batch,
            fn_kwargs={"transform": transform},
            batch_size=batch_rows,
            batch_format="numpy",
        )
    )


def train_labels(uris: list[str], storage: StorageConfig) -> tuple[list[int], list[str]]:
    """Every train row's label and shard, from the label column only (no pixels read)."""
    table = read_shards(uris, storage, columns=["label"], with_shard=True)
    return table["label"].to_pylist(), table["_shard"].to_pylist()


def mixed_sample(
    labels: list[int], shards: list[str], storage: StorageConfig, count: int
) -> list[tuple[bytes, int]]:
    """`count` train images (at least one per class) taken in turn from every class, so
    a sample batch shows them all; reads one shard per class."""
    first_shard = {}
    for label, shard in zip(labels, shards, strict=True):
        first_shard.setdefault(label, shard)
    per_class: dict[int, list[bytes]] = {}
    for label, shard in sorted(first_shard.items()):
        table = read_shards([shard], storage, columns=["image", "label"])
        rows = zip(table["image"].to_pylist(), table["label"].to_pylist(), strict=True)
        per_class[label] = [image for image, y in rows if y == label]
    sample: list[tuple[bytes, int]] = []
    for turn in range(max(count, 1)):
        for label, images in per_class.items():
            if turn < len(images) and len(sample) < max(count, len(per_class)):
                sample.append((images[turn], label))
    return sample

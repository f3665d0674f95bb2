"""The seed's reports, written to RUN_URI at the end of `fit` (TensorBoard is written
while it trains: `train.live`).

history.json comes from the latest checkpoint (so a resumed run's is complete); the
classification report, metrics, confusion
matrix and misclassified grid evaluate the best checkpoint (picked on the val split
when there is one) on the test split with the evaluation transform the Lambda uses.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
import ray.train  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)

from common.dataset import TEST, read_shards, split_uris  # noqa: E402
from common.preprocess import EvalTransform, decode_rgb  # noqa: E402
from common.storage import filesystem, join  # noqa: E402
from train.checkpoint import DEFAULT_ACTIVATION, load_checkpoint, model_from_state  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.live import sample_views  # noqa: E402

FIGURE_INCHES = 2.0
DPI = 100


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: list[bytes], transform: EvalTransform, batch_size: int
) -> np.ndarray:
    """Top class per image."""
    return predict_each([model], images, transform, batch_size)[0]


def eval_batches(
    images: list[bytes], transform: EvalTransform, batch_size: int
) -> Iterator[torch.Tensor]:
    """JPEG bytes -> batches of the evaluation transform's tensors, in order."""
    for start in range(0, len(images), batch_size):
        yield torch.stack([transform.from_bytes(b) for b in images[start : start + batch_size]])


def predict_each(
    models: Sequence[torch.nn.Module],
    images: list[bytes],
    transform: EvalTransform,
    batch_size: int,
) -> list[np.ndarray]:
    """Top class per image for each model, decoding every image once for all of them."""
    out: list[list[np.ndarray]] = [[] for _ in models]
    for batch in eval_batches(images, transform, batch_size):
        for predictions, model in zip(out, models, strict=True):
            predictions.append(model(batch).argmax(dim=1).numpy())
    return [np.concatenate(p) if p else np.zeros(0, np.int64) for p in out]


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "test_images": int(len(y_true)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: Path) -> None:
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    size = FIGURE_INCHES * max(3, len(classes))
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
        ax=ax, xticks_rotation=45, colorbar=False
    )
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def image_grid(rows: list[tuple[str, list[tuple[np.ndarray, str]]]], path: Path) -> None:
    """A grid, one row per (row title, [(HWC image, caption)]); empty rows say so."""
    columns = max([len(items) for _, items in rows] + [1])
    fig, axes = plt.subplots(
        len(rows),
        columns,
        figsize=(FIGURE_INCHES * columns, FIGURE_INCHES * len(rows)),
        squeeze=False,
    )
    for r, (title, items) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(items):
                ax.imshow(items[c][0])
                ax.set_title(items[c][1], fontsize=8)
        axes[r][0].text(
            -0.1, 0.5, title, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=9
        )
        if not items:
            axes[r][0].set_title("(none)", fontsize=8)
    # The row titles sit left of the first column: a tight bounding box keeps them in the
    # picture, where tight_layout cannot make room for them on a one-column grid.
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def misclassified_grid(
    images: list[bytes],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: list[str],
    per_class: int,
    path: Path,
) -> None:
    """Per true class, its misclassified test images captioned with the prediction."""
    rows = []
    for label, name in enumerate(classes):
        wrong = np.flatnonzero((y_true == label) & (y_pred != label))[:per_class]
        rows.append(
            (
                f"true: {name}",
                [(decode_rgb(images[i]), f"pred: {classes[y_pred[i]]}") for i in wrong],
            )
        )
    image_grid(rows, path)


def augmentation_grids(
    cfg: TrainConfig, sample: list[tuple[bytes, int]], meta: dict[str, Any], out: Path
) -> None:
    """A train batch mixing every class, before (decoded) and after one draw of the
    training augmentation (the same views TensorBoard shows)."""
    classes = meta["classes"]
    before, after = sample_views(sample, cfg, meta["mean"], meta["std"])
    names = [classes[label] for _, label in sample]
    for title, views in (("decoded", before), ("augmented", after)):
        name = "before" if title == "decoded" else "after"
        grid = [(title, list(zip(views, names, strict=True)))]
        image_grid(grid, out / f"samples_{name}_augmentation.png")


def write_reports(
    cfg: TrainConfig,
    manifest: dict[str, Any],
    latest: ray.train.Checkpoint,
    best: ray.train.Checkpoint,
    sample: list[tuple[bytes, int]],
) -> dict[str, Any]:
    """Write every report into RUN_URI; returns metrics.json's content."""
    latest_state, meta = load_checkpoint(latest)
    best_state, _ = load_checkpoint(best)
    classes = meta["classes"]
    test = read_shards(
        split_uris(cfg.data_uri, manifest, TEST), cfg.storage, columns=["image", "label"]
    )
    images, y_true = test["image"].to_pylist(), np.asarray(test["label"].to_pylist())
    transform = EvalTransform.from_info(meta)
    y_pred = predict(
        model_from_state(best_state, len(classes), meta.get("activation", DEFAULT_ACTIVATION)),
        images,
        transform,
        cfg.optim.batch_size,
    )
    metrics = {
        **classification_metrics(y_true, y_pred, classes),
        "best_epoch": best_state["epoch"],
        # The split best_epoch was picked on: "test" means these figures are the best
        # of several looks at the test split, not an unseen estimate.
        "selection_split": meta.get("selection_split", TEST),
        "epochs": latest_state["epoch"],
        "classes": classes,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "history.json").write_text(json.dumps(latest_state["history"], indent=2))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "classification_report.txt").write_text(
            classification_report(
                y_true,
                y_pred,
                labels=list(range(len(classes))),
                target_names=classes,
                zero_division=0,
            )
        )
        plot_confusion(y_true, y_pred, classes, out / "confusion_matrix.png")
        misclassified_grid(
            images, y_true, y_pred, classes, cfg.run.report_images, out / "misclassified.png"
        )
        augmentation_grids(cfg, sample, meta, out)
        upload(out, cfg.run_uri, cfg)
    return metrics


def upload(folder: Path, run_uri: str, cfg: TrainConfig) -> None:
    """Copy the local report folder into RUN_URI (any fsspec target)."""
    fs, root = filesystem(run_uri, cfg.storage)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        target = join(root, str(path.relative_to(folder)))
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), target)

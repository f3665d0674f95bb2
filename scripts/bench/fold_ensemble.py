"""What averaging several fits gives on the video-grouped folds of `train_halmstad.py`.

For each fold, the best fp32 checkpoint of each named run (as `train export` picks it),
evaluated on the fold's test split:
- alone, and with horizontal-flip test-time augmentation (softmax of the image and its
  mirror, averaged);
- alone with the training draw's class prior divided out (post-hoc logit adjustment,
  Menon et al. 2021, tau = 1: log p(c|x) - log pi_c): a balanced sampler with
  `--balance-power` above 0 still leans toward the classes it draws most, and the
  targets ask for every class's recall;
- the runs' softmax outputs averaged: an ensemble, which is what several seeds or
  recipes could give at most by averaging away run-to-run variance;
- the runs' weights averaged (a uniform "model soup", Wortsman et al. 2022: one network,
  so it would keep the Lambda's size and latency), with the averaged batch-norm
  statistics, and with statistics re-estimated on train images (eval transform).

Then the same pooled over the folds (every kept crop tested once). Reads the runs that
`train_halmstad.py --folds K` wrote under ROOT/runs/fold{k}-{name}; trains nothing.

    RAY_AUTH_MODE=disabled PYTHONPATH=. .venv/bin/python scripts/bench/fold_ensemble.py \
        --root /tmp/hk --folds 3 --runs colour5clip colour5sqrtclip colour5sqrtcliplpft
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import update_bn

from common.dataset import TEST, TRAIN
from common.preprocess import EvalTransform
from common.storage import StorageConfig
from train.checkpoint import best_checkpoint_of_run, load_checkpoint, model_from_state
from train.export import read_images, recall_per_class
from train.reports import eval_batches

BATCH_SIZE = 64
BN_IMAGES = 1024  # train images that re-estimate the soup's batch-norm statistics
SEED = 0  # the sample of train images for the statistics
WIDTH_DIM = 3  # NCHW: a horizontal flip reverses the last axis


def batches(images: list[bytes], transform: EvalTransform) -> list[torch.Tensor]:
    """The evaluation transform's tensors, decoded once for every model of a fold."""
    return list(eval_batches(images, transform, BATCH_SIZE))


@torch.no_grad()
def probabilities(
    model: torch.nn.Module, inputs: list[torch.Tensor], mirrored: bool = False
) -> np.ndarray:
    """Softmax per image, or per horizontally mirrored image."""
    return np.concatenate(
        [
            model(torch.flip(x, dims=[WIDTH_DIM]) if mirrored else x).softmax(dim=1).numpy()
            for x in inputs
        ]
    )


def draw_prior(run_dir: Path) -> np.ndarray:
    """The share of each class in the images the run trained on, over all its epochs
    (history.json's label counts): the prior its softmax carries."""
    history = json.loads((run_dir / "history.json").read_text())
    counts = np.sum([epoch["train_label_counts"] for epoch in history], axis=0)
    return counts / counts.sum()


def average_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Float tensors averaged; counters (BN's num_batches_tracked) taken from the first."""
    return {
        key: sum(s[key] for s in states) / len(states) if value.is_floating_point() else value
        for key, value in states[0].items()
    }


def fold_outputs(
    root: Path, fold: int, runs: list[str]
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Softmax outputs of every variant on one fold's test split, its labels and classes."""
    storage = StorageConfig()
    states, priors, meta = [], [], {}
    for name in runs:
        run_dir = root / "runs" / f"fold{fold}-{name}"
        state, meta = load_checkpoint(best_checkpoint_of_run(str(run_dir), storage))
        priors.append(draw_prior(run_dir))
        print(
            f"fold{fold} {name}: best epoch {state['epoch']}, draw {priors[-1].round(3)}",
            flush=True,
        )
        states.append(state["model"])
    classes, transform = meta["classes"], EvalTransform.from_info(meta)
    images, labels = read_images(meta, TEST, storage)
    inputs = batches(images, transform)

    def network(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        return model_from_state({"model": weights}, len(classes), meta["activation"])

    out: dict[str, np.ndarray] = {}
    for name, weights, prior in zip(runs, states, priors, strict=True):
        model = network(weights)
        out[name] = probabilities(model, inputs)
        out[f"{name} + flip"] = (out[name] + probabilities(model, inputs, mirrored=True)) / 2
        adjusted = out[name] / prior  # argmax of log p(c|x) - log pi_c
        out[f"{name}, draw prior divided out"] = adjusted / adjusted.sum(axis=1, keepdims=True)
    out["ensemble (softmax mean)"] = np.mean([out[name] for name in runs], axis=0)
    soup = network(average_weights(states))
    out["soup, averaged BN"] = probabilities(soup, inputs)
    bn_images, _ = read_images(meta, TRAIN, storage, BN_IMAGES, SEED)
    # Averaged weights do not match averaged statistics: re-estimate them, as SWA does.
    update_bn(batches(bn_images, transform), soup)
    out["soup, BN re-estimated"] = probabilities(soup, inputs)
    return out, labels, classes


def row(name: str, predictions: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
    recalls = recall_per_class(predictions, labels, classes)
    cells = " | ".join(f"{r:.3f}" for r in recalls.values())
    return f"| {name} | {np.mean(predictions == labels):.3f} | {cells} |"


def print_table(
    title: str, rows: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]
) -> None:
    print(f"\n{title}\n| variant | accuracy | {' | '.join(classes)} |")
    print("|---" * (len(classes) + 2) + "|")
    for name, (predictions, labels) in rows.items():
        print(row(name, predictions, labels, classes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="train_halmstad.py's --root")
    parser.add_argument("--runs", nargs="+", required=True, help="run names, as in --runs there")
    parser.add_argument("--folds", type=int, required=True)
    parser.add_argument("--fold-ids", type=int, nargs="+", help="default: every fold")
    args = parser.parse_args()
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    classes: list[str] = []
    for fold in args.fold_ids if args.fold_ids is not None else range(args.folds):
        outputs, labels, classes = fold_outputs(args.root, fold, args.runs)
        rows = {name: (p.argmax(axis=1), labels) for name, p in outputs.items()}
        print_table(f"fold {fold} (fp32)", rows, classes)
        for name, pair in rows.items():
            pooled.setdefault(name, []).append(pair)
    print_table(
        "pooled over the folds (fp32)",
        {
            name: (np.concatenate([p for p, _ in pairs]), np.concatenate([y for _, y in pairs]))
            for name, pairs in pooled.items()
        },
        classes,
    )


if __name__ == "__main__":
    main()

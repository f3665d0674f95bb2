"""The cleaning job's decisions on the devkit sample lake: the behaviour pin of the whole
job (tests/test_clean_identity.py).

The lake is `devkit.sample_lake.demo_lake` without ../shared (the committed CC0 crops plus
the generated mess), so it is the same on every machine. The job runs at its defaults but
for the embedding weights, which change decisions (the content check and near-duplicate
verification need them): 'none' runs everywhere; 'local' (the ImageNet backbone in
../shared/weights) only where that file exists. Each run's decisions are the sorted rows
(source key, 'kept' or the rejection reason, split: none for a rejection) of the images
and rejected tables, in
tests/data/clean_identity_golden.json. Rewrite them only for a change meant to alter
decisions, and say so:

    .venv/bin/python tests/sample_lake_decisions.py --write
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from common.backbone import NO_WEIGHTS
from devkit.sample_lake import demo_lake
from devkit.weights import SHARED_WEIGHTS

GOLDEN = Path(__file__).resolve().parent / "data" / "clean_identity_golden.json"
# Weights case -> the `--embedding-weights` value; None: not on this machine.
WEIGHTS = {
    "none": NO_WEIGHTS,
    "local": str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else None,
}


def write_lake(root: Path) -> None:
    """The sample lake as a local folder, one sub-folder per class."""
    for name, data in demo_lake(shared=False).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def decisions(output: Path, lake: Path) -> list[list[str | None]]:
    """Sorted [source key, 'kept' or reason, split] of every row of images and rejected."""
    manifest = json.loads((output / "_manifest.json").read_text())
    prefix = lake.as_posix().rstrip("/") + "/"
    rows = []
    for table in ("images", "rejected"):
        columns = ["source_uri", "reason" if table == "rejected" else "split"]
        for rel in manifest["files"][table]:
            for row in pq.read_table(output / rel, columns=columns).to_pylist():
                key = row["source_uri"].split(prefix, 1)[-1]
                rows.append([key, row.get("reason", "kept"), row.get("split")])
    return sorted(rows, key=lambda r: [str(v) for v in r])


def run_case(weights: str, work: Path) -> list[list[str | None]]:
    """Clean the sample lake at the job's defaults with `weights`; its decisions."""
    from pipeline.cli import main

    lake, output = work / "lake", work / "clean"
    write_lake(lake)
    argv = ["clean", str(lake), str(output), "--no-progress", "--embedding-weights", weights]
    if main(argv) != 0:
        raise RuntimeError(f"the cleaning job failed on the sample lake ({weights})")
    return decisions(output, lake)


def golden_text(found: dict[str, list[list[str | None]]]) -> str:
    """JSON with one decision a line, so a diff of the golden reads as a list of files."""
    cases = [
        f"{json.dumps(case)}: [\n" + ",\n".join(f"  {json.dumps(r)}" for r in rows) + "\n ]"
        for case, rows in sorted(found.items())
    ]
    return "{\n " + ",\n ".join(cases) + "\n}\n"


if __name__ == "__main__":
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    found = {}
    for case, weights in WEIGHTS.items():
        if weights is not None:
            with tempfile.TemporaryDirectory() as work:
                found[case] = run_case(weights, Path(work))
    for case, rows in found.items():
        outcomes: dict[str, int] = {}
        for _, outcome, _ in rows:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        print(case, len(rows), dict(sorted(outcomes.items())))
    if "--write" in sys.argv:
        GOLDEN.write_text(golden_text(found))
    elif "--compare" in sys.argv:
        expected = json.loads(GOLDEN.read_text())
        same = {case: rows == expected.get(case) for case, rows in found.items()}
        print("identical to the golden:", same)

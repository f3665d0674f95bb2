"""The product on embedded defaults: a local S3 endpoint, a sample lake, the cleaning job.

    bash scripts/demo.sh [--per-class N] [--mess N] [--out DIR]

Starts moto's S3 server on loopback, uploads a messy sample lake to
s3://lake/raw/<class>/..., runs `python -m pipeline clean` on it through a local
Ray (normalise, junk checks, de-duplication, split), and copies the published output
to a local folder (the S3 server lives only as long as the demo) so report.json and
the review page report.html can be opened afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from devkit.local_s3 import LocalS3, upload_files
from devkit.sample_lake import demo_lake
from devkit.weights import embedding_args

BUCKET = "lake"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="devkit.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--per-class", type=int, default=40, help="real photos per class")
    parser.add_argument(
        "--mess",
        type=int,
        default=60,
        help="real messy files from ../shared/data/messy-ingredients, if present",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/demo"),
        help="local folder that receives a copy of the output",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    print("demo: local S3 + local Ray + the sample lake; about a minute on 2 cores.")
    with LocalS3() as s3:
        os.environ.update(s3.env())  # before Ray starts, so its workers inherit it
        s3.create_bucket(BUCKET)
        files = demo_lake(args.per_class, args.mess)
        upload_files(s3.filesystem(), f"{BUCKET}/raw", files)
        print(f"demo: uploaded {len(files)} files to s3://{BUCKET}/raw/ at {s3.endpoint_url}")

        from pipeline.cli import main as pipeline_main

        started = time.perf_counter()
        code = pipeline_main(
            [
                "clean",
                f"s3://{BUCKET}/raw",
                f"s3://{BUCKET}/clean",
                "--endpoint-url",
                s3.endpoint_url,
                *embedding_args(),
            ]
        )
        if code:
            return code
        local = args.out / "clean"
        if local.exists():
            shutil.rmtree(local)
        s3.filesystem().get(f"{BUCKET}/clean", str(local), recursive=True)
        print(f"demo: cleaning took {time.perf_counter() - started:.1f} s")
    print(f"demo: output copied to {local}/ (images/, rejected/, _manifest.json)")
    print(f"demo: report at {local / 'report.json'}")
    print(f"demo: review page (open in a browser) at {local / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Installable parts: extras per job, serving without the training stack, a licence, pins
that agree with the lock, and the console command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# What the Lambda image must not carry: the cleaning and training stacks.
NOT_SERVING = (
    "ray", "albumentations", "torchvision", "pyarrow", "fsspec", "s3fs", "sklearn",
    "matplotlib", "cv2", "numba", "imagehash", "tensorboard", "pipeline", "train",
)  # fmt: skip


def pins(requirements: list[str]) -> dict[str, str]:
    """{normalised name: exact version} of the `name==version` lines."""
    out = {}
    for line in requirements:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^]]*\])?==([^\s;#]+)", line)
        if match:
            out[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(3)
    return out


def test_serving_imports_nothing_of_the_training_stack():
    code = (
        "import sys, serve_lambda.handler\n"
        f"print(','.join(m for m in {NOT_SERVING!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"serving imported: {out.stdout.strip()}"


def test_every_job_has_its_extra_and_all_of_them_are_pinned_to_the_lock():
    extras = PROJECT["optional-dependencies"]
    assert {"clean", "train", "serve", "test", "all"} <= set(extras)
    assert extras["all"] == ["lakeclean[clean,train,serve]"]
    lock = pins((ROOT / "requirements.lock").read_text().splitlines())
    for name in ("clean", "train", "serve"):
        for dep, version in pins(extras[name]).items():
            assert lock.get(dep) == version, (name, dep, version, lock.get(dep))


def test_the_lambda_image_installs_exactly_the_serving_pins():
    image = pins((ROOT / "serve_lambda" / "requirements.txt").read_text().splitlines())
    lock = pins((ROOT / "requirements.lock").read_text().splitlines())
    declared = pins(PROJECT["optional-dependencies"]["serve"])
    declared |= {name: lock[name] for name in ("numpy", "pillow")}  # the base dependencies
    assert image == declared
    dockerfile = (ROOT / "serve_lambda" / "Dockerfile").read_text()
    assert "-r /tmp/requirements.txt" in dockerfile and "pip install ." not in dockerfile


def test_licence_is_an_spdx_string_with_its_file():
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_no_pin_is_left_that_nothing_uses():
    """Every direct dependency is imported by the code, or is a runtime the product runs
    (awslambdaric, tensorboard's writer via torch) or Ray Data draws its bars with (tqdm)."""
    used_indirectly = {"awslambdaric", "tensorboard", "tqdm", "torch", "ray"}
    module_of = {"pillow": "PIL", "scikit-learn": "sklearn", "resvg-py": "resvg_py",
                 "opencv-python-headless": "cv2"}  # fmt: skip
    sources = "\n".join(
        p.read_text()
        for folder in ("common", "pipeline", "train", "serve_lambda")
        for p in (ROOT / folder).rglob("*.py")
    )
    for extra in ("clean", "train", "serve"):
        for dep in pins(PROJECT["optional-dependencies"][extra]):
            if dep in used_indirectly:
                continue
            module = module_of.get(dep, dep.replace("-", "_"))
            assert re.search(rf"^\s*(import|from) {module}\b", sources, re.M), dep


def test_console_command_runs_every_job():
    assert PROJECT["scripts"] == {"lakeclean": "common.console:main"}
    script = shutil.which("lakeclean", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "common.console"]
    out = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    for job in ("clean", "fit", "export", "serve", "demo"):
        assert job in out.stdout
    bad = subprocess.run(
        [*command, "fit", "d", "r", "--epochs", "0"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "epochs" in bad.stderr

"""The command line as a user meets it: --help, one-line failures with exit status 2, the
Python API, and what a run prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import _leaf_fields
from pipeline.config import CleanConfig

# Ray's own log format: "2026-01-01 10:00:00,123	INFO worker.py:1 -- ...".
RAY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING|DEBUG)")


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_installed_package_runs_from_any_directory(tmp_path):
    # Not only from the checkout's root: every package the jobs import is installed.
    out = run_cli("clean", "--help", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr


def test_help_documents_every_option():
    out = run_cli("clean", "--help")
    assert out.returncode == 0
    for path, _, _ in _leaf_fields(CleanConfig):
        if path[-1] not in ("input_uri", "output_uri"):
            assert "--" + path[-1].replace("_", "-") in out.stdout, path


def test_missing_input_is_a_one_line_error(tmp_path):
    out = run_cli("clean", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert out.stderr.startswith("error: input") and "does not exist" in out.stderr


def test_bad_config_file_is_a_one_line_error(tmp_path):
    config = tmp_path / "clean.toml"
    config.write_text("[normalize]\nmax_sidee = 3\n")
    out = run_cli("clean", str(tmp_path), str(tmp_path / "out"), "--config", str(config))
    assert out.returncode == 2
    assert "max_sidee" in out.stderr


def test_config_file_and_flags_layer(tmp_path):
    from common.config import load_config

    config = tmp_path / "clean.toml"
    config.write_text("[normalize]\nmax_side = 256\njpeg_quality = 80\n")
    cfg = load_config(CleanConfig, config, jpeg_quality=70)
    assert (cfg.normalize.max_side, cfg.normalize.jpeg_quality) == (256, 70)
    assert cfg.normalize.min_side == CleanConfig().normalize.min_side


def small_lake(root: Path) -> Path:
    from devkit.messy_lake import encode, photo

    for i, name in enumerate(("cats/a.png", "cats/b.png", "dogs/c.png")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode(photo(64, 64, i + 1), "PNG"))
    return root


def test_the_python_api_runs_the_job_and_returns_the_summary(tmp_path, ray_session):
    import pipeline
    from common.config import ConfigError
    from devkit.weights import local_embedding_weights

    lake, out = small_lake(tmp_path / "lake"), tmp_path / "out"
    cfg = pipeline.CleanConfig(input_uri=str(lake), output_uri=str(out))
    cfg.dedup.embedding_weights = local_embedding_weights()
    cfg.split.train_fraction = 1.5
    with pytest.raises(ConfigError, match="train_fraction"):
        pipeline.clean(cfg)
    assert not out.exists()  # stopped before any work
    cfg.split.train_fraction = 0.5
    result = pipeline.clean(cfg)
    assert result.report["totals"]["listed"] == 3
    assert (out / "report.html").is_file() and result.output_uri == str(out)


def test_a_clean_run_prints_the_jobs_lines_not_rays(tmp_path):
    """Not a terminal: no progress bars, no Ray INFO or token-auth notice; one line per
    stage; the summary names the review page."""
    from devkit.weights import embedding_args

    lake = small_lake(tmp_path / "lake")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "clean", str(lake), str(tmp_path / "out")]
        + embedding_args(),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    lines = (out.stdout + out.stderr).splitlines()
    ray_lines = [line for line in lines if RAY_LOG_LINE.search(line) or "pid=" in line]
    assert ray_lines == [], ray_lines
    assert "Token authentication" not in out.stderr
    assert any(line.startswith("normalise ") and "files/s" in line for line in lines), lines
    assert f"review:  {tmp_path / 'out' / 'report.html'}" in out.stdout


@pytest.mark.parametrize("verbose", [False, True])
def test_rays_false_alarms_and_info_are_shown_only_when_verbose(monkeypatch, verbose):
    import logging

    from common import logs

    monkeypatch.setenv(logs.VERBOSE_ENV, "1" if verbose else "0")
    logs.quiet_libraries()
    hang = logging.getLogger("ray.data.dataset").makeRecord(
        "ray.data.dataset", logging.WARNING, __file__, 1,
        "Warning: The Ray cluster currently does not have any available CPUs.", (), None,
    )  # fmt: skip
    assert bool(logging.getLogger("ray.data.dataset").filter(hang)) == verbose
    assert logging.getLogger("ray.train").isEnabledFor(logging.INFO) == verbose
    assert logging.getLogger("ray.data.dataset").isEnabledFor(logging.WARNING)

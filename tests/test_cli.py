"""The command line as a user meets it: --help, and one-line failures with exit status 2."""

from __future__ import annotations

import subprocess
import sys

from common.config import _leaf_fields
from pipeline.config import CleanConfig


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

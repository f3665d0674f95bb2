"""Bad settings stop every job before any work: exit status 2 and one line naming the
field, for flags and TOML alike; --help grouped by section; --print-config round-trips."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError, leaf_fields, load_config, to_toml, validate
from devkit.messy_lake import encode, photo
from pipeline.cli import main as clean_main
from pipeline.config import CleanConfig
from serve_lambda.config import LocalConfig
from train.cli import main as train_main
from train.config import ExportConfig, TrainConfig

# (what is wrong, flags, TOML, the field the error must name)
BAD_CLEAN_SETTINGS = [
    ("type", ["--max-side", "big"], '[normalize]\nmax_side = "big"\n', "max_side"),
    ("type", ["--jpeg-quality", "9.5"], "[normalize]\njpeg_quality = 9.5\n", "jpeg_quality"),
    ("type, bool", None, "[storage]\nanon = 1\n", "anon"),
    ("range", ["--max-side", "-5"], "[normalize]\nmax_side = -5\n", "max_side"),
    ("range", ["--train-fraction", "1.5"], "[split]\ntrain_fraction = 1.5\n", "train_fraction"),
    ("range, item", ["--background", "0,0,300"], "[normalize]\nbackground = [0, 0, 300]\n",
     "background"),
    ("choice", ["--hash-kind", "md5"], '[dedup]\nhash_kind = "md5"\n', "hash_kind"),
    ("choice, item", ["--junk-checks", "too_small,nope"], '[junk]\njunk_checks = ["nope"]\n',
     "junk_checks"),
    ("cross-field", ["--train-fraction", "0.8", "--val-fraction", "0.3"],
     "[split]\ntrain_fraction = 0.8\nval_fraction = 0.3\n", "val_fraction"),
    ("cross-field", ["--min-side", "600"], "[normalize]\nmin_side = 600\n", "min_side"),
    ("unknown", ["--max-sidee", "3"], "[normalize]\nmax_sidee = 3\n", "max_sidee"),
]  # fmt: skip


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    for name in ("cats/a.png", "dogs/b.png"):
        (tmp_path / "lake" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lake" / name).write_bytes(encode(photo(48, 48, 1), "PNG"))
    return tmp_path / "lake"


def run_main(main, argv: list[str]) -> int:  # noqa: ANN001 - a CLI's main
    """A CLI's exit status, in process (argparse's errors exit via SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def assert_one_line_naming(err: str, field: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(("error: bad setting", "error: unrecognized arguments")), err
    assert field in lines[0] or "--" + field.replace("_", "-") in lines[0], err


@pytest.mark.parametrize("kind, flags, toml, field", BAD_CLEAN_SETTINGS)
@pytest.mark.parametrize("source", ["flags", "toml"])
def test_a_bad_clean_setting_stops_before_any_work(
    lake, tmp_path, capsys, source, kind, flags, toml, field
):
    out = tmp_path / "out"
    if source == "flags":
        if flags is None:
            pytest.skip("a bool flag takes no value: --anon / --no-anon")
        extra = flags
    else:
        (tmp_path / "clean.toml").write_text(toml)
        extra = ["--config", str(tmp_path / "clean.toml")]
    assert run_main(clean_main, ["clean", str(lake), str(out), *extra]) == 2
    assert_one_line_naming(capsys.readouterr().err, field)
    assert not out.exists()  # nothing listed, staged (_staging/) or published


def test_the_exit_status_and_line_of_a_real_process(lake, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "clean", str(lake), str(out), "--max-side", "-5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert_one_line_naming(proc.stderr, "max_side")
    assert "ray" not in proc.stderr.lower() and not out.exists()


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--epochs", "0"], "epochs"),
        (["--epochs", "two"], "epochs"),
        (["--lr-schedule", "sometimes"], "lr_schedule"),
        (["--head-epochs", "5", "--epochs", "5"], "head-epochs"),
    ],
)
def test_a_bad_fit_setting_stops_before_ray(tmp_path, capsys, argv, field):
    run = tmp_path / "run"
    assert run_main(train_main, ["fit", str(tmp_path / "data"), str(run), *argv]) == 2
    assert_one_line_naming(capsys.readouterr().err, field)
    assert not run.exists()


def test_a_bad_fit_setting_in_toml(tmp_path, capsys):
    (tmp_path / "fit.toml").write_text('[optim]\nepochs = "many"\n')
    argv = ["fit", "d", str(tmp_path / "run"), "--config", str(tmp_path / "fit.toml")]
    assert run_main(train_main, argv) == 2
    assert_one_line_naming(capsys.readouterr().err, "optim.epochs")


def test_a_config_built_in_python_is_checked_too():
    cfg = CleanConfig(input_uri="a", output_uri="b")
    cfg.normalize.jpeg_quality = 0
    with pytest.raises(ConfigError, match=r"normalize\.jpeg_quality"):
        validate(cfg)


def test_sizes_take_units_in_flags_and_toml(tmp_path):
    (tmp_path / "c.toml").write_text('[normalize]\nmax_file_bytes = "5MB"\n')
    cfg = load_config(CleanConfig, tmp_path / "c.toml", read_window_bytes="64MiB")
    assert cfg.normalize.max_file_bytes == 5_000_000
    assert cfg.execution.read_window_bytes == 64 * 2**20


@pytest.mark.parametrize(
    "cls, given",
    [
        (CleanConfig, {"max_side": 300, "junk_checks": ["too_small"], "group_regex": r"V_\d+"}),
        (TrainConfig, {"epochs": 3, "lr": 0.01, "lr_schedule": "cosine", "data_uri": "d"}),
        (ExportConfig, {"float_blocks": 2, "model_dir": "m"}),
        (LocalConfig, {"port": 3001, "model_dir": "m"}),
    ],
)
def test_print_config_round_trips(tmp_path, cls, given):
    uris = {"input_uri", "output_uri", "run_uri"} & {f.name for f in dataclasses.fields(cls)}
    cfg = load_config(cls, None, **dict.fromkeys(uris, "s3://x/y"), **given)
    text = to_toml(cfg)
    (tmp_path / "printed.toml").write_text(text)
    again = load_config(cls, tmp_path / "printed.toml")
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg), text


def test_print_config_flag_prints_the_effective_settings(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("[normalize]\nmax_side = 256\n")
    argv = ["clean", "--config", str(tmp_path / "c.toml"), "--jpeg-quality", "70"]
    assert run_main(clean_main, [*argv, "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "[normalize]\nmax_side = 256\n" in text and "jpeg_quality = 70" in text
    assert "max_file_bytes = 104857600  # 100 MiB" in text


def test_help_is_grouped_one_line_per_option_with_choices_and_units():
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "clean", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    for group in ("normalize:", "junk:", "dedup:", "split:", "execution:", "storage:"):
        assert group in lines, group
    uris = ("input_uri", "output_uri")
    options = [p[-1] for p, _, _ in leaf_fields(CleanConfig) if p[-1] not in uris]
    for name in options:
        flag = "--" + name.replace("_", "-")
        mentions = [
            i for i, line in enumerate(lines) if line.lstrip().startswith((flag + " ", flag + ","))
        ]
        assert len(mentions) == 1, name
        following = lines[mentions[0] + 1] if mentions[0] + 1 < len(lines) else ""
        assert not following.startswith(" " * 20), f"{name}'s help wraps: {following!r}"
    assert "{phash,dhash,whash,ahash}" in proc.stdout  # choices
    assert "default 100 MiB" in proc.stdout  # sizes readable
    assert "default vector_source,too_small" in proc.stdout  # lists as typed, not reprs
    assert "['" not in proc.stdout
    assert len(lines) < len(options) + 40


@pytest.mark.parametrize(
    ("main", "command"), [(clean_main, "clean"), (train_main, "fit"), (train_main, "export")]
)
@pytest.mark.parametrize("flag", ["--help", "--help-all"])
def test_every_help_renders(main, command, flag, capsys):
    """argparse %-formats help texts: one literal '%' in a description broke --help-all."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, flag])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out

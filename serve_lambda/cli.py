"""`python -m serve_lambda local MODEL_DIR`: the function under the Runtime Interface
Emulator with an HTTP front on http://127.0.0.1:3000 (the web page, GET /info,
POST /predict). Exit status 2 when it cannot start."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading

from common.flags import ConfigParser, add_config_command, run_command
from serve_lambda.config import LocalConfig
from serve_lambda.local import (
    HttpFront,
    LocalError,
    LocalFunction,
    max_body_env,
    threads_env,
)


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the emulator child is stopped too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def run_local(cfg: LocalConfig) -> int:
    stop_on_sigterm()
    env = {**threads_env(cfg.torch_threads), **max_body_env(cfg.max_body_bytes)}
    function = LocalFunction(cfg.model_dir, cfg.rie, cfg.rie_port, env)
    with function, HttpFront(function, cfg.host, cfg.port, log_requests=True) as front:
        print(f"web page and API: {front.url}/  (emulator: {function.url})", flush=True)
        print(f"  curl --data-binary @photo.jpg {front.url}/predict", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


def add_commands(commands: argparse._SubParsersAction, name: str = "local") -> None:
    """`local` here, `serve` in the `lakeclean` console command."""
    add_config_command(
        commands,
        name,
        LocalConfig,
        {"model_dir": "Folder with model.pt and model.json"},
        help="run the function under the Runtime Interface Emulator, with an HTTP front",
        description=(
            "Runs `python -m awslambdaric serve_lambda.handler.handler` under "
            "aws-lambda-rie and serves plain HTTP as API Gateway v2 events."
        ),
        run=serve,
    )


def serve(cfg: LocalConfig) -> int:
    """`run_local`, with exit status 2 and one line when it cannot start."""
    try:
        return run_local(cfg)
    except (LocalError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = ConfigParser(prog="python -m serve_lambda", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser, argv)

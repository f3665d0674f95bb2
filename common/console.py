"""`lakeclean clean|fit|export|serve|demo`: every job behind one console command.

The subcommands are the jobs' own (`python -m pipeline clean`, `python -m train
fit|export`, `python -m serve_lambda local`, `python -m devkit.demo`), with the same
flags, TOML files and exit statuses.
"""

from __future__ import annotations

import argparse
import sys

from common.flags import ConfigParser, run_command

DESCRIPTION = (
    "Clean an image lake (clean), fine-tune MobileNetV2 on it (fit), export an int8 model "
    "(export), serve it locally as the Lambda function (serve), or run all of it on the "
    "sample lake (demo). `lakeclean COMMAND --help` lists a command's settings."
)


def build_parser() -> argparse.ArgumentParser:
    from pipeline.cli import add_commands as add_clean
    from serve_lambda.cli import add_commands as add_serve
    from train.cli import add_commands as add_train

    parser = ConfigParser(prog="lakeclean", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_clean(commands)
    add_train(commands)
    add_serve(commands, name="serve")
    commands.add_parser("demo", help="the whole product on the sample lake (devkit.demo)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the demo has its own flags
        from devkit.demo import main as demo

        return demo(argv[1:])
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

"""Entry point of ``relive``: each command group lives in a module that registers itself.

The SDK's own groups talk to running services. Other distributions add groups through the
``relive.cli`` entry points: relive-stack adds ``up``, ``down``, ``status`` and ``demo``,
which need the services installed. Without it those commands say what to install.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence
from typing import Any

from relive.cli.output import fail
from relive.errors import FailedPrecondition, ReliveError

# Modules with a ``register(subparsers)`` function, in the order `relive --help` lists them.
COMMAND_MODULES = (
    "relive.cli.ion",
    "relive.cli.events",
    "relive.cli.capture",
    "relive.cli.retention",
    "relive.cli.run",
    "relive.cli.trace",
    "relive.cli.console",
)
ENTRY_POINT_GROUP = "relive.cli"
# Commands that relive-stack provides, and what they do, for when it is not installed.
STACK_PACKAGE = "relive-stack"
STACK_COMMANDS = {
    "up": "start the store and the three services",
    "down": "stop the stack started by `relive up`",
    "status": "where the services are, and their health",
    "demo": "run the main job end to end",
}


def _not_installed(args: argparse.Namespace) -> int:
    raise FailedPrecondition(
        f"`relive {args.command}` runs the services, which this installation lacks: "
        f"`pip install {STACK_PACKAGE}` (it brings relive-core and the registry, recorder and "
        "executor), or run it from the relive workspace after `make setup`",
        field="command",
    )


def _register_plugins(subparsers: Any) -> None:
    for entry in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
    ):
        entry.load()(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relive",
        description="Record, capture, relaunch and verify production ML applications.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_plugins(subparsers)
    for command, help_text in STACK_COMMANDS.items():
        if command not in subparsers.choices:
            stub = subparsers.add_parser(
                command, help=f"{help_text} (needs {STACK_PACKAGE})", add_help=False
            )
            stub.set_defaults(func=_not_installed)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # A command that is not installed takes any arguments: it only says what to install.
    args, extra = parser.parse_known_args(argv)
    if extra and args.func is not _not_installed:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except ReliveError as e:
        return fail(args, e)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

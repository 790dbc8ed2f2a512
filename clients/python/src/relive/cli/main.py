"""Entry point of ``relive``: each command group lives in a module that registers itself."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from relive.cli.output import fail
from relive.errors import ReliveError

# Modules with a ``register(subparsers)`` function, in the order `relive --help` lists them.
COMMAND_MODULES = (
    "relive.cli.stack",
    "relive.cli.ion",
    "relive.cli.events",
    "relive.cli.capture",
    "relive.cli.retention",
    "relive.cli.run",
    "relive.cli.demo",
    "relive.cli.trace",
    "relive.cli.console",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relive",
        description="Record, capture, relaunch and verify production ML applications.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ReliveError as e:
        return fail(args, e)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

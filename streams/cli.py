"""`gapwatch` command line: one verb per sub-command (see `gapwatch --help`)."""

from __future__ import annotations

import argparse
import importlib
import sys

from streams.config import ConfigError

__all__ = ["main", "build_parser"]

# Modules that add their own verb with `register(subparsers)`, in help order.
VERB_MODULES = (
    "streams.cli_demo",
    "streams.cli_broker",
    "streams.cli_worker",
    "streams.simulate",
    "streams.cli_change",
    "streams.cli_alert",
    "streams.backtest",
    "streams.cli_detect",
    "streams.reconcile",
    "streams.slack",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gapwatch",
        description=(
            "gapwatch: is the ad platform still seeing the same reality as the business? "
            "Watches backend and platform conversion events live and alerts on tracking gaps."
        ),
        epilog="Start with `gapwatch demo`. Each verb has its own --help.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"gapwatch {args.verb}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

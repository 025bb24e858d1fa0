"""`gapwatch alert ack|expected|false ALERT_ID`: say something back about an alert.

Publishes one feedback message (detectors.feedback) on the compacted feedback topic, keyed by
the alert id: every worker and the Slack forwarder read it. `ack`: acknowledged, no repeat
posts, still tracked; `expected`: the new level is the new normal (re-baseline, resolve);
`false`: a false alarm (resolve, keep the old baseline, counted in
`gapwatch_alert_feedback_total{action="false"}`). See docs/oncall.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from detectors.events import InvalidEvent
from detectors.feedback import ACTIONS, parse_feedback
from streams import kafka
from streams.config import Settings, load_settings
from streams.kafka import add_kafka_arguments

_HELP = {
    "ack": "acknowledge: someone is on it; no repeat posts, still tracked until it resolves",
    "expected": "the new level is the new normal: re-baseline at it and resolve the incident",
    "false": "a false alarm: resolve it and keep the old baseline (counted as a false alarm)",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("alert", help="acknowledge an alert, mark it expected or report a false alarm")
    verbs = p.add_subparsers(dest="alert_verb", metavar="ACTION")
    for action in ACTIONS:
        v = verbs.add_parser(action, help=_HELP[action], description=_HELP[action])
        v.add_argument("alert_id", help="the alert's id (in the Slack message and on gap-alerts)")
        v.add_argument("--note", default="", help="why (shown on the alert and in the resolution)")
        v.add_argument("--by", default="", help="who says so (default: $USER)")
        v.add_argument("--at", default=None,
                       help="event time it applies from (ISO-8601 or epoch seconds; default now): "
                       "the first closed window ending at or after it")
        add_kafka_arguments(v, "feedback_topic")
        v.set_defaults(func=run, action=action)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def build_feedback(args: argparse.Namespace, user: str = "") -> dict[str, Any]:
    return parse_feedback({
        "alert_id": args.alert_id, "action": args.action, "note": args.note,
        "by": args.by or user, "at": args.at if args.at is not None else time.time(),
    })


async def publish(settings: Settings, feedback: dict[str, Any]) -> None:
    client = kafka.producer(settings, acks="all", request_timeout_ms=10000)
    with kafka.quiet_connection_errors():
        await client.start()
    try:
        await client.send_and_wait(settings.feedback_topic, orjson.dumps(feedback), key=feedback["alert_id"].encode())
    finally:
        await client.stop()


def run(args: argparse.Namespace) -> int:
    import getpass

    try:
        feedback = build_feedback(args, getpass.getuser())
    except InvalidEvent as exc:
        print(f"gapwatch alert {args.action}: {exc.detail}", file=sys.stderr)
        return 2
    settings = load_settings(args)
    try:
        asyncio.run(publish(settings, feedback))
    except Exception as exc:
        print(f"gapwatch alert {args.action}: could not publish to {settings.broker}: {exc!r}", file=sys.stderr)
        return 1
    print(orjson.dumps(feedback).decode())
    return 0

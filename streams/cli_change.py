"""`gapwatch change publish`: record a change event (deploy, tag publish, consent update, ...).

Deploy pipelines call it right after they ship, so alerts can name the change that came just
before a gap. Flags build the event; a JSON object on stdin works too (`-`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

import orjson

from detectors.events import CHANGE_KINDS, InvalidEvent, parse_change
from streams import kafka
from streams.config import Settings, load_settings
from streams.kafka import add_kafka_arguments


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("change", help="publish change events (deploys, tag publishes, consent updates)")
    verbs = p.add_subparsers(dest="change_verb", metavar="ACTION")
    pub = verbs.add_parser(
        "publish",
        help="publish one change event to the changes topic",
        description="Publishes a change event. Example: gapwatch change publish --kind deploy "
        "--service checkout-web --summary 'v142: new payment step' --scope platform=meta. "
        "Pass `-` to read a JSON object from stdin instead.",
    )
    pub.add_argument("json", nargs="?", help="`-` to read the change as a JSON object from stdin")
    pub.add_argument("--kind", choices=CHANGE_KINDS, default=None, help="kind of change (default deploy)")
    pub.add_argument("--summary", default=None, help="one line on what changed")
    pub.add_argument("--service", default=None, help="service or container that changed")
    pub.add_argument("--author", default=None, help="who made the change")
    pub.add_argument("--url", default=None, help="link to the release, PR or container version")
    pub.add_argument("--at", default=None, help="when (ISO-8601 or epoch seconds; default now)")
    pub.add_argument("--scope", action="append", default=[], metavar="DIM=VALUE",
                     help="what it affects: platform=meta, region=eu, browser=safari (repeatable)")
    pub.add_argument("--change-id", default=None, help="stable id (default: a new UUID)")
    add_kafka_arguments(pub, "changes_topic")
    pub.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def build_change(args: argparse.Namespace, stdin_text: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if args.json == "-":
        try:
            doc = orjson.loads(stdin_text if stdin_text is not None else sys.stdin.read())
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("malformed_json", f"stdin is not a JSON object: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidEvent("not_an_object", "stdin must hold one JSON object")
    elif args.json is not None:
        raise InvalidEvent("invalid_field", f"unexpected argument {args.json!r} (use - for stdin)")
    for field in ("kind", "summary", "service", "author", "url", "at"):
        value = getattr(args, field)
        if value is not None:
            doc[field] = value
    if args.change_id:
        doc["change_id"] = args.change_id
    doc.setdefault("kind", "deploy")
    doc.setdefault("at", time.time())
    doc.setdefault("change_id", str(uuid.uuid4()))
    scope = dict(doc.get("scope") or {})
    for item in args.scope:
        dim, sep, value = item.partition("=")
        if not sep or dim not in ("platform", "region", "browser", "event_name"):
            raise InvalidEvent("invalid_field", f"--scope {item!r}: expected platform=, region=, browser= or event_name=")
        scope[dim] = value
    if scope:
        doc["scope"] = scope
    parse_change(doc)  # validate before publishing: a clear error now beats a DLQ entry later
    return doc


async def publish(settings: Settings, change: dict[str, Any]) -> None:
    client = kafka.producer(settings, acks="all", request_timeout_ms=10000)
    with kafka.quiet_connection_errors():
        await client.start()
    try:
        await client.send_and_wait(settings.changes_topic, orjson.dumps(change), key=str(change["change_id"]).encode())
    finally:
        await client.stop()


def run(args: argparse.Namespace) -> int:
    try:
        change = build_change(args)
    except InvalidEvent as exc:
        print(f"gapwatch change publish: {exc.detail}", file=sys.stderr)
        return 2
    settings = load_settings(args)  # a ConfigError is reported by the CLI
    try:
        asyncio.run(publish(settings, change))
    except Exception as exc:
        print(f"gapwatch change publish: could not publish to {settings.broker}: {exc!r}", file=sys.stderr)
        return 1
    print(orjson.dumps(change).decode())
    return 0

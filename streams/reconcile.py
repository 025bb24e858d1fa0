"""`gapwatch reconcile`: the reconciliation table (source, count, value, notes) for a time range.

The goal is not equality but explainable difference: each platform row says what share of
the backend it sees and what inflates or deflates it (duplicates, broken dedupe, missing
values). From files (the same windowing as the worker) or from a running deployment's
`gapwatch-windows` topic.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

from detectors.alert import ReconciliationRow
from detectors.events import InvalidEvent, parse_time
from detectors.render import reconciliation_table
from detectors.windows import ClosedWindow
from streams import kafka
from streams.config import Settings, load_settings
from streams.kafka import add_kafka_arguments

__all__ = ["reconciliation_rows", "register", "run"]


def reconciliation_rows(windows: Iterable[ClosedWindow], event_name: str = "purchase",
                        start: float | None = None, end: float | None = None) -> list[ReconciliationRow]:
    """Sum platform-level windows per platform against the backend for one event name."""
    seen: set[tuple[str, int]] = set()
    backend_count = 0
    backend_value = 0.0
    platforms: dict[str, dict[str, float]] = {}
    for w in windows:
        if w.event_name != event_name or w.level not in ("backend", "platform"):
            continue
        if (start is not None and w.window_start < start) or (end is not None and w.window_end > end):
            continue
        key = (w.segment_key, w.window_start)
        if key in seen:  # the windows topic is at-least-once: a re-sent window counts once
            continue
        seen.add(key)
        if w.level == "backend":
            backend_count += w.backend_count
            backend_value += w.backend_value
            continue
        row = platforms.setdefault(w.platform, {k: 0.0 for k in (
            "count", "value", "dup", "broken", "pair", "missing_value", "denied", "backend")})
        row["count"] += w.platform_count
        row["value"] += w.platform_value
        row["dup"] += w.platform_duplicates
        row["broken"] += w.platform_broken_dedupe
        row["pair"] += w.platform_pair_deduped
        row["missing_value"] += w.platform_missing_value
        row["backend"] += w.backend_count
    rows = [ReconciliationRow(f"Backend {event_name}", backend_count, round(backend_value, 2), "source of truth")]
    for platform, r in sorted(platforms.items(), key=lambda kv: -kv[1]["count"]):
        base = r["backend"] or backend_count
        notes = [f"{r['count'] / base:.0%} of backend" if base else "no backend in range"]
        if r["pair"]:
            notes.append(f"{int(r['pair'])} pixel+server pairs deduped")
        if r["dup"]:
            notes.append(f"{int(r['dup'])} duplicate triggers counted")
        if r["broken"]:
            notes.append(f"{int(r['broken'])} orders under 2 event ids")
        if r["missing_value"]:
            notes.append(f"{int(r['missing_value'])} without value")
        rows.append(ReconciliationRow(f"{platform} {event_name}", int(r["count"]), round(r["value"], 2), "; ".join(notes)))
    return rows


async def windows_from_topic(settings: Settings, timeout_s: float = 10.0) -> list[ClosedWindow]:
    """Read the whole windows topic once (no consumer group, nothing committed)."""
    consumer = kafka.consumer(settings, settings.windows_topic, auto_offset_reset="earliest",
                              enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[ClosedWindow] = []
    try:
        parts = sorted(consumer.assignment())
        end = await consumer.end_offsets(list(parts))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in parts]
            if all(pos >= end[tp] for pos, tp in zip(positions, parts, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for rec in records:
                    try:
                        out.append(ClosedWindow.from_dict(orjson.loads(rec.value)))
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue
    finally:
        await consumer.stop()
    return out


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "reconcile",
        help="print the reconciliation table (source, count, value, notes) for a time range",
        description="From files: --backend FILE --platform FILE. From a running deployment: --broker "
        "HOST:PORT (reads the closed windows topic).",
    )
    p.add_argument("--backend", type=Path, help="backend events JSONL")
    p.add_argument("--platform", type=Path, help="platform events JSONL")
    add_kafka_arguments(p, "windows_topic")
    p.add_argument("--from", dest="start", help="start of the range (ISO-8601 or epoch seconds)")
    p.add_argument("--to", dest="end", help="end of the range (ISO-8601 or epoch seconds)")
    p.add_argument("--event-name", default="purchase", help="conversion to reconcile (default purchase)")
    p.add_argument("--window-seconds", type=int, default=300, help="window size for files (default 300)")
    p.add_argument("--json", action="store_true", help="print rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        start = parse_time(args.start, "from") if args.start else None
        end = parse_time(args.end, "to") if args.end else None
    except InvalidEvent as exc:
        print(f"gapwatch reconcile: {exc.detail}", file=sys.stderr)
        return 2
    if args.backend and args.platform:
        from detectors.pipeline import Backtest, PipelineConfig
        from streams.backtest import read_lines

        pipe = Backtest(PipelineConfig(window_s=args.window_seconds, detect=False))
        pipe.run(read_lines(args.backend), read_lines(args.platform))
        pipe.close_all()  # the files are all there is: the last window too
        windows = pipe.windows
    elif "broker" in (settings := load_settings(args)).given:
        windows = asyncio.run(windows_from_topic(settings))
    else:
        print("gapwatch reconcile: give --backend and --platform files, or --broker", file=sys.stderr)
        return 2
    rows = reconciliation_rows(windows, args.event_name, start, end)
    if args.json:
        print(orjson.dumps([r.to_dict() for r in rows], option=orjson.OPT_INDENT_2).decode())
    else:
        print(reconciliation_table(rows))
    return 0

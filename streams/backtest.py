"""`gapwatch backtest`: the worker's pipeline, offline, over JSONL files.

`detectors.pipeline.Backtest` drives the very stages the worker runs (stage A, stage B and the
monitor) with one partition and an in-memory outbox; this module reads the files, shows
progress and writes the results.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from detectors.pipeline import Backtest, PipelineConfig
from detectors.render import alert_line

__all__ = ["run_backtest", "read_lines", "register", "run"]


def read_lines(path: Path) -> Iterator[bytes]:
    """The non-empty lines of a JSONL file (one topic value a line)."""
    with path.open("rb") as fh:
        for line in fh:
            line = line.strip()
            if line:
                yield line


def run_backtest(backend: Path, platform: Path, changes: Path | None, config: PipelineConfig,
                 quiet: bool = False, feedback: Path | None = None) -> Backtest:
    bt = Backtest(config)
    if changes is not None:
        for line in read_lines(changes):
            bt.add_change(line)
    if feedback is not None:
        for line in read_lines(feedback):
            bt.add_feedback(line)
    started = time.monotonic()
    last = [started]

    def progress(b: Backtest) -> None:
        now = time.monotonic()
        if not quiet and now - last[0] >= 2.0:
            last[0] = now
            print(f"  {b.consumed:,} events, {len(b.windows):,} windows, {len(b.alerts)} alerts "
                  f"({b.consumed / (now - started):,.0f} events/s)", file=sys.stderr, flush=True)

    bt.run(read_lines(backend), read_lines(platform), progress=progress)
    return bt


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "backtest",
        help="run windowing and detection offline over JSONL files; write alerts JSONL",
        description="Reads backend and platform events (one topic value per line, in arrival order), "
        "applies the worker's validation, windowing and detection, and writes the alerts as JSONL. "
        "The same input gives the same alerts as the streaming worker.",
    )
    p.add_argument("--backend", type=Path, required=True, help="backend events JSONL")
    p.add_argument("--platform", type=Path, required=True, help="platform events JSONL")
    p.add_argument("--changes", type=Path, help="change events JSONL")
    p.add_argument("--feedback", type=Path,
                   help="ack / expected / false JSONL ({alert_id, action, at, note}), as `gapwatch alert` publishes it")
    p.add_argument("--window-seconds", type=int, default=300, help="window size (default 300)")
    p.add_argument("--allowed-lateness-seconds", type=float, default=120.0, help="allowed lateness (default 120)")
    p.add_argument("--false-alarms-per-30-days", type=float, default=1.0, help="calibration (default 1)")
    p.add_argument("--out", type=Path, required=True, help="alerts JSONL to write")
    p.add_argument("--windows-out", type=Path, help="also write every closed window as JSONL")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in (args.backend, args.platform, args.changes, args.feedback):
        if path is not None and not path.is_file():
            print(f"gapwatch backtest: {path} does not exist", file=sys.stderr)
            return 2
    config = PipelineConfig(window_s=args.window_seconds, allowed_lateness_s=args.allowed_lateness_seconds,
                            false_alarms_per_30_days=args.false_alarms_per_30_days)
    pipe = run_backtest(args.backend, args.platform, args.changes, config, args.quiet, args.feedback)
    with args.out.open("wb") as fh:
        for alert in pipe.alerts:
            fh.write(alert.to_json() + b"\n")
    if args.windows_out:
        with args.windows_out.open("wb") as fh:
            for w in pipe.windows:
                fh.write(orjson.dumps(w.to_dict()) + b"\n")
    invalid = sum(pipe.invalid.values())
    print(f"{pipe.consumed:,} events ({invalid:,} invalid), {len(pipe.windows):,} segment windows, "
          f"{len(pipe.alerts)} alerts -> {args.out}")
    for (topic, reason), n in sorted(pipe.invalid.items()):
        print(f"  invalid {topic}: {reason} x{n}")
    for a in pipe.alerts:
        print("  " + alert_line(a))
    return 0

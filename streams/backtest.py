"""`gapwatch backtest`: the worker's windowing and detection, offline, over JSONL files.

`OfflinePipeline` drives the same objects as the worker (`PartitionWindows`, `WindowAssembler`,
`GroupMonitor`) with one partition. Each file is read in its own (arrival) order; because a
window's watermark is the minimum over both inputs, the interleaving of the two files does not
change the windows, so the alerts equal the live worker's for the same input.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from detectors.alert import Alert
from detectors.monitor import GroupMonitor, MonitorConfig
from detectors.render import alert_line
from detectors.windows import (
    ClosedWindow,
    PartitionWindows,
    WindowAssembler,
    WindowConfig,
    split_platform_by_group,
)
from streams.ingest import InvalidEvent, parse_backend_fast, parse_change, parse_platform_fast

__all__ = ["OfflinePipeline", "run_backtest", "register", "run"]


class OfflinePipeline:
    def __init__(self, window_s: int = 300, allowed_lateness_s: float = 120.0,
                 false_alarms_per_30_days: float = 1.0, detect: bool = True) -> None:
        self.window_config = WindowConfig(window_s=window_s, allowed_lateness_s=allowed_lateness_s)
        self.partition = PartitionWindows(0, self.window_config)
        self.assembler = WindowAssembler(1, window_s)
        self.monitor = GroupMonitor(MonitorConfig(window_s=window_s, false_alarms_per_30_days=false_alarms_per_30_days)) if detect else None
        self.changes: list[dict[str, Any]] = []
        self.windows: list[ClosedWindow] = []
        self.alerts: list[dict[str, Any]] = []
        self.invalid: Counter[tuple[str, str]] = Counter()
        self.offsets = {"b": -1, "p": -1}
        self.consumed = 0

    def add_change(self, raw: bytes | dict[str, Any]) -> None:
        try:
            self.changes.append(parse_change(raw)._asdict())
        except InvalidEvent as exc:
            self.invalid[("changes", exc.reason)] += 1

    def feed(self, kind: str, raw: bytes) -> None:
        self.offsets[kind] += 1
        offset = self.offsets[kind]
        self.consumed += 1
        try:
            if kind == "b":
                self.partition.add_backend(offset, parse_backend_fast(raw))
            else:
                self.partition.add_platform(offset, parse_platform_fast(raw))
        except InvalidEvent as exc:
            self.partition.skip(kind, offset)
            self.invalid[("backend-events" if kind == "b" else "platform-events", exc.reason)] += 1

    def tick(self, watermark: float | None = None) -> None:
        partial = self.partition.close(watermark)
        if partial is None:
            return
        for start, group, leaves in split_platform_by_group(partial.platform):
            self.assembler.add_platform(0, start, group, leaves)
        self.assembler.add_marker(0, partial.closed_through, partial.backend)
        for windows in self.assembler.close_ready():
            self.windows.extend(windows)
            if self.monitor is not None:
                # the alerts as published (JSON documents), as the live worker sends them
                self.alerts.extend(a.to_dict() for a in self.monitor.on_windows(windows, self.changes))

    def run(self, backend: Iterable[bytes], platform: Iterable[bytes], chunk: int = 500,
            progress: Any = None) -> None:
        """Consume both inputs like two consumers progressing side by side."""
        b_it, p_it = iter(backend), iter(platform)
        b_done = p_done = False
        while not (b_done and p_done):
            for kind, it in (("b", b_it), ("p", p_it)):
                if (kind == "b" and b_done) or (kind == "p" and p_done):
                    continue
                for _ in range(chunk):
                    line = next(it, None)
                    if line is None:
                        if kind == "b":
                            b_done = True
                        else:
                            p_done = True
                        break
                    self.feed(kind, line)
            self.tick()
            if progress is not None:
                progress(self)
        self.tick()


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        for line in fh:
            line = line.strip()
            if line:
                yield line


def run_backtest(backend: Path, platform: Path, changes: Path | None, window_s: int, lateness_s: float,
                 false_alarms: float, quiet: bool = False) -> OfflinePipeline:
    pipe = OfflinePipeline(window_s, lateness_s, false_alarms)
    if changes is not None:
        for line in _lines(changes):
            pipe.add_change(line)
    started = time.monotonic()
    last = [started]

    def progress(p: OfflinePipeline) -> None:
        now = time.monotonic()
        if not quiet and now - last[0] >= 2.0:
            last[0] = now
            print(f"  {p.consumed:,} events, {len(p.windows):,} windows, {len(p.alerts)} alerts "
                  f"({p.consumed / (now - started):,.0f} events/s)", file=sys.stderr, flush=True)

    pipe.run(_lines(backend), _lines(platform), progress=progress)
    return pipe


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
    p.add_argument("--window-seconds", type=int, default=300, help="window size (default 300)")
    p.add_argument("--allowed-lateness-seconds", type=float, default=120.0, help="allowed lateness (default 120)")
    p.add_argument("--false-alarms-per-30-days", type=float, default=1.0, help="calibration (default 1)")
    p.add_argument("--out", type=Path, required=True, help="alerts JSONL to write")
    p.add_argument("--windows-out", type=Path, help="also write every closed window as JSONL")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in (args.backend, args.platform, args.changes):
        if path is not None and not path.is_file():
            print(f"gapwatch backtest: {path} does not exist", file=sys.stderr)
            return 2
    pipe = run_backtest(args.backend, args.platform, args.changes, args.window_seconds,
                        args.allowed_lateness_seconds, args.false_alarms_per_30_days, args.quiet)
    with args.out.open("wb") as fh:
        for alert in pipe.alerts:
            fh.write(orjson.dumps(alert) + b"\n")
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
        print("  " + alert_line(Alert.from_dict(a)))
    return 0

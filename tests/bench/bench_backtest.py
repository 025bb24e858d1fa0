"""Per-closed-window and per-event cost of the pipeline alone: `Backtest`, no broker.

Not a test: a script that prints a table. It simulates a scenario with `gapwatch simulate`'s
generator (default: the sparse case of issue 14, 20 days of a 4,000-orders-a-day shop, many
windows per event), runs `detectors.pipeline.Backtest` over it, and reports events/s, closed
windows, CPU per closed window and where that CPU goes (inclusive time of the pipeline's
main steps, measured by wrapping them). `--digest` prints a hash of every closed window and
alert as JSON: two trees that print the same digest gave byte-identical windows and alerts.

    python tests/bench/bench_backtest.py                       # sparse: 20 days x 4,000 orders/day
    python tests/bench/bench_backtest.py --days 1 --orders-per-day 240000   # dense: one busy day
    python tests/bench/bench_backtest.py --days 3 --scenario safari_drop --digest --no-breakdown
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from detectors import monitor, pipeline, windows  # noqa: E402
from detectors.pipeline import Backtest, PipelineConfig  # noqa: E402
from streams.simulate import generate  # noqa: E402

#: (label, owner, attribute): steps timed inclusively (a step's time includes those it calls)
STEPS = (
    ("stage A: parse + count + dedupe (process_batch)", pipeline.IngestStage, "process_batch"),
    ("stage A: close windows, partials (tick)", pipeline.IngestStage, "tick"),
    ("  of which PartitionWindows.close (incl. dedupe expiry)", windows.PartitionWindows, "close"),
    ("stage B: process_partials (all of stage B)", pipeline.AssembleStage, "process_partials"),
    ("  WindowAssembler.close_ready (merge + _build)", windows.WindowAssembler, "close_ready"),
    ("  GroupMonitor.on_windows (detection)", monitor.GroupMonitor, "on_windows"),
    ("  GroupMonitor.take_changes (monitor state)", monitor.GroupMonitor, "take_changes"),
    ("  ClosedWindow.to_dict (window output)", windows.ClosedWindow, "to_dict"),
    ("Outbox.persist (state JSON encoding, both stages)", pipeline.Outbox, "persist"),
)


def _instrument() -> dict[str, float]:
    spent: dict[str, float] = defaultdict(float)
    clock = time.process_time
    for label, owner, name in STEPS:
        fn = getattr(owner, name)

        def timed(*a: Any, _fn: Any = fn, _label: str = label, **kw: Any) -> Any:
            t0 = clock()
            try:
                return _fn(*a, **kw)
            finally:
                spent[_label] += clock() - t0

        setattr(owner, name, functools.wraps(fn)(timed))
    return spent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="steady")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--days", type=float, default=20.0)
    ap.add_argument("--orders-per-day", type=float, default=4000.0)
    ap.add_argument("--window-seconds", type=int, default=300)
    ap.add_argument("--no-breakdown", action="store_true", help="no per-step timers (they cost ~1 us a call)")
    ap.add_argument("--digest", action="store_true", help="print a hash of every window and alert (JSON)")
    ap.add_argument("--dump", type=Path, help="write every window and alert as JSONL here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    sim = generate(args.scenario, seed=args.seed, days=args.days, orders_per_day=args.orders_per_day)
    backend = [orjson.dumps(v) for v in sim.backend]
    platform = [orjson.dumps(v) for v in sim.platform]
    print(f"simulated {args.scenario}: {len(backend):,} backend + {len(platform):,} platform events, "
          f"{args.days:g} days x {args.orders_per_day:,.0f} orders/day in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    spent = {} if args.no_breakdown else _instrument()
    bt = Backtest(PipelineConfig(window_s=args.window_seconds))
    for ch in sim.changes:
        bt.add_change(orjson.dumps(ch))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    bt.run(backend, platform)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    closed = len({w.window_start for w in bt.windows})
    events = bt.consumed
    print(f"\n{args.scenario}, {args.days:g} days x {args.orders_per_day:,.0f} orders/day, window {args.window_seconds} s, "
          f"Backtest (no broker){'' if args.no_breakdown else ', with step timers'}\n")
    print("| events | closed windows | segment windows | alerts | CPU (s) | wall (s) | events/s (CPU) | CPU per closed window (ms) | CPU per event (us) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {events:,} | {closed:,} | {len(bt.windows):,} | {len(bt.alerts)} | {cpu:.1f} | {wall:.1f} | "
          f"{events / cpu:,.0f} | {1000 * cpu / max(closed, 1):.2f} | {1e6 * cpu / max(events, 1):.1f} |")
    if spent:
        print("\n| step (inclusive) | CPU (s) | share | per closed window (ms) |")
        print("|---|---:|---:|---:|")
        for label, _, _ in STEPS:
            s = spent.get(label, 0.0)
            print(f"| {label} | {s:.2f} | {s / cpu:.0%} | {1000 * s / max(closed, 1):.2f} |")
    if args.digest or args.dump:
        h = hashlib.sha256()
        out = args.dump.open("wb") if args.dump else None
        alerts = [orjson.loads(a.to_json()) if hasattr(a, "to_json") else a for a in bt.alerts]
        for doc in [w.to_dict() for w in bt.windows] + alerts:
            line = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) + b"\n"
            h.update(line)
            if out:
                out.write(line)
        if out:
            out.close()
        print(f"\ndigest of {len(bt.windows):,} windows + {len(bt.alerts)} alerts: {h.hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

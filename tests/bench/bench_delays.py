"""Benchmark: delayed and batch channels through `gapwatch backtest` (not a test: prints a table).

Per scenario, shop size and seed (1-hour windows, realistic noise): minutes from the break to
the end of the window whose judgement sent the first alert on the truth's segment, and the
first alert document that names `delayed_events` first; firing alerts (ids) on the segment /
elsewhere; the events counted late (missed their window's judgement), the
longest hold (how long after its end a window of the segment's group was judged), and the
cost of holding windows: the most windows stage B kept open at once and the JSON bytes of
its state (open windows, learners, meta) at that moment.

    nice -n 10 .venv/bin/python tests/bench/bench_delays.py --seeds 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from detectors.pipeline import Backtest, PipelineConfig  # noqa: E402
from streams.simulate import generate  # noqa: E402


def run(scenario: str, size: int, seed: int, window_s: int, arrival_field: bool) -> list[str]:
    sim = generate(scenario, seed=seed, orders_per_day=size, days=5.0 if size < 1000 else 4.0,
                   arrival_field=arrival_field)
    truth = sim.truth
    pipe = Backtest(PipelineConfig(window_s=window_s, allowed_lateness_s=120.0))
    for c in sim.changes:
        pipe.add_change(c)
    peak = {"open": 0, "bytes": 0}
    emitted: list[float] = []  # per alert document: stage B's closed-through when it was sent

    def watch(bt: Backtest) -> None:
        asm = bt.assemble.assemblers.get(0)
        if asm is not None:
            emitted.extend([asm.closed_through] * (len(bt.alerts) - len(emitted)))
        if asm is not None and len(asm.open) > peak["open"]:
            peak["open"] = len(asm.open)
            # what the changelog holds for them: open windows' parts, the learners, the pending list
            parts = [{"b": w["b"], "p": w["p"], "l": w.get("l", {}), "d": w.get("d", {}), "seen": w["seen"]}
                     for w in asm.open.values()]
            learners = [d.to_dict() for d in asm.delays.values()]
            peak["bytes"] = len(orjson.dumps(parts)) + len(orjson.dumps(learners)) + len(orjson.dumps(
                {str(k): v for k, v in asm.pending.items()}))

    pipe.run((orjson.dumps(e) for e in sim.backend), (orjson.dumps(e) for e in sim.platform), progress=watch)
    key = truth["segment_key"]
    change = truth["change_at"]
    emitted.extend([float("inf")] * (len(pipe.alerts) - len(emitted)))
    docs = [(a.to_dict(), t) for a, t in zip(pipe.alerts, emitted, strict=True) if a.status == "firing"]
    on_seg = [(d, t) for d, t in docs if key in (d.get("affected") or ())
              or "|".join(d["segment"][k] for k in ("platform", "event_name", "browser", "region")) == key]
    first = min((t for _, t in on_seg), default=None)
    led = min((t for d, t in on_seg if d["likely_causes"][0]["cause"] == "delayed_events"), default=None)
    group = key.rsplit("|", 2)[0]
    parents = [w for w in pipe.windows if w.segment_key == f"{group}|*|*"]
    ids = {d["alert_id"] for d, _ in on_seg}
    others = {d["alert_id"] for d, _ in docs} - ids

    def minutes(t: float | None) -> str:
        return "-" if t is None else f"{(t - change) / 60:.0f}"

    return [scenario, f"{size:,}", str(seed), "yes" if arrival_field else "no", minutes(first), minutes(led),
            f"{len(ids)} / {len(others)}", str(sum(w.late_events for w in parents)),
            f"{max((w.judged_after_s for w in parents), default=0) / 3600:.1f}", str(peak["open"]), f"{peak['bytes'] / 1024:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[400, 4000])
    parser.add_argument("--window-seconds", type=int, default=3600)
    parser.add_argument("--scenario", action="append", help="repeatable; default import_nightly, delayed_events")
    parser.add_argument("--arrival-field", action="store_true", help="events carry arrived_at")
    args = parser.parse_args()
    print(f"window {args.window_seconds} s, lateness 120 s, max delay 26 h\n")
    print("| scenario | orders/day | seed | arrived_at | first alert, min | delayed_events first, min | alerts on segment / elsewhere | late events | longest hold h | open windows (peak) | stage B state kB at peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for scenario in args.scenario or ["import_nightly", "delayed_events"]:
        for size in args.sizes:
            for seed in range(1, args.seeds + 1):
                print("| " + " | ".join(run(scenario, size, seed, args.window_seconds, args.arrival_field)) + " |", flush=True)


if __name__ == "__main__":
    main()

"""Soak run (a script, not a test): days of event time at an accelerated clock through a group of
workers on the embedded broker, one worker SIGKILLed and restarted every few seconds.

Prints, per restart, the recovery time (start to /readyz) and every worker's RSS; at the end the
changelog bytes per partition of both state tables (all records, and the live items a compacted
topic keeps), and any difference between the published windows and `Backtest` on the same events.

    .venv/bin/python tests/bench/soak.py --days 7 --orders-per-day 300 --speedup 3000 --kill-every 45

Figures are in BENCHMARKS.md ("Soak: kills, restarts, state size").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402

from detectors.pipeline import Backtest, PipelineConfig  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.simulate import generate, produce  # noqa: E402
from tests.integration.worker_harness import (  # noqa: E402
    WorkerProcess,
    consume,
    create_topics,
    distinct_windows,
    flush_messages,
    produce_messages,
    unique_names,
)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def changelog_bytes(bootstrap: str, topic: str) -> dict[int, tuple[int, int, int]]:
    """partition -> (records, bytes of every record, bytes of the newest value per key)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    total: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    latest: dict[int, dict[bytes, int]] = defaultdict(dict)
    try:
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            if not any(batch.values()):
                idle += 1
                continue
            idle = 0
            for tp, records in batch.items():
                for r in records:
                    size = len(r.key or b"") + len(r.value or b"")
                    total[tp.partition][0] += 1
                    total[tp.partition][1] += size
                    if r.value is None:
                        latest[tp.partition].pop(r.key, None)
                    else:
                        latest[tp.partition][r.key] = size
    finally:
        await consumer.stop()
    return {p: (n, b, sum(latest[p].values())) for p, (n, b) in sorted(total.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--orders-per-day", type=float, default=300.0)
    ap.add_argument("--speedup", type=float, default=3000.0, help="event-time seconds per wall second")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--kill-every", type=float, default=45.0,
                    help="wall seconds between SIGKILLs; 0: no kills, RSS sampled once per day of event time "
                         "(is RSS flat once the dedupe horizon has passed?)")
    ap.add_argument("--window", type=int, default=300)
    ap.add_argument("--lateness", type=float, default=900.0)
    ap.add_argument("--scenario", default="steady")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gapwatch-soak-"))
    sim = generate(args.scenario, seed=7, days=args.days, orders_per_day=args.orders_per_day)
    print(f"soak: {args.scenario}, {args.days} days, {len(sim.backend)} backend + {len(sim.platform)} platform events, "
          f"speedup {args.speedup:.0f} (~{args.days * 86400 / args.speedup:.0f} s), {args.workers} workers, "
          f"{args.partitions} partitions, a SIGKILL every {args.kill_every:.0f} s; logs in {tmp}", flush=True)
    with EmbeddedBroker(log_path=str(tmp / "broker.log")) as broker:
        names = unique_names("soak")
        n = args.partitions
        asyncio.run(create_topics(broker.bootstrap, names, partitions=n))
        kw: dict[str, Any] = dict(window_s=args.window, lateness_s=args.lateness, partitions=n)
        workers = [WorkerProcess(broker.bootstrap, names, tmp / f"w{i}.log", **kw).start() for i in range(args.workers)]
        for w in workers:
            w.wait_ready(120)
        events_only = replace(sim, changes=[], change_arrivals=[])
        done = threading.Event()

        def producer() -> None:
            asyncio.run(produce(events_only, broker.bootstrap, topics={
                "backend": names["backend"], "platform": names["platform"], "changes": names["changes"]},
                speedup=args.speedup, partitions=n, progress=None))
            done.set()

        threading.Thread(target=producer, daemon=True).start()
        t0 = time.monotonic()
        if args.kill_every > 0:
            print(f"{'t s':>6} {'killed':>6} {'recovery s':>10}  RSS MB per worker", flush=True)
        victim = 0
        recoveries: list[float] = []
        if args.kill_every <= 0:
            print(f"{'t s':>6} {'event day':>9}  RSS MB per worker (no kills)", flush=True)
            day_s = 86400.0 / args.speedup
            day = 0
            while not done.wait(day_s):
                day += 1
                rss = "  ".join(f"{rss_mb(x.proc.pid):7.1f}" for x in workers if x.proc is not None)
                print(f"{time.monotonic() - t0:6.0f} {day:>9}  {rss}", flush=True)
        while args.kill_every > 0 and not done.wait(args.kill_every):
            w = workers[victim]
            w.kill9()
            w.stop()
            fresh = WorkerProcess(broker.bootstrap, names, tmp / f"w{victim}-{len(recoveries)}.log", **kw).start()
            workers[victim] = fresh
            recovery = fresh.wait_ready(180)
            recoveries.append(recovery)
            rss = "  ".join(f"{rss_mb(x.proc.pid):7.1f}" for x in workers if x.proc is not None)
            print(f"{time.monotonic() - t0:6.0f} {victim:>6} {recovery:10.1f}  {rss}", flush=True)
            victim = (victim + 1) % len(workers)
        flush_ts = sim.truth["end"] + 6 * 3600
        flush = flush_messages(names, flush_ts, partitions=n)
        asyncio.run(produce_messages(broker.bootstrap, flush, partitions=n))

        cfg = PipelineConfig(window_s=args.window, allowed_lateness_s=args.lateness)
        bt = Backtest(cfg)
        bt.run([orjson.dumps(e) for e in sim.backend] + [v for t, _, v in flush if t == names["backend"]],
               [orjson.dumps(e) for e in sim.platform] + [v for t, _, v in flush if t == names["platform"]])
        last = flush_ts - args.lateness - 2 * args.window
        want = {(w.segment_key, w.window_start): w.to_dict() for w in bt.windows if w.window_start <= last}

        def complete(records: list[Any]) -> bool:
            return set(want) <= {(v["segment_key"], v["window_start"]) for v in (orjson.loads(r.value) for r in records)}

        t_drain = time.monotonic()
        records = asyncio.run(consume(broker.bootstrap, names["windows"], until=complete, timeout_s=600))
        live, conflicts = distinct_windows(orjson.loads(r.value) for r in records)
        live = {k: v for k, v in live.items() if k[1] <= last}
        differ = sum(1 for k in want if k in live and live[k] != want[k])
        print(f"\ndrained {time.monotonic() - t_drain:.0f} s after the last event; windows: backtest {len(want)}, "
              f"live {len(live)}, missing {len(set(want) - set(live))}, extra {len(set(live) - set(want))}, "
              f"different {differ}, re-published with other counts {len(conflicts)}")
        rss = ", ".join(f"{rss_mb(x.proc.pid):.1f}" for x in workers if x.proc is not None)
        print(f"RSS at the end (MB): {rss}")
        if recoveries:
            print(f"recovery (start to ready) over {len(recoveries)} restarts: min {min(recoveries):.1f} s, "
                  f"median {sorted(recoveries)[len(recoveries) // 2]:.1f} s, max {max(recoveries):.1f} s")
        for table in ("ingest-state", "assemble-state"):
            topic = f"{names['app_id']}-{table}-changelog"
            sizes = asyncio.run(changelog_bytes(broker.bootstrap, topic))
            print(f"\n{topic}: partition, records, MB written, MB live (newest value per key)")
            for p, (count, written, alive) in sizes.items():
                print(f"  {p:>3} {count:>9} {written / 1e6:9.2f} {alive / 1e6:9.2f}")
        for w in workers:
            w.stop()
    return 0


if __name__ == "__main__":
    os.environ.pop("GAPWATCH_CONFIG", None)
    sys.exit(main())

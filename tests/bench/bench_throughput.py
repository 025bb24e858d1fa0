"""Throughput: the gapwatch worker vs a bare aiokafka getmany + decode loop, same data, same broker.

Not a test: a script that prints a table. It starts the embedded broker, produces N events once
(backend and platform, realistic JSON from the simulator, keyed by order id), then reads them
(1) with a bare aiokafka consumer that only decodes JSON, (2) with the real `gapwatch worker`
(validation, dedupe, window counts, changelog writes, partials, segment windows, detection,
metrics), each in a fresh consumer group, one after the other, in the same run.

Two kinds of traffic (`--mode`):
* dense: about one day of a busy shop (N events): few windows per event;
* sparse: a replay of `--days` days of an `--orders-per-day` shop (default 20 x 4,000, ~390k
  events): ~70 events per 300 s window, so the cost per closed window dominates.

    python tests/bench/bench_throughput.py --events 1000000 --partitions 4
    python tests/bench/bench_throughput.py --mode sparse --partitions 4 --window-seconds 300
    python tests/bench/bench_throughput.py --mode sparse --workers 1 2    # scaling: 1 vs 2 processes
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from streams.broker import EmbeddedBroker, ensure_topics, free_port  # noqa: E402
from streams.simulate import generate, message_key  # noqa: E402


async def produce(bootstrap: str, n: int, partitions: int, sim: Any = None) -> tuple[int, int]:
    """Produce n events (backend + platform mix, as the simulator makes them)."""
    from aiokafka import AIOKafkaProducer

    await ensure_topics(bootstrap, {"backend-events": partitions, "platform-events": partitions})
    if sim is None:
        # about a day of event time for n events: a busy shop's real density (a replay of
        # months of sparse data emits many more windows per event: see --mode sparse)
        sim = generate("steady", seed=11, days=1.0, orders_per_day=max(3000.0, n / 4.2))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks=1)
    await producer.start()
    sent = {"backend-events": 0, "platform-events": 0}
    try:
        total = 0
        pairs = [("backend-events", sim.backend), ("platform-events", sim.platform)]
        while total < n:
            for topic, events in pairs:
                role = "backend" if topic == "backend-events" else "platform"
                for ev in events:
                    if total >= n:
                        break
                    await producer.send(topic, orjson.dumps(ev), key=message_key(role, ev))
                    sent[topic] += 1
                    total += 1
                # repeat the week shifted in time if more events are needed
                for ev in events:
                    ev["occurred_at"] = _shift(ev["occurred_at"], 86400)
        await producer.flush()
    finally:
        await producer.stop()
    return sent["backend-events"], sent["platform-events"]


def _shift(ts: object, by: float) -> object:
    if isinstance(ts, int | float):
        return ts + by
    from detectors.events import parse_time

    return parse_time(ts) + by


async def bare_loop(bootstrap: str, n: int) -> float:
    """aiokafka getmany + orjson.loads: the floor any consumer pays."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        "backend-events", "platform-events", bootstrap_servers=bootstrap, group_id=f"bare-{time.time()}",
        auto_offset_reset="earliest", enable_auto_commit=True, session_timeout_ms=6000,
        heartbeat_interval_ms=1000, max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    got = 0
    t0 = None
    loads = orjson.loads
    try:
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for records in batch.values():
                if t0 is None:
                    t0 = time.perf_counter()
                for rec in records:
                    loads(rec.value)
                got += len(records)
    finally:
        await consumer.stop()
    return got / (time.perf_counter() - (t0 or time.perf_counter()))


def _scrape(url: str) -> float:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    return sum(float(v) for v in re.findall(r'^gapwatch_events_consumed_total\{[^}]*\} (\S+)$', text, re.M))


def run_worker(bootstrap: str, n: int, partitions: int, workdir: str, window_s: int, workers: int = 1,
               py_spy: str | None = None, root: Path = ROOT) -> tuple[float, float, float]:
    """The real worker (of the checkout at `root`) as `workers` subprocesses of one group; rate
    from the first to the n-th consumed event (summed over the processes). Returns (events/s, RSS
    of all processes in MB, worker CPU per event in us: user + system from /proc over that span,
    far less sensitive than the rate to what else the machine is doing)."""
    app_id = f"bench-{int(time.time())}"
    procs, urls, logs = [], [], []
    for i in range(workers):
        port = free_port()
        log = open(os.path.join(workdir, f"worker{i}.log"), "wb")  # noqa: SIM115
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--broker", bootstrap, "--metrics-port", str(port),
             "--app-id", app_id, "--partitions", str(partitions), "--window-seconds", str(window_s),
             "--data-dir", os.path.join(workdir, f"faust{i}")],
            stdout=log, stderr=subprocess.STDOUT, cwd=root,
        ))
        urls.append(f"http://127.0.0.1:{port}/metrics")
    spy = None
    try:
        first_t = None
        first_n = 0.0
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            counts = [_scrape(url) for url in urls]
            got = sum(max(c, 0.0) for c in counts)
            now = time.perf_counter()
            if got > 0 and first_t is None:
                first_t, first_n, first_cpu = now, got, sum(_cpu_s(p.pid) for p in procs)
                if py_spy and workers == 1:
                    spy = subprocess.Popen([_py_spy_bin(), "record", "-r", "100", "-f", "raw", "-o", py_spy,
                                            "--pid", str(procs[0].pid)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
            if got >= n:
                rate = (got - first_n) / (now - first_t) if first_t and now > first_t else float("nan")
                rss = sum(_rss_mb(p.pid) for p in procs)
                cpu_us = (sum(_cpu_s(p.pid) for p in procs) - first_cpu) / max(got - first_n, 1) * 1e6
                return rate, rss, cpu_us
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"worker exited {p.returncode}; see {workdir}/worker*.log")
            # every scrape renders all series in the worker's event loop (~5 ms): poll quickly
            # only until the first event; the rate uses the counts scraped, so the slower poll
            # only widens the measured span a little
            time.sleep(0.1 if first_t is None else 0.5)
        raise RuntimeError("worker did not finish in 30 minutes")
    finally:
        if spy is not None:
            spy.send_signal(2)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _py_spy_bin() -> str:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else "py-spy"


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("dense", "sparse"), default="dense")
    ap.add_argument("--events", type=int, default=1_000_000, help="dense mode: events to produce")
    ap.add_argument("--days", type=float, default=20.0, help="sparse mode: days of history")
    ap.add_argument("--orders-per-day", type=float, default=4000.0, help="sparse mode: shop size")
    ap.add_argument("--workers", type=int, nargs="+", default=[1], help="worker processes (one group) to run")
    ap.add_argument("--py-spy", help="record the (single) worker with py-spy into this raw file")
    ap.add_argument("--baseline-root", type=Path, default=None,
                    help="also run the worker of another checkout (e.g. a `git worktree` of an older "
                    "commit) on the same data and broker, right after ours")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the bare loop / worker pair")
    ap.add_argument("--window-seconds", type=int, nargs="+", default=[300, 3600],
                    help="worker window sizes to run (per-window work is spread over fewer events at small sizes)")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="gapwatch-bench-")
    with EmbeddedBroker(log_path=os.path.join(workdir, "broker.log")) as broker:
        t0 = time.perf_counter()
        sim = None
        if args.mode == "sparse":
            sim = generate("steady", seed=11, days=args.days, orders_per_day=args.orders_per_day)
            args.events = len(sim.backend) + len(sim.platform)
        nb, np_ = asyncio.run(produce(broker.bootstrap, args.events, args.partitions, sim))
        print(f"produced {nb + np_:,} events ({nb:,} backend, {np_:,} platform) over {args.partitions} partitions "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows = []
        for r in range(args.rounds):
            for window_s in args.window_seconds:
                for workers in args.workers:
                    bare = asyncio.run(bare_loop(broker.bootstrap, args.events))
                    runs = [("this checkout", ROOT)]
                    if args.baseline_root is not None:
                        runs.append((f"baseline {args.baseline_root}", args.baseline_root.resolve()))
                    for which, root in runs:
                        worker, rss, cpu = run_worker(broker.bootstrap, args.events, args.partitions, workdir,
                                                      window_s, workers, args.py_spy if root == ROOT else None, root)
                        rows.append((r + 1, window_s, which, workers, bare, worker, worker / bare, cpu, rss))
                        print(f"round {r + 1}, window {window_s} s, {which}, {workers} worker(s): bare {bare:,.0f}/s, "
                              f"worker {worker:,.0f}/s, ratio {worker / bare:.2f}, {cpu:.1f} us CPU/event",
                              file=sys.stderr)
    what = (f"{args.mode}: " + (f"{args.days:g} days x {args.orders_per_day:,.0f} orders/day, " if args.mode == "sparse" else "")
            + f"{args.events:,} events, {args.partitions} partitions, embedded Tansu broker")
    print(f"\n{what}\n")
    print("| round | worker window (s) | worker | worker processes | bare aiokafka getmany + orjson (events/s) "
          "| gapwatch worker (events/s) | ratio | worker CPU (us/event) | worker RSS (MB) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r, window_s, which, workers, bare, worker, ratio, cpu, rss in rows:
        print(f"| {r} | {window_s} | {which} | {workers} | {bare:,.0f} | {worker:,.0f} | {ratio:.2f} | {cpu:.1f} "
              f"| {rss:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

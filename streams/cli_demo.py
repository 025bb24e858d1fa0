"""`gapwatch demo`: one command, no setup. Embedded broker, a real worker, simulated traffic.

Plays a scenario (default `safari_drop`) on an accelerated clock through the real pipeline:
the embedded Tansu broker, a `gapwatch worker` process, the simulator producing backend,
platform and change events. Prints each alert when it fires and the reconciliation table at
the end; /metrics is served while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import orjson

from detectors.alert import Alert, AlertFormatError
from detectors.render import alert_text, reconciliation_table
from detectors.windows import ClosedWindow
from streams.broker import BrokerError, EmbeddedBroker, free_port

PARTITIONS = 4


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from streams.simulate import SCENARIOS

    p = sub.add_parser(
        "demo",
        help="see gapwatch work in about a minute: broker, worker and simulated traffic, no setup",
        description="Starts the embedded broker and a worker, plays a scenario with an injected "
        "tracking gap and a deploy just before it on an accelerated clock, prints alerts as they "
        "fire and a reconciliation table at the end.",
    )
    p.add_argument("--scenario", default="safari_drop", choices=sorted(SCENARIOS), help="scenario (default safari_drop)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--days", type=float, default=4.0, help="simulated days (default 4)")
    p.add_argument("--seconds", type=float, default=40.0, help="wall-clock seconds to play them in (default 40)")
    p.add_argument("--window-seconds", type=int, default=3600, help="window size in event time (default 3600)")
    p.add_argument("--metrics-port", type=int, default=0, help="worker web port (default: a free one)")
    p.set_defaults(func=run)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the worker was not ready after {timeout_s:.0f} s")


async def _play(args: argparse.Namespace, bootstrap: str, metrics_url: str) -> tuple[list[Alert], list[ClosedWindow], dict[str, Any]]:
    from streams import kafka
    from streams.config import Settings
    from streams.simulate import generate, produce

    sim = generate(args.scenario, seed=args.seed, days=args.days)
    speedup = args.days * 86400 / max(5.0, args.seconds)
    alerts: list[Alert] = []
    windows: list[ClosedWindow] = []
    consumer = kafka.consumer(Settings(broker=bootstrap), "gap-alerts", "gapwatch-windows",
                              auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    stop = asyncio.Event()

    async def watch() -> None:
        seen: set[tuple[str, str]] = set()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=300)
            for tp, records in batch.items():
                for rec in records:
                    if tp.topic == "gapwatch-windows":
                        windows.append(ClosedWindow.from_dict(orjson.loads(rec.value)))
                        continue
                    try:
                        alert = Alert.from_json(rec.value)
                    except AlertFormatError as exc:
                        print(f"  (skipped an unreadable alert: {exc.detail})", flush=True)
                        continue
                    key = (alert.alert_id, alert.status)
                    if key in seen:
                        continue
                    seen.add(key)
                    alerts.append(alert)
                    print("\n" + alert_text(alert) + "\n", flush=True)

    watcher = asyncio.create_task(watch())
    last = [0.0]

    def progress(line: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 8:
            last[0] = now
            print(f"  simulator: {line.strip()}", flush=True)

    try:
        await produce(sim, bootstrap, speedup=speedup, progress=progress, partitions=PARTITIONS)
        # let the last windows close and alerts flow (the worker closes windows on a timer)
        await asyncio.sleep(6)
    finally:
        stop.set()
        await watcher
        await consumer.stop()
    return alerts, windows, sim.truth


def run(args: argparse.Namespace) -> int:
    from streams.reconcile import reconciliation_rows

    started = time.monotonic()
    print(f"gapwatch demo: scenario {args.scenario}, {args.days:g} simulated days in ~{args.seconds:.0f} s "
          f"(windows of {args.window_seconds} s event time)")
    workdir = tempfile.mkdtemp(prefix="gapwatch-demo-")
    try:
        broker = EmbeddedBroker(log_path=os.path.join(workdir, "broker.log")).start()
    except BrokerError as exc:
        print(f"gapwatch demo: {exc}", file=sys.stderr)
        return 1
    port = args.metrics_port or free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    worker_log = open(os.path.join(workdir, "worker.log"), "wb")  # noqa: SIM115
    env = {**os.environ, "GAPWATCH_LOG_LEVEL": os.environ.get("GAPWATCH_LOG_LEVEL", "warning")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--broker", broker.bootstrap,
         "--window-seconds", str(args.window_seconds), "--metrics-port", str(port),
         "--partitions", str(PARTITIONS), "--idle-partition-seconds", "3", "--data-dir", os.path.join(workdir, "faust")],
        stdout=worker_log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        print(f"  broker  {broker.bootstrap} (embedded Tansu, in memory)")
        print("  worker  starting ...", flush=True)
        _wait_ready(f"http://127.0.0.1:{port}/readyz", worker, 90)
        print(f"  worker  ready; metrics at {metrics_url}", flush=True)
        alerts, windows, truth = asyncio.run(_play(args, broker.bootstrap, metrics_url))
        change_at = truth.get("change_at")
        print("\nReconciliation, purchases" + (" since the injected change" if change_at else "") + ":")
        print(reconciliation_table(reconciliation_rows(windows, "purchase", start=change_at)))
        firing = [a for a in alerts if a.status == "firing"]
        print(f"\n{len(firing)} alert(s) in {time.monotonic() - started:.0f} s. "
              f"Injected: {truth.get('description', args.scenario)}")
        print(f"Logs: {workdir}")
        return 0
    except RuntimeError as exc:
        print(f"gapwatch demo: {exc}; see {workdir}/worker.log", file=sys.stderr)
        return 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
        broker.stop()

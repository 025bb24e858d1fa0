"""Shared helpers for the worker integration tests: start / stop real `gapwatch worker`
subprocesses against the session broker, produce and consume topics, read /metrics.

Nothing here is mocked: every helper talks to the real embedded broker or the real worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

from detectors.alert import Alert
from detectors.pipeline import (
    BACKEND,
    PLATFORM,
    AssembleStage,
    IngestStage,
    Outbox,
    PipelineConfig,
    Send,
)
from detectors.windows import ClosedWindow
from streams.broker import ensure_topics, free_port

ROOT = Path(__file__).resolve().parents[2]

TOPIC_ROLES = ("backend", "platform", "changes", "windows", "alerts", "dlq", "partials")


def unique_names(prefix: str) -> dict[str, str]:
    """A fresh app id and fresh topic names (the broker is shared by the whole session)."""
    suffix = f"{prefix}-{uuid.uuid4().hex[:8]}"
    names = {role: f"t-{role}-{suffix}" for role in TOPIC_ROLES}
    names["app_id"] = f"gw-{suffix}"
    return names


def partition_of(key: bytes, n: int) -> int:
    """The partition the default (Java-compatible murmur2) partitioner gives `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % n


def key_for_partition(prefix: str, partition: int, n: int) -> str:
    """A key (e.g. an order id) starting with `prefix` that hashes to `partition`."""
    for i in range(10_000):
        candidate = f"{prefix}-{i}"
        if partition_of(candidate.encode(), n) == partition:
            return candidate
    raise AssertionError("no key found")  # pragma: no cover


# ---- metrics --------------------------------------------------------------------------------


@dataclass
class MetricsSnapshot:
    """Parsed Prometheus text: sample name -> list of (labels, value)."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> MetricsSnapshot:
        out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name].append((dict(s.labels), float(s.value)))
        return cls(dict(out), text)

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for have, v in self.samples.get(name, []):
            if all(have.get(k) == want for k, want in labels.items()):
                total += v
        return total

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for have, v in self.samples.get(name, []):
            out[have.get(label, "")] += v
        return dict(out)


# ---- worker process ---------------------------------------------------------------------------


class WorkerProcess:
    """One `gapwatch worker` subprocess (python -m streams.cli worker ...)."""

    def __init__(self, bootstrap: str, names: dict[str, str], log_path: Path, *,
                 window_s: int = 60, lateness_s: float = 30.0, partitions: int = 2,
                 idle_s: float = 120.0, port: int | None = None, extra: Sequence[str] = ()) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self.log_path = log_path
        self.port = port or free_port()
        self.cmd = [
            sys.executable, "-m", "streams.cli", "worker",
            "--broker", bootstrap,
            "--window-seconds", str(window_s),
            "--allowed-lateness-seconds", str(lateness_s),
            "--metrics-port", str(self.port),
            "--web-host", "127.0.0.1",
            "--partitions", str(partitions),
            "--idle-partition-seconds", str(idle_s),
            "--app-id", names["app_id"],
            "--backend-topic", names["backend"],
            "--platform-topic", names["platform"],
            "--changes-topic", names["changes"],
            "--windows-topic", names["windows"],
            "--alerts-topic", names["alerts"],
            "--dlq-topic", names["dlq"],
            "--partials-topic", names["partials"],
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WorkerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("GAPWATCH_CONFIG", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=ROOT, env=env,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def get(self, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout_s: float = 90.0) -> float:
        """Poll /readyz until 200; returns the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            assert self.alive(), f"worker exited with {self.proc.returncode if self.proc else None}:\n{self.log_tail()}"
            try:
                status, _ = self.get("/readyz", timeout=2.0)
                if status == 200:
                    return time.monotonic() - t0
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"worker not ready within {timeout_s} s:\n{self.log_tail()}")

    def metrics(self) -> MetricsSnapshot:
        status, body = self.get("/metrics", timeout=5.0)
        assert status == 200, body[:200]
        return MetricsSnapshot.parse(body.decode())

    def wait_metrics(self, predicate: Callable[[MetricsSnapshot], bool], timeout_s: float,
                     what: str = "condition") -> MetricsSnapshot:
        deadline = time.monotonic() + timeout_s
        last: MetricsSnapshot | None = None
        while time.monotonic() < deadline:
            assert self.alive(), f"worker died while waiting for {what}:\n{self.log_tail()}"
            try:
                last = self.metrics()
                if predicate(last):
                    return last
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.3)
        summary = ""
        if last is not None:
            summary = "\n".join(line for line in last.text.splitlines()
                                if line.startswith(("gapwatch_events_consumed_total", "gapwatch_invalid",
                                                    "gapwatch_windows_closed_total", "gapwatch_watermark")))
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{summary}\n{self.log_tail(30)}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


class WorkerPool:
    """Starts workers and stops every one of them in the end (use from a fixture finalizer)."""

    def __init__(self, bootstrap: str, tmp_path: Path) -> None:
        self.bootstrap = bootstrap
        self.tmp_path = tmp_path
        self.workers: list[WorkerProcess] = []

    def start(self, names: dict[str, str], label: str = "worker", **kw: Any) -> WorkerProcess:
        log = self.tmp_path / f"{label}-{len(self.workers)}.log"
        w = WorkerProcess(self.bootstrap, names, log, **kw)
        self.workers.append(w)
        return w.start()

    def stop_all(self) -> None:
        for w in self.workers:
            try:
                w.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass


# ---- topics -----------------------------------------------------------------------------------


async def create_topics(bootstrap: str, names: dict[str, str], partitions: int = 2) -> None:
    """Create the event topics (co-partitioned) and the changes topic before producing."""
    await ensure_topics(bootstrap, {names["backend"]: partitions, names["platform"]: partitions,
                                    names["changes"]: 1})


async def produce_messages(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes | None]],
                           partitions: int | None = None) -> dict[str, int]:
    """Produce (topic, key, value) in order; with `partitions`, pick the partition like the
    default partitioner so the order per partition is exactly the order given."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    sent: dict[str, int] = defaultdict(int)
    try:
        futures = []
        for topic, key, value in messages:
            part = None
            if partitions and key is not None:
                part = partition_of(key, partitions)
            futures.append(await producer.send(topic, value=value, key=key, partition=part))
            sent[topic] += 1
        await producer.flush()
        for f in futures:
            await f
    finally:
        await producer.stop()
    return dict(sent)


async def consume(bootstrap: str, topic: str, *, until: Callable[[list[Any]], bool] | None = None,
                  timeout_s: float = 30.0, idle_s: float | None = None) -> list[Any]:
    """Read `topic` from the beginning until `until(records)` holds, or the timeout, or (with
    `idle_s`) nothing new arrived for `idle_s` seconds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300, max_records=20_000)
            got = False
            for rs in batch.values():
                records.extend(rs)
                got = got or bool(rs)
            if got:
                last_new = time.monotonic()
            if until is not None and until(records):
                # drain every partition to its high-water mark (one partition reaching the
                # condition says nothing about the others), then stop
                drain_deadline = time.monotonic() + 15
                while time.monotonic() < drain_deadline:
                    parts = consumer.assignment()
                    behind = [tp for tp in parts if consumer.highwater(tp) is None
                              or await consumer.position(tp) < consumer.highwater(tp)]
                    if not behind:
                        break
                    batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
                    for rs in batch.values():
                        records.extend(rs)
                break
            if idle_s is not None and time.monotonic() - last_new >= idle_s:
                break
    finally:
        await consumer.stop()
    return records


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- windows --------------------------------------------------------------------------------

WINDOW_COUNT_FIELDS = (
    "backend_count", "backend_value", "backend_consent_denied", "platform_count", "platform_value",
    "platform_duplicates", "platform_pair_deduped", "platform_broken_dedupe", "platform_missing_value",
    "platform_missing_currency", "platform_missing_click_ids", "platform_consent_denied",
    "platform_matched_orders", "platform_events", "platform_channels", "late_events",
)


def window_values(records: Iterable[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


def distinct_windows(values: Iterable[dict[str, Any]]) -> tuple[dict[tuple[str, int], dict[str, Any]], list[str]]:
    """(segment_key, window_start) -> window; plus a list of conflicts (same key, different counts)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    conflicts: list[str] = []
    for v in values:
        k = (v["segment_key"], int(v["window_start"]))
        if k in out and out[k] != v:
            conflicts.append(f"{k}: {out[k]} != {v}")
            continue
        out.setdefault(k, v)
    return out, conflicts


def flush_messages(names: dict[str, str], ts: float, partitions: int = 2,
                   prefix: str = "flush") -> list[tuple[str, bytes, bytes]]:
    """One valid backend + platform pair per source partition at event time `ts`, so every
    partition's watermark passes the windows before it (keys chosen per partition)."""
    out = []
    for p in range(partitions):
        oid = key_for_partition(f"{prefix}-{int(ts)}", p, partitions)
        b = {"event_id": f"{oid}-b", "type": "order", "order_id": oid, "occurred_at": ts, "value": 1,
             "currency": "EUR", "browser": "chrome", "region": "eu"}
        pl = {"event_id": f"{oid}-p", "platform": "meta", "channel": "capi", "event_name": "purchase",
              "order_id": oid, "occurred_at": ts, "value": 1, "currency": "EUR", "browser": "chrome",
              "region": "eu"}
        out.append((names["backend"], oid.encode(), orjson.dumps(b)))
        out.append((names["platform"], oid.encode(), orjson.dumps(pl)))
    return out


# ---- the reference over partitions -------------------------------------------------------------


def backtest_over_partitions(config: PipelineConfig, backend: Sequence[tuple[bytes, bytes]],
                             platform: Sequence[tuple[bytes, bytes]], partitions: int,
                             chunk: int = 500) -> tuple[list[ClosedWindow], list[Alert]]:
    """`Backtest` for a worker whose topics have `partitions` partitions: the (key, value)
    messages of each input split like the default partitioner splits them, and the same stages
    driven like `Backtest.run` drives them (a chunk of each unpaused input of each partition
    per round, then a tick; an input that has run out is caught up).

    A one-partition `Backtest` is the reference only when no event is late: lateness is judged
    per partition on its own input's newest event time, so an event that arrives after a later
    one of ANOTHER partition is late in one partition and on time in two (measured on the
    ten-day backfill of test_backfill.py: exactly one such capi event in 54k)."""
    ingest, assemble, outbox = IngestStage(config, partitions), AssembleStage(config, partitions), Outbox()
    topics = config.topics
    inputs: dict[tuple[str, int], list[bytes]] = {(k, p): [] for k in (BACKEND, PLATFORM) for p in range(partitions)}
    for kind, messages in ((BACKEND, backend), (PLATFORM, platform)):
        for key, value in messages:
            inputs[(kind, partition_of(key, partitions))].append(value)
    read = dict.fromkeys(inputs, 0)
    exhausted: set[tuple[str, int]] = set()
    windows: list[ClosedWindow] = []
    alerts: list[Alert] = []
    clock = 0.0

    def caught_up(kind: str, p: int, applied: int) -> bool:
        return (kind, p) in exhausted

    def drain() -> None:
        while outbox.items:
            msgs = [(e.partition or 0, e.value) for e in outbox.take()
                    if isinstance(e, Send) and e.topic == topics.partials and e.value is not None]
            if not msgs:
                return
            result = assemble.process_partials(msgs, [], outbox)
            windows.extend(result.windows)
            alerts.extend(result.alerts)

    def tick() -> None:
        nonlocal clock
        clock += config.idle_partition_s
        ingest.tick(range(partitions), clock, caught_up, outbox)
        drain()

    while len(exhausted) < len(inputs):
        for p in range(partitions):
            paused = ingest.paused_inputs(p, caught_up)
            for kind in (BACKEND, PLATFORM):
                if (kind, p) in exhausted or kind in paused:
                    continue
                first = read[(kind, p)]
                values = inputs[(kind, p)][first:first + chunk]
                read[(kind, p)] = first + len(values)
                if len(values) < chunk:
                    exhausted.add((kind, p))
                if values:
                    topic = topics.backend if kind == BACKEND else topics.platform
                    ingest.process_batch(topic, p, range(first, first + len(values)), [None] * len(values),
                                         values, clock, outbox)
                    drain()
        tick()
    tick()
    tick()
    return windows, alerts

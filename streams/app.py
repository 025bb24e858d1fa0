"""The gapwatch Faust worker: agents, tables, timer and web views. Wiring only.

Stage A (`ingest`) consumes backend-events and platform-events in batches, validates and
counts into `detectors.windows.PartitionWindows` per source partition, and hands partials of
closed windows to stage B (`assemble`) through the internal partials topic. Stage B merges
them into closed segment windows, publishes them and runs detection (`detectors.monitor`).
State lives in two tables written to explicit changelog partitions, once per batch.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
import time
import zlib
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from typing import Any

import faust
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from detectors.windows import (
    ClosedWindow,
    PartitionWindows,
    WindowAssembler,
    WindowConfig,
    split_platform_by_group,
)
from streams.config import Settings, kafka_security_options
from streams.ingest import InvalidEvent, parse_backend_fast, parse_change, parse_platform_fast
from streams.metrics import Metrics

__all__ = ["GapwatchWorker", "group_partition"]

log = logging.getLogger("gapwatch.worker")


#: marks an outbox entry as a state (changelog) write
_STATE: Any = object()


def group_partition(group: str, n: int) -> int:
    """Partition of the partials topic that owns a `platform|event_name` group (stable)."""
    return zlib.crc32(group.encode()) % n


class GapwatchWorker:
    """Builds the Faust app for `settings` and holds the in-memory views of its tables."""

    def __init__(
        self,
        settings: Settings,
        n_partitions: int,
        metrics: Metrics | None = None,
        monitor_factory: Callable[[int], Any] | None = None,
        changes_partitions: int = 1,
    ) -> None:
        self.changes_partitions = changes_partitions
        self.settings = s = settings
        self.n = n_partitions
        self.metrics = metrics or Metrics()
        self.window_config = WindowConfig(
            window_s=s.window_seconds, allowed_lateness_s=s.allowed_lateness_seconds,
            dedupe_horizon_s=s.dedupe_horizon_seconds,
        )
        self.monitor_factory = monitor_factory
        self.partitions: dict[int, PartitionWindows] = {}
        self.assemblers: dict[int, WindowAssembler] = {}
        self.monitors: dict[int, Any] = {}
        self.last_event_wall: dict[int, dict[str, float]] = {}
        # Outgoing messages of the current batch, sent by `_flush_outbox` straight to the
        # transport producer. Faust's buffered `send_soon` would make the conductor stop
        # delivering whenever more than 100 messages wait, one event-loop round trip each;
        # Faust still flushes this producer before it commits any offset.
        self._outbox: list[tuple[str, bytes | None, bytes | None, int | None, Any]] = []
        self._outbox_lock = asyncio.Lock()
        self.ready = False
        self._ratio_gauges: dict[tuple[str, ...], Any] = {}
        self.app = self._make_app()

    # ---- app ------------------------------------------------------------------------------
    def _make_app(self) -> faust.App:
        s = self.settings
        session = s.effective_session_timeout
        from streams.fastfaust import BatchMessageConsumer, BatchStream, NoopMonitor, app_class

        consumer_cls = type("GapwatchConsumer", (BatchMessageConsumer,), {
            "batch_topics": {s.backend_topic, s.platform_topic}, "chunk_size": s.batch_size,
            "verify_end_offsets": {"bootstrap_servers": s.broker, **kafka_security_options(s)},
        })
        app = app_class(consumer_cls)(
            s.app_id,
            Stream=BatchStream,
            Monitor=NoopMonitor,
            stream_buffer_maxsize=32,  # the stream queue holds chunks of up to 5000 events
            broker=[f"kafka://{h.strip()}" for h in s.broker.split(",")],
            broker_credentials=self._credentials(),
            store="memory://",
            datadir=s.data_dir or tempfile.mkdtemp(prefix="gapwatch-"),
            web_enabled=True,
            web_port=s.metrics_port,
            web_bind=s.web_host,
            web_host=s.web_host,
            broker_session_timeout=session,
            broker_heartbeat_interval=max(0.5, session / 6),
            broker_rebalance_timeout=session,
            broker_request_timeout=max(40.0, session * 2),
            consumer_auto_offset_reset="earliest",
            topic_partitions=self.n,
            topic_allow_declare=True,
            key_serializer="raw",
            value_serializer="raw",
            stream_wait_empty=False,
            broker_max_poll_records=None,
            consumer_max_fetch_size=8 * 1024 * 1024,
            broker_commit_interval=s.commit_interval_seconds,
            producer_linger=0.005,
            producer_max_batch_size=1024 * 1024,
            table_cleanup_interval=3600.0,
        )
        self.source_topic = app.topic(
            s.backend_topic, s.platform_topic, key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw",
        )
        self.partials_topic = app.topic(
            s.partials_topic, partitions=self.n, key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw", internal=True,
        )
        self.changes_topic = app.topic(
            s.changes_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        )
        self.windows_topic = app.topic(s.windows_topic, key_serializer="raw", value_serializer="raw")
        self.alerts_topic = app.topic(s.alerts_topic, key_serializer="raw", value_serializer="raw")
        self.dlq_topic = app.topic(s.dlq_topic, key_serializer="raw", value_serializer="raw")
        table_kw: dict[str, Any] = dict(
            partitions=self.n, key_type=bytes, value_type=bytes,
        )
        self.ingest_table = app.Table("ingest-state", **table_kw)
        self.assemble_table = app.Table("assemble-state", **table_kw)
        self.changes_table = app.GlobalTable(
            "changes", key_type=bytes, value_type=bytes, partitions=self.changes_partitions,
        )

        app.agent(self.source_topic, name="gapwatch.ingest")(self._ingest_agent)
        app.agent(self.partials_topic, name="gapwatch.assemble")(self._assemble_agent)
        app.agent(self.changes_topic, name="gapwatch.changes")(self._changes_agent)
        app.timer(s.tick_seconds, name="gapwatch.tick")(self._tick)
        app.on_partitions_revoked.connect(self._on_revoked)
        worker = self

        async def metrics_view(view: Any, request: Any) -> Any:
            return view.bytes(generate_latest(worker.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

        async def health_view(view: Any, request: Any) -> Any:
            return view.json({"status": "ok"})

        async def ready_view(view: Any, request: Any) -> Any:
            if worker.ready and not app.rebalancing:
                return view.json({"status": "ready"})
            return view.json({"status": "starting"}, status=503)

        app.page("/metrics")(metrics_view)
        app.page("/healthz")(health_view)
        app.page("/readyz")(ready_view)
        app.page("/changes")(self._changes_view_class())
        return app

    def _credentials(self) -> Any:
        """Faust credentials from the same settings as every other Kafka client of gapwatch."""
        kw = kafka_security_options(self.settings)  # validates the protocol too
        if not kw:
            return None
        if kw["security_protocol"].startswith("SASL"):
            return faust.SASLCredentials(
                username=kw["sasl_plain_username"], password=kw["sasl_plain_password"],
                mechanism=kw["sasl_mechanism"], ssl_context=kw.get("ssl_context"),
            )
        return faust.SSLCredentials(kw["ssl_context"])

    # ---- state loading --------------------------------------------------------------------
    def _items(self, table: Any, partition: int) -> dict[str, Any]:
        prefix = f"{partition}:".encode()
        out = {}
        for key, value in list(table.data.items()):
            if key.startswith(prefix) and value is not None:
                out[key.decode()] = orjson.loads(value)
        return out

    def _partition_state(self, p: int) -> PartitionWindows:
        st = self.partitions.get(p)
        if st is None:
            st = PartitionWindows.restore(p, self.window_config, self._items(self.ingest_table, p))
            self.partitions[p] = st
        return st

    def _assembler(self, k: int) -> WindowAssembler:
        asm = self.assemblers.get(k)
        if asm is None:
            n = self.n
            asm = WindowAssembler(n, self.settings.window_seconds, owns_group=lambda g: group_partition(g, n) == k)
            items = self._items(self.assemble_table, k)
            asm.restore(f"{k}:", items)
            self.assemblers[k] = asm
            if self.monitor_factory is not None:
                mon = self.monitor_factory(k)
                mon.restore({key: v for key, v in items.items() if key.startswith(f"{k}:g:")}, f"{k}:")
                self.monitors[k] = mon
        return asm

    def _persist(self, table: Any, partition: int, changes: Mapping[str, Any]) -> None:
        """Apply state changes to the table and queue them for its changelog partition."""
        data = table.data
        changelog = table.changelog_topic.get_topic_name()
        out = self._outbox.append
        for key, value in changes.items():
            kb = key.encode()
            if value is None:
                data.pop(kb, None)
                out((changelog, kb, None, partition, _STATE))
            else:
                vb = orjson.dumps(value)
                data[kb] = vb
                out((changelog, kb, vb, partition, _STATE))

    async def _flush_outbox(self) -> None:
        """Send the batch's messages in the order they were made.

        Under a lock: the agents and the timer all flush, and a newer state value must never
        reach a changelog partition before an older one. Kafka orders only within a partition,
        so outputs (windows, alerts, partials, DLQ) are awaited until delivered before any
        state write that follows them: state never says "done" for output that was lost.
        """
        async with self._outbox_lock:
            outbox, self._outbox = self._outbox, []
            send = self.app.producer.send
            in_flight: list[Any] = []
            for topic, key, value, partition, headers in outbox:
                is_state = headers is _STATE
                if is_state and in_flight:
                    await asyncio.gather(*in_flight)
                    in_flight = []
                fut = await send(topic, key, value, partition, None, None if is_state else headers)
                if not is_state:
                    in_flight.append(fut)

    async def _on_revoked(self, app: Any, revoked: Any = None, **_: Any) -> None:
        # Drop the in-memory views; they are rebuilt from the recovered tables on next use.
        self.partitions.clear()
        self.assemblers.clear()
        self.monitors.clear()

    # ---- stage A --------------------------------------------------------------------------
    async def _ingest_agent(self, stream: Any) -> None:
        # One event per (partition, fetched chunk): see streams/fastfaust.py. Leaving the loop
        # body acks the chunk, so offsets commit only after its counts are in the changelog.
        async for event in stream.events():
            batch = event.value
            self.process_source_batch(batch.topic, batch.partition, batch.offsets, batch.keys, batch.values)
            await self._flush_outbox()

    def process_source_batch(self, topic: str, p: int, offsets: list[int], keys: list[Any], values: list[Any]) -> None:
        """Validate and count one chunk of one source partition; persist its state once."""
        kind = "b" if topic == self.settings.backend_topic else "p"
        st = self.partitions.get(p) or self._partition_state(p)
        parse = parse_backend_fast if kind == "b" else parse_platform_fast
        add = st.add_backend if kind == "b" else st.add_platform
        applied_through = st.offsets[kind]
        redelivered = 0
        invalid: Tally[str] = Tally()
        for offset, key, value in zip(offsets, keys, values, strict=True):
            if offset <= applied_through:
                redelivered += 1  # seen before a restart: already in the counts
                continue
            try:
                ev = parse(value)
            except InvalidEvent as exc:
                st.skip(kind, offset)
                invalid[exc.reason] += 1
                self._outbox.append((self.settings.dlq_topic, key, value, None, [
                    ("gapwatch-reason", exc.reason.encode()),
                    ("gapwatch-detail", exc.detail.encode()),
                    ("gapwatch-source", f"{topic}/{p}/{offset}".encode()),
                ]))
                continue
            add(offset, ev)  # type: ignore[arg-type]
        # late events, events per leaf and duplicate triggers, tallied by the counting itself
        late, labels, dups = st.take_tallies()
        self.last_event_wall.setdefault(p, {})[kind] = time.monotonic()
        self._persist(self.ingest_table, p, st.take_changes())
        mt = self.metrics
        mt.consumed.labels(topic=topic).inc(len(offsets))
        if redelivered:
            mt.redelivered.labels(topic=topic).inc(redelivered)
        if late:
            mt.late.labels(topic=topic).inc(late)
        for reason, n in invalid.items():
            mt.invalid.labels(topic=topic, reason=reason).inc(n)
        for (platform, event_name), n in dups.items():
            mt.duplicates.labels(platform=mt.platform_cap(platform), event_name=mt.event_name_cap(event_name)).inc(n)
        if kind == "b":
            for leaf, n in labels.items():
                event_name, browser, region = leaf.split("|")
                mt.backend.labels(event_name=mt.event_name_cap(event_name), browser=browser, region=region).inc(n)
        else:
            for leaf, n in labels.items():
                platform, event_name, browser, region = leaf.split("|")
                mt.platform.labels(
                    platform=mt.platform_cap(platform), event_name=mt.event_name_cap(event_name),
                    browser=browser, region=region,
                ).inc(n)

    async def _tick(self) -> None:
        """Close windows whose event time has passed the watermark; hand partials to stage B."""
        if self.app.consumer is None:
            return
        try:
            assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.settings.backend_topic}
        except Exception:  # consumer not started yet
            return
        if not assigned or not self._recovered():
            return
        self.ready = True
        for p in assigned:
            self._partition_state(p)
        now = time.monotonic()
        idle_s = self.settings.idle_partition_seconds
        idle_event_s = self.settings.idle_input_event_seconds
        relaxed: dict[int, float | None] = {}
        topics = {"b": self.settings.backend_topic, "p": self.settings.platform_topic}
        for p in assigned:
            seen = self.last_event_wall.setdefault(p, {})
            st = self.partitions[p]
            # An input is idle when it had nothing for a while AND nothing is left to read: a
            # backlog that Faust has not fetched for a few seconds is not idleness, and letting
            # the other input's watermark run ahead would make its events late.
            idle = set()
            for t, other in (("b", "p"), ("p", "b")):
                quiet = now - seen.setdefault(t, now)
                caught_up = self._caught_up(topics[t], p, st.offsets[t])
                # event time the other input is ahead: in a replay a backlog can pause for a
                # few wall-clock seconds while hours of event time are still to come
                behind = st.max_ts[other] - st.max_ts[t]
                if caught_up and quiet >= idle_s and behind >= idle_event_s:
                    idle.add(t)
                elif caught_up is None and st.offsets[t] < 0 and quiet >= 3 * idle_s:
                    idle.add(t)  # never had a message (no high-water mark to compare with)
            # every input idle: follow the worker (None); otherwise the slowest active input,
            # which is -inf while one has not delivered its first event: nothing closes yet
            relaxed[p] = None if len(idle) == 2 else st.watermark_without(idle)
        marks = [m for m in relaxed.values() if m is not None and m > float("-inf")]
        worker_mark = max(marks, default=float("-inf"))
        for p in sorted(assigned):
            st = self.partitions[p]
            mark = worker_mark if relaxed[p] is None else relaxed[p]
            partial = st.close(mark)
            if partial is None:
                continue
            self.send_partial(partial)
            self._persist(self.ingest_table, p, st.take_changes())
        await self._flush_outbox()
        live = [st.watermark for p, st in self.partitions.items() if p in assigned and st.watermark > float("-inf")]
        if live:
            low = min(live)
            self.metrics.watermark.set(low)
            self.metrics.watermark_lag.set(max(0.0, time.time() - low))
        self._update_lag(assigned)

    def _recovered(self) -> bool:
        """Tables hold their full state: never build a view from a half-recovered table."""
        app = self.app
        return not app.rebalancing and not getattr(app, "in_recovery", False) and app.tables.recovery.completed.is_set()

    def _caught_up(self, topic: str, p: int, applied: int) -> bool | None:
        """True when nothing is left to read on the input; None when the end is unknown yet."""
        try:
            hw = self.app.consumer.highwater(faust.types.TP(topic, p))
        except Exception:
            return None
        if hw is None:
            return None
        return bool(hw - 1 <= applied)

    def send_partial(self, partial: Any) -> None:
        n = self.n
        topic = self.settings.partials_topic
        for start, group, leaves in split_platform_by_group(partial.platform):
            self._outbox.append((topic, group.encode(),
                                 orjson.dumps({"t": "p", "src": partial.partition, "w": start, "g": group, "l": leaves}),
                                 group_partition(group, n), None))
        marker = orjson.dumps(
            {"t": "m", "src": partial.partition, "through": partial.closed_through,
             "b": {str(k): v for k, v in partial.backend.items()}}
        )
        for k in range(n):
            self._outbox.append((topic, b"marker", marker, k, None))

    def _update_lag(self, assigned: set[int]) -> None:
        consumer = self.app.consumer
        for topic, kind in ((self.settings.backend_topic, "b"), (self.settings.platform_topic, "p")):
            lag = 0
            for p in assigned:
                try:
                    hw = consumer.highwater(faust.types.TP(topic, p))
                except Exception:
                    hw = None
                if hw is None:
                    continue
                lag += max(0, hw - 1 - self.partitions[p].offsets[kind])
            self.metrics.consumer_lag.labels(topic=topic).set(lag)

    # ---- stage B --------------------------------------------------------------------------
    async def _assemble_agent(self, stream: Any) -> None:
        async for events in stream.take_events(1000, within=0.2):
            self.process_partials([e.message for e in events])
            await self._flush_outbox()

    def process_partials(self, messages: list[Any]) -> None:
        touched: dict[int, WindowAssembler] = {}
        for m in messages:
            k = m.partition
            asm = self.assemblers.get(k) or self._assembler(k)
            touched[k] = asm
            try:
                doc = orjson.loads(m.value)
                if doc["t"] == "p":
                    asm.add_platform(int(doc["src"]), int(doc["w"]), doc["g"], doc["l"])
                else:
                    asm.add_marker(int(doc["src"]), float(doc["through"]), {int(w): v for w, v in doc["b"].items()})
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.error("ignoring malformed internal partial at %s/%s/%s: %s", m.topic, k, m.offset, exc)
        for k, asm in touched.items():
            changes = {}
            for windows in asm.close_ready():
                self.emit_windows(k, windows)
            mon = self.monitors.get(k)
            if mon is not None:
                mon.export_metrics(self.metrics)  # once per batch: gauges show the newest window
                # the monitor's state goes first: if a crash cuts the writes in between, the
                # window is closed again and the monitor, idempotent per window, skips it
                changes.update(mon.take_changes(f"{k}:"))
            changes.update(asm.take_changes(f"{k}:"))
            self._persist(self.assemble_table, k, changes)

    def emit_windows(self, k: int, windows: list[ClosedWindow]) -> None:
        mt = self.metrics
        windows_topic = self.settings.windows_topic
        out = self._outbox.append
        dumps = orjson.dumps
        levels: Tally[str] = Tally()
        ratio = self._ratio_gauge
        for w in windows:
            out((windows_topic, w.segment_key.encode(), dumps(w.to_dict()), None, None))
            levels[w.level] += 1
            if w.backend_count > 0:
                ratio(w, "count_ratio").set(w.platform_count / w.backend_count)
            if w.backend_value > 0:
                ratio(w, "value_ratio").set(w.platform_value / w.backend_value)
        for level, n in levels.items():
            mt.windows_closed.labels(level=level).inc(n)
        mon = self.monitors.get(k)
        if mon is None:
            return
        changes = self.recent_changes()
        for alert in mon.on_windows(windows, changes):
            self._outbox.append((self.settings.alerts_topic, alert.alert_id.encode(), alert.to_json(), None, None))
            mt.alerts.labels(
                platform=mt.platform_cap(alert.segment.platform), verdict=alert.verdict,
                direction=alert.direction, status=alert.status,
            ).inc()

    def _ratio_gauge(self, w: ClosedWindow, metric: str) -> Any:
        """The `gapwatch_segment_ratio` child of a segment (cached: `labels()` costs ~2 us)."""
        key = (w.platform, w.event_name, w.browser, w.region, metric)
        child = self._ratio_gauges.get(key)
        if child is None:
            mt = self.metrics
            child = self._ratio_gauges[key] = mt.segment_ratio.labels(**mt.seg_labels(w), metric=metric)
        return child

    # ---- changes --------------------------------------------------------------------------
    async def _changes_agent(self, stream: Any) -> None:
        async for event in stream.events():
            m = event.message
            try:
                ch = parse_change(m.value)
            except InvalidEvent as exc:
                self.metrics.invalid.labels(topic=m.topic, reason=exc.reason).inc()
                await self.dlq_topic.send(
                    key=m.key, value=m.value,
                    headers=[("gapwatch-reason", exc.reason.encode()), ("gapwatch-detail", exc.detail.encode())],
                )
                continue
            self.changes_table[ch.change_id.encode()] = orjson.dumps(ch._asdict())
            self._prune_changes(ch.at)
            self.metrics.change_events.labels(kind=ch.kind).inc()
            self.metrics.change_ts.labels(kind=ch.kind, service=self.metrics.service_cap(ch.service or "unknown")).set(ch.at)

    def _prune_changes(self, newest_at: float) -> None:
        """Keep changes for the lookback (event time of the newest change), in a restart-safe table."""
        cutoff = newest_at - self.settings.change_lookback_days * 86400
        for key, value in list(self.changes_table.items()):
            if value and orjson.loads(value)["at"] < cutoff:
                del self.changes_table[key]

    def recent_changes(self) -> list[dict[str, Any]]:
        out = []
        for value in list(self.changes_table.values()):
            if value:
                out.append(orjson.loads(value))
        return out

    def _changes_view_class(self) -> Any:
        worker = self

        class ChangesView(faust.web.View):
            async def post(self, request: Any) -> Any:
                token = worker.settings.api_token
                if token and request.headers.get("Authorization", "") != f"Bearer {token}":
                    return self.json({"error": "missing or wrong bearer token"}, status=401)
                try:
                    body = await request.read()
                    ch = parse_change(body)
                except InvalidEvent as exc:
                    return self.json({"error": exc.reason, "detail": exc.detail}, status=400)
                value = orjson.dumps(ch._asdict())
                await worker.changes_topic.send(key=ch.change_id.encode(), value=value)
                return self.json({"accepted": ch.change_id}, status=202)

            async def get(self, request: Any) -> Any:
                return self.json({"changes": worker.recent_changes()})

        return ChangesView


async def prepare_topics(settings: Settings) -> tuple[int, int]:
    """Create missing topics; return the partition counts of the event topics (they must match)
    and of the changes topic (the changes table's changelog must match it)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.broker import ensure_topics

    s = settings
    await ensure_topics(
        s.broker,
        {s.backend_topic: s.partitions, s.platform_topic: s.partitions, s.changes_topic: 1,
         s.windows_topic: s.partitions, s.alerts_topic: s.partitions, s.dlq_topic: s.partitions},
        **kafka_security_options(s),
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=s.broker, **kafka_security_options(s))
    await admin.start()
    try:
        meta = await admin.describe_topics([s.backend_topic, s.platform_topic, s.changes_topic])
    finally:
        await admin.close()
    counts = {t["topic"]: len(t["partitions"]) for t in meta}
    nb, np_ = counts.get(s.backend_topic, 0), counts.get(s.platform_topic, 0)
    if nb != np_ or nb == 0:
        raise SystemExit(
            f"gapwatch: {s.backend_topic} has {nb} partitions and {s.platform_topic} has {np_}; "
            "they must be co-partitioned (same partition count, both keyed by order_id)"
        )
    await ensure_topics(s.broker, {s.partials_topic: nb}, **kafka_security_options(s))
    return nb, max(1, counts.get(s.changes_topic, 1))


#: seconds between full (oldest-generation) garbage collections of the worker process
FULL_GC_SECONDS = 60.0


def _schedule_full_collections(app: faust.App) -> None:
    """Full garbage collections on a timer instead of CPython's allocation heuristic.

    The dedupe memory is millions of dict entries that live for a day; CPython collects its
    oldest generation whenever a quarter more objects have reached it, which during a replay
    (every chunk's short-lived objects pass through) was a full pass over all of it every
    second or so: 15-40 % of the worker's time (gc callbacks, 300k-event bench). Young
    generations are still collected as usual; cycles that reach the old one are freed within
    FULL_GC_SECONDS.
    """
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1 << 30)

    @app.timer(FULL_GC_SECONDS, name="gapwatch.full_gc")
    async def _full_gc() -> None:
        gc.collect()


def run_worker(settings: Settings) -> int:
    """Entry point of `gapwatch worker`."""
    n, n_changes = asyncio.run(prepare_topics(settings))
    from detectors.monitor import GroupMonitor, MonitorConfig

    config = MonitorConfig(
        window_s=settings.window_seconds,
        false_alarms_per_30_days=settings.false_alarms_per_30_days,
        change_lookback_s=settings.change_lookback_days * 86400,
    )
    worker = GapwatchWorker(settings, n, monitor_factory=lambda k: GroupMonitor(config), changes_partitions=n_changes)
    _schedule_full_collections(worker.app)
    from faust.worker import Worker

    level = settings.log_level.upper()
    # Faust's worker leaves aiokafka's and its own loggers at DEBUG: their per-message debug
    # records cost ~10 % of the hot path even when nothing prints them.
    for name in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(name).setLevel(level)
    print(
        f"gapwatch worker: broker {settings.broker}, {n} partitions, window {settings.window_seconds}s, "
        f"metrics http://{settings.web_host}:{settings.metrics_port}/metrics",
        flush=True,
    )
    Worker(worker.app, loglevel=level, quiet=True).execute_from_commandline()
    return 0

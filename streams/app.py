"""The gapwatch Faust worker: agents, tables, timer and web views around the pure pipeline.

The pipeline itself (`detectors.pipeline`: stage A `IngestStage`, stage B `AssembleStage`)
takes batches and returns effects; this module only feeds it what Faust delivers, applies the
effects (messages to send, state to store and write to changelogs) in order, and turns its
tallies into metrics. `gapwatch backtest` drives the same stages from files.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
import time
from typing import Any

import faust
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from detectors.events import InvalidEvent, parse_change
from detectors.feedback import ACTIONS, parse_feedback
from detectors.pipeline import (
    ASSEMBLE_TABLE,
    BACKEND,
    AssembleStage,
    BatchTally,
    IngestStage,
    Outbox,
    PipelineConfig,
    Send,
    StateWrite,
    Topics,
    group_partition,
)
from detectors.windows import ClosedWindow
from streams.config import Settings, kafka_security_options
from streams.metrics import Metrics

__all__ = ["GapwatchWorker", "group_partition", "pipeline_config"]

log = logging.getLogger("gapwatch.worker")


def pipeline_config(s: Settings, detect: bool = True) -> PipelineConfig:
    """The pipeline's settings, from the worker's (one place: backtest uses it too)."""
    return PipelineConfig(
        window_s=s.window_seconds, allowed_lateness_s=s.allowed_lateness_seconds,
        dedupe_horizon_s=s.dedupe_horizon_seconds, idle_partition_s=s.idle_partition_seconds,
        idle_input_event_s=s.idle_input_event_seconds, false_alarms_per_30_days=s.false_alarms_per_30_days,
        change_lookback_s=s.change_lookback_days * 86_400, detect=detect,
        max_input_skew_s=s.max_input_skew_seconds, max_platforms=s.max_platforms,
        max_event_names=s.max_event_names, max_message_bytes=s.max_message_bytes,
        max_delay_s=s.max_delay_seconds, record_timestamp_arrival=s.arrival_time == "record",
        topics=Topics(backend=s.backend_topic, platform=s.platform_topic, partials=s.partials_topic,
                      windows=s.windows_topic, alerts=s.alerts_topic, dlq=s.dlq_topic),
    )


class GapwatchWorker:
    """Builds the Faust app for `settings` and holds the in-memory views of its tables."""

    def __init__(
        self,
        settings: Settings,
        n_partitions: int,
        metrics: Metrics | None = None,
        detect: bool = True,
        changes_partitions: int = 1,
    ) -> None:
        self.changes_partitions = changes_partitions
        self.settings = settings
        self.n = n_partitions
        self.metrics = metrics or Metrics(max_platforms=settings.max_platforms,
                                          max_event_names=settings.max_event_names)
        self.config = pipeline_config(settings, detect)
        self.config.check_message_bounds()
        self.ingest = IngestStage(self.config, n_partitions, lambda p: self._items(self.ingest_table, p))
        self.assemble = AssembleStage(self.config, n_partitions, lambda k: self._items(self.assemble_table, k))
        # Effects waiting to be sent, in the order they were made: state items were already
        # applied to the tables' in-memory data when they were queued. `_flush` sends them
        # straight to the transport producer: Faust's buffered `send_soon` would make the
        # conductor stop delivering whenever more than 100 messages wait, one event-loop round
        # trip each; Faust still flushes this producer before it commits any offset.
        self._pending: list[Send | StateWrite] = []
        self._outbox = Outbox()
        self._flush_lock = asyncio.Lock()
        self.ready = False
        #: source partitions this worker paused for back-pressure (IngestStage.paused_inputs)
        self._backpressure: set[Any] = set()
        self._folded_logged: set[str] = set()
        self._stale_dropped = 0
        self._ratio_gauges: dict[tuple[str, ...], Any] = {}
        self.app = self._make_app()

    # ---- app ------------------------------------------------------------------------------
    def _make_app(self) -> faust.App:
        s = self.settings
        session = s.effective_session_timeout
        from streams.fastfaust import (
            BatchMessageConsumer,
            BatchStream,
            GapwatchTableManager,
            NoopMonitor,
            app_class,
        )

        consumer_cls = type("GapwatchConsumer", (BatchMessageConsumer,), {
            "batch_topics": {s.backend_topic, s.platform_topic}, "chunk_size": s.batch_size,
            "verify_end_offsets": {"bootstrap_servers": s.broker, **kafka_security_options(s)},
        })
        app = app_class(consumer_cls)(
            s.app_id,
            Stream=BatchStream,
            Monitor=NoopMonitor,
            TableManager=GapwatchTableManager,
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
            broker_commit_every=s.commit_every_events,
            producer_linger=0.005,
            producer_max_batch_size=min(1024 * 1024, s.max_message_bytes),
            producer_max_request_size=s.max_message_bytes,
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
        # people's ack / expected / false, keyed by alert_id: every worker holds all of it
        self.feedback_topic = app.topic(
            s.feedback_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        )
        self.feedback_table = app.GlobalTable("feedback", key_type=bytes, value_type=bytes, partitions=1)

        app.agent(self.source_topic, name="gapwatch.ingest")(self._ingest_agent)
        app.agent(self.partials_topic, name="gapwatch.assemble")(self._assemble_agent)
        app.agent(self.changes_topic, name="gapwatch.changes")(self._changes_agent)
        app.agent(self.feedback_topic, name="gapwatch.feedback")(self._feedback_agent)
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
        app.page("/alerts/{alert_id}/{action}")(self._feedback_view_class())
        return app  # type: ignore[no-any-return]

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

    # ---- state and effects -----------------------------------------------------------------
    def _items(self, table: Any, partition: int) -> dict[str, Any]:
        prefix = f"{partition}:".encode()
        out = {}
        for key, value in list(table.data.items()):
            if key.startswith(prefix) and value is not None:
                out[key.decode()] = orjson.loads(value)
        return out

    def _take_effects(self) -> None:
        """Apply the outbox's state items to the tables now; queue everything for sending."""
        items = self._outbox.take()
        tables = {"ingest": self.ingest_table, ASSEMBLE_TABLE: self.assemble_table}
        for item in items:
            if isinstance(item, StateWrite):
                data = tables[item.table].data
                if item.value is None:
                    data.pop(item.key, None)
                else:
                    data[item.key] = item.value
        self._pending.extend(items)

    async def _flush(self) -> None:
        """Send the queued effects in the order they were made.

        Under a lock: the agents and the timer all flush, and a newer state value must never
        reach a changelog partition before an older one. Kafka orders only within a partition,
        so outputs (windows, alerts, partials, DLQ) are awaited until delivered before any
        state write that follows them: state never says "done" for output that was lost.
        """
        async with self._flush_lock:
            pending, self._pending = self._pending, []
            send = self.app.producer.send
            changelogs = {"ingest": self.ingest_table.changelog_topic.get_topic_name(),
                          ASSEMBLE_TABLE: self.assemble_table.changelog_topic.get_topic_name()}
            in_flight: list[Any] = []
            limit = self.settings.max_message_bytes
            for item in pending:
                if item.value is not None and len(item.value) + len(item.key or b"") + 512 > limit:
                    await self._too_large(item, limit)
                if isinstance(item, StateWrite):
                    if in_flight:
                        await asyncio.gather(*in_flight)
                        in_flight = []
                    await send(changelogs[item.table], item.key, item.value, item.partition, None, None)
                else:
                    in_flight.append(await send(item.topic, item.key, item.value, item.partition, None, item.headers))

    async def _too_large(self, item: Send | StateWrite, limit: int) -> None:
        """Stop the worker with a clear message: the pipeline bounds every message it makes, so
        this is a bug or a limit set below what the settings allow; retrying would loop."""
        what = (f"state item {item.key.decode(errors='replace')!r} of table {item.table}" if isinstance(item, StateWrite)
                else f"message to {item.topic}")
        size = len(item.value or b"") + len(item.key or b"")
        exc = RuntimeError(
            f"gapwatch: a {what} is {size} bytes, over max_message_bytes={limit} (the producer's "
            "max_request_size): raise max_message_bytes (and the brokers' message.max.bytes) or lower "
            "max_platforms / max_event_names; the worker stops rather than lose it")
        log.critical("%s", exc)
        await self.app.crash(exc)
        raise exc

    async def _on_revoked(self, app: Any, revoked: Any = None, **_: Any) -> None:
        """Before another worker may take our partitions: every effect made while we owned
        them is on the brokers (the new owner's recovery reads the changelogs to their end),
        and nothing is written for them afterwards.

        Faust has flushed its producer by now, but not our queue: an agent may have been
        half-way through `_flush` (it does not wait for agents: stream_wait_empty=False).
        A state write that reached a changelog after the new owner had recovered it would
        overwrite that owner's newer items for whoever recovers the partition next.
        """
        try:
            await self._flush()
            await self.app.producer.flush()
        except Exception:  # stopping: the producer may be gone; uncommitted work is redone
            log.exception("could not deliver the queued effects before giving partitions away")
        # Drop the in-memory views; they are rebuilt from the recovered tables on next use.
        self.ingest.forget()
        self.assemble.forget()
        self._backpressure = set()  # the new assignment starts unpaused (Faust resets its own)

    # ---- stage A --------------------------------------------------------------------------
    async def _ingest_agent(self, stream: Any) -> None:
        # One event per (partition, fetched chunk): see streams/fastfaust.py. Leaving the loop
        # body acks the chunk, so offsets commit only after its counts are in the changelog.
        async for event in stream.events():
            if self._stale(event.message):
                continue
            batch = event.value
            self.process_source_batch(batch.topic, batch.partition, batch.offsets, batch.keys, batch.values,
                                      batch.timestamps)
            await self._flush()

    def _stale(self, message: Any) -> bool:
        """A message fetched before the last rebalance, or handed out while one is under way
        (Faust's flow suspended: from the revoke to the end of recovery). Its partition may
        belong to another worker now, which reads it again from the committed offset, and
        `_on_revoked` has already delivered our last writes for it: state written now could
        reach the changelog after the new owner recovered it, and be what the owner after that
        recovers (counts lost). Never act on it: Faust skips such messages when it hands them
        out, but `take_events` holds them across a rebalance (measured: stage B merged 97
        partials and wrote their state between a revoke and the next assignment). It is not
        acked either (fastfaust.BatchMessageConsumer.ack): it is fetched again."""
        if message.generation_id == self.app.consumer_generation_id and self.app.flow_control.is_active():
            return False
        self._stale_dropped += 1
        log.info("dropped a message of %s/%s fetched before or during the last rebalance (%d so far)",
                 message.topic, message.partition, self._stale_dropped)
        return True

    def process_source_batch(self, topic: str, p: int, offsets: list[int], keys: list[Any], values: list[Any],
                             timestamps: list[Any] | None = None) -> None:
        tally = self.ingest.process_batch(topic, p, offsets, keys, values, time.monotonic(), self._outbox, timestamps)
        self._take_effects()
        self._count_batch(topic, tally)

    def _count_batch(self, topic: str, tally: BatchTally) -> None:
        mt = self.metrics
        mt.consumed.labels(topic=topic).inc(tally.consumed)
        if tally.redelivered:
            mt.redelivered.labels(topic=topic).inc(tally.redelivered)
        if tally.late:
            mt.late.labels(topic=topic).inc(tally.late)
        for reason, n in tally.invalid.items():
            mt.invalid.labels(topic=topic, reason=reason).inc(n)
        for name, n in tally.folded.items():
            mt.folded.labels(field=name).inc(n)
        for name, first in tally.first_folded.items():
            if name not in self._folded_logged:
                self._folded_logged.add(name)
                cap = self.settings.max_platforms if name == "platform" else self.settings.max_event_names
                setting = "max_platforms" if name == "platform" else "max_event_names"
                log.warning("more than %s=%d distinct %s names on %s: %r and every later new one are counted "
                            "as 'other' (gapwatch_folded_events_total; logged once)", setting, cap, name, topic, first)
        for (platform, event_name), n in tally.duplicates.items():
            mt.duplicates.labels(platform=mt.platform_cap(platform), event_name=mt.event_name_cap(event_name)).inc(n)
        if self.ingest.input_of(topic) == BACKEND:
            for leaf, n in tally.leaves.items():
                event_name, browser, region = leaf.split("|")
                mt.backend.labels(event_name=mt.event_name_cap(event_name), browser=browser, region=region).inc(n)
        else:
            for leaf, n in tally.leaves.items():
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
        self.ingest.tick(assigned, time.monotonic(), self._caught_up, self._outbox)
        self._take_effects()
        await self._flush()
        await self._apply_backpressure(assigned)
        live = [st.watermark for p, st in self.ingest.partitions.items() if p in assigned and st.watermark > float("-inf")]
        if live:
            low = min(live)
            self.metrics.watermark.set(low)
            self.metrics.watermark_lag.set(max(0.0, time.time() - low))
        self._update_lag(assigned)

    async def _apply_backpressure(self, assigned: set[int]) -> None:
        """Pause the source partitions whose input runs far ahead of the other (the pipeline
        decides which: `IngestStage.paused_inputs`); resume them once the other catches up.

        aiokafka's pause (streams/fastfaust.py: nothing fetched is skipped); a rebalance
        unpauses everything, so the wanted set is applied again every tick (idempotent).
        """
        consumer = self.app.consumer
        want = {faust.types.TP(self._topic_of(kind), p)
                for p in assigned for kind in self.ingest.paused_inputs(p, self._caught_up)}
        release = self._backpressure - want
        if release:
            await consumer.resume_fetching(release)  # type: ignore[attr-defined]
            log.info("back-pressure: resumed %s", sorted(f"{tp.topic}/{tp.partition}" for tp in release))
        if want:
            if want - self._backpressure:
                log.info("back-pressure: paused %s (far ahead in event time of the other input)",
                         sorted(f"{tp.topic}/{tp.partition}" for tp in want - self._backpressure))
            await consumer.pause_fetching(want)  # type: ignore[attr-defined]
        self._backpressure = want

    def _recovered(self) -> bool:
        """Tables hold their full state: never build a view from a half-recovered table."""
        app = self.app
        recovery = getattr(app.tables, "recovery", None)
        return (not app.rebalancing and not getattr(app, "in_recovery", False)
                and recovery is not None and recovery.completed.is_set())

    def _topic_of(self, kind: str) -> str:
        return self.settings.backend_topic if kind == BACKEND else self.settings.platform_topic

    def _caught_up(self, kind: str, p: int, applied: int) -> bool | None:
        """True when nothing is left to read on the input; None when the end is unknown yet."""
        try:
            hw = self.app.consumer.highwater(faust.types.TP(self._topic_of(kind), p))
        except Exception:
            return None
        if hw is None:
            return None
        return bool(hw - 1 <= applied)

    def _update_lag(self, assigned: set[int]) -> None:
        consumer = self.app.consumer
        for kind in ("b", "p"):
            topic = self._topic_of(kind)
            lag = 0
            for p in assigned:
                try:
                    hw = consumer.highwater(faust.types.TP(topic, p))
                except Exception:
                    hw = None
                if hw is None:
                    continue
                lag += max(0, hw - 1 - self.ingest.state(p).offsets[kind])
            self.metrics.consumer_lag.labels(topic=topic).set(lag)

    # ---- stage B --------------------------------------------------------------------------
    async def _assemble_agent(self, stream: Any) -> None:
        async for events in stream.take_events(1000, within=0.2):
            messages = [e.message for e in events if not self._stale(e.message)]
            if messages:
                self.process_partials(messages)
            await self._flush()

    def process_partials(self, messages: list[Any]) -> None:
        result = self.assemble.process_partials(
            ((m.partition, m.value) for m in messages), self.recent_changes(), self._outbox,
            self.recent_feedback())
        self._take_effects()
        for k, error in result.malformed:
            log.error("ignoring a malformed internal partial on %s/%s: %s", self.settings.partials_topic, k, error)
        mt = self.metrics
        ratio = self._ratio_gauge
        levels: dict[str, int] = {}
        for w in result.windows:
            levels[w.level] = levels.get(w.level, 0) + 1
            if w.backend_count > 0:
                ratio(w, "count_ratio").set(w.platform_count / w.backend_count)
            if w.backend_value > 0:
                ratio(w, "value_ratio").set(w.platform_value / w.backend_value)
            if w.level == "platform":
                platform, event_name = mt.platform_cap(w.platform), mt.event_name_cap(w.event_name)
                if w.late_events:
                    mt.late_in_windows.labels(platform=platform, event_name=event_name).inc(w.late_events)
                mt.judged_after.labels(platform=platform, event_name=event_name).set(w.judged_after_s)
                for channel, (p95, _recent, _weight) in w.delay_p95.items():
                    mt.channel_delay.labels(platform=platform, event_name=event_name,
                                            channel=mt.channel_cap(channel)).set(p95)
        for level, n in levels.items():
            mt.windows_closed.labels(level=level).inc(n)
        for alert in result.alerts:
            mt.alerts.labels(
                platform=mt.platform_cap(alert.segment.platform), verdict=alert.verdict,
                direction=alert.direction, status=alert.status,
            ).inc()
        for k in result.touched:
            mon = self.assemble.monitors.get(k)
            if mon is not None:
                mon.export_metrics(mt)  # once per batch: gauges show the newest window

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


    # ---- people's feedback on alerts (detectors.feedback, docs/oncall.md) -----------------
    async def _feedback_agent(self, stream: Any) -> None:
        async for event in stream.events():
            m = event.message
            try:
                fb = parse_feedback(m.value)
            except InvalidEvent as exc:
                self.metrics.invalid.labels(topic=m.topic, reason=exc.reason).inc()
                continue
            key = fb["alert_id"].encode()
            old = self.feedback_table.get(key)
            if old and orjson.loads(old)["action"] == fb["action"]:
                continue  # said before (a retry, a second click): idempotent
            self.feedback_table[key] = orjson.dumps(fb)
            self.metrics.alert_feedback.labels(action=fb["action"]).inc()
            # bounded like the changes: words older than the lookback (event time) are dropped
            cutoff = fb["at"] - self.settings.change_lookback_days * 86400
            for k, v in list(self.feedback_table.items()):
                if v and orjson.loads(v)["at"] < cutoff:
                    del self.feedback_table[k]

    def recent_feedback(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for v in list(self.feedback_table.values()) if v]

    def _feedback_view_class(self) -> Any:
        worker = self

        class FeedbackView(faust.web.View):
            async def post(self, request: Any, alert_id: str, action: str) -> Any:
                token = worker.settings.api_token
                if token and request.headers.get("Authorization", "") != f"Bearer {token}":
                    return self.json({"error": "missing or wrong bearer token"}, status=401)
                if action not in ACTIONS:
                    return self.json({"error": "invalid_field", "detail": f"action must be one of {', '.join(ACTIONS)}"}, status=404)
                try:
                    body = await request.read()
                    doc = orjson.loads(body) if body.strip() else {}
                    if not isinstance(doc, dict):
                        raise InvalidEvent("not_an_object", "the body must be a JSON object")
                    fb = parse_feedback({"at": time.time(), **doc, "alert_id": alert_id, "action": action})
                except orjson.JSONDecodeError:
                    return self.json({"error": "malformed_json", "detail": "the body is not JSON"}, status=400)
                except InvalidEvent as exc:
                    return self.json({"error": exc.reason, "detail": exc.detail}, status=400)
                await worker.feedback_topic.send(key=alert_id.encode(), value=orjson.dumps(fb))
                return self.json({"accepted": fb}, status=202)

        return FeedbackView


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
    await ensure_feedback_topic(s)
    return nb, max(1, counts.get(s.changes_topic, 1))


async def ensure_feedback_topic(s: Settings) -> None:
    """The feedback topic: one partition, compacted (key alert_id: the newest word wins)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=s.broker, **kafka_security_options(s))
    await admin.start()
    try:
        if s.feedback_topic not in set(await admin.list_topics()):
            try:
                await admin.create_topics([NewTopic(s.feedback_topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
            except Exception:  # created meanwhile, or the broker refuses the config: plain topic
                if s.feedback_topic not in set(await admin.list_topics()):
                    await admin.create_topics([NewTopic(s.feedback_topic, 1, 1)])
    finally:
        await admin.close()


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

    async def _full_gc() -> None:
        gc.collect()

    app.timer(FULL_GC_SECONDS, name="gapwatch.full_gc")(_full_gc)


def run_worker(settings: Settings) -> int:
    """Entry point of `gapwatch worker`."""
    n, n_changes = asyncio.run(prepare_topics(settings))
    worker = GapwatchWorker(settings, n, changes_partitions=n_changes)
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

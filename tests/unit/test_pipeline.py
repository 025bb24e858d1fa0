"""The pure pipeline (detectors.pipeline) without a broker: stage A and B driven by hand over
several partitions give what `Backtest` gives; effects come out in a safe order; the idle rule;
a restart from the written state changes nothing."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import orjson
import pytest

from detectors.alert import Alert
from detectors.pipeline import (
    ASSEMBLE_TABLE,
    INGEST_TABLE,
    AssembleStage,
    Backtest,
    IngestStage,
    Outbox,
    PipelineConfig,
    Send,
    StateWrite,
)
from streams.simulate import generate

CONFIG = PipelineConfig(window_s=600, allowed_lateness_s=120, idle_partition_s=10, idle_input_event_s=3600)
TOPICS = CONFIG.topics


class Group:
    """Stage A and B over `n` partitions, effects applied to in-memory tables, partials routed
    back to stage B like the partials topic would: what the Faust worker does, minus Faust."""

    def __init__(self, n: int, config: PipelineConfig = CONFIG,
                 tables: dict[str, dict[bytes, bytes]] | None = None) -> None:
        self.n = n
        self.config = config
        self.tables = tables if tables is not None else {INGEST_TABLE: {}, ASSEMBLE_TABLE: {}}
        self.ingest = IngestStage(config, n, lambda p: self._load(INGEST_TABLE, p))
        self.assemble = AssembleStage(config, n, lambda k: self._load(ASSEMBLE_TABLE, k))
        self.outbox = Outbox()
        self.sent: list[Send] = []
        self.windows: dict[tuple[str, int], dict[str, Any]] = {}
        self.alerts: list[Alert] = []
        self.clock = 0.0
        self.offsets = {(t, p): 0 for t in (TOPICS.backend, TOPICS.platform) for p in range(n)}
        self.drained: set[str] = set()
        #: (input, partition) -> messages left to read, when the test knows (else `drained` decides)
        self.left: dict[tuple[str, int], int] = {}
        self.largest_message = 0

    def caught_up(self, kind: str, p: int, applied: int) -> bool:
        if (kind, p) in self.left:
            return self.left[(kind, p)] == 0
        return kind in self.drained

    def _load(self, table: str, p: int) -> dict[str, Any]:
        prefix = f"{p}:".encode()
        return {k.decode(): orjson.loads(v) for k, v in self.tables[table].items() if k.startswith(prefix)}

    def apply(self) -> None:
        partials = []
        for item in self.outbox.take():
            self.largest_message = max(self.largest_message, len(item.value or b"") + len(item.key or b""))
            if isinstance(item, StateWrite):
                if item.value is None:
                    self.tables[item.table].pop(item.key, None)
                else:
                    self.tables[item.table][item.key] = item.value
            elif item.topic == TOPICS.partials:
                assert item.value is not None and item.partition is not None
                partials.append((item.partition, item.value))
            else:
                self.sent.append(item)
        if partials:
            result = self.assemble.process_partials(partials, [], self.outbox)
            for w in result.windows:
                self.windows[(w.segment_key, w.window_start)] = w.to_dict()
            self.alerts.extend(result.alerts)
            self.apply()

    def feed(self, topic: str, p: int, values: list[bytes], first_offset: int | None = None) -> None:
        first = self.offsets[(topic, p)] if first_offset is None else first_offset
        offsets = list(range(first, first + len(values)))
        self.offsets[(topic, p)] = max(self.offsets[(topic, p)], first + len(values))
        stamps: list[int | None] | None = None
        if self.config.record_timestamp_arrival:
            # the producer sets the record timestamp to the arrival, the value carries none
            docs = [orjson.loads(v) for v in values]
            stamps = [round(d.pop("arrived_at") * 1000) if "arrived_at" in d else None for d in docs]
            values = [orjson.dumps(d) for d in docs]
        self.ingest.process_batch(topic, p, offsets, [None] * len(values), values, self.clock, self.outbox, stamps)
        self.apply()

    def tick(self) -> None:
        self.clock += self.config.idle_partition_s
        self.ingest.tick(range(self.n), self.clock, self.caught_up, self.outbox)
        self.apply()


def partition_of(doc: dict[str, Any], n: int) -> int:
    return zlib.crc32(str(doc.get("order_id") or doc["event_id"]).encode()) % n


def split(events: Iterable[dict[str, Any]], n: int) -> list[list[bytes]]:
    parts: list[list[bytes]] = [[] for _ in range(n)]
    for e in events:
        parts[partition_of(e, n)].append(orjson.dumps(e))
    return parts


def play(group: Group, backend: list[dict[str, Any]], platform: list[dict[str, Any]], chunk: int = 200) -> None:
    parts = {TOPICS.backend: split(backend, group.n), TOPICS.platform: split(platform, group.n)}
    pos = {(t, p): 0 for t in parts for p in range(group.n)}
    while any(pos[(t, p)] < len(parts[t][p]) for t in parts for p in range(group.n)):
        for t in parts:
            for p in range(group.n):
                i = pos[(t, p)]
                if i < len(parts[t][p]):
                    group.feed(t, p, parts[t][p][i:i + chunk])
                    pos[(t, p)] = i + chunk
        group.tick()
    group.drained = {"b", "p"}
    for _ in range(3):
        group.tick()


@pytest.fixture(scope="module")
def sim() -> Any:
    return generate("safari_drop", seed=3, days=1.5, orders_per_day=1500)


@pytest.fixture(scope="module")
def offline(sim: Any) -> Backtest:
    bt = Backtest(CONFIG)
    bt.run((orjson.dumps(e) for e in sim.backend), (orjson.dumps(e) for e in sim.platform))
    return bt


def by_key(bt: Backtest) -> dict[tuple[str, int], dict[str, Any]]:
    return {(w.segment_key, w.window_start): w.to_dict() for w in bt.windows}


@pytest.mark.parametrize("n", [1, 3, 4])
def test_stages_over_n_partitions_give_the_backtest_windows_and_alerts(sim: Any, offline: Backtest, n: int) -> None:
    group = Group(n)
    play(group, sim.backend, sim.platform)
    # At the very end each partition's watermark is its own slowest input (more data may still
    # come): the group closes up to the slowest partition, one partition closes a bit further.
    through = min(group.ingest.state(p).closed_through for p in range(n))
    assert through >= sim.truth["end"] - 2 * CONFIG.window_s - CONFIG.allowed_lateness_s
    expected = {k: w for k, w in by_key(offline).items() if w["window_end"] <= through}
    assert len(expected) > 1000
    assert group.windows == expected  # every window, every field
    assert [a.alert_id for a in group.alerts] == [a.alert_id for a in offline.alerts
                                                 if a.detected_at <= through]
    assert group.alerts, "the injected safari drop is found"
    # a window reaches gapwatch-windows once per segment, keyed by its segment
    published = [s for s in group.sent if s.topic == TOPICS.windows]
    assert len(published) == len(expected)


@pytest.fixture(scope="module")
def batched() -> Any:
    """A batch channel: google_ads lead imports uploaded every 30 min (later than the
    lateness at 10-minute windows), moving to a nightly batch on day 2."""
    return generate("import_nightly", seed=5, days=2.5, orders_per_day=1500, import_batch_s=1800.0)


def _judged_by(windows: dict[tuple[str, int], dict[str, Any]], through: float) -> dict[tuple[str, int], dict[str, Any]]:
    """The windows a run that closed through `through` has judged: a group's windows wait for
    their channels' delay (`judged_after_s` of the group's platform-level window)."""
    hold = {(k.rsplit("|", 2)[0], start): w["judged_after_s"] for (k, start), w in windows.items() if w["level"] == "platform"}
    return {(k, start): w for (k, start), w in windows.items()
            if w["window_end"] + hold.get((k.rsplit("|", 2)[0], start), 0) <= through}


@pytest.mark.parametrize(("arrival", "n"), [("order", 1), ("field", 1), ("field", 3), ("record", 3), ("order", 3)])
def test_a_batch_channel_is_judged_after_its_delay_the_same_over_n_partitions(batched: Any, n: int,
                                                                              arrival: str) -> None:
    """Backtest reads the arrival from the files (`arrived_at`, or the order); the worker from
    the same field or, with `record_timestamp_arrival`, from the records' timestamps."""
    arrival_field = arrival != "order"
    platform = batched.platform
    if arrival_field:
        platform = [{**e, "arrived_at": t} for e, t in zip(platform, batched.platform_arrivals, strict=True)]
    offline = Backtest(CONFIG)
    offline.run((orjson.dumps(e) for e in batched.backend), (orjson.dumps(e) for e in platform))
    group = Group(n, replace(CONFIG, record_timestamp_arrival=arrival == "record"))
    play(group, batched.backend, platform)
    through = min(group.ingest.state(p).closed_through for p in range(n))
    expected = _judged_by(by_key(offline), through)
    assert len(expected) > 1000
    if arrival == "order" and n > 1:
        # Without an arrival time a correction's delay is measured from its partition's newest
        # event time, which lags in sparse hours when the events are spread over partitions:
        # the counts agree, a few delay histograms differ by a bucket (a known limit,
        # docs/architecture.md "Delayed channels")
        differ = [k for k in expected if group.windows.get(k) != expected[k]]
        assert len(differ) <= 0.001 * len(expected)
        for k in differ:
            got, want = group.windows[k], expected[k]
            assert {f for f in want if got[f] != want[f]} <= {"platform_delays", "delay_p95"}, k
        return
    assert group.windows == expected  # every window, every field: corrections, delays, holds
    assert [a.alert_id for a in group.alerts] == [a.alert_id for a in offline.alerts if a.detected_at <= through]
    leads = [w for w in offline.windows if w.segment_key == "google_ads|lead|*|*"]
    before = [w for w in leads if w.window_end <= batched.truth["change_at"]]
    # the half-hourly import is learned and waited for: its leads enter the ratio in their own
    # window (today's late events would have been ~all of them)
    assert max(w.judged_after_s for w in before) >= 1800
    if n == 1 and arrival == "order":
        # against late-is-late (no corrections): the import's leads were mostly lost to lateness
        old = Backtest(replace(CONFIG, max_delay_s=0))
        old.run((orjson.dumps(e) for e in batched.backend), (orjson.dumps(e) for e in platform))
        old_leads = [w for w in old.windows if w.segment_key == "google_ads|lead|*|*"
                     and w.window_end <= batched.truth["change_at"]]
        got, had = sum(w.platform_count for w in before), sum(w.platform_count for w in old_leads)
        assert got >= 1.5 * had, (got, had)
        assert sum(w.late_events for w in before) < 0.2 * sum(w.late_events for w in old_leads)
    # the nightly batch's leads arrive after their windows were judged: late, counted, learned
    assert sum(w.late_events for w in leads) > 0
    assert max(max(p95[1] for p95 in w.delay_p95.values()) for w in leads if w.delay_p95) > 3600


def test_a_restart_from_the_written_state_changes_nothing(sim: Any, offline: Backtest) -> None:
    n = 2
    first = Group(n)
    parts = {TOPICS.backend: split(sim.backend, n), TOPICS.platform: split(sim.platform, n)}
    # the first half, then a "crash": only the tables survive
    for t in parts:
        for p in range(n):
            half = len(parts[t][p]) // 2
            first.feed(t, p, parts[t][p][:half])
    first.tick()
    second = Group(n, tables=first.tables)
    second.windows = dict(first.windows)
    second.alerts = list(first.alerts)
    # Kafka redelivers from an older committed offset: the overlap is recognised and skipped
    for t in parts:
        for p in range(n):
            half = len(parts[t][p]) // 2
            second.offsets[(t, p)] = half
            redo = max(0, half - 50)
            second.feed(t, p, parts[t][p][redo:], first_offset=redo)
    second.drained = {"b", "p"}
    for _ in range(3):
        second.tick()
    assert second.windows == by_key(offline)


def test_invalid_events_go_to_the_dlq_before_the_state_that_skips_them() -> None:
    group = Group(1)
    good = orjson.dumps({"event_id": "o1", "type": "order", "order_id": "o1", "occurred_at": 1767571200})
    group.ingest.process_batch(TOPICS.backend, 0, [0, 1, 2], [b"k0", b"k1", None],
                               [b"{not json", good, b'{"event_id": "x"}'], 0.0, group.outbox)
    items = group.outbox.take()
    dlq = [i for i in items if isinstance(i, Send)]
    assert [(d.key, d.value) for d in dlq] == [(b"k0", b"{not json"), (None, b'{"event_id": "x"}')]
    assert [dict(d.headers or [])["gapwatch-reason"] for d in dlq] == [b"malformed_json", b"missing_occurred_at"]
    last_dlq = max(i for i, item in enumerate(items) if isinstance(item, Send))
    first_state = min(i for i, item in enumerate(items) if isinstance(item, StateWrite))
    assert last_dlq < first_state
    meta = orjson.loads(next(i.value for i in items if isinstance(i, StateWrite) and i.key == b"0:m"))
    assert meta["offsets"]["b"] == 2  # skipped offsets count as applied: never re-read


def _backend(i: int, ts: float) -> bytes:
    return orjson.dumps({"event_id": f"o{i}", "type": "order", "order_id": f"o{i}", "occurred_at": ts})


def _platform(i: int, ts: float) -> bytes:
    return orjson.dumps({"event_id": f"o{i}", "platform": "meta", "order_id": f"o{i}", "occurred_at": ts})


T0 = 1767571200.0


def test_idle_rule_closes_windows_without_a_drained_input_only_when_it_is_quiet_and_far_behind() -> None:
    group = Group(1)
    # backend up to T0 + 1 h, platform up to T0 + 3 h: backend is 2 h behind
    group.feed(TOPICS.backend, 0, [_backend(i, T0 + 60 * i) for i in range(60)])
    group.feed(TOPICS.platform, 0, [_platform(i, T0 + 180 * i) for i in range(60)])
    group.tick()
    closed_through = group.ingest.state(0).closed_through
    assert closed_through <= T0 + 3600  # the backend's own watermark bounds it
    # a backlog is not idleness: quiet, far behind, but not caught up
    for _ in range(5):
        group.tick()
    assert group.ingest.state(0).closed_through == closed_through
    # drained and quiet: windows close on the platform's watermark
    group.drained = {"b"}
    group.tick()
    st = group.ingest.state(0)
    assert st.closed_through >= T0 + 3 * 3600 - 600 - 120 - 600
    # the backend's windows that closed are there, empty ones after its end included
    starts = {ws for (key, ws) in group.windows if key == "meta|purchase|*|*"}
    assert max(starts) > T0 + 2 * 3600


def test_a_drained_input_close_behind_the_other_is_not_idle() -> None:
    group = Group(1)
    group.feed(TOPICS.backend, 0, [_backend(i, T0 + 60 * i) for i in range(60)])
    group.feed(TOPICS.platform, 0, [_platform(i, T0 + 70 * i) for i in range(60)])  # 10 min ahead
    group.drained = {"b", "p"}
    group.tick()
    through = group.ingest.state(0).closed_through
    for _ in range(5):
        group.tick()
    assert group.ingest.state(0).closed_through == through  # < idle_input_event_s apart: wait


# ---- backfills, back-pressure, bounded messages, bounded cardinality -------------------------

SMALL_MESSAGES = PipelineConfig(window_s=300, allowed_lateness_s=120, idle_partition_s=10, idle_input_event_s=3600,
                                max_input_skew_s=3 * 3600, max_message_bytes=256 * 1024, max_event_names=5)


def backfill(group: Group, backend: list[dict[str, Any]], platform: list[dict[str, Any]], chunk: int = 50) -> int:
    """Every event is there before the first read (a backfill): each round reads a chunk of
    each input of each partition unless stage A pauses it, as the worker's consumer would.
    Returns the most windows any partition held open."""
    parts = {"b": split(backend, group.n), "p": split(platform, group.n)}
    topic = {"b": TOPICS.backend, "p": TOPICS.platform}
    pos = {(k, p): 0 for k in parts for p in range(group.n)}
    for k in parts:
        for p in range(group.n):
            group.left[(k, p)] = len(parts[k][p])
    most_open = 0
    while any(group.left.values()):
        for p in range(group.n):
            paused = group.ingest.paused_inputs(p, group.caught_up)
            for k in parts:
                i = pos[(k, p)]
                if k in paused or i >= len(parts[k][p]):
                    continue
                values = parts[k][p][i:i + chunk]
                pos[(k, p)] = i + len(values)
                group.left[(k, p)] -= len(values)
                group.feed(topic[k], p, values)
            most_open = max(most_open, len(group.ingest.state(p).windows))
        group.tick()
    for _ in range(3):
        group.tick()
    return most_open


@pytest.fixture(scope="module")
def weeks() -> Any:
    return generate("steady", seed=5, days=9, orders_per_day=250)


@pytest.mark.parametrize("n", [1, 2])
def test_a_backfill_pauses_the_input_ahead_keeps_messages_bounded_and_equals_the_backtest(weeks: Any, n: int) -> None:
    # The reference: `Backtest` for one partition; for two, the same stages fed chunk for chunk
    # of each input with no pause at all (a partition judges lateness on its own events, so
    # one late event may land in another window than in a one-partition run).
    if n == 1:
        bt = Backtest(SMALL_MESSAGES)
        bt.run((orjson.dumps(e) for e in weeks.backend), (orjson.dumps(e) for e in weeks.platform))
        reference, ref_alerts = by_key(bt), bt.alerts
    else:
        loose = Group(n, replace(SMALL_MESSAGES, max_input_skew_s=1e12))
        play(loose, weeks.backend, weeks.platform, chunk=50)
        reference, ref_alerts = loose.windows, loose.alerts
    # platform events outnumber backend events ~2:1: read chunk for chunk, the backend input
    # runs ahead in event time, days by the end, unless it is paused
    group = Group(n, SMALL_MESSAGES)
    most_open = backfill(group, weeks.backend, weeks.platform)
    cfg = SMALL_MESSAGES
    # the skew plus what one chunk read past it can open (a chunk is read whole)
    assert most_open <= (cfg.max_input_skew_s + cfg.allowed_lateness_s) // cfg.window_s + 50 + 3
    # every message within the limit the producer enforces. (The largest is one group's detector
    # state, bounded by its segments and signals, not by the backlog; with the per-channel and
    # unmatched-rate signals it reached ~55 % of this test's small limit: splitting it per
    # segment is listed as open in docs/deploy.md.)
    assert group.largest_message <= cfg.max_message_bytes
    through = min(group.ingest.state(p).closed_through for p in range(n))
    expected = {k: w for k, w in reference.items() if w["window_end"] <= through}
    assert len({ws for _, ws in expected}) > 8 * 288
    assert group.windows == expected
    assert [a["alert_id"] for a in group.alerts] == [a["alert_id"] for a in ref_alerts if a["detected_at"] <= through]


def test_without_back_pressure_the_backfill_holds_days_of_open_windows(weeks: Any) -> None:
    """The bound above is the pause's doing (a check that the test measures something)."""
    loose = PipelineConfig(window_s=300, allowed_lateness_s=120, max_input_skew_s=1e12,
                           max_message_bytes=256 * 1024, max_event_names=5)
    group = Group(1, loose)
    assert backfill(group, weeks.backend, weeks.platform) > 2 * 288


def test_a_tick_that_closes_thousands_of_windows_sends_one_bounded_partial_per_window() -> None:
    group = Group(1, SMALL_MESSAGES)
    # two weeks of backend, one event a minute, then one platform event far ahead: both are
    # caught up, the platform idle rule closes everything at once
    backend = [_backend(i, T0 + 60 * i) for i in range(14 * 1440)]
    group.feed(TOPICS.backend, 0, backend[: len(backend) // 2])
    group.feed(TOPICS.backend, 0, backend[len(backend) // 2:])
    group.feed(TOPICS.platform, 0, [_platform(0, T0 + 15 * 86400)])
    group.drained = {"b", "p"}
    for _ in range(3):
        group.tick()
    assert group.ingest.state(0).closed_through >= T0 + 14 * 86400 - 600
    assert len({ws for (_, ws) in group.windows}) > 13 * 288
    assert group.largest_message <= SMALL_MESSAGES.max_message_bytes // 2


def test_a_message_limit_too_small_for_the_caps_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="max_message_bytes=262144 is too small for max_event_names=40"):
        PipelineConfig(max_message_bytes=256 * 1024, max_event_names=40).check_message_bounds()
    PipelineConfig().check_message_bounds()


def test_hostile_cardinality_folds_into_other_and_stays_bounded() -> None:
    """A producer bug: a fresh platform and event name on every event (60,000 over a day,
    20,000 platform names x 5,000 event names): state, partials and segments stay bounded."""
    import time

    cfg = PipelineConfig(window_s=300, allowed_lateness_s=120)
    platform = [orjson.dumps({"event_id": f"e{i}", "platform": f"pf{i % 20000}", "event_name": f"ev{i % 5000}",
                              "order_id": f"o{i}", "occurred_at": T0 + i * 1.44}) for i in range(60_000)]
    backend = [_backend(i, T0 + i * 2.88) for i in range(30_000)]
    t0 = time.monotonic()
    bt = Backtest(cfg)
    bt.run(backend, platform)
    bt.close_all()
    elapsed = time.monotonic() - t0
    st = bt.partition
    assert len(st.names.platforms) == cfg.max_platforms + 1 and len(st.names.platform_event_names) <= cfg.max_event_names + 1
    groups = {(w.platform, w.event_name) for w in bt.windows if w.platform != "*"}
    assert len(groups) <= (cfg.max_platforms + 1) * (cfg.max_event_names + 1)
    assert len({platform for platform, _ in groups}) <= cfg.max_platforms + 1
    assert len({w.event_name for w in bt.windows}) <= cfg.max_event_names + 2  # purchase, other
    parents = [w for w in bt.windows if w.level == "platform"]
    assert sum(w.platform_count for w in parents) == 60_000  # folded, never lost
    assert sum(w.platform_count for w in parents if (w.platform, w.event_name) == ("other", "other")) > 59_000
    assert elapsed < 120, elapsed  # minutes, not the hours of one segment per name

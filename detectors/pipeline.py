"""The gapwatch pipeline as pure code: batches in, effects out.

Stage A (`IngestStage`) validates, counts and dedupes the events of each source partition and
closes windows on the event-time watermark, idle-input rule included. Stage B
(`AssembleStage`) merges the partials of every source partition, rolls the segment hierarchy
up, closes segment windows and runs detection. Neither does I/O: each call appends what is to
be sent and what state is to be written, in the order it must happen, to an `Outbox`, and
returns what the metrics need. The Faust worker (streams/app.py) only moves those bytes;
`Backtest` drives the very same stages from files with an in-memory outbox, so the live
worker and `gapwatch backtest` agree by construction, not by a second copy kept in step.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from detectors.alert import Alert
from detectors.events import (
    BROWSERS,
    REGIONS,
    InvalidEvent,
    parse_backend_fast,
    parse_change,
    parse_platform_fast,
)
from detectors.feedback import parse_feedback
from detectors.monitor import GroupMonitor, MonitorConfig
from detectors.windows import (
    MAX_BACKEND_LEAF_BYTES,
    MAX_LEAF_BYTES,
    MAX_RECORD_BYTES,
    ClosedWindow,
    Partial,
    PartitionWindows,
    WindowAssembler,
    WindowConfig,
    group_of,
    split_platform_by_group,
)

__all__ = [
    "Topics",
    "PipelineConfig",
    "Send",
    "StateWrite",
    "Outbox",
    "BatchTally",
    "IngestStage",
    "AssembleStage",
    "AssembleResult",
    "Backtest",
    "group_partition",
    "BACKEND",
    "PLATFORM",
]

JSON = Any
NEG_INF = -math.inf
#: the two inputs of stage A, as its state names them
BACKEND, PLATFORM = "b", "p"
INGEST_TABLE, ASSEMBLE_TABLE = "ingest", "assemble"


#: measured: a segment's detector state is ~1.4 kB as JSON (9 days of 5-minute windows);
#: twice that as the bound of one group's stored detectors
MAX_SEGMENT_STATE_BYTES = 3 * 1024

#: the routing key of every group: one partials partition holds all of them, so one monitor
#: sees every platform and event name (cross-platform incidents, event renames; see
#: docs/architecture.md, "Partials routing")
DETECTION_KEY = "detection"


def group_partition(group: str, n: int) -> int:
    """Partition of the partials topic that owns a `platform|event_name` group (stable).

    Every group goes to one partition: causes span groups (one consent change on every
    platform is one incident; a renamed event is one group vanishing and another appearing).
    """
    return zlib.crc32(DETECTION_KEY.encode()) % n


@dataclass(frozen=True)
class Topics:
    backend: str = "backend-events"
    platform: str = "platform-events"
    partials: str = "gapwatch-partials"
    windows: str = "gapwatch-windows"
    alerts: str = "gap-alerts"
    dlq: str = "gapwatch-dlq"


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline decides with; the worker builds it from its settings."""

    window_s: int = 300
    allowed_lateness_s: float = 120.0
    dedupe_horizon_s: float = 86_400.0
    #: an input with nothing to read for this long (wall clock) may be idle ...
    idle_partition_s: float = 10.0
    #: ... once the other input is this far ahead in event time; windows then close without it
    idle_input_event_s: float = 3600.0
    #: an input this far ahead of the other in event time is paused (per partition) until the
    #: other catches up, so open windows stay bounded by it, not by a backlog
    max_input_skew_s: float = 3 * 3600.0
    false_alarms_per_30_days: float = 1.0
    change_lookback_s: float = 30 * 86_400.0
    detect: bool = True
    #: distinct platform / event names kept apart in state; more fold into `other`
    max_platforms: int = 20
    max_event_names: int = 20
    #: the largest message the producer may send (its max_request_size): state items and
    #: partials are cut into pieces well below it
    max_message_bytes: int = 1024 * 1024
    #: the longest reporting delay waited for: a platform event up to this late (past its
    #: window's end) counts in its own window when it arrived within its channel's learned
    #: delay; a platform's windows are judged at most this long after they end
    max_delay_s: float = 26 * 3600.0
    #: a platform event without `arrived_at` arrived at its record's timestamp (the worker's
    #: Kafka CreateTime / LogAppendTime); off: at its place in the arrival order. Backtest
    #: reads files, which carry `arrived_at` or nothing (docs/events.md)
    record_timestamp_arrival: bool = False
    #: pooled evidence across platforms (detectors/pooled.py, MonitorConfig.pooled)
    pooled: bool = True
    topics: Topics = field(default_factory=Topics)

    @property
    def window_config(self) -> WindowConfig:
        return WindowConfig(window_s=self.window_s, allowed_lateness_s=self.allowed_lateness_s,
                            dedupe_horizon_s=self.dedupe_horizon_s, max_platforms=self.max_platforms,
                            max_event_names=self.max_event_names, max_delay_s=self.max_delay_s,
                            max_records_per_item=max(16, self.max_message_bytes // (2 * MAX_RECORD_BYTES)),
                            max_leaves_per_item=max(16, self.max_message_bytes // (2 * MAX_LEAF_BYTES)))

    def check_message_bounds(self) -> None:
        """Raise ValueError, saying which setting to change, when a message whose size the
        pipeline bounds (a window's backend counts: event names x browsers x regions leaves)
        could still exceed `max_message_bytes`."""
        backend_leaves = (self.max_event_names + 1) * len(BROWSERS) * len(REGIONS)
        worst = backend_leaves * MAX_BACKEND_LEAF_BYTES + 1024
        # the detectors of one group, stored as one item: one per segment of its hierarchy
        segments = 1 + len(BROWSERS) + len(REGIONS) + len(BROWSERS) * len(REGIONS)
        worst = max(worst, segments * MAX_SEGMENT_STATE_BYTES)
        if worst > self.max_message_bytes:
            raise ValueError(
                f"max_message_bytes={self.max_message_bytes} is too small for max_event_names="
                f"{self.max_event_names}: one window's backend counts may take {worst} bytes; raise "
                "max_message_bytes (and the brokers' message.max.bytes) or lower max_event_names")

    @property
    def monitor_config(self) -> MonitorConfig:
        return MonitorConfig(window_s=self.window_s, false_alarms_per_30_days=self.false_alarms_per_30_days,
                             change_lookback_s=self.change_lookback_s, pooled=self.pooled)


class Send(NamedTuple):
    """A message to produce (partition None: the producer's partitioner decides)."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None


class StateWrite(NamedTuple):
    """A state item to store in `table` and write to its changelog partition (None deletes)."""

    table: str
    partition: int
    key: bytes
    value: bytes | None


class Outbox:
    """Effects in the order they must happen: a state write must never reach Kafka before an
    output made before it (state would say "done" for output that was lost)."""

    def __init__(self) -> None:
        self.items: list[Send | StateWrite] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        self.items.append(Send(topic, key, value, partition, headers))

    def persist(self, table: str, partition: int, changes: Mapping[str, JSON | None]) -> None:
        dumps = orjson.dumps
        append = self.items.append
        for key, value in changes.items():
            append(StateWrite(table, partition, key.encode(), None if value is None else dumps(value)))

    def take(self) -> list[Send | StateWrite]:
        items, self.items = self.items, []
        return items


def _items_with_prefix(items: Mapping[str, JSON], prefix: str) -> dict[str, JSON]:
    return {k: v for k, v in items.items() if k.startswith(prefix)}


# ---- stage A -------------------------------------------------------------------------------


@dataclass
class BatchTally:
    """What one batch of one source partition did, for metrics."""

    consumed: int = 0
    redelivered: int = 0
    late: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    #: events per leaf (`event_name|browser|region` or `platform|event_name|browser|region`)
    leaves: dict[str, int] = field(default_factory=dict)
    #: duplicate triggers per (platform, event_name)
    duplicates: dict[tuple[str, str], int] = field(default_factory=dict)
    #: events whose platform / event name was beyond its cap, counted as `other`, per field
    folded: dict[str, int] = field(default_factory=dict)
    #: per field, the first name folded in this batch (for one log line)
    first_folded: dict[str, str] = field(default_factory=dict)


class IngestStage:
    """Stage A over the source partitions this process owns.

    `load_state(p)` returns the stored items of partition `p` (`{p}:...` keys); the stage
    builds its view from them on first use and after `forget()` (a rebalance).
    """

    def __init__(self, config: PipelineConfig, n_partitions: int,
                 load_state: Callable[[int], Mapping[str, JSON]] | None = None) -> None:
        self.config = config
        self.n_partitions = n_partitions
        self._load = load_state or (lambda p: {})
        self.partitions: dict[int, PartitionWindows] = {}
        #: clock reading when each input of each partition last delivered a batch
        self.last_input_at: dict[int, dict[str, float]] = {}
        self._window_config = config.window_config

    def state(self, p: int) -> PartitionWindows:
        st = self.partitions.get(p)
        if st is None:
            st = self.partitions[p] = PartitionWindows.restore(p, self._window_config, self._load(p))
        return st

    def forget(self) -> None:
        """Drop the in-memory views; they are rebuilt from stored state on next use."""
        self.partitions.clear()

    def input_of(self, topic: str) -> str:
        return BACKEND if topic == self.config.topics.backend else PLATFORM

    def process_batch(self, topic: str, p: int, offsets: Sequence[int], keys: Sequence[bytes | None],
                      values: Sequence[bytes | None], now: float, outbox: Outbox,
                      timestamps: Sequence[int | None] | None = None) -> BatchTally:
        """Validate and count one chunk of one source partition; persist its state once.

        `timestamps`: the records' timestamps (ms), the arrival of platform events without
        `arrived_at` when `record_timestamp_arrival` is on."""
        kind = self.input_of(topic)
        st = self.state(p)
        parse = parse_backend_fast if kind == BACKEND else parse_platform_fast
        add: Callable[[int, Any, Any], bool] = st.add_backend if kind == BACKEND else st.add_platform
        applied_through = st.offsets[kind]
        tally = BatchTally(consumed=len(offsets))
        dlq = self.config.topics.dlq
        parsed: list[tuple[int, Any, Any, Any]] = []  # (offset, event or None, key, value)
        stamps = timestamps if kind == PLATFORM and self.config.record_timestamp_arrival else None
        for i, (offset, key, value) in enumerate(zip(offsets, keys, values, strict=True)):
            if offset <= applied_through:
                tally.redelivered += 1  # seen before a restart: already in the counts
                continue
            try:
                ev: Any = parse(value)
                if stamps is not None and ev.arrived_at is None:  # platform events only
                    stamp = stamps[i]
                    if stamp is not None and stamp > 0:
                        ev = ev._replace(arrived_at=stamp / 1000.0)
                parsed.append((offset, ev, None, None))
            except InvalidEvent as exc:
                parsed.append((offset, None, key, (value, exc)))
        # the dedupe memory looks the whole chunk's ids up at once
        dedupe_keys = iter(st.prefetch(kind, [ev for _, ev, _, _ in parsed if ev is not None]))
        for offset, ev, key, bad in parsed:
            if ev is not None:
                add(offset, ev, next(dedupe_keys))
                continue
            value, error = bad
            st.skip(kind, offset)
            tally.invalid[error.reason] += 1
            outbox.send(dlq, key, value, None, [
                ("gapwatch-reason", error.reason.encode()),
                ("gapwatch-detail", error.detail.encode()),
                ("gapwatch-source", f"{topic}/{p}/{offset}".encode()),
            ])
        tally.late, tally.leaves, tally.duplicates = st.take_tallies()
        tally.folded, tally.first_folded = st.names.take_folded()
        self.last_input_at.setdefault(p, {})[kind] = now
        outbox.persist(INGEST_TABLE, p, st.take_changes())
        return tally

    def idle_inputs(self, p: int, now: float, caught_up: Callable[[str, int, int], bool | None]) -> set[str]:
        """The inputs of partition `p` left out of its watermark.

        An input is idle when it had nothing for a while AND nothing is left to read: a backlog
        that has not been fetched for a few seconds is not idleness, and letting the other
        input's watermark run ahead would make its events late. The other input must also be
        `idle_input_event_s` ahead in event time: in a replay a backlog can pause for a few
        wall-clock seconds while hours of event time are still to come.
        """
        cfg = self.config
        st = self.state(p)
        seen = self.last_input_at.setdefault(p, {})
        idle = set()
        for kind, other in ((BACKEND, PLATFORM), (PLATFORM, BACKEND)):
            quiet = now - seen.setdefault(kind, now)
            done = caught_up(kind, p, st.offsets[kind])
            behind = st.max_ts[other] - st.max_ts[kind]
            if done and quiet >= cfg.idle_partition_s and behind >= cfg.idle_input_event_s:
                idle.add(kind)
            elif done is None and st.offsets[kind] < 0 and quiet >= 3 * cfg.idle_partition_s:
                idle.add(kind)  # never had a message (no high-water mark to compare with)
        return idle

    def paused_inputs(self, p: int, caught_up: Callable[[str, int, int], bool | None]) -> set[str]:
        """The inputs of partition `p` to stop reading for now (back-pressure).

        An input more than `max_input_skew_s` ahead of the other in event time would only add
        open windows (and memory) until the other catches up: a backfill produced one topic
        first, a paused producer. It waits while the other still has something to read; an
        input with nothing left is idle, not behind (see `idle_inputs`), so it never holds
        the other back. Open windows stay within the skew plus the lateness, whatever the
        backlog.
        """
        st = self.state(p)
        limit = self.config.max_input_skew_s
        paused = set()
        for kind, other in ((BACKEND, PLATFORM), (PLATFORM, BACKEND)):
            if st.max_ts[kind] - st.max_ts[other] > limit and caught_up(other, p, st.offsets[other]) is False:
                paused.add(kind)
        return paused

    def tick(self, assigned: Iterable[int], now: float, caught_up: Callable[[str, int, int], bool | None],
             outbox: Outbox) -> int:
        """Close the windows the watermark has passed; send their partials. Returns partials sent.

        `caught_up(input, p, last_applied_offset)` says whether nothing is left to read on that
        input (None when unknown).
        """
        assigned = sorted(assigned)
        relaxed: dict[int, float | None] = {}
        for p in assigned:
            idle = self.idle_inputs(p, now, caught_up)
            # every input idle: follow the others (None); otherwise the slowest active input,
            # which is -inf while one has not delivered its first event: nothing closes yet
            relaxed[p] = None if len(idle) == 2 else self.state(p).watermark_without(idle)
        marks = [m for m in relaxed.values() if m is not None and m > NEG_INF]
        highest = max(marks, default=NEG_INF)
        sent = 0
        for p in assigned:
            st = self.partitions[p]
            mark = relaxed[p]
            partial = st.close(highest if mark is None else mark)
            if partial is None:
                continue
            self._send_partial(partial, outbox)
            outbox.persist(INGEST_TABLE, p, st.take_changes())
            sent += 1
        return sent

    def _send_partial(self, partial: Partial, outbox: Outbox) -> None:
        """Platform leaves to the partition of their group; backend counts, which every group
        needs and which also say "p has closed through here", to every partition."""
        n = self.n_partitions
        topic = self.config.topics.partials
        dumps = orjson.dumps
        delays = partial.delays or {}
        for start, group, leaves in split_platform_by_group(partial.platform):
            outbox.send(topic, group.encode(), dumps({
                "kind": "platform", "source_partition": partial.partition, "window_start": start,
                "group": group, "leaves": leaves, "delays": delays.get(start, {}).get(group, {}),
            }), group_partition(group, n))
        # corrections: delayed events of closed windows that arrived while `arrived` was open
        for arrived, leaves in sorted((partial.late or {}).items()):
            by_own: dict[tuple[int, str], dict[str, list[Any]]] = {}
            for key, c in leaves.items():
                own_start, _, leaf = key.partition("@")
                by_own.setdefault((int(own_start), group_of(leaf)), {})[leaf] = c
            for (own, group), part in sorted(by_own.items()):
                outbox.send(topic, group.encode(), dumps({
                    "kind": "late", "source_partition": partial.partition, "window_start": own,
                    "arrived": arrived, "group": group, "leaves": part,
                    "delays": delays.get(arrived, {}).get(f"{own}@{group}", {}),
                }), group_partition(group, n))
        # one message per window (a backfill closes thousands of windows in one tick): the
        # backend counts and the groups with data, which every partition needs
        groups: dict[int, set[str]] = {}
        for start, group, _ in split_platform_by_group(partial.platform):
            groups.setdefault(start, set()).add(group)
        for start in sorted(set(partial.backend) | set(groups)):
            backend = dumps({"kind": "backend", "source_partition": partial.partition, "window_start": start,
                             "leaves": partial.backend.get(start, {}), "groups": sorted(groups.get(start, ()))})
            for k in range(n):
                outbox.send(topic, b"backend", backend, k)
        closed = dumps({"kind": "closed", "source_partition": partial.partition,
                        "closed_through": partial.closed_through})
        for k in range(n):
            outbox.send(topic, b"closed", closed, k)


# ---- stage B -------------------------------------------------------------------------------


@dataclass
class AssembleResult:
    windows: list[ClosedWindow] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    #: partials partitions touched (their monitors have new gauges)
    touched: list[int] = field(default_factory=list)
    #: (partials partition, error) of internal messages that could not be read
    malformed: list[tuple[int, str]] = field(default_factory=list)


class AssembleStage:
    """Stage B over the partials partitions this process owns."""

    def __init__(self, config: PipelineConfig, n_partitions: int,
                 load_state: Callable[[int], Mapping[str, JSON]] | None = None) -> None:
        self.config = config
        self.n_partitions = n_partitions
        self._load = load_state or (lambda k: {})
        self.assemblers: dict[int, WindowAssembler] = {}
        self.monitors: dict[int, GroupMonitor] = {}

    def forget(self) -> None:
        self.assemblers.clear()
        self.monitors.clear()

    def assembler(self, k: int) -> WindowAssembler:
        asm = self.assemblers.get(k)
        if asm is None:
            n = self.n_partitions
            asm = WindowAssembler(n, self.config.window_s, owns_group=lambda g: group_partition(g, n) == k,
                                  allowed_lateness_s=self.config.allowed_lateness_s, max_delay_s=self.config.max_delay_s)
            items = self._load(k)
            asm.restore(f"{k}:", items)
            self.assemblers[k] = asm
            if self.config.detect:
                mon = GroupMonitor(self.config.monitor_config)
                mon.restore(_items_with_prefix(items, f"{k}:g:"), f"{k}:")
                self.monitors[k] = mon
        return asm

    def process_partials(self, messages: Iterable[tuple[int, bytes]], changes: Sequence[Mapping[str, Any]],
                         outbox: Outbox, feedback: Sequence[Mapping[str, Any]] = ()) -> AssembleResult:
        """Merge a batch of partials (partials partition, value); close and publish what is ready.

        `feedback`: people's ack / expected / false (detectors.feedback), like `changes` an input
        both drivers give."""
        result = AssembleResult()
        touched: dict[int, WindowAssembler] = {}
        for k, value in messages:
            asm = self.assemblers.get(k) or self.assembler(k)
            touched[k] = asm
            try:
                doc = orjson.loads(value)
                kind = doc["kind"]
                if kind == "platform":
                    asm.add_platform(int(doc["source_partition"]), int(doc["window_start"]), doc["group"], doc["leaves"],
                                     doc.get("delays") or {})
                elif kind == "late":
                    asm.add_late(int(doc["source_partition"]), int(doc["window_start"]), int(doc["arrived"]),
                                 doc["group"], doc["leaves"], doc.get("delays") or {})
                elif kind == "backend":
                    asm.add_backend(int(doc["source_partition"]), int(doc["window_start"]), doc["leaves"],
                                    doc.get("groups", ()))
                else:
                    asm.add_marker(int(doc["source_partition"]), float(doc["closed_through"]),
                                   {int(w): v for w, v in doc.get("backend", {}).items()})
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                result.malformed.append((k, repr(exc)))
        topics = self.config.topics
        for k, asm in touched.items():
            mon = self.monitors.get(k)
            for windows in asm.close_ready():
                for w in windows:
                    outbox.send(topics.windows, w.segment_key.encode(), orjson.dumps(w.to_dict()))
                result.windows.extend(windows)
                if mon is not None:
                    for alert in mon.on_windows(windows, changes, feedback):
                        outbox.send(topics.alerts, alert.alert_id.encode(), alert.to_json())
                        result.alerts.append(alert)
            changes_out: dict[str, JSON | None] = {}
            if mon is not None:
                # the monitor's state goes first: if a crash cuts the writes in between, the
                # window is closed again and the monitor, idempotent per window, skips it
                changes_out.update(mon.take_changes(f"{k}:"))
            changes_out.update(asm.take_changes(f"{k}:"))
            outbox.persist(ASSEMBLE_TABLE, k, changes_out)
        result.touched = sorted(touched)
        return result


# ---- offline -------------------------------------------------------------------------------


class Backtest:
    """Both stages over in-memory inputs: one source partition, one partials partition.

    Each input is read in its own (arrival) order, a chunk of each in turn, like two consumers
    progressing side by side, except the one `IngestStage.paused_inputs` holds back (far
    ahead of the other in event time); a tick follows every round. The clock is logical: one round is
    `idle_partition_s` of wall time, so an input that has run out is idle (caught up and quiet)
    from the next round on, exactly as the worker would see a drained topic.
    """

    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config = config or PipelineConfig()
        self.ingest = IngestStage(config, 1)
        self.assemble = AssembleStage(config, 1)
        self.outbox = Outbox()
        self.changes: list[dict[str, Any]] = []
        #: people's feedback (`gapwatch backtest --feedback FILE`), as the worker's table holds it
        self.feedback: list[dict[str, Any]] = []
        self.windows: list[ClosedWindow] = []
        self.alerts: list[Alert] = []
        self.invalid: Counter[tuple[str, str]] = Counter()
        self.consumed = 0
        self.clock = 0.0
        self._next_offset = {BACKEND: 0, PLATFORM: 0}
        self._exhausted: set[str] = set()

    @property
    def partition(self) -> PartitionWindows:
        return self.ingest.state(0)

    def add_change(self, raw: bytes | dict[str, Any]) -> None:
        try:
            self.changes.append(parse_change(raw)._asdict())
        except InvalidEvent as exc:
            self.invalid[("changes", exc.reason)] += 1

    def add_feedback(self, raw: bytes | dict[str, Any]) -> None:
        """One ack / expected / false; the newest per alert_id wins (a compacted topic)."""
        try:
            fb = parse_feedback(raw)
        except InvalidEvent as exc:
            self.invalid[("feedback", exc.reason)] += 1
            return
        self.feedback = [f for f in self.feedback if f["alert_id"] != fb["alert_id"]] + [fb]

    def feed(self, kind: str, values: Sequence[bytes]) -> None:
        """One chunk of one input, at the next offsets."""
        if not values:
            return
        first = self._next_offset[kind]
        self._next_offset[kind] = first + len(values)
        topic = self.config.topics.backend if kind == BACKEND else self.config.topics.platform
        tally = self.ingest.process_batch(topic, 0, range(first, first + len(values)), [None] * len(values),
                                          values, self.clock, self.outbox)
        self.consumed += tally.consumed
        for reason, n in tally.invalid.items():
            self.invalid[(topic, reason)] += n
        self._drain()

    def _caught_up(self, kind: str, p: int, applied: int) -> bool | None:
        return kind in self._exhausted

    def tick(self) -> None:
        self.clock += self.config.idle_partition_s
        self.ingest.tick([0], self.clock, self._caught_up, self.outbox)
        self._drain()

    def close_all(self) -> None:
        """Close every window, the last one too: for reports over files that are all there is."""
        st = self.partition
        newest = max(st.max_ts.values())
        if newest > NEG_INF:
            partial = st.close(newest + self.config.window_s)
            if partial is not None:
                self.ingest._send_partial(partial, self.outbox)
                self._drain()

    def _drain(self) -> None:
        partials = self.config.topics.partials
        while self.outbox.items:
            msgs = [(e.partition or 0, e.value) for e in self.outbox.take()
                    if isinstance(e, Send) and e.topic == partials and e.value is not None]
            if not msgs:
                return
            result = self.assemble.process_partials(msgs, self.changes, self.outbox, self.feedback)
            self.windows.extend(result.windows)
            self.alerts.extend(result.alerts)

    def run(self, backend: Iterable[bytes], platform: Iterable[bytes], chunk: int = 500,
            progress: Callable[[Backtest], None] | None = None) -> None:
        inputs: dict[str, Iterator[bytes]] = {BACKEND: iter(backend), PLATFORM: iter(platform)}
        while len(self._exhausted) < 2:
            paused = self.ingest.paused_inputs(0, self._caught_up)  # the worker's back-pressure
            for kind, it in inputs.items():
                if kind in self._exhausted or kind in paused:
                    continue
                values = [v for _, v in zip(range(chunk), it, strict=False)]
                if len(values) < chunk:
                    self._exhausted.add(kind)
                self.feed(kind, values)
            self.tick()
            if progress is not None:
                progress(self)
        # drained: the next rounds find both inputs quiet, and the idle rule may close more
        self.tick()
        self.tick()

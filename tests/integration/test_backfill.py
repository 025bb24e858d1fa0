"""Backfills on the embedded broker: two weeks of a small shop produced before any worker
starts, backend first, platform first or interleaved, read by 1 or 2 workers. No crash, no
message over the (lowered) size limit, and the closed windows and alerts are those of
`Backtest` on the same events, field by field: the stages driven over the topics' two
partitions (`backtest_over_partitions`), since lateness is judged per partition.

Before bounded messages and back-pressure the same load made stage A and B fail with
MessageSizeTooLargeError (a `closed` partial with every window's backend counts, stage B's one
state value with every open window) and publish nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest

from detectors.pipeline import PipelineConfig
from streams.broker import EmbeddedBroker
from streams.simulate import Simulation, generate, message_key, produce
from tests.integration.worker_harness import (
    WorkerPool,
    backtest_over_partitions,
    consume,
    create_topics,
    distinct_windows,
    flush_messages,
    produce_messages,
    run,
    unique_names,
)

pytestmark = pytest.mark.slow

WINDOW_S = 3600
LATENESS_S = 120
#: of the event topics (create_topics' default), as `_load` and the flush pair split them
PARTITIONS = 2
#: the smallest limit the worker accepts (Settings), with fewer event names so it fits
WORKER_ARGS = ("--max-message-bytes", str(256 * 1024), "--max-event-names", "5",
               "--max-input-skew-seconds", str(3 * 3600))


@pytest.fixture(scope="module")
def history() -> Simulation:
    # two weeks, ~200 orders a day, a safari tracking gap in the last quarter: ~14k events,
    # ~25k segment windows, a firing alert
    return generate("safari_drop", seed=2, days=14, orders_per_day=200)


@pytest.fixture(scope="module")
def reference(history: Simulation) -> tuple[dict[tuple[str, int], dict[str, Any]], list[dict[str, Any]], float]:
    return _reference(history)


def _reference(history: Simulation) -> tuple[dict[tuple[str, int], dict[str, Any]], list[dict[str, Any]], float]:
    """`Backtest` over the same events split like the topics split them (and the same flush
    pair at the end). A one-partition run differs from two partitions wherever an event is
    late in one order and not in the other: in the ten-day history, one capi event (8 segment
    windows: +1 platform event and pair in its own window live, +1 late in the next offline)."""
    names = unique_names("ref")
    flush_ts = history.truth["end"] + 6 * 3600
    flush = flush_messages(names, flush_ts, PARTITIONS)
    backend = [(message_key("backend", e), orjson.dumps(e)) for e in history.backend]
    platform = [(message_key("platform", e), orjson.dumps(e)) for e in history.platform]
    backend += [(k, v) for t, k, v in flush if t == names["backend"]]
    platform += [(k, v) for t, k, v in flush if t == names["platform"]]
    # over the topics' two partitions: lateness is judged per partition (see the helper)
    bt_windows, bt_alerts = backtest_over_partitions(
        PipelineConfig(window_s=WINDOW_S, allowed_lateness_s=LATENESS_S), backend, platform, PARTITIONS)
    last = flush_ts - LATENESS_S - 2 * WINDOW_S
    windows = {(w.segment_key, w.window_start): w.to_dict() for w in bt_windows if w.window_start <= last}
    alerts = [a.to_dict() for a in bt_alerts if a.detected_at <= last]
    return windows, alerts, flush_ts


def _alert_summary(a: dict[str, Any]) -> tuple[Any, ...]:
    seg = a["segment"]
    return (a["alert_id"], a["status"], seg["platform"], seg["event_name"], seg["browser"], seg["region"],
            a["metric"], a["direction"], a["verdict"], a["change_at"])


def _load(broker: EmbeddedBroker, names: dict[str, str], history: Simulation, order: str, flush_ts: float) -> None:
    backend = [(names["backend"], message_key("backend", e), orjson.dumps(e)) for e in history.backend]
    platform = [(names["platform"], message_key("platform", e), orjson.dumps(e)) for e in history.platform]
    if order == "backend_first":
        run(produce_messages(broker.bootstrap, backend + platform, partitions=PARTITIONS))
    elif order == "platform_first":
        run(produce_messages(broker.bootstrap, platform + backend, partitions=PARTITIONS))
    else:  # interleaved in arrival order, as the simulator plays it
        events_only = replace(history, changes=[], change_arrivals=[])
        run(produce(events_only, broker.bootstrap, topics={"backend": names["backend"], "platform": names["platform"],
                                                          "changes": names["changes"]}, partitions=PARTITIONS, progress=None))
    run(produce_messages(broker.bootstrap, flush_messages(names, flush_ts, PARTITIONS), partitions=PARTITIONS))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("order", ["backend_first", "platform_first", "interleaved"])
def test_a_backfill_loaded_before_the_workers_start_equals_the_backtest(
        broker: EmbeddedBroker, pool: WorkerPool, history: Simulation, reference: Any, order: str, workers: int) -> None:
    _backfill_equals(broker, pool, history, reference, order, workers, WORKER_ARGS)


def test_a_backfill_larger_than_a_fetch_pauses_the_input_ahead_live(broker: EmbeddedBroker, pool: WorkerPool) -> None:
    """Ten days of a mid-size shop (the issue's backfill: 45k events), small chunks: the
    backend input is paused per partition while the platform input catches up, and resumed."""
    history = generate("safari_drop", seed=2, days=10, orders_per_day=1500)
    procs = _backfill_equals(broker, pool, history, _reference(history), "backend_first", 1,
                             (*WORKER_ARGS, "--batch-size", "500", "--log-level", "info"))
    log = procs[0].log_path.read_text(errors="replace")
    assert "back-pressure: paused" in log and "back-pressure: resumed" in log, procs[0].log_tail()


def _backfill_equals(broker: EmbeddedBroker, pool: WorkerPool, history: Simulation, reference: Any, order: str,
                     workers: int, args: tuple[str, ...]) -> list[Any]:
    want_windows, want_alerts, flush_ts = reference
    names = unique_names(f"backfill-{order}-{workers}")
    run(create_topics(broker.bootstrap, names))
    _load(broker, names, history, order, flush_ts)
    procs = [pool.start(names, f"w{i}", window_s=WINDOW_S, lateness_s=LATENESS_S, extra=args)
             for i in range(workers)]
    want = set(want_windows)

    def complete(records: list[Any]) -> bool:
        return want <= {(v["segment_key"], v["window_start"]) for v in (orjson.loads(r.value) for r in records)}

    records = run(consume(broker.bootstrap, names["windows"], until=complete, timeout_s=300))
    for w in procs:
        assert w.alive(), w.log_tail()
        log = w.log_path.read_text(errors="replace")
        assert "MessageSizeTooLarge" not in log and "max_message_bytes" not in log, w.log_tail()
    live, conflicts = distinct_windows(orjson.loads(r.value) for r in records)
    assert not conflicts, conflicts[:3]  # a re-published window is identical
    live = {k: v for k, v in live.items() if k in want or k[1] <= max(ws for _, ws in want)}
    missing = want - set(live)
    extra = set(live) - want
    diffs = [k for k in want & set(live) if live[k] != want_windows[k]]
    assert not missing and not extra and not diffs, (
        f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} extra (e.g. {sorted(extra)[:3]}), "
        f"{len(diffs)} differ (e.g. {[(k, live[k], want_windows[k]) for k in sorted(diffs)[:1]]})\n"
        + "\n".join(w.log_tail(20) for w in procs))
    alerts = run(consume(broker.bootstrap, names["alerts"], timeout_s=20, idle_s=3.0))
    last = flush_ts - LATENESS_S - 2 * WINDOW_S
    live_alerts = {_alert_summary(a) for a in (orjson.loads(r.value) for r in alerts) if a["detected_at"] <= last}
    assert want_alerts and live_alerts == {_alert_summary(a) for a in want_alerts}  # a re-send is the same alert
    return procs

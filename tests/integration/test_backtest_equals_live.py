"""`gapwatch backtest` and the live worker give the same alerts for the same input
(safari_drop, 4 days, default seed, window 3600 s, lateness 120 s), and the firing alert
names the injected gap and the deploy that caused it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest

from streams.broker import EmbeddedBroker
from streams.simulate import generate, message_key, produce, write_jsonl
from tests.integration.worker_harness import (
    ROOT,
    WorkerPool,
    consume,
    create_topics,
    flush_messages,
    produce_messages,
    run,
    unique_names,
)

pytestmark = pytest.mark.slow

WINDOW_S = 3600
LATENESS_S = 120


def summary(alert: dict[str, Any]) -> tuple[Any, ...]:
    causes = alert.get("likely_causes") or [{}]
    nearby = alert.get("nearby_changes") or [{}]
    seg = alert["segment"]
    return (alert["alert_id"], alert["status"], (seg["platform"], seg["event_name"], seg["browser"], seg["region"]),
            alert["metric"], alert["direction"], alert["verdict"], alert["change_at"],
            causes[0].get("cause"), nearby[0].get("change_id"))


@dataclass
class Comparison:
    truth: dict[str, Any]
    backtest: list[dict[str, Any]]
    live: list[dict[str, Any]]
    backtest_windows: dict[tuple[str, int], dict[str, Any]]
    live_windows: dict[tuple[str, int], dict[str, Any]]
    late_live: float
    diag: str


@pytest.fixture(scope="module")
def pool(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerPool]:
    p = WorkerPool(broker.bootstrap, tmp_path_factory.mktemp("bt-live"))
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="module")
def comparison(broker: EmbeddedBroker, pool: WorkerPool, tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    sim = generate("safari_drop", days=4)
    names = unique_names("btlive")
    flush_ts = sim.truth["end"] + 6 * 3600
    flush = flush_messages(names, flush_ts)

    # offline: the JSONL files plus the same flush events, through the CLI
    out = tmp_path_factory.mktemp("backtest")
    paths = write_jsonl(sim, out)
    with paths["backend"].open("ab") as fh:
        fh.write(b"".join(v + b"\n" for t, _, v in flush if t == names["backend"]))
    with paths["platform"].open("ab") as fh:
        fh.write(b"".join(v + b"\n" for t, _, v in flush if t == names["platform"]))
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "backtest", "--backend", str(paths["backend"]),
         "--platform", str(paths["platform"]), "--changes", str(paths["changes"]),
         "--window-seconds", str(WINDOW_S), "--allowed-lateness-seconds", str(LATENESS_S),
         "--out", str(out / "alerts.jsonl"), "--windows-out", str(out / "windows.jsonl"), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    backtest = [orjson.loads(line) for line in (out / "alerts.jsonl").read_bytes().splitlines() if line]
    bt_windows = {}
    for line in (out / "windows.jsonl").read_bytes().splitlines():
        w = orjson.loads(line)
        bt_windows[(w["segment_key"], w["window_start"])] = w

    # live: changes first (and known to the worker), then the events, then the flush pair
    run(create_topics(broker.bootstrap, names))
    worker = pool.start(names, "live", window_s=WINDOW_S, lateness_s=LATENESS_S)
    worker.wait_ready()
    run(produce_messages(broker.bootstrap, [(names["changes"], message_key("changes", c), orjson.dumps(c))
                                            for c in sim.changes]))
    worker.wait_metrics(lambda m: m.value("gapwatch_change_events_total") >= len(sim.changes), 30,
                        "the change events")
    events_only = replace(sim, changes=[], change_arrivals=[])
    run(produce(events_only, broker.bootstrap, topics={"backend": names["backend"], "platform": names["platform"],
                                                      "changes": names["changes"]}, partitions=2, progress=None))
    run(produce_messages(broker.bootstrap, flush, partitions=2))
    total = len(sim.backend) + len(sim.platform) + len(flush)
    worker.wait_metrics(lambda m: m.value("gapwatch_events_consumed_total") >= total, 120, "every event consumed")
    last = flush_ts - LATENESS_S - 2 * WINDOW_S
    # read until every window the backtest closed up to `last` is there, or the timeout (the
    # topic has several partitions, and stage B emits each partition's groups at its own pace)
    want = {k for k in bt_windows if k[1] <= last}

    def complete(rs: list[Any]) -> bool:
        return want <= {(v["segment_key"], v["window_start"]) for v in (orjson.loads(r.value) for r in rs)}

    records = run(consume(broker.bootstrap, names["windows"], timeout_s=90, until=complete))
    live_windows = {}
    for r in records:
        w = orjson.loads(r.value)
        live_windows[(w["segment_key"], w["window_start"])] = w
    time.sleep(1.0)  # alerts are sent right after their windows
    alerts = run(consume(broker.bootstrap, names["alerts"], timeout_s=10, idle_s=2.0))
    m = worker.metrics()
    late = m.value("gapwatch_late_events_total")
    newest = max((k[1] for k in live_windows), default=0)
    diag = (f"live windows up to {newest} (want >= {last}), watermark {m.value('gapwatch_watermark_seconds')}, "
            f"windows closed {m.by_label('gapwatch_windows_closed_total', 'level')}, "
            f"consumed {m.by_label('gapwatch_events_consumed_total', 'topic')}\n{worker.log_tail(15)}")
    assert worker.alive(), worker.log_tail()
    return Comparison(sim.truth, backtest, [orjson.loads(r.value) for r in alerts], bt_windows, live_windows, late,
                      diag)


def test_backtest_finds_the_injected_gap(comparison: Comparison) -> None:
    truth = comparison.truth
    firing = [a for a in comparison.backtest if a["status"] == "firing"]
    assert firing, comparison.backtest
    a = firing[0]
    seg = a["segment"]
    assert f'{seg["platform"]}|{seg["event_name"]}|{seg["browser"]}|{seg["region"]}' == truth["segment_key"]
    assert (a["direction"], a["verdict"], a["likely_causes"][0]["cause"]) == ("drop", "tracking_gap", "browser_restriction")
    assert a["nearby_changes"][0]["change_id"] == truth["change_id"]


def test_live_alerts_equal_backtest_alerts(comparison: Comparison) -> None:
    bt = sorted(summary(a) for a in comparison.backtest)
    live = sorted({summary(a) for a in comparison.live})  # a re-send is the same alert
    for a in comparison.backtest:
        print("backtest alert", summary(a), "detected_at", a.get("detected_at"))
    for a in comparison.live:
        print("live alert", summary(a), "detected_at", a.get("detected_at"))
    assert live == bt, (
        f"backtest {len(bt)} alerts, live {len(comparison.live)}\nbacktest: {bt}\nlive: {live}\n{comparison.diag}")
    firing = [a for a in comparison.live if a["status"] == "firing"]
    assert firing
    a = firing[0]
    seg = a["segment"]
    assert (seg["platform"], seg["event_name"], seg["browser"], seg["region"]) == ("meta", "purchase", "safari", "*")
    assert (a["direction"], a["verdict"], a["likely_causes"][0]["cause"]) == ("drop", "tracking_gap", "browser_restriction")
    assert a["nearby_changes"][0]["change_id"] == comparison.truth["change_id"]


def test_live_windows_equal_backtest_windows(comparison: Comparison) -> None:
    """Same counts per (segment, window) in the data range. Differences come from where the
    live worker judges lateness (per partition, at read time) and from order matching."""
    c = comparison
    diffs: dict[str, int] = {}
    examples: list[str] = []
    start, end = c.truth["start"], c.truth["end"]
    last = end + 4 * 3600  # the flush (end + 6 h) closes every window before end + 5 h in both
    keys = {k for k in c.backtest_windows if start <= k[1] <= last}
    live_keys = {k for k in c.live_windows if start <= k[1] <= last}
    for k in sorted(keys ^ live_keys)[:6]:
        examples.append(f"only {'backtest' if k in keys else 'live'}: {k}")
    for k in keys & live_keys:
        for f, v in c.backtest_windows[k].items():
            if c.live_windows[k].get(f) != v:
                diffs[f] = diffs.get(f, 0) + 1
                if len(examples) < 6 and f in ("platform_count", "late_events", "backend_count"):
                    examples.append(f"{k} {f}: live {c.live_windows[k].get(f)}, backtest {v}")
    assert keys == live_keys and not diffs, (
        f"only backtest: {len(keys - live_keys)}, only live: {len(live_keys - keys)}, field differences "
        f"(windows): {diffs}; live late events {c.late_live:.0f}\n" + "\n".join(examples) + "\n" + c.diag)

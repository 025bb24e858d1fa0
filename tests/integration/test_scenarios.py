"""Every simulated scenario, with known answers, through `gapwatch backtest` and a live worker.

For each scenario the simulator knows the truth: the segment that breaks, the direction, the
verdict, the root cause and the change event that caused it. Both the offline pipeline and a
real `gapwatch worker` on the embedded broker must find exactly that, and nothing else
(`steady` gives no alert; `business_drop` gives no tracking-gap alert; `promotion` and
`holiday` are real business moves: never a tracking gap, at most one business notice per
event name). The traffic is the simulator's realistic default: hour-level autocorrelated
rate noise shared by the backend and every platform.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from detectors.pipeline import Backtest, PipelineConfig
from streams.simulate import SCENARIOS, generate, produce
from tests.integration.worker_harness import (
    WorkerPool,
    consume,
    create_topics,
    flush_messages,
    produce_messages,
    unique_names,
)

WINDOW_S = 3600
LATENESS_S = 120.0


def _truth_key(seg: dict[str, str]) -> str:
    return "|".join(seg[k] for k in ("platform", "event_name", "browser", "region"))


def check_alerts(alerts: list[dict[str, Any]], truth: dict[str, Any]) -> None:
    """The alerts of one run against the scenario's known answer.

    An incident is one `alert_id`: a later platform joining it re-sends the same id naming
    every affected segment (`affected`), and the latest document is the incident."""
    latest: dict[str, dict[str, Any]] = {}
    for a in alerts:
        if a["status"] == "firing" and (a.get("detected_at") or 0) < truth["end"] - WINDOW_S:
            latest[a["alert_id"]] = a
    firing = list(latest.values())
    gaps = [a for a in firing if a["verdict"] == "tracking_gap"]
    business = [a for a in firing if a["verdict"] == "business_change"]
    summary = [(a["verdict"], _truth_key(a["segment"]), a["metric"], a["direction"],
                a["likely_causes"][0]["cause"]) for a in firing]
    if truth["verdict"] is None and truth.get("business_events"):  # promotion, holiday
        assert gaps == [], f"{truth['scenario']} must not raise a tracking gap: {summary}"
        assert [a for a in firing if a["verdict"] != "business_change"] == [], summary
        per_event = [a["segment"]["event_name"] for a in business]
        assert len(per_event) == len(set(per_event)), f"one business notice per event name at most: {summary}"
        assert all(a["direction"] == truth["direction"] for a in business), summary
        return
    if truth["verdict"] is None:  # steady
        assert firing == [], f"steady scenario raised {summary}"
        return
    if truth["verdict"] == "business_change":
        assert gaps == [], f"business_drop must not raise a tracking gap: {summary}"
        assert business, f"business_drop: no business_change alert in {summary}"
        assert business[0]["direction"] == truth["direction"]
        return
    assert business == [], f"unexpected business_change: {summary}"
    matching = [a for a in gaps if _truth_key(a["segment"]) == truth["segment_key"]
                or truth["segment_key"] in (a.get("affected") or ())
                or (truth["scenario"] == "consent_eu" and a["segment"]["region"] == "eu")]
    assert matching, f"no alert on {truth['segment_key']}: {summary}"
    alert = matching[0]
    assert alert["direction"] == truth["direction"], summary
    assert alert["likely_causes"][0]["cause"] == truth["top_cause"], summary
    assert alert["nearby_changes"], "the causal change is missing from nearby_changes"
    assert alert["nearby_changes"][0]["change_id"] == truth["change_id"], alert["nearby_changes"]
    assert abs(alert["change_at"] - truth["change_at"]) <= 2 * WINDOW_S, (alert["change_at"], truth["change_at"])
    # one cause, one incident: in consent_eu every platform drops in the EU, and they form one
    # alert naming each affected segment (whichever platform was first)
    assert len(gaps) == 1, f"expected one alert, got {summary}"


def backtest_alerts(sim: Any) -> list[dict[str, Any]]:
    """The alerts of `gapwatch backtest` over a simulation, as published."""
    pipe = Backtest(PipelineConfig(window_s=WINDOW_S, allowed_lateness_s=LATENESS_S))
    for change in sim.changes:
        pipe.add_change(change)
    pipe.run((orjson.dumps(e) for e in sim.backend), (orjson.dumps(e) for e in sim.platform))
    return [a.to_dict() for a in pipe.alerts]  # the JSON documents, as published


#: scenarios whose known answer needs what the pipeline does not do yet (see BENCHMARKS.md,
#: "Business reality and scenarios on realistic traffic")
PENDING: dict[str, str] = {}
#: (scenario, orders per day) not met yet at that size, and why (measured: bench_scenarios.py)
PENDING_AT_SIZE = {
    ("business_drop", 400): "the backend check (BackendDetector) does not confirm this -40 % business "
                            "drop in the 30 h after it with 3.75 days of history (bench_scenarios, "
                            "seeds 0-2: found in 1 of 3; seeds 0 and 1 missed)",
    ("business_drop", 4000): "the backend check (BackendDetector) does not confirm this -40 % business "
                             "drop in the 24 h after it with 3 days of history (bench_scenarios at 5 "
                             "days, seeds 0-2: found in 1 of 3; seeds 0 and 1 missed)",
}
#: shop sizes (orders a day): a small and a mid-size shop, realistic noise
SIZES = (400, 4000)


def _params(scenarios: list[str]) -> list[Any]:
    return [pytest.param(s, marks=pytest.mark.xfail(reason=PENDING[s], strict=False)) if s in PENDING else s
            for s in scenarios]


def _sized(scenarios: list[str]) -> list[Any]:
    out = []
    for s in scenarios:
        for size in SIZES:
            reason = PENDING.get(s) or PENDING_AT_SIZE.get((s, size))
            marks = [pytest.mark.xfail(reason=reason, strict=False)] if reason else []
            out.append(pytest.param(s, size, marks=marks, id=f"{s}-{size}"))
    return out


@pytest.mark.parametrize(("scenario", "orders_per_day"), _sized(sorted(SCENARIOS)))
def test_backtest_finds_the_known_answer(scenario: str, orders_per_day: int) -> None:
    # 5 days at the small shop: more of the detectors' learning before the break
    sim = generate(scenario, orders_per_day=orders_per_day, days=5.0 if orders_per_day < 1000 else 4.0)
    check_alerts(backtest_alerts(sim), sim.truth)


#: live runs the same pipeline as backtest (by construction, tests/unit/test_pipeline.py), so the
#: live check takes a representative subset: a browser drop, a cross-platform region change, a
#: batch channel, a delivery path, a business move and a steady shop (~40 s each)
LIVE_SUBSET = ("safari_drop", "consent_eu", "import_failure", "server_event_failure", "promotion", "steady")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", _params(sorted(s for s in SCENARIOS if s in LIVE_SUBSET)))
def test_live_worker_finds_the_known_answer(scenario: str, broker: Any, pool: WorkerPool) -> None:
    sim = generate(scenario)
    names = unique_names(scenario)
    asyncio.run(create_topics(broker.bootstrap, names))
    worker = pool.start(names, label=scenario, window_s=WINDOW_S, lateness_s=LATENESS_S)
    worker.wait_ready()
    topics = {"backend": names["backend"], "platform": names["platform"], "changes": names["changes"]}
    asyncio.run(produce(sim, broker.bootstrap, topics=topics, progress=None))
    # one event per partition just after the end: closes the last full window everywhere
    asyncio.run(produce_messages(broker.bootstrap, flush_messages(names, sim.truth["end"] + LATENESS_S + 1), partitions=2))
    worker.wait_metrics(lambda m: m.value("gapwatch_windows_closed_total", level="platform") >= 4 * 24 * 6, 120)
    records = asyncio.run(consume(broker.bootstrap, names["alerts"], timeout_s=20, idle_s=4))
    alerts = [orjson.loads(r.value) for r in records]
    assert worker.alive(), worker.log_tail()
    check_alerts(alerts, sim.truth)
    # and the live alerts are the offline ones (same ids: same change points)
    offline = {(a["alert_id"], a["status"]) for a in backtest_alerts(sim) if (a.get("detected_at") or 0) < sim.truth["end"] - WINDOW_S}
    live = {(a["alert_id"], a["status"]) for a in alerts if (a.get("detected_at") or 0) < sim.truth["end"] - WINDOW_S}
    assert live == offline

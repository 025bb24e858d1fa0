"""Alert lifecycle, pure parts: feedback (ack / expected / false), planned changes, calendar.

The scenario tests drive `Backtest` (the worker's own stages), so what holds here holds live.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
import orjson
import pytest

from detectors.alert import Alert
from detectors.events import InvalidEvent, parse_change
from detectors.feedback import parse_feedback
from detectors.pipeline import Backtest, PipelineConfig
from detectors.ratio import RatioDetector, RatioDetectorConfig
from streams.simulate import generate

WINDOW_S = 3600


# ---- detector hooks ----------------------------------------------------------------------------
def _drop_detector(seed: int = 7) -> tuple[RatioDetector, Any]:
    rng = np.random.default_rng(seed)
    d = RatioDetector(RatioDetectorConfig(window_seconds=3600))
    for i in range(400):
        b = int(rng.poisson(50))
        d.update(b, int(rng.poisson((0.8 if i < 300 else 0.5) * b)))
    return d, rng


def test_accept_level_rebaselines_at_the_new_level() -> None:
    d, rng = _drop_detector()
    assert d.in_alarm and math.isfinite(d.reference_ratio)
    d.accept_level()
    assert not d.in_alarm and d.alarm_state == "none" and math.isnan(d.reference_ratio)
    assert abs(d.baseline_ratio - 0.5) < 0.05
    for _ in range(150):  # the new level is normal: no new alarm
        b = int(rng.poisson(50))
        assert d.update(b, int(rng.poisson(0.5 * b))) is None
    assert RatioDetector.from_dict(d.to_dict()).to_dict() == d.to_dict()


def test_reject_alarm_keeps_the_old_baseline() -> None:
    d, rng = _drop_detector()
    d.reject_alarm()
    assert not d.in_alarm and abs(d.baseline_ratio - 0.8) < 0.05
    for _ in range(200):  # back at the old level: quiet
        b = int(rng.poisson(50))
        assert d.update(b, int(rng.poisson(0.8 * b))) is None
    assert abs(d.baseline_ratio - 0.8) < 0.05


def test_reject_alarm_realarms_when_the_level_really_moved() -> None:
    d, rng = _drop_detector()
    d.reject_alarm()
    found = []
    for _ in range(200):
        b = int(rng.poisson(50))
        cp = d.update(b, int(rng.poisson(0.5 * b)))
        if cp is not None:
            found.append(cp)
    assert found and found[0].direction == "drop" and abs(found[0].ratio_before - 0.8) < 0.08


def test_hooks_without_an_incident_do_nothing() -> None:
    d = RatioDetector()
    before = d.to_dict()
    d.accept_level()
    d.reject_alarm()
    assert d.to_dict() == before


# ---- parsing ------------------------------------------------------------------------------------
def test_planned_change_parses_its_expected_effect() -> None:
    ch = parse_change({"change_id": "c1", "kind": "attribution_setting", "at": 1767225600,
                       "scope": {"platform": "google_ads"},
                       "expected": {"metric": "count_ratio", "size": "-25 %"}})
    assert ch.expected == {"metric": "count_ratio", "direction": "drop", "size": -0.25,
                           "scope": {"platform": "google_ads"}}
    for bad in ({"size": "x"}, {"size": 0}, {"metric": "nope", "size": -0.2},
                {"size": -0.2, "direction": "inflation"}, {"metric": "count_ratio"}):
        with pytest.raises(InvalidEvent):
            parse_change({"change_id": "c1", "at": 1767225600, "expected": bad})


def test_calendar_kinds_carry_their_end() -> None:
    ch = parse_change({"change_id": "p1", "kind": "promotion", "at": 1767225600, "duration": "2h"})
    assert ch.until == 1767225600 + 7200
    assert parse_change({"change_id": "h1", "kind": "holiday", "at": 1767225600}).until == 1767225600 + 86400
    assert parse_change({"change_id": "d1", "kind": "deploy", "at": 1767225600}).until is None
    with pytest.raises(InvalidEvent):
        parse_change({"change_id": "p1", "kind": "promotion", "at": 1767225600, "until": 1767225000})


def test_feedback_parsing() -> None:
    fb = parse_feedback(b'{"alert_id": "a", "action": "ack", "at": "2026-01-01T00:00:00Z"}')
    assert fb == {"alert_id": "a", "action": "ack", "at": 1767225600.0, "note": "", "by": ""}
    for bad in (b"[]", b"{}", b'{"alert_id": "a", "action": "ack"}', b"x"):
        with pytest.raises(InvalidEvent):
            parse_feedback(bad)


def test_alert_lifecycle_fields_round_trip() -> None:
    doc = {"alert_id": "a1", "status": "resolved", "metric": "count_ratio", "direction": "drop",
           "segment": {"platform": "meta", "event_name": "purchase", "browser": "*", "region": "*"},
           "change_at": 1.0, "detected_at": 2.0, "verdict": "expected_change", "incident_key": "k",
           "acknowledged": True, "resolution": "false_alarm", "note": "load test", "plan": "expected -25 %"}
    alert = Alert.from_dict(doc)
    assert alert.is_notice and Alert.from_json(alert.to_json()) == alert
    plain = Alert.from_dict({**doc, "verdict": "tracking_gap", "acknowledged": False, "resolution": None,
                             "note": "", "plan": "", "incident_key": ""})
    assert not {"acknowledged", "resolution", "note", "plan", "incident_key"} & set(plain.to_dict())


# ---- scenarios through the pipeline ---------------------------------------------------------------
@cache
def _sim(name: str) -> Any:
    return generate(name)


def _run(name: str, feedback: tuple[dict[str, Any], ...] = (), changes: tuple[dict[str, Any], ...] = ()) -> Backtest:
    sim = _sim(name)
    bt = Backtest(PipelineConfig(window_s=WINDOW_S, allowed_lateness_s=120.0))
    for c in (*sim.changes, *changes):
        bt.add_change(c)
    for f in feedback:
        bt.add_feedback(orjson.dumps(f))
    bt.run((orjson.dumps(e) for e in sim.backend), (orjson.dumps(e) for e in sim.platform))
    return bt


@cache
def _safari_alert() -> Alert:
    firing = [a for a in _run("safari_drop").alerts if a.status == "firing"]
    assert len(firing) == 1 and firing[0].incident_key
    return firing[0]


def _feedback(action: str) -> tuple[dict[str, Any], ...]:
    alert = _safari_alert()
    return ({"alert_id": alert.alert_id, "action": action, "at": alert.detected_at + 2 * WINDOW_S, "note": "n"},)


def test_ack_marks_the_incident_and_nothing_else() -> None:
    alert = _safari_alert()
    alerts = _run("safari_drop", _feedback("ack")).alerts
    assert [(a.alert_id, a.status, a.acknowledged) for a in alerts] == [
        (alert.alert_id, "firing", False), (alert.alert_id, "firing", True)]


def test_expected_resolves_and_rebaselines() -> None:
    alert = _safari_alert()
    bt = _run("safari_drop", _feedback("expected"))
    assert [(a.alert_id, a.status, a.resolution) for a in bt.alerts] == [
        (alert.alert_id, "firing", None), (alert.alert_id, "resolved", "expected")]
    det = bt.assemble.monitors[0].segments["meta|purchase"]["meta|purchase|safari|*"].detectors["count_ratio"]
    assert not det.in_alarm and det.baseline_ratio < 0.45  # the new level


def test_false_resolves_and_keeps_the_old_baseline() -> None:
    alert = _safari_alert()
    alerts = _run("safari_drop", _feedback("false")).alerts
    assert (alerts[1].alert_id, alerts[1].status, alerts[1].resolution) == (alert.alert_id, "resolved", "false_alarm")
    # the fault is real and stays: judged against the old baseline, it alarms again
    refire = [a for a in alerts[2:] if a.status == "firing"]
    assert refire and refire[0].baseline is not None and alert.baseline is not None
    assert abs(refire[0].baseline - alert.baseline) < 0.1
    assert refire[0].incident_key == alert.incident_key
    # a new alert, starting after the verdict: the judged one's feedback must not close it too
    at = _feedback("false")[0]["at"]
    assert refire[0].alert_id != alert.alert_id and refire[0].change_at >= at - WINDOW_S
    assert not [a for a in alerts if a.alert_id == refire[0].alert_id and a.status == "resolved"]


def _plan(size: str) -> dict[str, Any]:
    sim = _sim("safari_drop")
    return {"change_id": "plan-1", "kind": "conversion_action", "at": sim.truth["change_at"] - 600,
            "summary": "meta: purchase moved to a 1-day click window",
            "expected": {"metric": "count_ratio", "size": size, "scope": {"platform": "meta", "browser": "safari"}}}


def test_a_planned_change_that_happens_is_a_notice() -> None:
    bt = _run("safari_drop", changes=(_plan("-60 %"),))
    assert [(a.status, a.verdict) for a in bt.alerts] == [("firing", "expected_change")], bt.alerts
    assert bt.alerts[0].plan.startswith("expected -60 %, observed ")
    assert bt.assemble.monitors[0].incidents.get("meta|purchase", {}) == {}


def test_a_planned_change_that_does_not_match_is_a_gap_naming_the_plan() -> None:
    bt = _run("safari_drop", changes=(_plan("-20 %"),))
    firing = [a for a in bt.alerts if a.status == "firing"]
    assert [a.verdict for a in firing] == ["tracking_gap"]
    assert firing[0].plan.startswith("expected -20 %, observed -")
    assert firing[0].likely_causes[0].cause == "planned_change_mismatch"


def test_a_declared_holiday_raises_no_business_alert() -> None:
    assert any(a.verdict == "business_change" for a in _run("business_drop").alerts)
    sim = _sim("business_drop")
    holiday = {"change_id": "xmas", "kind": "holiday", "at": sim.truth["change_at"] - 1800,
               "duration": "2d", "summary": "declared holiday"}
    alerts = _run("business_drop", changes=(holiday,)).alerts
    assert [a for a in alerts if a.verdict == "business_change"] == []


@pytest.mark.parametrize("seed", [1, 2])
def test_a_declared_promotion_raises_no_business_alert(seed: int) -> None:
    sim = generate("promotion", seed=seed, orders_per_day=4000)

    def business(extra: tuple[dict[str, Any], ...]) -> list[Any]:
        bt = Backtest(PipelineConfig(window_s=WINDOW_S, allowed_lateness_s=120.0))
        for c in (*sim.changes, *extra):
            bt.add_change(c)
        bt.run((orjson.dumps(e) for e in sim.backend), (orjson.dumps(e) for e in sim.platform))
        return [a for a in bt.alerts if a.verdict == "business_change"]

    assert business(()), "the email blast is a real business move: noticed when undeclared"
    blast = {"change_id": "blast", "kind": "promotion", "at": sim.truth["change_at"] - 600,
             "duration": "3h", "summary": "winter sale email"}
    assert business((blast,)) == []


# ---- verbs ----------------------------------------------------------------------------------------
def test_alert_verb_builds_feedback_and_slack_takes_its_quiet_options() -> None:
    from streams.cli import build_parser
    from streams.cli_alert import build_feedback

    args = build_parser().parse_args(["alert", "expected", "abc123", "--note", "new window", "--at", "1767225600",
                                      "--feedback-topic", "fb", "--broker", "k:9092"])
    assert build_feedback(args, "alice") == {"alert_id": "abc123", "action": "expected", "at": 1767225600.0,
                                             "note": "new window", "by": "alice"}
    assert args.feedback_topic == "fb"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["alert", "snooze", "abc123"])
    slack = build_parser().parse_args(["slack", "--digest", "1h", "--cooldown", "90m", "--channel", "C1"])
    assert (slack.digest, slack.cooldown, slack.channel) == (3600.0, 5400.0, "C1")


def test_slack_format_shows_the_plan_and_how_to_answer() -> None:
    from streams.slack import format_alert

    alert = Alert.from_dict({"alert_id": "a1", "status": "firing", "metric": "count_ratio", "direction": "drop",
                             "segment": {"platform": "meta", "event_name": "purchase", "browser": "*", "region": "*"},
                             "baseline": 0.8, "current": 0.24, "change_at": 1.0, "detected_at": 2.0,
                             "verdict": "tracking_gap", "plan": "expected -25 %, observed -70 % (planned change c1)"})
    text = orjson.dumps(format_alert(alert)).decode()
    assert "expected -25 %, observed -70 %" in text and "gapwatch alert ack|expected|false a1" in text
    done = Alert.from_dict({**alert.to_dict(), "status": "resolved", "resolution": "false_alarm", "note": "load test"})
    text = orjson.dumps(format_alert(done)).decode()
    assert "false alarm" in text and "load test" in text and "gapwatch alert ack" not in text

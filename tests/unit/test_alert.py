"""The typed alert: exact JSON round trips, the monitor's two alert kinds in one shape, strict reading."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.alert import (
    DIRECTIONS,
    STATUSES,
    VERDICTS,
    Alert,
    AlertFormatError,
    Cause,
    ChildChange,
    Evidence,
    Localisation,
    NearbyChange,
    ReconciliationRow,
    Segment,
)
from detectors.pipeline import Backtest, PipelineConfig
from streams.simulate import generate

# ---- every alert survives the wire -------------------------------------------------------------
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # orjson refuses lone surrogates
part = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="|"), min_size=1, max_size=8)
# JSON has one number type: a float stays a float and an int an int
number = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**53), 2**53))
maybe = st.none() | number
segments = st.builds(Segment, part, part, part, part)
intervals = st.tuples(maybe, maybe)
children = st.builds(ChildChange, segments, number, number, number, st.integers(0, 10**6))
alerts = st.builds(
    Alert,
    alert_id=text, status=st.sampled_from(STATUSES), segment=segments, metric=text,
    direction=st.sampled_from(DIRECTIONS), baseline=maybe, current=maybe, baseline_interval=intervals,
    current_interval=st.none() | intervals, change_at=number, detected_at=number,
    verdict=st.sampled_from(VERDICTS),
    likely_causes=st.lists(st.builds(Cause, text, number, text), max_size=3).map(tuple),
    nearby_changes=st.lists(st.builds(NearbyChange, text, text, text, text, text, text, number, number, number),
                            max_size=3).map(tuple),
    localisation=st.builds(Localisation, st.lists(children, max_size=3).map(tuple),
                           st.lists(children, max_size=3).map(tuple),
                           st.none() | st.lists(text, max_size=3).map(tuple)),
    reconciliation=st.lists(st.builds(ReconciliationRow, text, st.integers(-(2**53), 2**53), maybe, text),
                            max_size=3).map(tuple),
    evidence=st.builds(Evidence, maybe, maybe, maybe),
    affected=st.none() | st.lists(text, max_size=3).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(alerts)
def test_json_round_trip_is_exact(alert: Alert) -> None:
    raw = alert.to_json()
    assert Alert.from_json(raw) == alert
    assert Alert.from_json(raw).to_json() == raw
    assert Alert.from_json(raw.decode()) == alert  # str as well as bytes


# ---- the monitor's alerts: today's JSON, one shape ---------------------------------------------
def backtest(scenario: str) -> list[dict[str, Any]]:
    sim = generate(scenario, seed=1, days=4.0)
    pipe = Backtest(PipelineConfig(window_s=3600, allowed_lateness_s=120.0))
    for change in sim.changes:
        pipe.add_change(change)
    pipe.run((orjson.dumps(e) for e in sim.backend), (orjson.dumps(e) for e in sim.platform))
    return [orjson.loads(a.to_json()) for a in pipe.alerts]  # as published on gap-alerts


GAP_KEYS = ["alert_id", "status", "segment", "metric", "direction", "baseline", "current", "baseline_interval",
            "change_at", "detected_at", "verdict", "likely_causes", "nearby_changes", "localisation",
            "reconciliation", "evidence"]


@pytest.fixture(scope="module")
def monitor_alerts() -> dict[str, dict[str, Any]]:
    return {"gap": backtest("safari_drop")[0], "business": backtest("business_drop")[0]}


def test_gap_alert_json_is_todays(monitor_alerts: dict[str, dict[str, Any]]) -> None:
    doc = monitor_alerts["gap"]
    # published order, no current_interval; the lifecycle's incident_key last (docs/alerts.md)
    assert list(doc) == [*GAP_KEYS, "incident_key"]
    assert list(doc["localisation"]) == ["moved", "steady", "alarming"]
    assert list(doc["nearby_changes"][0]) == ["change_id", "kind", "summary", "service", "author", "url", "at",
                                              "distance_s", "score"]
    assert list(doc["localisation"]["moved"][0]) == ["segment", "baseline", "current", "change", "events"]
    assert isinstance(doc["localisation"]["moved"][0]["segment"], str)  # a segment key on the wire
    assert [list(r) for r in doc["reconciliation"]][0] == ["source", "count", "value", "note"]
    assert list(doc["evidence"]) == ["statistic", "threshold", "p_value"]
    alert = Alert.from_dict(doc)
    assert alert.to_json() == orjson.dumps(doc)
    assert alert.current_interval is None and alert.localisation.alarming is not None
    assert (alert.verdict, alert.segment.key) == ("tracking_gap", "meta|purchase|safari|*")


def test_business_alert_json_is_todays(monitor_alerts: dict[str, dict[str, Any]]) -> None:
    doc = monitor_alerts["business"]
    assert list(doc) == GAP_KEYS[:8] + ["current_interval"] + GAP_KEYS[8:]
    assert doc["localisation"] == {"moved": [], "steady": []}  # no alarming key
    alert = Alert.from_dict(doc)
    assert alert.to_json() == orjson.dumps(doc)
    assert alert.current_interval is not None and alert.localisation.alarming is None
    assert (alert.verdict, alert.metric, alert.segment.platform) == ("business_change", "backend_count", "*")


def test_resolved_is_the_same_incident(monitor_alerts: dict[str, dict[str, Any]]) -> None:
    alert = Alert.from_dict(monitor_alerts["gap"])
    done = alert.resolved(current=0.96, detected_at=alert.detected_at + 3600)
    changed = {f.name for f in dataclasses.fields(Alert) if getattr(done, f.name) != getattr(alert, f.name)}
    assert changed == {"status", "current", "detected_at"}
    assert list(done.to_dict()) == [*GAP_KEYS, "incident_key"]


# ---- reading: strict on types, lenient on what a hand-written alert leaves out -------------------
def test_hand_written_alert_reads_with_empty_collections() -> None:
    doc = {"alert_id": "a1", "status": "firing", "metric": "count_ratio", "direction": "drop",
           "segment": {"platform": "meta", "event_name": "purchase", "browser": "safari", "region": "*"},
           "change_at": 1767225600, "detected_at": 1767227400, "verdict": "tracking_gap",
           "nearby_changes": [{"change_id": "c1", "kind": "deploy", "at": 1767224520, "score": 0.9}]}
    alert = Alert.from_dict(doc)
    assert alert.localisation == Localisation((), ())
    assert alert.evidence == Evidence(None, None, None) and alert.baseline_interval == (None, None)
    # distance_s is derived when left out (at - change_at, negative = before)
    assert alert.nearby_changes[0].distance_s == -1080.0 and alert.nearby_changes[0].summary == ""
    assert alert.change_at == 1767225600 and isinstance(alert.change_at, int)  # ints stay ints
    assert Alert.from_json(alert.to_json()) == alert


@pytest.mark.parametrize(("patch", "detail"), [
    ({"status": "open"}, "alert.status: expected one of firing, resolved"),
    ({"baseline": "0.9"}, "alert.baseline: expected a number or null"),
    ({"baseline": True}, "alert.baseline: expected a number or null"),
    ({"baseline_interval": [0.9]}, "alert.baseline_interval: expected [low, high]"),
    ({"likely_causes": [{"cause": "x", "score": None}]}, "alert.likely_causes[0].score: expected a number"),
    ({"localisation": {"moved": [{"segment": "meta|purchase", "baseline": 1, "current": 1, "change": 0,
                                  "events": 1}], "steady": []}},
     "a segment key has four parts: platform|event_name|browser|region"),
    ({"reconciliation": [{"source": "backend", "count": 1.5, "value": None, "note": ""}]},
     "alert.reconciliation[0].count: expected an integer"),
])
def test_wrong_types_name_the_field(patch: dict[str, Any], detail: str) -> None:
    doc = {"alert_id": "a1", "status": "firing", "metric": "count_ratio", "direction": "drop",
           "segment": {"platform": "meta", "event_name": "purchase", "browser": "*", "region": "*"},
           "change_at": 0.0, "detected_at": 0.0, "verdict": "tracking_gap"} | patch
    with pytest.raises(AlertFormatError) as err:
        Alert.from_dict(doc)
    assert (err.value.reason, err.value.detail) == ("invalid_alert", detail)


def test_not_json() -> None:
    for raw in (b"", b"{", b"\xff", "[1"):
        with pytest.raises(AlertFormatError) as err:
            Alert.from_json(raw)
        assert err.value.reason == "invalid_alert_json"
    with pytest.raises(AlertFormatError) as err:
        Alert.from_json(b"[]")
    assert (err.value.reason, err.value.detail) == ("invalid_alert", "alert: expected an object")

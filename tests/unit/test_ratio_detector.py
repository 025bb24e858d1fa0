"""RatioDetector and the value-ratio use: seeded streams, state round trip, recovery."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from detectors.changepoint import ChangePoint, rate_interval
from detectors.ratio import RatioDetector, RatioDetectorConfig

# hourly windows, one false alarm per segment per 300 days (ARL0 7200 windows): a stable
# test stream of a few hundred windows then raises none with high probability
HOUR = RatioDetectorConfig(window_seconds=3600, false_alarms_per_segment_per_30_days=0.1)


def stream(seed: int, n: int, volume: float, ratio: list[tuple[int, float]], alpha: float = 0.0):
    """Backend ~ Poisson(volume x daily cycle), platform ~ NB(ratio x backend, alpha)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        rho = [r for start, r in ratio if i >= start][-1]
        backend = int(rng.poisson(volume * (1 + 0.6 * math.sin(2 * math.pi * i / 24))))
        mean = rho * backend
        if alpha > 0 and mean > 0:
            mean = rng.gamma(1 / alpha, alpha * mean)
        yield backend, int(rng.poisson(mean))


def run(detector: RatioDetector, data) -> list[ChangePoint]:
    return [cp for b, p in data if (cp := detector.update(b, p)) is not None]


def test_drop_found_at_the_right_place() -> None:
    found = run(RatioDetector(HOUR), stream(11, 500, 100, [(0, 0.8), (400, 0.5)]))
    assert [c.direction for c in found] == ["drop"]
    cp = found[0]
    assert abs(cp.change_index - 400) <= 2 and 400 <= cp.detected_index <= 405
    assert cp.ratio_before_low < 0.8 < cp.ratio_before_high
    assert cp.ratio_after_low < 0.5 < cp.ratio_after_high
    assert cp.metric == "count_ratio" and cp.evidence >= 1.0 and 0.0 <= cp.p_value <= 1.0


def test_inflation_found() -> None:
    found = run(RatioDetector(HOUR), stream(2, 500, 100, [(0, 0.8), (400, 1.1)]))
    assert [(c.direction, c.change_index) for c in found] == [("inflation", 400)]


@pytest.mark.parametrize("volume", [1, 5, 100])
@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_stable_streams_end_with_no_alarm_open(volume: float, alpha: float) -> None:
    detector = RatioDetector(HOUR)
    found = run(detector, stream(3, 600, volume, [(0, 0.7)], alpha))
    # a chance alarm (~8 % per stream at this budget) is withdrawn: nothing stays open
    assert len([cp for cp in found if not cp.resolves]) <= 1
    assert not detector.in_alarm and detector.alarm_state == "none"
    if volume >= 100 and alpha > 0:
        assert 0.03 < detector.dispersion < 0.3  # overdispersion learnt


def test_zero_and_tiny_backend_windows_cannot_alarm() -> None:
    rng = np.random.default_rng(9)
    detector = RatioDetector(HOUR)
    for i in range(2000):
        backend = i % 3  # 0, 1, 2 backend events: skipped or nearly uninformative windows
        detector.update(backend, int(rng.binomial(backend, 0.7)))
    assert detector.alarms == 0
    # ... yet a platform that goes silent on such a trickle is found once it is clear
    found = [detector.update(i % 3, 0) for i in range(200)]
    hits = [cp for cp in found if cp is not None]
    assert [cp.direction for cp in hits] == ["drop"] and found.index(hits[0]) < 40


def test_slow_drift_is_followed() -> None:
    rng = np.random.default_rng(4)
    detector = RatioDetector(HOUR)
    for i in range(1500):  # 10 % over 30 days
        backend = int(rng.poisson(200))
        detector.update(backend, int(rng.poisson(0.7 * (1 + 0.1 * i / 720) * backend)))
    assert detector.alarms == 0
    assert detector.baseline_ratio == pytest.approx(0.7 * (1 + 0.1 * 1500 / 720), rel=0.03)


def test_a_runs_drift_allowance_is_its_reference_lag_plus_half_the_run() -> None:
    # a linear drift puts a run's mean half-way through the run: counting the whole run
    # doubled the allowance's growth and hid small changes on long runs
    detector = RatioDetector(HOUR)
    member = detector._members[0]
    member.ref_index, member.start = 100, 130
    per_window = 0.1 * 3600 / (30 * 86400)
    mean_age = detector._decay / (1 - detector._decay)
    assert detector._run_lag(member, 229) == pytest.approx(per_window * (mean_age + 30 + 50))


def test_recovery_resolves_the_alarm() -> None:
    detector = RatioDetector(HOUR)
    found = run(detector, stream(5, 700, 100, [(0, 0.8), (300, 0.4), (500, 0.8)]))
    assert [(c.direction, c.resolves) for c in found] == [("drop", False), ("inflation", True)]
    assert found[1].change_index == pytest.approx(500, abs=2)
    assert not detector.in_alarm and detector.recovered
    assert detector.baseline_ratio == pytest.approx(0.8, rel=0.05)


def test_state_round_trip_continues_identically() -> None:
    data = list(stream(6, 700, 30, [(0, 0.8), (300, 0.5), (500, 0.8)], alpha=0.05))
    whole = RatioDetector(HOUR)
    split = RatioDetector(HOUR)
    out_whole = [whole.update(b, p) for b, p in data]
    out_split = [split.update(b, p) for b, p in data[:320]]
    state = json.loads(json.dumps(split.to_dict(), allow_nan=False))
    restored = RatioDetector.from_dict(state)
    assert restored.to_dict() == split.to_dict()
    out_split += [restored.update(b, p) for b, p in data[320:]]
    assert out_split == out_whole
    assert restored.to_dict() == whole.to_dict()
    assert any(out_whole)


def test_properties_for_metrics() -> None:
    detector = RatioDetector(HOUR)
    assert math.isnan(detector.baseline_ratio)
    run(detector, stream(7, 100, 50, [(0, 0.6)]))
    lo, hi = detector.baseline_interval
    assert lo < detector.baseline_ratio < hi and lo < 0.6 < hi
    assert 0.4 < detector.current_ratio < 0.8 and 0.0 <= detector.evidence < 1.0
    assert detector.last_ratio >= 0.0 and detector.index == 100


def test_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        RatioDetector().update(-1, 0)


def test_rate_interval_matches_gamma() -> None:
    from scipy import stats

    for events in (1, 5, 50, 500):
        lo, hi = rate_interval(events, 1.0)
        assert lo == pytest.approx(stats.gamma.ppf(0.025, events), rel=0.03)
        assert hi == pytest.approx(stats.gamma.ppf(0.975, events + 1), rel=0.03)


def test_false_alarm_is_withdrawn() -> None:
    """A run of chance windows raises an alarm; the windows after it do not confirm it."""
    rng = np.random.default_rng(21)
    detector = RatioDetector(HOUR)
    found = []
    for i in range(500):
        backend = int(rng.poisson(100))
        ratio = 0.45 if 300 <= i < 304 else 0.8  # four odd windows, then the old level
        cp = detector.update(backend, int(rng.poisson(ratio * backend)))
        if cp is not None:
            found.append((cp.direction, cp.resolves, cp.detected_index))
    assert [f[:2] for f in found] == [("drop", False), ("inflation", True)]
    assert found[1][2] - found[0][2] <= 15  # withdrawn within a few windows
    assert not detector.in_alarm and detector.recovered
    assert detector.baseline_ratio == pytest.approx(0.8, rel=0.03)  # the reference came back


def test_real_change_is_confirmed_and_keeps_its_reference() -> None:
    detector = RatioDetector(HOUR)
    states = []
    for b, p in stream(11, 700, 100, [(0, 0.8), (400, 0.5)]):
        detector.update(b, p)
        states.append(detector.alarm_state)
    assert states[420:].count("confirmed") == len(states[420:])  # confirmed within 20 windows
    assert detector.in_alarm and detector.reference_ratio == pytest.approx(0.8, rel=0.05)
    assert detector.baseline_ratio == pytest.approx(0.5, rel=0.05)


def test_false_alarm_just_before_a_real_change_does_not_hide_it() -> None:
    """An inflation false alarm, then a real drop: the drop is still found and reported."""
    rng = np.random.default_rng(5)
    detector = RatioDetector(HOUR)
    found = []
    for i in range(600):
        backend = int(rng.poisson(100))
        ratio = 0.8
        if 300 <= i < 303:
            ratio = 1.3  # chance inflation
        elif i >= 306:
            ratio = 0.6  # the real drop, 3 windows after the odd ones
        cp = detector.update(backend, int(rng.poisson(ratio * backend)))
        if cp is not None and not cp.resolves:
            found.append((cp.direction, cp.detected_index, round(cp.ratio_before, 2)))
    drops = [f for f in found if f[0] == "drop"]
    # the windows between the alarm and its withdrawal join the restored baseline
    assert drops and drops[0][1] <= 330 and drops[0][2] == pytest.approx(0.8, abs=0.06)
    assert detector.in_alarm and detector.reference_ratio == pytest.approx(0.8, abs=0.06)


def test_resolves_only_near_the_reference() -> None:
    """A further fall past the reference is a new change, not the incident's resolution."""
    detector = RatioDetector(HOUR)
    found = run(detector, stream(8, 1100, 100, [(0, 0.3), (300, 0.5), (600, 0.05)]))
    assert [(c.direction, c.resolves) for c in found if not c.resolves][:2] == [
        ("inflation", False), ("drop", False)
    ]
    assert not any(c.resolves and c.ratio_after < 0.2 for c in found)


def test_pending_state_round_trips() -> None:
    data = list(stream(11, 500, 100, [(0, 0.8), (400, 0.5)]))
    detector = RatioDetector(HOUR)
    split = 0
    while detector.alarm_state != "pending":
        detector.update(*data[split])
        split += 1
    state = json.loads(json.dumps(detector.to_dict(), allow_nan=False))
    restored = RatioDetector.from_dict(state)
    assert restored.to_dict() == detector.to_dict() and restored.alarm_state == "pending"
    rest = data[split:]
    assert [restored.update(b, p) for b, p in rest] == [detector.update(b, p) for b, p in rest]


# a rate of rare events (duplicate triggers, conversions with no order): ~15 conversions an
# hour, one false alarm per 300 days, and only a doubling matters (as the monitor sets it)
RARE = RatioDetectorConfig(window_seconds=3600, false_alarms_per_segment_per_30_days=0.1,
                           min_relative_change=1.0, rare_events=True)


def rare_stream(seed: int, n: int, before: float, after: float, change: int, volume: float = 15.0):
    """Conversions ~ Poisson(volume); the rare ones ~ Binomial(conversions, rate)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        conversions = int(rng.poisson(volume))
        yield conversions, int(rng.binomial(conversions, after if i >= change else before))


def test_rare_event_rate_from_zero_is_found_at_once() -> None:
    # five days without a duplicate: the baseline never holds 20 of them, its rate is known
    # only as an upper bound; 30 % duplicates from window 120 are far above it
    for seed in range(5):
        found = run(RatioDetector(RARE), rare_stream(seed, 140, 0.0, 0.3, 120))
        assert found and found[0].direction == "inflation" and not found[0].resolves, found
        assert 120 <= found[0].detected_index <= 122 and abs(found[0].change_index - 120) <= 1
    # without the mode the detector first waits for 20 duplicates in its baseline
    slow = run(RatioDetector(dataclasses.replace(RARE, rare_events=False)), rare_stream(0, 140, 0.0, 0.3, 120))
    assert not slow or slow[0].detected_index > 122


def test_rare_event_rate_that_holds_stays_within_its_budget() -> None:
    # 24 streams of 30 days at a budget of 0.1 per 30 days: ~2.4 false alarms expected in all
    alarms = []
    for seed in range(8):
        for rate in (0.0, 0.003, 0.02):
            alarms += [cp for cp in run(RatioDetector(RARE), rare_stream(seed, 24 * 30, rate, rate, 10**9))
                       if not cp.resolves]
    assert len(alarms) <= 5, alarms
    # and the upper bound of a thin baseline raises no inflation of its own
    assert [cp for cp in alarms if cp.direction == "inflation"] == []


def test_a_partial_return_is_settling_and_a_move_past_the_reference_is_not() -> None:
    for after, settling in ((1.2, True), (0.2, False)):
        det = RatioDetector(HOUR)
        seen = []
        for b, p in stream(4, 700, 100, [(0, 0.5), (300, 1.5), (500, after)]):
            cp = det.update(b, p)
            if cp is not None:
                seen.append((cp.direction, cp.resolves, det.settling))
        assert seen[0] == ("inflation", False, False), seen
        assert ("drop", False, settling) in seen[1:], seen

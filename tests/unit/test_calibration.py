"""Thresholds from the false-alarm budget, checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.calibration import (
    arl0_windows,
    cusum_arl0,
    cusum_threshold,
    simulate_cusum_arl0,
)
from detectors.ratio import RatioDetector, RatioDetectorConfig


def test_arl0_from_user_setting() -> None:
    assert arl0_windows(300) == 8640
    assert arl0_windows(3600, 2.0) == 360
    with pytest.raises(ValueError):
        arl0_windows(0)


def test_threshold_is_cached_and_monotone() -> None:
    assert cusum_threshold(500.0, 0.2) is cusum_threshold(500.0, 0.2)  # same cached float
    assert cusum_threshold(500.0, 0.2) < cusum_threshold(5000.0, 0.2)
    h = cusum_threshold(5000.0, 0.2)
    assert cusum_arl0(h, 0.2) == pytest.approx(5000.0, rel=0.07)


@pytest.mark.parametrize(("mu", "factor"), [(1.0, 1.6), (10.0, 0.8), (100.0, 1.05)])
def test_cusum_theory_matches_simulation(mu: float, factor: float) -> None:
    info = mu * (factor - 1.0 - math.log(factor))
    h = cusum_threshold(200.0, info)
    simulated = simulate_cusum_arl0(h, mu, factor, windows=4000, streams=32, seed=1)
    assert 200.0 / 1.5 < simulated < 200.0 * 1.5


def test_detector_false_alarm_rate_matches_setting() -> None:
    """Seeded null simulation of the full detector (estimated baseline and dispersion)."""
    cfg = RatioDetectorConfig(window_seconds=3600, false_alarms_per_segment_per_30_days=10.0)
    alarms = windows = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        det = RatioDetector(cfg)
        for i in range(1500):
            b = int(rng.poisson(30 * (1 + 0.6 * math.sin(2 * math.pi * i / 24))))
            mean = rng.gamma(20.0, 0.05 * 0.7 * b) if b else 0.0  # alpha = 0.05
            cp = det.update(b, int(rng.poisson(mean)))
            alarms += cp is not None and not cp.resolves  # withdrawals are not alarms
            windows += 1
    expected = windows / cfg.arl0  # 125 false alarms
    assert expected / 2 < alarms < expected * 1.5

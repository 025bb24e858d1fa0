"""From "false alarms per segment per 30 days" to CUSUM thresholds.

The user states a false-alarm budget; the window size turns it into the in-control average
run length ARL0 (windows between false alarms). Each one-sided CUSUM member of a detector
gets the threshold ``h`` whose approximate ARL0 equals ``ARL0 * multiplicity`` (the members
share the budget), from two classical approximations:

* Siegmund's corrected Brownian approximation, for small information per window
  (``I`` = expected per-window log-likelihood-ratio drift under no change):
  ``ARL0 ~ (exp(H) - H - 1) / I`` with ``H = h + 1.166 * sqrt(2 I)`` (overshoot correction);
* the Shewhart limit for large ``I`` (one window carries all the evidence):
  ``ARL0 ~ 1 / P(LLR > h)`` with ``LLR ~ Normal(-I, 2 I)``.

The smaller of the two is used (both over-estimate ARL0 outside their regime). Thresholds
are cached (``functools.lru_cache`` on a quantised ``(ARL0, I)`` grid, ~3 % steps in I), so a
detector never solves the equation per event. ``simulate_cusum_arl0`` checks the theory by
Monte Carlo under a Poisson null (used by the tests and the benchmark).

>>> arl0_windows(window_seconds=300)
8640.0
>>> h = cusum_threshold(8640.0, 0.05)
>>> 5.0 < h < 6.5
True
>>> abs(math.log(cusum_arl0(h, 0.05) / 8640.0)) < 0.07  # cache grid: ~6 % steps
True
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

THIRTY_DAYS_S = 30 * 86400.0

#: Siegmund's overshoot constant for Gaussian increments (2 * 0.583).
OVERSHOOT = 1.166

#: Effective number of independent members per member of a bank of one-sided CUSUMs whose
#: tuned changes are spaced ~1.8x apart: neighbouring members are strongly correlated, so the
#: bank raises fewer false alarms than a Bonferroni union would. Chosen so that the
#: RatioDetector's false-alarm rate, measured on stable streams of 1..1000 events per window
#: with and without overdispersion (tests/bench/bench_detectors.py), matches the setting.
BANK_CORRELATION = 0.5

# Quantisation of the cache keys: 32 steps per e-fold of information, 8 per e-fold of ARL0.
_INFO_STEPS = 32.0
_ARL_STEPS = 8.0


def arl0_windows(window_seconds: float, false_alarms_per_segment_per_30_days: float = 1.0) -> float:
    """In-control average run length, in windows, for a false-alarm budget.

    >>> arl0_windows(3600, 2.0)
    360.0
    """
    if window_seconds <= 0 or false_alarms_per_segment_per_30_days <= 0:
        raise ValueError("window_seconds and the false-alarm rate must be positive")
    return THIRTY_DAYS_S / float(window_seconds) / float(false_alarms_per_segment_per_30_days)


def _normal_sf(x: float) -> float:
    return 0.5 * math.erfc(x / math.sqrt(2.0))


def cusum_arl0(h: float, info: float) -> float:
    """Approximate ARL0 (windows) of a one-sided CUSUM with threshold ``h``.

    ``info`` is the per-window drift magnitude of the log-likelihood ratio under no change
    (the Kullback-Leibler divergence of null from alternative).

    >>> cusum_arl0(10.0, 0.01) > cusum_arl0(10.0, 1.0)
    True
    """
    info = max(info, 1e-12)
    big_h = h + OVERSHOOT * math.sqrt(2.0 * info)
    siegmund = (math.expm1(big_h) - big_h) / info if big_h < 700 else math.inf
    tail = _normal_sf((h + info) / math.sqrt(2.0 * info))
    shewhart = 1.0 / tail if tail > 0.0 else math.inf
    return max(1.0, min(siegmund, shewhart))


def _solve_threshold(arl0: float, info: float) -> float:
    lo, hi = 0.0, 1.0
    while cusum_arl0(hi, info) < arl0 and hi < 200.0:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cusum_arl0(mid, info) < arl0:
            lo = mid
        else:
            hi = mid
    return hi


@lru_cache(maxsize=8192)
def _threshold_cached(arl_key: int, info_key: int) -> float:
    return _solve_threshold(math.exp(arl_key / _ARL_STEPS), math.exp(info_key / _INFO_STEPS))


def cusum_threshold(arl0: float, info: float) -> float:
    """Threshold giving a one-sided CUSUM the in-control ARL ``arl0`` (cached, quantised).

    >>> cusum_threshold(1000.0, 0.1) < cusum_threshold(10000.0, 0.1)
    True
    """
    arl_key = round(math.log(max(arl0, 1.0)) * _ARL_STEPS)
    info_key = round(math.log(min(max(info, 1e-9), 1e6)) * _INFO_STEPS)
    return _threshold_cached(arl_key, info_key)


def member_arl0(arl0: float, members: int) -> float:
    """ARL0 each member of a bank of ``members`` one-sided CUSUMs must have.

    >>> member_arl0(1000.0, 10)
    5000.0
    """
    return arl0 * max(1.0, members * BANK_CORRELATION)


def simulate_cusum_arl0(
    h: float,
    expected_count: float,
    factor: float,
    windows: int = 20000,
    streams: int = 64,
    seed: int = 0,
) -> float:
    """Monte Carlo ARL0 of a Poisson CUSUM (rate ``expected_count`` -> ``factor`` x).

    Counts restarts after each alarm over ``streams`` parallel streams; returns windows per
    false alarm (``inf`` if none).

    >>> arl = simulate_cusum_arl0(4.0, 10.0, 1.3, windows=2000, streams=16)
    >>> 20 < arl < 2000
    True
    """
    rng = np.random.default_rng(seed)
    log_f = math.log(factor)
    drift = expected_count * (factor - 1.0)
    stat = np.zeros(streams)
    alarms = 0
    for _ in range(windows):
        counts = rng.poisson(expected_count, size=streams)
        stat = np.maximum(0.0, stat + counts * log_f - drift)
        fired = stat >= h
        alarms += int(fired.sum())
        stat[fired] = 0.0
    return math.inf if alarms == 0 else windows * streams / alarms

"""Offline change points of a plain numeric series (``gapwatch detect``).

Penalised segmentation by PELT (Killick et al. 2012, ``detectors.pelt``) with a cost per
model, all in numpy on cumulative sums:

* ``linear`` (default): straight-line segments (breaks in level and trend), noise scaled by
  its robust long-run variance (autocorrelation), isolated spikes left out as outliers;
  by default the changes that two of three BIC-like penalties agree on
  (``consensus_change_points``); see ``detectors.trend_segments``.
* ``normal``: Gaussian, mean and variance change; cost ``n log(var)`` (-2 log-lik).
* ``mean``: Gaussian mean change with one robust noise scale for the whole series
  (MAD of first differences / sqrt 2, insensitive to the changes themselves).
* ``poisson``: counts, rate change; cost ``-2 (S log(S/n) - S)``.

Default penalty MBIC-style: ``(p + 2) log n`` with ``p`` the parameters a segment adds
(linear 2, normal 2, mean 1, poisson 1), the defaults of R ``changepoint``; default minimum
segment length 5. Fewer than ``2 * min_size`` non-missing points (10 by default) or a
constant series: no change point. A segment's variance is floored at 1 % of the robust noise variance so constant
stretches cannot produce infinitely good fits. ``nan`` (or empty lines) are skipped but
keep their index: a change point is the 0-based index of the first point of the new segment.

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> x = np.concatenate([rng.normal(0, 1, 100), rng.normal(3, 1, 80), rng.normal(3, 4, 100)])
>>> change_points(x, model="normal")
[100, 182]
>>> change_points([1.0, float("nan"), 1.2, 0.9] * 10 + [5.0, 5.2, 4.9, 5.1] * 10)
[40]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from detectors.pelt import pelt
from detectors.trend_segments import consensus_change_points, trend_change_points

Model = Literal["linear", "normal", "mean", "poisson"]
MODELS: tuple[str, ...] = ("linear", "normal", "mean", "poisson")
_PARAMS = {"linear": 2, "normal": 2, "mean": 1, "poisson": 1}

FloatArray = NDArray[np.float64]


def robust_scale(x: FloatArray) -> float:
    """Noise standard deviation from the MAD of first differences (robust to mean shifts).

    >>> x = np.random.default_rng(0).normal(0.0, 2.0, 2000)
    >>> round(robust_scale(np.concatenate([x, x + 50.0])), 1)
    2.0
    """
    if x.size < 3:
        return float(np.std(x)) if x.size else 0.0
    diffs = np.diff(x)
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    return 1.4826 * mad / math.sqrt(2.0)


def default_penalty(model: str, n: int) -> float:
    """MBIC-style penalty per change point.

    >>> round(default_penalty("normal", 100), 2)
    18.42
    """
    return (_PARAMS[model] + 2) * math.log(max(n, 2))


class _Cost:
    """Segment cost from cumulative sums: ``cost(starts, end)`` for segments [s, end)."""

    def __init__(self, x: FloatArray, model: str) -> None:
        self.model = model
        self.s1 = np.concatenate([[0.0], np.cumsum(x)])
        self.s2 = np.concatenate([[0.0], np.cumsum(x * x)])
        scale = robust_scale(x)
        if scale <= 0.0:
            scale = float(np.std(x))
        if scale <= 0.0:
            scale = 1.0
        self.sigma2 = scale * scale
        self.var_floor = 0.01 * self.sigma2

    def __call__(self, starts: NDArray[np.int64], end: NDArray[np.int64]) -> FloatArray:
        n = (end - starts).astype(float)
        s1 = self.s1[end] - self.s1[starts]
        if self.model == "poisson":
            rate = np.maximum(s1 / n, 1e-12)
            return np.asarray(-2.0 * (s1 * np.log(rate) - s1), dtype=np.float64)
        s2 = self.s2[end] - self.s2[starts]
        sse = np.maximum(s2 - s1 * s1 / n, 0.0)
        if self.model == "mean":
            return np.asarray(sse / self.sigma2, dtype=np.float64)
        var = np.maximum(sse / n, self.var_floor)
        return np.asarray(n * np.log(var), dtype=np.float64)




def change_points(
    values: Sequence[float] | FloatArray,
    model: str = "linear",
    penalty: float | None = None,
    min_size: int = 5,
) -> list[int]:
    """0-based indices where a new segment starts (indices of the original series).

    >>> change_points([0.0] * 30 + [10.0] * 30, model="mean")
    [30]
    >>> change_points([3, 4, 2, 3, 5, 3, 4, 3, 2, 4, 12, 14, 11, 13, 12, 15, 11, 13, 12, 14],
    ...               model="poisson")
    [10]
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if min_size < 1:
        raise ValueError("min_size must be >= 1")
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError("a series is one-dimensional")
    keep = np.flatnonzero(~np.isnan(data))
    x = data[keep]
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite numbers or nan")
    if model == "poisson" and np.any(x < 0):
        raise ValueError("the poisson model needs non-negative values")
    if model == "normal":
        min_size = max(min_size, 2)  # a variance needs two points
    if x.size < 2 * min_size or float(np.ptp(x)) == 0.0:
        return []
    if model == "linear":
        if penalty is None:  # the default: what two of three BIC-like penalties agree on
            changes = consensus_change_points(keep.astype(np.float64), x, min_size)
        else:
            changes = trend_change_points(keep.astype(np.float64), x, penalty, min_size)
        return [int(keep[c]) for c in changes]
    pen = default_penalty(model, int(x.size)) if penalty is None else float(penalty)
    return [int(keep[c]) for c in pelt(_Cost(x, model), int(x.size), pen, min_size)]

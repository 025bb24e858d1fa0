"""The change point a detector reports, shared by the ratio, value-ratio and seasonal detectors.

Also holds the Poisson/Gamma interval helper every detector uses for "ratio with 95 %
interval" (a few microseconds: cheap enough for every metric scrape).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scipy.special import gammaincinv

Direction = Literal["drop", "inflation"]

@dataclass(frozen=True)
class ChangePoint:
    """One detected change of a segment's level.

    ``change_index`` is the estimated first window of the new level (where the alarming
    CUSUM last restarted from zero), ``detected_index`` the window whose update raised the
    alarm; both count every ``update`` call from 0 (skipped windows included). ``change_at``
    / ``detected_at`` are the caller's timestamps of those windows when it passed ``at=``.
    ``resolves`` is True when this change brings the level back to the baseline that held
    before the alarm that is still open (the caller turns it into a ``resolved`` alert).

    >>> cp = ChangePoint("count_ratio", "drop", 120, 117, 0.8, 0.78, 0.82, 0.4, 0.35, 0.46,
    ...                  statistic=14.2, threshold=11.0, p_value=1e-5)
    >>> round(cp.relative_change, 2), round(cp.evidence, 2)
    (-0.5, 1.29)
    >>> ChangePoint.from_dict(cp.to_dict()) == cp
    True
    """

    metric: str
    direction: Direction
    detected_index: int
    change_index: int
    ratio_before: float
    ratio_before_low: float
    ratio_before_high: float
    ratio_after: float
    ratio_after_low: float
    ratio_after_high: float
    statistic: float
    threshold: float
    p_value: float
    resolves: bool = False
    change_at: float | None = None
    detected_at: float | None = None

    @property
    def relative_change(self) -> float:
        """``ratio_after / ratio_before - 1`` (``inf`` from a zero baseline)."""
        if self.ratio_before <= 0.0:
            return math.inf if self.ratio_after > 0.0 else 0.0
        return self.ratio_after / self.ratio_before - 1.0

    @property
    def evidence(self) -> float:
        """Statistic over threshold: >= 1 at an alarm."""
        return self.statistic / self.threshold if self.threshold > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChangePoint:
        return cls(**data)


def rate_interval(events: float, exposure: float, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood, Gamma) interval for a Poisson rate ``events / exposure``.

    ``events`` may be fractional (effective counts after overdispersion).

    >>> lo, hi = rate_interval(100, 200)
    >>> round(lo, 3), round(hi, 3)
    (0.407, 0.608)
    >>> rate_interval(0, 10)[0]
    0.0
    """
    if exposure <= 0.0:
        return (0.0, math.inf)
    tail = (1.0 - level) / 2.0
    lower = float(gammaincinv(events, tail)) if events > 0.0 else 0.0
    upper = float(gammaincinv(events + 1.0, 1.0 - tail))
    return (lower / exposure, upper / exposure)


def step_start(points: Iterable[tuple[float, float, float]], r0: float, up: bool, default: float) -> float:
    """Where a step from ratio `r0` most likely began: the arg-max over k of the Poisson
    likelihood ratio of "`r0` before k, one new level from k on", the new level pointing `up`
    (an inflation) or down. `points` are (window start, exposure, count) from the NEWEST window
    back; `default` is returned when no k gains anything."""
    best, best_at = 0.0, default
    count = exposure = 0.0
    for at, e, c in points:
        exposure += e
        count += c
        if exposure <= 0.0:
            continue
        r1 = count / exposure
        if (r1 > r0) != up:
            continue
        llr = (count * math.log(r1 / r0) if count > 0 else 0.0) - exposure * (r1 - r0)
        if llr > best:
            best, best_at = llr, float(at)
    return best_at

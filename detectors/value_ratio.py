"""Value ratio (platform_value / backend_value) as a compound count for the RatioDetector.

A window's value is a sum of order values, a compound Poisson variable: with ``N`` orders of
values ``X_i``, ``Var(sum) = E[N] E[X^2]``. Dividing values by the unit
``u = E[X^2] / E[X] = m (1 + cv^2)`` (``m`` mean order value, ``cv`` its coefficient of
variation) turns them into pseudo-counts whose variance equals their mean, so the
negative-binomial exposure model of :class:`detectors.ratio.RatioDetector` applies unchanged
(backend value as exposure, platform value as count; its dispersion estimate absorbs what the
approximation misses). ``m`` and ``cv^2`` are estimated from the backend windows
(exponentially weighted, half-life ``unit_half_life_s``): ``cv^2`` from
``E[(value - m n)^2 / n] / m^2``. Without ``backend_count`` the unit stays at its last
estimate (or 1 currency unit at the start, leaving all of the spread to the dispersion).

>>> det = ValueRatioDetector()
>>> det.update(1000.0, 800.0, backend_count=10) is None
True
>>> round(det.unit, 1)
100.0
"""

from __future__ import annotations

import math
from typing import Any

from detectors.changepoint import ChangePoint
from detectors.ratio import RatioDetector, RatioDetectorConfig

_STATE_VERSION = 1
UNIT_HALF_LIFE_S = 7 * 86400.0


class ValueRatioDetector:
    """Drop/inflation detector for one segment's platform/backend value ratio.

    ``update(backend_value, platform_value, backend_count=None, at=None)``; the same
    properties and ``ChangePoint`` (metric ``value_ratio``) as :class:`RatioDetector`.
    """

    def __init__(self, config: RatioDetectorConfig | None = None, metric: str = "value_ratio"):
        self.ratio = RatioDetector(config, metric=metric)
        self._decay = 0.5 ** (self.ratio.config.window_seconds / UNIT_HALF_LIFE_S)
        self._value = 0.0  # EW backend value
        self._count = 0.0  # EW backend count
        self._spread = 0.0  # EW (value - m n)^2 / n
        self._windows = 0.0
        self._unit = math.nan

    @property
    def unit(self) -> float:
        """Currency units per pseudo-count (``m (1 + cv^2)``)."""
        return self._unit

    def __getattr__(self, name: str) -> Any:
        # baseline_ratio, baseline_interval, current_ratio, last_ratio, evidence, in_alarm,
        # recovered, reference_ratio, dispersion, alarms, index: those of the ratio detector
        if name in {"ratio", "__setstate__"}:
            raise AttributeError(name)
        return getattr(self.ratio, name)

    def update(
        self,
        backend_value: float,
        platform_value: float,
        backend_count: float | None = None,
        at: float | None = None,
    ) -> ChangePoint | None:
        if backend_value < 0 or platform_value < 0:
            raise ValueError("values must be non-negative")
        if backend_count is not None and backend_count > 0 and backend_value > 0:
            lam = self._decay
            mean_value = (
                self._value / self._count if self._count > 0 else backend_value / backend_count
            )
            dev = backend_value - mean_value * backend_count
            self._value = lam * self._value + backend_value
            self._count = lam * self._count + backend_count
            self._spread = lam * self._spread + dev * dev / backend_count
            self._windows = lam * self._windows + 1.0
            m = self._value / self._count
            cv2 = min(self._spread / self._windows / (m * m), 100.0)
            self._unit = m * (1.0 + cv2)
        unit = self._unit if self._unit > 0 else 1.0
        return self.ratio.update(backend_value / unit, platform_value / unit, at=at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "unit_sums": [self._value, self._count, self._spread, self._windows],
            "unit": None if math.isnan(self._unit) else self._unit,
            "ratio": self.ratio.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValueRatioDetector:
        if data.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported ValueRatioDetector state version {data.get('version')}")
        ratio = RatioDetector.from_dict(data["ratio"])
        d = cls(ratio.config, metric=ratio.metric)
        d.ratio = ratio
        d._value, d._count, d._spread, d._windows = (float(x) for x in data["unit_sums"])
        d._unit = math.nan if data["unit"] is None else float(data["unit"])
        return d

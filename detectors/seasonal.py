"""Change points of the backend count series alone, net of its daily and weekly cycle.

The business-reality check: when the ratio moved, did the backend move too? The backend
rate per hour is modelled as ``level x hour_of_day[h] x day_of_week[d]`` (UTC): each
multiplicative profile (mean 1) is the marginal mean count per hour of its slot, from
exponentially weighted sums (half-life ``profile_half_life_s``, the same clock for every
slot), the hour profile smoothed over neighbouring hours; learnt only while no alarm is
pending.
Given the profile, a window's count is ``NegBin(level x exposure)`` with
``exposure = hod[h] x dow[d] x window_hours``: exactly the exposure model of
:class:`detectors.ratio.RatioDetector`, which does the detection (metric ``backend_rate``;
its ``ratio`` is the level in events per profile-hour). No alarms during the first
``profile_warmup_s`` (two weeks by default: the weekly profile needs it) plus the ratio
detector's own warm-up.

Memory: 2 x (24 + 7) floats of profile sums, a few scalars, one RatioDetector; O(1).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> det = BackendDetector(BackendDetectorConfig(window_seconds=3600,
...                                             false_alarms_per_segment_per_30_days=0.1))
>>> start = 1767225600                      # 2026-01-01 00:00 UTC
>>> alarms = []
>>> for i in range(24 * 28):
...     t = start + 3600 * i
...     daily = 1.0 + 0.8 * np.sin(2 * np.pi * (i % 24) / 24)
...     level = 40.0 if i < 24 * 21 else 20.0  # the business halves in week 4
...     cp = det.update(t, int(rng.poisson(level * daily)), 3600)
...     if cp is not None:
...         alarms.append((cp.direction, cp.change_index))
>>> alarms
[('drop', 504)]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from detectors.changepoint import ChangePoint
from detectors.ratio import RatioDetector, RatioDetectorConfig

_STATE_VERSION = 1
_MIN_FACTOR = 0.05


@dataclass(frozen=True)
class BackendDetectorConfig:
    """Settings of a :class:`BackendDetector` (defaults need no tuning)."""

    window_seconds: float = 300.0
    false_alarms_per_segment_per_30_days: float = 1.0
    profile_warmup_s: float = 14 * 86400.0
    #: the business check looks for moves of the size of a tracking gap; smaller seasonal
    #: profile errors must not read as changes
    min_relative_change: float = 0.2
    #: memory of the seasonal profiles
    profile_half_life_s: float = 28 * 86400.0
    level_half_life_s: float = 3 * 86400.0

    def ratio_config(self) -> RatioDetectorConfig:
        return RatioDetectorConfig(
            window_seconds=self.window_seconds,
            false_alarms_per_segment_per_30_days=self.false_alarms_per_segment_per_30_days,
            baseline_half_life_s=self.level_half_life_s,
            min_relative_change=self.min_relative_change,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendDetectorConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class BackendDetector:
    """Seasonally adjusted drop/inflation detector for a segment's backend counts.

    ``update(window_start_epoch_s, backend_count, window_seconds=None)`` per closed window
    returns a :class:`ChangePoint` (``ratio_*`` = level in events per hour, seasonally
    adjusted) or ``None``. ``in_alarm``/``recovered``/``evidence`` as for the ratio detector.

    >>> d = BackendDetector()
    >>> d.update(1767225600, 12) is None
    True
    >>> BackendDetector.from_dict(d.to_dict()).to_dict() == d.to_dict()
    True
    """

    def __init__(self, config: BackendDetectorConfig | None = None) -> None:
        self.config = config or BackendDetectorConfig()
        self._profile_decay = 0.5 ** (self.config.window_seconds / self.config.profile_half_life_s)

        self._hod_num = [0.0] * 24
        self._hod_den = [0.0] * 24
        self._dow_num = [0.0] * 7
        self._dow_den = [0.0] * 7
        self._first_start: float | None = None
        self._ratio = RatioDetector(self.config.ratio_config(), metric="backend_rate")
        self._index = 0

    # ---------------------------------------------------------------- profile
    @staticmethod
    def _factors(num: list[float], den: list[float]) -> list[float]:
        raw = [n / d if d > 0.0 else math.nan for n, d in zip(num, den, strict=True)]
        seen = [x for x in raw if not math.isnan(x)]
        mean = sum(seen) / len(seen) if seen else 1.0
        if mean <= 0.0:
            return [1.0] * len(num)
        return [max(_MIN_FACTOR, (1.0 if math.isnan(x) else x / mean)) for x in raw]

    @property
    def hour_of_day_profile(self) -> list[float]:
        """Multiplicative factor per UTC hour of day (mean 1, smoothed over neighbours).

        Daily cycles are smooth; the (1/4, 1/2, 1/4) circular kernel cuts the estimate's noise
        by ~2.7x in variance, so profile errors do not read as level changes.
        """
        raw = self._factors(self._hod_num, self._hod_den)
        return [
            max(_MIN_FACTOR, 0.25 * raw[h - 1] + 0.5 * raw[h] + 0.25 * raw[(h + 1) % 24])
            for h in range(24)
        ]

    @property
    def day_of_week_profile(self) -> list[float]:
        """Multiplicative factor per UTC day of week, Monday first (mean 1)."""
        return self._factors(self._dow_num, self._dow_den)

    @staticmethod
    def _slots(start: float) -> tuple[int, int]:
        hour = int(start // 3600) % 24
        day = (int(start // 86400) + 3) % 7  # 1970-01-01 was a Thursday
        return hour, day

    # ---------------------------------------------------------------- read-only state
    @property
    def index(self) -> int:
        return self._index

    @property
    def in_alarm(self) -> bool:
        return self._ratio.in_alarm

    @property
    def recovered(self) -> bool:
        return self._ratio.recovered

    @property
    def evidence(self) -> float:
        return self._ratio.evidence

    @property
    def baseline_level(self) -> float:
        """Seasonally adjusted backend events per hour (baseline)."""
        return self._ratio.baseline_ratio

    @property
    def baseline_interval(self) -> tuple[float, float]:
        return self._ratio.baseline_interval

    @property
    def expected_count(self) -> float:
        """Expected count of the last window under the baseline (``nan`` before warm-up)."""
        return self._last_expected

    _last_expected: float = math.nan

    # ---------------------------------------------------------------- update
    def update(
        self, window_start_epoch_s: float, backend_count: float, window_seconds: float | None = None
    ) -> ChangePoint | None:
        """Feed one closed window; returns a change point at an alarm."""
        if backend_count < 0 or math.isnan(backend_count):
            raise ValueError("backend_count must be a non-negative number")
        window_s = float(window_seconds or self.config.window_seconds)
        hours = window_s / 3600.0
        start = float(window_start_epoch_s)
        if self._first_start is None:
            self._first_start = start
        hour, day = self._slots(start)
        hod = self.hour_of_day_profile[hour]
        dow = self.day_of_week_profile[day]
        warm = start - self._first_start >= self.config.profile_warmup_s
        self._index += 1

        cp: ChangePoint | None = None
        if warm:
            exposure = hod * dow * hours
            level = self._ratio.baseline_ratio
            self._last_expected = level * exposure if not math.isnan(level) else math.nan
            cp = self._ratio.update(exposure, backend_count, at=start)
        else:
            self._ratio.update(0.0, 0.0)  # keeps the window index aligned
        if cp is None and self._ratio.evidence < self._ratio.config.freeze_evidence:
            self._learn(hour, day, hours, backend_count)
        return cp

    def _learn(self, hour: int, day: int, hours: float, count: float) -> None:
        # marginal means per slot (events per hour), every slot decaying with the same clock,
        # so a slot's estimate never mixes levels of different ages with other slots'
        lam = self._profile_decay
        for slot in range(24):
            self._hod_num[slot] *= lam
            self._hod_den[slot] *= lam
        for slot in range(7):
            self._dow_num[slot] *= lam
            self._dow_den[slot] *= lam
        self._hod_num[hour] += count
        self._hod_den[hour] += hours
        self._dow_num[day] += count
        self._dow_den[day] += hours

    # ---------------------------------------------------------------- state
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "config": self.config.to_dict(),
            "index": self._index,
            "hod": [self._hod_num, self._hod_den],
            "dow": [self._dow_num, self._dow_den],
            "first_start": self._first_start,
            "last_expected": None if math.isnan(self._last_expected) else self._last_expected,
            "ratio": self._ratio.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendDetector:
        if data.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported BackendDetector state version {data.get('version')}")
        d = cls(BackendDetectorConfig.from_dict(data["config"]))
        d._index = int(data["index"])
        d._hod_num, d._hod_den = ([float(x) for x in xs] for xs in data["hod"])
        d._dow_num, d._dow_den = ([float(x) for x in xs] for xs in data["dow"])
        first = data["first_start"]
        d._first_start = None if first is None else float(first)
        last = data["last_expected"]
        d._last_expected = math.nan if last is None else float(last)
        d._ratio = RatioDetector.from_dict(data["ratio"])
        return d

"""Business reality: change points of a backend count series alone, net of its cycles and of
the hour-level noise every real order stream carries.

Windows are summed to hours (``bucket``: one hour, or the window when it is longer), so 300 s
and 3600 s windows give the same verdicts. An hour's expected count is
``level x hour_of_day[h] x day_of_week[d]``; the residual ``y = log((count + 0.5) /
(expected + 0.5))`` is modelled as an AR(1) state (weather, campaigns, a busy afternoon: the
whole shop moves for hours) plus white noise plus Poisson noise:

    y_t = x_t + v_t,    x_t = phi x_{t-1} + w_t,    Var(v_t) = 1/expected + s2

``phi``, ``Var(w) = q`` and ``s2`` come from the residuals' own lag-0/1/2 moments, with a
prior worth a day. At each closed hour two families of tests run, both directions:

* sudden moves (``forecast_scales_hours``, 1 and 2 h): the last ``k`` hours against the
  Kalman filter's forecast made before them (it knows the shop's current mood);
* lasting moves (``level_scales_hours``, 6, 24, 72 h): the last ``k`` hours against the
  level alone, with the dispersion measured at that scale (the scale at which the data
  really fluctuates; an AR state would absorb a lasting move).

Under "no change" a block's count is Poisson-lognormal; its tails are taken as the larger of
a negative binomial and a log-normal approximation whose log-variance is the forecast's (AR
propagation, white noise, the level's and an unseen profile's own error). A change needs a
tail probability below ``p_crit`` and a move of at least ``min_relative_change``;
``p_crit`` spends the false-alarm budget over 30 days of tests (hours x 2 directions x
scales) at a measured efficiency (``budget_efficiency``).

Memory: 2 x (24 + 7 + 168) profile sums, one record (7 floats) per hour of the longest
scale (72), ~30 scalars: about 16 kB of JSON; O(scales x longest scale) per closed hour.

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

from scipy.special import betainc

from detectors.changepoint import ChangePoint, Direction, rate_interval

_STATE_VERSION = 2
_MIN_FACTOR = 0.05
_HOUR_S = 3600.0
_DAY_H = 24.0
#: more empty hours than this in a row restart the noise filter (the series was off)
_MAX_GAP_HOURS = 48
#: a pending change (evidence >= 0.5) freezes the level at most this long
_MAX_PENDING_HOURS = 12.0
_HOW_PRIOR_VISITS = 2.0


@dataclass(frozen=True)
class BackendDetectorConfig:
    """Settings of a :class:`BackendDetector` (defaults need no tuning)."""

    window_seconds: float = 300.0
    false_alarms_per_segment_per_30_days: float = 1.0
    #: no alarms before this much data (the daily profile needs some days)
    profile_warmup_s: float = 14 * 86400.0
    #: the business check looks for moves of the size that matters for a verdict
    min_relative_change: float = 0.2
    #: memory of the seasonal profiles
    profile_half_life_s: float = 28 * 86400.0
    level_half_life_s: float = 3 * 86400.0
    #: memory of the noise moments (phi, q, s2)
    noise_half_life_s: float = 14 * 86400.0
    #: lengths (hours) of the blocks tested against the AR forecast at every closed hour:
    #: sudden changes (the forecast knows the shop's current mood)
    forecast_scales_hours: tuple[int, ...] = (1, 2)
    #: lengths (hours) of the blocks tested against the level alone, with the dispersion
    #: measured at that scale: sustained changes the AR state would absorb
    level_scales_hours: tuple[int, ...] = (6, 24, 72)
    #: prior sd (log) of a block's mean around the level, before the data has spoken
    prior_level_sd: float = 0.15
    #: prior of the noise: sd of the AR state, its hour-to-hour correlation, white sd
    prior_noise_sd: float = 0.2
    prior_noise_phi: float = 0.8
    prior_white_sd: float = 0.05
    prior_noise_hours: float = 24.0
    #: sd (log) of a profile factor never seen (a first weekend)
    unseen_profile_sd: float = 0.4

    @property
    def bucket_s(self) -> float:
        return max(_HOUR_S, float(self.window_seconds))

    #: share of the budget the tests may spend by their nominal p-values: the model is fitted
    #: online and its tails are approximations (lognormal/gamma mixing, AR(1) for a sum of
    #: slower and faster moods), so realised tail rates differ from nominal ones. Measured on
    #: the simulator's realistic traffic, 8 seeds x 32 days x 2 event names per row, shops of
    #: 300 to 50,000 orders a day (BENCHMARKS.md, "Business reality"): at 0.5 the realised rate
    #: is 0.2-0.5 false alarms per 30 days for a setting of 1 (at 1.0 it reached 0.81, too
    #: close to the setting to promise it; at 0.25 a -40 % drop took longer to report).
    budget_efficiency: float = 0.5

    @property
    def p_crit(self) -> float:
        """Tail probability an alarm needs: the budget spread over 30 days of tests."""
        tests = 30 * 86400.0 / self.bucket_s * 2 * (len(self.forecast_scales_hours) + len(self.level_scales_hours))
        return self.budget_efficiency * self.false_alarms_per_segment_per_30_days / tests

    @property
    def max_scale_hours(self) -> int:
        return max((*self.forecast_scales_hours, *self.level_scales_hours))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendDetectorConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("forecast_scales_hours", "level_scales_hours"):
            if name in values:
                values[name] = tuple(int(k) for k in values[name])
        return cls(**values)


def _tails(count: float, mean: float, log_var: float) -> tuple[float, float]:
    """P(X <= count), P(X >= count) for X ~ Poisson(mean x exp(u)), u ~ Normal(0, log_var).

    The Poisson-lognormal has no closed form: each tail is the larger of two approximations,
    the negative binomial (gamma mixing, exact for small counts) and a normal on the log
    scale (lognormal mixing: heavier upper tail when the rate noise dominates).

    >>> low, high = _tails(60, 100.0, 0.0)    # Poisson: P(X <= 60 | 100) = 1.1e-5
    >>> round(low, 6), round(high, 3)
    (1.1e-05, 1.0)
    """
    if mean <= 0.0:
        return 1.0, (1.0 if count <= 0 else 0.0)
    n = 1.0 / max(log_var, 1e-6)
    p = n / (n + mean)
    k = math.floor(count)
    low = float(betainc(n, k + 1.0, p))
    high = 1.0 if k <= 0 else float(betainc(float(k), n, 1.0 - p))
    z = math.log((count + 0.5) / (mean + 0.5)) / math.sqrt(log_var + 1.0 / (mean + 0.5))
    return max(low, 0.5 * math.erfc(-z / math.sqrt(2.0))), max(high, 0.5 * math.erfc(z / math.sqrt(2.0)))


class BackendDetector:
    """Seasonally adjusted drop/inflation detector for a backend count series.

    ``update(window_start_epoch_s, backend_count, window_seconds=None)`` per closed window
    returns a :class:`ChangePoint` (metric ``backend_rate``; ``ratio_*`` = level in events per
    profile-hour) or ``None``; a change is only ever reported when an hour closes.

    >>> d = BackendDetector()
    >>> d.update(1767225600, 12) is None
    True
    >>> BackendDetector.from_dict(d.to_dict()).to_dict() == d.to_dict()
    True
    """

    def __init__(self, config: BackendDetectorConfig | None = None) -> None:
        self.config = config or BackendDetectorConfig()
        cfg = self.config
        bucket_h = cfg.bucket_s / _HOUR_S
        self._profile_decay = 0.5 ** (bucket_h * _HOUR_S / cfg.profile_half_life_s)
        self._level_decay = 0.5 ** (bucket_h * _HOUR_S / cfg.level_half_life_s)
        self._noise_decay = 0.5 ** (bucket_h * _HOUR_S / cfg.noise_half_life_s)
        self._hod_num = [0.0] * 24
        self._hod_den = [0.0] * 24
        self._dow_num = [0.0] * 7
        self._dow_den = [0.0] * 7
        # hour of week: what the product hod x dow misses (a weekend starts at different UTC
        # hours in different markets): residual ratios per slot, shrunk towards 1
        self._how_num = [0.0] * 168
        self._how_den = [0.0] * 168
        self._level_num = 0.0  # EW sum of counts
        self._level_den = 0.0  # EW sum of profile-hours (exposure)
        self._level_hours = 0.0  # EW sum of hours (the level's weight)
        self._first_start: float | None = None
        self._index = 0
        # the bucket being filled
        self._bucket = -1
        self._bucket_count = 0.0
        self._bucket_exposure = 0.0
        self._bucket_first_index = 0
        # noise: AR(1) state (Kalman) and the moments its parameters come from
        sd, phi, white = cfg.prior_noise_sd, cfg.prior_noise_phi, cfg.prior_white_sd
        w0 = cfg.prior_noise_hours
        self._x = 0.0
        self._p = sd * sd
        self._m = [w0, w0 * (sd * sd + white * white), w0, w0 * phi * sd * sd, w0, w0 * phi * phi * sd * sd]
        self._y_prev: list[float | None] = [None, None]
        # per level scale: EW weight and EW sum of (log block ratio)^2 - Poisson variance
        v0 = cfg.prior_level_sd ** 2
        self._scale_m = [[w0, w0 * v0] for _ in cfg.level_scales_hours]
        # the last hours, newest last: [bucket, count, expected, x_before, p_before,
        # first window index, profile variance]
        self._recent: list[list[float]] = []
        self._in_alarm = False
        self._recovered = False
        self._reference_level = math.nan
        self._alarm_level = math.nan
        self._alarm_bucket = -1
        self._evidence = 0.0
        self._pending_hours = 0.0
        self._last_expected = math.nan

    # ---------------------------------------------------------------- profile
    @staticmethod
    def _factors(num: list[float], den: list[float], min_den: float) -> list[float]:
        raw = [n / d if d >= min_den and d > 0.0 else math.nan for n, d in zip(num, den, strict=True)]
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
        raw = self._factors(self._hod_num, self._hod_den, 1e-9)
        return [
            max(_MIN_FACTOR, 0.25 * raw[h - 1] + 0.5 * raw[h] + 0.25 * raw[(h + 1) % 24])
            for h in range(24)
        ]

    @property
    def day_of_week_profile(self) -> list[float]:
        """Multiplicative factor per UTC day of week, Monday first (weekdays average 1).

        Each day's estimate is blended with the other days of its kind (weekdays Mon-Fri,
        weekend Sat-Sun) worth one day of data, so a day seen for a few hours does not jump;
        a day of a kind never seen is 1 (and uncertain: see ``_profile_variance``).
        """
        own = [n / d if d >= 6.0 else math.nan for n, d in zip(self._dow_num, self._dow_den, strict=True)]
        raw = []
        for day in range(7):
            kind = [own[o] for o in self._same_kind(day) if o != day and not math.isnan(own[o])]
            if kind:
                prior = sum(kind) / len(kind)
                raw.append((self._dow_num[day] + _DAY_H * prior) / (self._dow_den[day] + _DAY_H))
            else:
                raw.append(own[day])
        # weekdays average 1 (when seen), so seeing a first weekend does not move them
        seen = [x for x in raw[:5] if not math.isnan(x)] or [x for x in raw if not math.isnan(x)]
        mean = sum(seen) / len(seen) if seen else 1.0
        if mean <= 0.0:
            return [1.0] * 7
        return [max(_MIN_FACTOR, (1.0 if math.isnan(x) else x / mean)) for x in raw]

    def _profile_variance(self, day: int) -> float:
        """Variance (log) of a day factor beyond what the noise moments already hold.

        The residuals the noise is fitted on include the errors of seen profile slots; a day
        of a kind never seen (the first weekend) is an unknown the residuals never showed.
        """
        seen = 0.8 * _DAY_H  # a day's profile-hours, less what decays during it
        if self._dow_den[day] >= seen:
            return 0.0
        if any(self._dow_den[o] >= seen for o in self._same_kind(day) if o != day):
            return 0.05 ** 2  # days of a kind differ a little from each other
        return self.config.unseen_profile_sd ** 2

    def _day_factor(self, day: int, hour: int) -> float:
        """The day-of-week factor at an hour: interpolated (in log) between the noons of the
        day and its neighbour. A shop's markets do not start their weekend at 00:00 UTC
        together; a step at midnight UTC would be wrong by the whole weekend effect for hours."""
        profile = self.day_of_week_profile
        t = hour + 0.5 - 12.0  # hours from this day's noon
        other = (day + (1 if t > 0 else -1)) % 7
        a = abs(t) / 24.0
        return math.exp((1.0 - a) * math.log(profile[day]) + a * math.log(profile[other]))

    def _hour_of_week_factor(self, slot: int) -> float:
        """The hour-of-week correction: residual ratio of the slot and its two neighbours
        (1/4, 1/2, 1/4), each shrunk towards 1 by ``_HOW_PRIOR_VISITS`` visits: one visit's
        ratio carries that hour's noise, so a week's worth counts for little."""
        def shrunk(s: int) -> float:
            s %= 168
            return (self._how_num[s] + _HOW_PRIOR_VISITS) / (self._how_den[s] + _HOW_PRIOR_VISITS)

        smooth = 0.25 * shrunk(slot - 1) + 0.5 * shrunk(slot) + 0.25 * shrunk(slot + 1)
        return max(_MIN_FACTOR, smooth)

    @staticmethod
    def _same_kind(day: int) -> range:
        return range(0, 5) if day < 5 else range(5, 7)

    @staticmethod
    def _slots(start: float) -> tuple[int, int]:
        hour = int(start // 3600) % 24
        day = (int(start // 86400) + 3) % 7  # 1970-01-01 was a Thursday
        return hour, day

    # ---------------------------------------------------------------- noise model
    def _noise_params(self) -> tuple[float, float, float]:
        """(phi, q, s2) of the AR(1) + white residual, from the lag-0/1/2 moments."""
        w0, s0, w1, s1, w2, s2m = self._m
        g0 = s0 / w0
        g1 = s1 / w1
        g2 = s2m / w2
        phi = min(0.97, max(0.2, g2 / g1)) if g1 > 1e-6 and g2 > 0.0 else 0.2
        var_x = min(max(g1 / phi, 0.05 ** 2), max(g0, 0.05 ** 2))
        white = max(g0 - var_x, 0.02 ** 2)
        return phi, var_x * (1.0 - phi * phi), white

    @property
    def noise_sd(self) -> float:
        """Stationary sd (log) of the hour-level AR noise the detector currently assumes."""
        phi, q, _ = self._noise_params()
        return math.sqrt(q / (1.0 - phi * phi))

    @property
    def noise_autocorrelation(self) -> float:
        """Hour-to-hour autocorrelation (phi) of the AR noise the detector currently assumes."""
        return self._noise_params()[0]

    def _learn_noise(self, y: float, poisson_var: float) -> None:
        d = self._noise_decay
        g0 = self._m[1] / self._m[0]
        bound = 4.0 * math.sqrt(max(g0, 1e-4) + poisson_var)
        y = max(-bound, min(bound, y))
        m = self._m
        m[0] = d * m[0] + 1.0
        m[1] = d * m[1] + y * y - poisson_var
        prev1, prev2 = self._y_prev
        if prev1 is not None:
            m[2] = d * m[2] + 1.0
            m[3] = d * m[3] + y * prev1
        if prev2 is not None:
            m[4] = d * m[4] + 1.0
            m[5] = d * m[5] + y * prev2
        self._y_prev = [y, prev1]

    # ---------------------------------------------------------------- read-only state
    @property
    def index(self) -> int:
        return self._index

    @property
    def in_alarm(self) -> bool:
        return self._in_alarm

    @property
    def recovered(self) -> bool:
        return self._recovered

    @property
    def evidence(self) -> float:
        """log p / log p_crit of the most significant test of the last closed hour (>= 1: alarm)."""
        return self._evidence

    @property
    def baseline_level(self) -> float:
        """Seasonally adjusted backend events per hour (baseline)."""
        return self._level_num / self._level_den if self._level_den > 0.0 else math.nan

    @property
    def baseline_interval(self) -> tuple[float, float]:
        return rate_interval(self._level_num, self._level_den)

    @property
    def expected_count(self) -> float:
        """Expected count of the last closed hour under the baseline (``nan`` before one)."""
        return self._last_expected

    # ---------------------------------------------------------------- update
    def update(
        self, window_start_epoch_s: float, backend_count: float, window_seconds: float | None = None
    ) -> ChangePoint | None:
        """Feed one closed window; returns a change point at an alarm (only when an hour closes)."""
        if backend_count < 0 or math.isnan(backend_count):
            raise ValueError("backend_count must be a non-negative number")
        window_s = float(window_seconds or self.config.window_seconds)
        start = float(window_start_epoch_s)
        if self._first_start is None:
            self._first_start = start
        bucket_s = self.config.bucket_s
        bucket = int(start // bucket_s)
        index = self._index
        self._index += 1
        cp: ChangePoint | None = None
        if bucket > self._bucket:
            if self._bucket >= 0:
                cp = self._close(start)  # its last window never came: missing windows are empty
                gap = bucket - self._bucket - 1
                if gap > _MAX_GAP_HOURS:  # the series was off: the noise state starts afresh
                    self._recent.clear()
                    self._y_prev = [None, None]
                    phi, q, _ = self._noise_params()
                    self._x, self._p = 0.0, q / (1.0 - phi * phi)
                else:
                    for empty in range(self._bucket + 1, bucket):
                        self._open(empty, index)
                        cp = self._close(start) or cp
            self._open(bucket, index)
        if bucket == self._bucket and self._bucket_count >= 0.0:
            self._bucket_count += float(backend_count)
            if start + window_s >= (bucket + 1) * bucket_s - 1e-6:
                cp = self._close(start) or cp
        return cp

    def _open(self, bucket: int, first_index: int) -> None:
        self._bucket = bucket
        self._bucket_count = 0.0
        self._bucket_first_index = first_index

    def _close(self, detected_at: float) -> ChangePoint | None:
        """Close the current bucket: test it, then learn from it."""
        if self._bucket_count < 0.0:
            return None  # already closed by its last window
        cfg = self.config
        count = self._bucket_count
        self._bucket_count = -1.0
        bucket_start = self._bucket * cfg.bucket_s
        hours = cfg.bucket_s / _HOUR_S
        hour, day = self._slots(bucket_start)
        exposure = self.hour_of_day_profile[hour] * self._day_factor(day, hour) * hours
        if hours == 1.0:
            exposure *= self._hour_of_week_factor(day * 24 + hour)
        level = self.baseline_level
        if math.isnan(level) or level <= 0.0:
            self._learn(hour, day, hours, count, exposure, math.nan)
            return None
        expected = level * exposure
        self._last_expected = expected
        phi, q, white = self._noise_params()
        poisson_var = 1.0 / (expected + 0.5)
        profile_var = self._profile_variance(day)
        y = math.log((count + 0.5) / (expected + 0.5))
        # Kalman predict; the state before this hour is what its forecast starts from
        x_before, p_before = self._x, self._p
        x_pred, p_pred = phi * self._x, phi * phi * self._p + q
        self._recent.append([float(self._bucket), count, expected, x_before, p_before,
                             float(self._bucket_first_index), profile_var])
        del self._recent[: -cfg.max_scale_hours]
        warm = bucket_start + cfg.bucket_s - (self._first_start or 0.0) >= cfg.profile_warmup_s
        cp = self._test(detected_at, level, phi, q, white) if warm else None
        if cp is not None:
            return cp
        # Kalman update (innovations beyond 4 sd count as 4 sd: one odd hour is not a state)
        s = p_pred + poisson_var + white + profile_var
        innovation = max(-4.0 * math.sqrt(s), min(4.0 * math.sqrt(s), y - x_pred))
        gain = p_pred / s
        self._x = x_pred + gain * innovation
        self._p = (1.0 - gain) * p_pred
        self._learn(hour, day, hours, count, exposure, y if profile_var < 0.02 else math.nan, poisson_var)
        if self._in_alarm and (self._bucket - self._alarm_bucket) * hours >= 3:
            return self._resolution(detected_at)
        return None

    def _after_alarm(self) -> bool:
        return self._in_alarm and self._bucket - self._alarm_bucket < _DAY_H * _HOUR_S / self.config.bucket_s

    def _learn(self, hour: int, day: int, hours: float, count: float, exposure: float, y: float,
               poisson_var: float = 0.0) -> None:
        level = self.baseline_level
        pending = self._evidence >= 0.5
        self._pending_hours = self._pending_hours + hours if pending else 0.0
        if not pending or self._pending_hours > _MAX_PENDING_HOURS:
            # the level follows every hour outside a pending change (after an alarm too: it
            # restarted at the new level and settles there); a move too small to alarm is
            # followed after half a day rather than kept pending for ever
            d = self._level_decay
            self._level_num = d * self._level_num + count
            self._level_den = d * self._level_den + exposure
            self._level_hours = d * self._level_hours + hours
        if pending or self._after_alarm():
            return
        if not math.isnan(y):
            self._learn_noise(y, poisson_var)
            self._learn_scales()
        if math.isnan(level) or level <= 0.0:
            if count <= 0:
                return
            level = count / hours
        # profiles on level-normalised counts, every slot decaying with the same clock
        lam = self._profile_decay
        hod, dow = self.hour_of_day_profile[hour], self._day_factor(day, hour)
        for slot in range(24):
            self._hod_num[slot] *= lam
            self._hod_den[slot] *= lam
        for slot in range(7):
            self._dow_num[slot] *= lam
            self._dow_den[slot] *= lam
        self._hod_num[hour] += count / level
        self._hod_den[hour] += dow * hours
        self._dow_num[day] += count / level
        self._dow_den[day] += hod * hours
        if hours == 1.0:
            for slot in range(168):
                self._how_num[slot] *= lam
                self._how_den[slot] *= lam
            self._how_num[day * 24 + hour] += count / (level * hod * dow)
            self._how_den[day * 24 + hour] += 1.0

    # ---------------------------------------------------------------- tests
    def _level_variance(self, phi: float, q: float, white: float) -> float:
        """Variance (log) of the level estimate beyond that of a settled level (whose error the
        noise moments already hold): large just after an alarm restarted it."""

        def variance(hours: float, count: float) -> float:
            var_x = q / (1.0 - phi * phi)
            return (var_x * (1.0 + phi) / (1.0 - phi) + white) / hours + 1.0 / count

        if self._level_hours <= 0.0 or self._level_num <= 0.0:
            return 1.0
        settled = self.config.level_half_life_s / _HOUR_S / math.log(2.0)
        now = variance(self._level_hours, self._level_num)
        return max(0.0, now - variance(settled, self._level_num * settled / self._level_hours))

    @staticmethod
    def _forecast(block: list[list[float]], total_e: float, phi: float, q: float, white: float) -> tuple[float, float]:
        """The AR forecast of a block's count made before it: (mean, variance of its log)."""
        k = len(block)
        x0, p0 = block[0][3], block[0][4]
        w = [r[2] / total_e for r in block]
        mean = sum(r[2] * math.exp(phi ** (i + 1) * x0) for i, r in enumerate(block))
        var = sum(wi * phi ** (i + 1) for i, wi in enumerate(w)) ** 2 * p0
        for j in range(k):
            var += sum(w[i] * phi ** (i - j) for i in range(j, k)) ** 2 * q
        var += white * sum(wi * wi for wi in w)
        return mean, var

    def _scale_variance(self, k: int) -> float:
        weight, total = self._scale_m[self.config.level_scales_hours.index(k)]
        return max(total / weight, 0.02 ** 2)

    def _learn_scales(self) -> None:
        """Dispersion of k-hour blocks around the level, measured at each level scale."""
        d = self._noise_decay
        for i, k in enumerate(self.config.level_scales_hours):
            if k > len(self._recent):
                continue
            block = self._recent[-k:]
            if max(r[6] for r in block) >= 0.02:
                continue  # an unseen weekend is not the noise
            count, expected = sum(r[1] for r in block), sum(r[2] for r in block)
            poisson_var = 1.0 / (expected + 0.5)
            y = math.log((count + 0.5) / (expected + 0.5))
            m = self._scale_m[i]
            bound = 4.0 * math.sqrt(m[1] / m[0] + poisson_var)
            y = max(-bound, min(bound, y))
            m[0] = d * m[0] + 1.0
            m[1] = d * m[1] + y * y - poisson_var

    def _test(self, detected_at: float, level: float, phi: float, q: float, white: float) -> ChangePoint | None:
        cfg = self.config
        p_crit = cfg.p_crit
        log_crit = -math.log(p_crit)
        level_var = self._level_variance(phi, q, white)
        best: tuple[float, int, str, float, float] | None = None  # p, k, direction, count, mean
        evidence = 0.0
        tests = [(k, True) for k in cfg.forecast_scales_hours] + [(k, False) for k in cfg.level_scales_hours]
        for k, forecast in tests:
            if k > len(self._recent):
                continue
            block = self._recent[-k:]
            total_e = sum(r[2] for r in block)
            if total_e <= 0.0:
                continue
            count = sum(r[1] for r in block)
            if forecast:
                mean, var = self._forecast(block, total_e, phi, q, white)
                var += level_var
            else:
                mean = total_e
                var = self._scale_variance(k) + level_var
            var += max(r[6] for r in block)
            low, high = _tails(count, mean, var)
            for direction, p in (("drop", low), ("inflation", high)):
                evidence = max(evidence, -math.log(max(p, 1e-300)) / log_crit)
                rel = count / mean - 1.0
                big = rel <= -cfg.min_relative_change if direction == "drop" else rel >= cfg.min_relative_change
                if p < p_crit and big and (best is None or p < best[0]):
                    best = (p, k, direction, count, mean)
        self._evidence = evidence
        if best is None:
            return None
        p, k, direction, count, _mean = best
        block = self._recent[-k:]
        # the change starts where the block's tail departs most from its expectation (Poisson GLR)
        start = _change_start([r[1] for r in block], [r[2] for r in block], direction == "drop")
        block = block[start:]
        count = sum(r[1] for r in block)
        exposure = sum(r[2] for r in block) / level
        after = count / exposure
        before_low, before_high = self.baseline_interval
        after_low, after_high = rate_interval(count, exposure)
        resolves = False
        if self._in_alarm and abs(math.log(max(after, 1e-9) / max(self._reference_level, 1e-9))) < abs(
                math.log(max(after, 1e-9) / max(self._alarm_level, 1e-9))):
            resolves = True
        cp = ChangePoint(
            "backend_rate", _direction(direction), self._index - 1, int(block[0][5]),
            level, before_low, before_high, after, after_low, after_high,
            statistic=-math.log(max(p, 1e-300)), threshold=log_crit, p_value=p, resolves=resolves,
            change_at=block[0][0] * cfg.bucket_s, detected_at=detected_at,
        )
        self._alarm(cp, count, exposure, len(block) * cfg.bucket_s / _HOUR_S)
        return cp

    def _alarm(self, cp: ChangePoint, count: float, exposure: float, hours: float) -> None:
        if cp.resolves:
            self._in_alarm, self._recovered = False, True
        else:
            if not self._in_alarm:
                self._reference_level = cp.ratio_before
            self._in_alarm, self._recovered = True, False
            self._alarm_level = cp.ratio_after
            self._alarm_bucket = self._bucket
        # restart at the new level with the block's weight; the AR state starts afresh
        self._level_num, self._level_den, self._level_hours = count, exposure, hours
        phi, q, _ = self._noise_params()
        self._x, self._p = 0.0, q / (1.0 - phi * phi)
        self._recent.clear()
        self._evidence = 0.0
        self._y_prev = [None, None]

    def _resolution(self, detected_at: float) -> ChangePoint | None:
        """The level came back: closer (in log) to the level before the alarm than to the alarm's."""
        level = self.baseline_level
        if not (level > 0.0 and self._reference_level > 0.0 and self._alarm_level > 0.0):
            return None
        if abs(math.log(level / self._reference_level)) >= abs(math.log(level / self._alarm_level)):
            return None
        direction: Direction = "inflation" if self._alarm_level < self._reference_level else "drop"
        low, high = self.baseline_interval
        cp = ChangePoint(
            "backend_rate", direction, self._index - 1, int(self._recent[0][5]) if self._recent else self._index - 1,
            self._alarm_level, self._alarm_level, self._alarm_level, level, low, high,
            statistic=0.0, threshold=-math.log(self.config.p_crit), p_value=1.0, resolves=True,
            change_at=(self._alarm_bucket + 1) * self.config.bucket_s, detected_at=detected_at,
        )
        self._in_alarm, self._recovered = False, True
        return cp

    # ---------------------------------------------------------------- state
    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "version": _STATE_VERSION,
            "config": self.config.to_dict(),
            "index": self._index,
            "hod": [self._hod_num, self._hod_den],
            "dow": [self._dow_num, self._dow_den],
            "how": [self._how_num, self._how_den],
            "level": [self._level_num, self._level_den, self._level_hours],
            "first_start": self._first_start,
            "bucket": [self._bucket, self._bucket_count, self._bucket_first_index],
            "noise": {"x": self._x, "p": self._p, "moments": self._m, "y_prev": self._y_prev,
                      "scales": self._scale_m},
            "recent": self._recent,
            "alarm": {
                "in_alarm": self._in_alarm, "recovered": self._recovered,
                "reference": num(self._reference_level), "level": num(self._alarm_level),
                "bucket": self._alarm_bucket, "evidence": self._evidence,
                "pending_hours": self._pending_hours,
            },
            "last_expected": num(self._last_expected),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendDetector:
        if data.get("version") != _STATE_VERSION:
            # version 1 (independent-window model) kept no hour-level state: start afresh
            if data.get("version") == 1:
                return cls(BackendDetectorConfig.from_dict(data["config"]))
            raise ValueError(f"unsupported BackendDetector state version {data.get('version')}")

        def num(x: float | None) -> float:
            return math.nan if x is None else float(x)

        d = cls(BackendDetectorConfig.from_dict(data["config"]))
        d._index = int(data["index"])
        d._hod_num, d._hod_den = ([float(x) for x in xs] for xs in data["hod"])
        d._dow_num, d._dow_den = ([float(x) for x in xs] for xs in data["dow"])
        d._how_num, d._how_den = ([float(x) for x in xs] for xs in data["how"])
        d._level_num, d._level_den, d._level_hours = (float(x) for x in data["level"])
        first = data["first_start"]
        d._first_start = None if first is None else float(first)
        bucket, count, first_index = data["bucket"]
        d._bucket, d._bucket_count, d._bucket_first_index = int(bucket), float(count), int(first_index)
        noise = data["noise"]
        d._x, d._p = float(noise["x"]), float(noise["p"])
        d._m = [float(x) for x in noise["moments"]]
        d._y_prev = [None if y is None else float(y) for y in noise["y_prev"]]
        d._scale_m = [[float(w), float(v)] for w, v in noise["scales"]]
        d._recent = [[float(x) for x in r] for r in data["recent"]]
        alarm = data["alarm"]
        d._in_alarm, d._recovered = bool(alarm["in_alarm"]), bool(alarm["recovered"])
        d._reference_level, d._alarm_level = num(alarm["reference"]), num(alarm["level"])
        d._alarm_bucket, d._evidence = int(alarm["bucket"]), float(alarm["evidence"])
        d._pending_hours = float(alarm["pending_hours"])
        d._last_expected = num(data["last_expected"])
        return d


def _change_start(counts: list[float], expected: list[float], drop: bool) -> int:
    """Index in a block where the change most likely starts: the start of the tail with the
    largest Poisson log-likelihood ratio against the expectation, in the alarm's direction.

    >>> _change_start([100, 98, 60, 55, 62], [100.0] * 5, drop=True)
    2
    """
    best, best_score = 0, -math.inf
    for j in range(len(counts)):
        c, e = sum(counts[j:]), sum(expected[j:])
        if e <= 0.0 or (c < e) != drop:
            continue
        score = (c * math.log(c / e) if c > 0 else 0.0) - (c - e)
        if score > best_score:
            best, best_score = j, score
    return best


def _direction(name: str) -> Direction:
    return "drop" if name == "drop" else "inflation"

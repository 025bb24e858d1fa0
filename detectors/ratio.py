"""Online change points of one segment's platform/backend ratio (count or value).

Model: per closed window, ``platform ~ NegBin(mean = rho * backend, dispersion alpha)``: the
backend count is the exposure, ``rho`` the platform/backend ratio. A window with few backend
events carries little likelihood, so low volume cannot raise alarms by itself; a window with
``backend == 0`` carries none and is skipped.

Detection is a bank of two-sided CUSUMs on the negative-binomial log-likelihood ratio of
``rho0 -> rho0 * f`` for a grid of factors ``f`` (drops and inflations from 5 % to 5x), which
approximates the GLR over the unknown size of the change at O(1) cost. The baseline ``rho0``
is an exponentially weighted ratio of sums (half-life ``baseline_half_life_s``), frozen while
an alarm is pending (evidence >= ``freeze_evidence``). ``alpha`` is a bounded, winsorised
method-of-moments estimate on the same exponential weights; the baseline's own sampling error
is added to it (``alpha_eff = alpha + var(rho0) / rho0^2``), so a young or thin baseline
cannot raise alarms either. Each member's alarm statistic is a two-sample test of its run
against the baseline (the baseline's sampling error and its lag behind an allowed drift are
profiled out, see ``_two_sample``); its threshold comes from the false-alarm budget
(``detectors.calibration``). Members whose change is below the baseline's resolution, or
whose per-window information is so high that a smaller member detects the same change as
fast, stay idle. After an alarm the baseline is re-set to the post-change level; a later
change back towards the level before the alarm is reported with ``resolves=True``.

Memory: a fixed number of floats (14 CUSUM members x 10 + ~20 scalars); O(1) per update.

>>> import numpy as np
>>> rng = np.random.default_rng(7)
>>> detector = RatioDetector(RatioDetectorConfig(window_seconds=3600))
>>> found = []
>>> for i in range(400):
...     backend = int(rng.poisson(50))
...     ratio = 0.8 if i < 300 else 0.5          # a tag breaks on 3/8 of the traffic
...     cp = detector.update(backend, int(rng.poisson(ratio * backend)))
...     if cp is not None:
...         found.append((cp.direction, cp.change_index, cp.detected_index))
>>> found
[('drop', 301, 302)]
>>> detector.in_alarm, round(detector.baseline_ratio, 1)
(True, 0.5)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from detectors.calibration import (
    arl0_windows,
    cusum_threshold,
    member_arl0,
)
from detectors.changepoint import ChangePoint, Direction, rate_interval

#: log of the tuned change factors of the CUSUM bank, per direction (5 % .. 5x).
LOG_FACTORS: tuple[float, ...] = (0.05, 0.09, 0.16, 0.28, 0.5, 0.9, 1.6)

#: floor of a member's threshold (members with huge per-window information get ~0 otherwise)
MIN_THRESHOLD = 3.0

_STATE_VERSION = 2


@dataclass(frozen=True)
class RatioDetectorConfig:
    """Settings of a :class:`RatioDetector`; the defaults need no tuning.

    ``false_alarms_per_segment_per_30_days`` and ``window_seconds`` set the thresholds
    (see ``detectors.calibration``). ``baseline_half_life_s``: memory of the baseline ratio
    (slow drift within it is followed, not alarmed). ``warmup_s``: no alarms before this much
    data (and ``min_baseline_events`` platform events) are in the baseline.
    """

    window_seconds: float = 300.0
    false_alarms_per_segment_per_30_days: float = 1.0
    baseline_half_life_s: float = 3 * 86400.0
    current_half_life_s: float = 3600.0
    #: memory of the dispersion estimate (a stable property of a segment: long)
    dispersion_half_life_s: float = 7 * 86400.0
    warmup_s: float = 86400.0
    min_baseline_events: float = 20.0
    #: a member is idle while the baseline's relative standard error exceeds this fraction
    #: of its change (an estimated baseline erodes the CUSUM's drift; see calibration)
    max_baseline_error: float = 0.25
    #: drift of the ratio (relative, per 30 days) that is followed rather than alarmed: the
    #: baseline lags such a drift by ``drift x its mean age``, which counts as baseline error
    drift_allowance_per_30_days: float = 0.1
    #: members tuned to smaller relative changes than this are idle (0: all of them run)
    min_relative_change: float = 0.0
    #: members whose per-window information exceeds this are idle (a smaller one is as fast)
    max_member_info: float = 10.0
    #: the baseline and dispersion freeze while the evidence is at least this
    freeze_evidence: float = 0.5
    #: after an alarm the baseline restarts at the post-change level with this many events
    rebaseline_events: float = 5.0
    max_dispersion: float = 1.0
    prior_dispersion: float = 0.01
    prior_dispersion_windows: float = 4.0
    #: squared Pearson residuals are winsorised here for the dispersion estimate
    max_pearson_sq: float = 25.0

    @property
    def arl0(self) -> float:
        """In-control average run length in windows."""
        return arl0_windows(self.window_seconds, self.false_alarms_per_segment_per_30_days)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RatioDetectorConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class _Member:
    """One one-sided CUSUM of the bank, tuned to ``rho0 -> rho0 * exp(log_factor)``."""

    __slots__ = (
        "log_factor", "factor", "stat", "start", "start_at", "run_p", "run_b", "info", "active",
        "score_f", "fisher_f", "score_1", "fisher_1",
    )

    def __init__(self, log_factor: float) -> None:
        self.log_factor = log_factor
        self.factor = math.exp(log_factor)
        self.reset(0, None)
        self.info = 0.0  # EW mean of the per-update null drift magnitude (KL)
        self.active = False

    def reset(self, start: int, start_at: float | None) -> None:
        self.stat = 0.0
        self.start = start
        self.start_at = start_at
        self.run_p = 0.0
        self.run_b = 0.0
        self.score_f = 0.0
        self.fisher_f = 0.0
        self.score_1 = 0.0
        self.fisher_1 = 0.0

    def to_list(self) -> list[Any]:
        return [
            self.stat, self.start, self.start_at, self.run_p, self.run_b, self.info,
            self.score_f, self.fisher_f, self.score_1, self.fisher_1,
        ]

    def load(self, data: list[Any]) -> None:
        self.stat = float(data[0])
        self.start = int(data[1])
        self.start_at = None if data[2] is None else float(data[2])
        self.run_p = float(data[3])
        self.run_b = float(data[4])
        self.info = float(data[5])
        # version 1 state had no score sums: start them from zero
        sums = [float(x) for x in data[6:10]] + [0.0] * (10 - len(data))
        self.score_f, self.fisher_f, self.score_1, self.fisher_1 = sums


class RatioDetector:
    """Online drop/inflation detector for one segment's platform/backend ratio.

    ``update(backend, platform, at=None)`` per closed window (counts, or compound counts for
    values) returns a :class:`ChangePoint` at an alarm, else ``None``. ``in_alarm`` stays True
    from a change until a later one that ``resolves`` it (the ratio came back to the level
    before the alarm, see ``reference_ratio``).

    >>> d = RatioDetector()
    >>> d.update(0, 3) is None, d.index      # backend 0: skipped, but counted as a window
    (True, 1)
    >>> d2 = RatioDetector.from_dict(d.to_dict())
    >>> d2.to_dict() == d.to_dict()
    True
    """

    def __init__(self, config: RatioDetectorConfig | None = None, metric: str = "count_ratio"):
        self.config = config or RatioDetectorConfig()
        self.metric = metric
        cfg = self.config
        self._decay = 0.5 ** (cfg.window_seconds / cfg.baseline_half_life_s)
        self._disp_decay = 0.5 ** (cfg.window_seconds / cfg.dispersion_half_life_s)
        self._current_decay = 0.5 ** (cfg.window_seconds / cfg.current_half_life_s)
        self._warmup_windows = math.ceil(cfg.warmup_s / cfg.window_seconds)
        # the lag of an EW baseline behind a linear drift: drift per window x mean age
        mean_age = self._decay / (1.0 - self._decay)
        self._drift_lag = (
            cfg.drift_allowance_per_30_days * cfg.window_seconds / (30 * 86400.0) * mean_age
        )
        self._arl0 = cfg.arl0
        self._members = [_Member(g) for g in LOG_FACTORS] + [_Member(-g) for g in LOG_FACTORS]
        self._index = 0
        self._updates = 0  # windows with backend > 0
        # baseline: EW sums of platform, backend, and the Poisson variance of the platform sum
        self._base_p = 0.0
        self._base_b = 0.0
        self._base_var = 0.0
        # dispersion: EW sums of the moment numerator / denominator and window weight
        self._disp_num = 0.0
        self._disp_den = 0.0
        self._disp_n = 0.0
        self._mean_mu = 0.0  # EW mean expected platform count per updated window
        self._updated_fraction = 1.0  # EW fraction of windows with backend > 0
        self._cur_p = 0.0
        self._cur_b = 0.0
        self._last_ratio = math.nan
        self._in_alarm = False
        self._reference_ratio = math.nan
        self._alarms = 0
        self._evidence = 0.0

    # ------------------------------------------------------------------ read-only state
    @property
    def index(self) -> int:
        """Number of windows seen (the next window's index)."""
        return self._index

    @property
    def in_alarm(self) -> bool:
        """True from an alarm until a change back to ``reference_ratio`` resolves it."""
        return self._in_alarm

    @property
    def recovered(self) -> bool:
        """True after an alarm was resolved and no new alarm is open."""
        return self._alarms > 0 and not self._in_alarm

    @property
    def reference_ratio(self) -> float:
        """Baseline before the open alarm (``nan`` when none is open)."""
        return self._reference_ratio

    @property
    def baseline_ratio(self) -> float:
        """Current baseline ``rho0`` (``nan`` before any backend event)."""
        if self._base_b <= 0.0:
            return math.nan
        return max(self._base_p, 0.5) / self._base_b

    @property
    def baseline_interval(self) -> tuple[float, float]:
        """95 % interval of the baseline ratio (sampling error and overdispersion)."""
        return self._interval(self._base_p, self._base_b, self._base_var)

    @property
    def current_ratio(self) -> float:
        """Short-memory ratio (half-life ``current_half_life_s``)."""
        return self._cur_p / self._cur_b if self._cur_b > 0.0 else math.nan

    @property
    def last_ratio(self) -> float:
        """Ratio of the last window with backend > 0."""
        return self._last_ratio

    @property
    def evidence(self) -> float:
        """Largest CUSUM statistic over its threshold after the last update (alarm at 1)."""
        return self._evidence

    @property
    def dispersion(self) -> float:
        """Negative-binomial dispersion ``alpha`` (variance = mu + alpha mu^2)."""
        if self._disp_n <= 0.0 or self._disp_den <= 0.0:
            return self.config.prior_dispersion
        prior_weight = self.config.prior_dispersion_windows * self._disp_den / self._disp_n
        alpha = (self._disp_num + self.config.prior_dispersion * prior_weight) / (
            self._disp_den + prior_weight
        )
        return min(max(alpha, 0.0), self.config.max_dispersion)

    @property
    def alarms(self) -> int:
        return self._alarms

    # ------------------------------------------------------------------ helpers
    def _baseline_rel_var(self) -> float:
        if self._base_p <= 0.0:
            return math.inf
        return self._base_var / (self._base_p * self._base_p)

    def _interval(self, p: float, b: float, var: float) -> tuple[float, float]:
        if b <= 0.0:
            return (math.nan, math.nan)
        if p <= 0.0 or var <= 0.0:
            return (0.0, rate_interval(0.0, b)[1])
        # effective number of events: sampling variance and overdispersion shrink it
        phi = 1.0 + self.dispersion * self._mean_mu
        effective = p * p / (var * phi)
        return rate_interval(effective, b * effective / p)

    def _ready(self) -> bool:
        return (
            self._updates >= self._warmup_windows
            and self._base_p >= self.config.min_baseline_events
        )

    # ------------------------------------------------------------------ update
    def update(
        self, backend: float, platform: float, at: float | None = None
    ) -> ChangePoint | None:
        """Feed one closed window; returns a change point at an alarm."""
        if backend < 0 or platform < 0 or math.isnan(backend) or math.isnan(platform):
            raise ValueError("counts must be non-negative numbers")
        index = self._index
        self._index += 1
        f = self._updated_fraction
        if backend <= 0.0:
            self._updated_fraction = self._decay * f
            return None
        self._updated_fraction = self._decay * f + (1.0 - self._decay)
        self._updates += 1
        self._last_ratio = platform / backend
        self._cur_p = self._current_decay * self._cur_p + platform
        self._cur_b = self._current_decay * self._cur_b + backend

        result: ChangePoint | None = None
        pending = False
        if self._base_b > 0.0 and self._base_p > 0.0:
            result, pending = self._detect(index, backend, platform, at)
        if result is None:
            self._learn(backend, platform, freeze_baseline=pending)
        return result

    def _learn(self, backend: float, platform: float, freeze_baseline: bool) -> None:
        cfg = self.config
        lam = self._decay
        moment = math.nan
        mu = 0.0
        if self._base_b > 0.0 and self._base_p > 0.0:
            mu = self.baseline_ratio * backend
            alpha = self.dispersion
            v0 = self._baseline_rel_var()
            dev_sq = (platform - mu) ** 2
            cap = cfg.max_pearson_sq * mu * (1.0 + (alpha + v0) * mu)
            # the baseline's own error is not overdispersion: take it out of the moment
            moment = min(dev_sq, cap) - platform - mu * mu * v0
            if mu * v0 > 0.5 * (1.0 + alpha * mu):
                # a young baseline (start, just after an alarm) says nothing about dispersion
                moment = math.nan
        if self._base_b > 0.0 and self._base_p > 0.0 and not math.isnan(moment):
            dl = self._disp_decay
            self._disp_num = dl * self._disp_num + moment
            self._disp_den = dl * self._disp_den + mu * mu
            self._disp_n = dl * self._disp_n + 1.0
            self._mean_mu = lam * self._mean_mu + (1.0 - lam) * mu
        if freeze_baseline:
            return
        self._base_p = lam * self._base_p + platform
        self._base_b = lam * self._base_b + backend
        self._base_var = lam * lam * self._base_var + platform

    def _detect(
        self, index: int, backend: float, platform: float, at: float | None
    ) -> tuple[ChangePoint | None, bool]:
        cfg = self.config
        lam = self._decay
        rho0 = self.baseline_ratio
        mu0 = rho0 * backend
        alpha = self.dispersion
        inv_alpha = 1.0 / alpha if alpha > 1e-12 else 0.0
        ready = self._ready()
        baseline_se = math.sqrt(
            self._baseline_rel_var() * (1.0 + alpha * self._mean_mu) + self._drift_lag**2
        )
        precision = 1.0 / max(baseline_se * baseline_se, 1e-300)

        # idle rules: a baseline too uncertain for the member's change, or so much
        # information per window that the next smaller member detects the change as fast
        active = 0
        min_log_factor = math.log1p(cfg.min_relative_change)
        for group in (self._members[: len(LOG_FACTORS)], self._members[len(LOG_FACTORS) :]):
            kept_first = False
            for m in group:
                m.active = (
                    ready
                    and baseline_se <= cfg.max_baseline_error * abs(m.log_factor)
                    and abs(m.log_factor) >= min_log_factor
                )
                if m.active and kept_first and m.info > cfg.max_member_info:
                    m.active = False
                if m.active:
                    kept_first = True
                    active += 1
        threshold_arl = member_arl0(self._arl0 * self._updated_fraction, active)

        best: _Member | None = None
        best_ratio = 0.0
        best_h = 0.0
        best_stat = 0.0
        evidence = 0.0
        for m in self._members:
            delta = mu0 * (m.factor - 1.0)
            if inv_alpha > 0.0:
                shrink = math.log1p(alpha * delta / (1.0 + alpha * mu0))
                llr = platform * m.log_factor - (platform + inv_alpha) * shrink
                null_drift = mu0 * m.log_factor - (mu0 + inv_alpha) * shrink
            else:
                llr = platform * m.log_factor - delta
                null_drift = mu0 * m.log_factor - delta
            m.info = lam * m.info + (1.0 - lam) * max(-null_drift, 0.0)
            if not m.active:
                m.reset(index + 1, None)
                continue
            if m.stat <= 0.0:
                m.reset(index, at)
            m.stat = max(0.0, m.stat + llr)
            m.run_p += platform
            m.run_b += backend
            if m.stat <= 0.0:
                m.reset(index + 1, None)
                continue
            mu_f = mu0 * m.factor
            m.score_f += (platform - mu_f) / (1.0 + alpha * mu_f)
            m.fisher_f += mu_f / (1.0 + alpha * mu_f)
            m.score_1 += (platform - mu0) / (1.0 + alpha * mu0)
            m.fisher_1 += mu0 / (1.0 + alpha * mu0)
            h = max(cusum_threshold(threshold_arl, max(m.info, 1e-9)), MIN_THRESHOLD)
            stat = _two_sample(m, precision)
            ratio = stat / h
            evidence = max(evidence, ratio)
            if ratio >= 1.0 and ratio > best_ratio:
                best, best_ratio, best_h, best_stat = m, ratio, h, stat
        self._evidence = evidence
        if best is None:
            return None, evidence >= cfg.freeze_evidence
        return self._alarm(index, at, best, best_stat, best_h, active), False

    def _change_start(self, member: _Member) -> _Member:
        """Member whose run start best explains the change (max profile GLR of its run).

        Every member restarts its run at its own last zero; the alarming one is not always the
        best estimate of the change time (a small member restarts rarely, so its run starts
        early). The likelihood-ratio of "new ratio since k" is maximised over those starts.
        """
        rho0 = self.baseline_ratio
        best, best_glr = member, -math.inf
        for m in self._members:
            if not m.active or m.stat <= 0.0 or (m.log_factor > 0) != (member.log_factor > 0):
                continue
            expected = rho0 * m.run_b
            p = m.run_p
            glr = (p * math.log(p / expected) if p > 0 else 0.0) - (p - expected)
            if glr > best_glr:
                best, best_glr = m, glr
        return best

    def _alarm(
        self,
        index: int,
        at: float | None,
        member: _Member,
        statistic: float,
        threshold: float,
        active: int,
    ) -> ChangePoint:
        start = self._change_start(member)
        before = self.baseline_ratio
        before_lo, before_hi = self.baseline_interval
        after = start.run_p / start.run_b if start.run_b > 0.0 else math.nan
        after_lo, after_hi = self._interval(start.run_p, start.run_b, start.run_p)
        direction: Direction = "inflation" if member.log_factor > 0 else "drop"
        resolves = False
        if self._in_alarm:
            ref = self._reference_ratio
            if _log_distance(after, ref) < _log_distance(after, before):
                resolves = True
        cp = ChangePoint(
            metric=self.metric,
            direction=direction,
            detected_index=index,
            change_index=start.start,
            ratio_before=before,
            ratio_before_low=before_lo,
            ratio_before_high=before_hi,
            ratio_after=after,
            ratio_after_low=after_lo,
            ratio_after_high=after_hi,
            statistic=statistic,
            threshold=threshold,
            # Wald's bound on one excursion of any active member reaching this statistic
            p_value=min(1.0, max(active, 1) * math.exp(-statistic)),
            resolves=resolves,
            change_at=start.start_at,
            detected_at=at,
        )
        if resolves:
            self._in_alarm = False
            self._reference_ratio = math.nan
        elif not self._in_alarm:
            self._in_alarm = True
            self._reference_ratio = before
        self._alarms += 1
        # Re-baseline at the post-change level, but with the weight of only a few events:
        # the run that crossed the threshold is a selected, biased sample (taking it at full
        # weight makes the next window look like a change back); the next windows decide.
        weight = min(1.0, self.config.rebaseline_events / start.run_p) if start.run_p > 0 else 0.0
        self._base_p = start.run_p * weight
        self._base_b = start.run_b * weight if weight > 0.0 else start.run_b
        self._base_var = self._base_p
        for m in self._members:
            m.reset(index + 1, None)
        self._evidence = 0.0
        return cp

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able state; ``from_dict`` restores it exactly."""
        return {
            "version": _STATE_VERSION,
            "metric": self.metric,
            "config": self.config.to_dict(),
            "index": self._index,
            "updates": self._updates,
            "base": [self._base_p, self._base_b, self._base_var],
            "disp": [self._disp_num, self._disp_den, self._disp_n],
            "mean_mu": self._mean_mu,
            "updated_fraction": self._updated_fraction,
            "current": [self._cur_p, self._cur_b],
            "last_ratio": _encode(self._last_ratio),
            "in_alarm": self._in_alarm,
            "reference_ratio": _encode(self._reference_ratio),
            "alarms": self._alarms,
            "evidence": self._evidence,
            "members": [m.to_list() for m in self._members],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RatioDetector:
        if data.get("version") not in (1, _STATE_VERSION):
            raise ValueError(f"unsupported RatioDetector state version {data.get('version')}")
        d = cls(RatioDetectorConfig.from_dict(data["config"]), metric=str(data["metric"]))
        d._index = int(data["index"])
        d._updates = int(data["updates"])
        d._base_p, d._base_b, d._base_var = (float(x) for x in data["base"])
        d._disp_num, d._disp_den, d._disp_n = (float(x) for x in data["disp"])
        d._mean_mu = float(data["mean_mu"])
        d._updated_fraction = float(data["updated_fraction"])
        d._cur_p, d._cur_b = (float(x) for x in data["current"])
        d._last_ratio = _decode(data["last_ratio"])
        d._in_alarm = bool(data["in_alarm"])
        d._reference_ratio = _decode(data["reference_ratio"])
        d._alarms = int(data["alarms"])
        d._evidence = float(data["evidence"])
        for m, values in zip(d._members, data["members"], strict=True):
            m.load(values)
        return d


def _two_sample(m: _Member, precision: float) -> float:
    """The member's run statistic with the baseline's uncertainty profiled out.

    The CUSUM sum treats ``rho0`` as known. Let the true baseline be ``rho0 * exp(u)`` with
    ``u ~ Normal(0, 1 / precision)`` (the baseline's own sampling error). Maximising the joint
    log-likelihood over ``u`` under "ratio x f" and under "ratio unchanged" (quadratic expansion
    around ``u = 0``: score ``D`` and Fisher information ``J`` of the run, summed per window)
    adds ``D_f^2 / 2 (J_f + K) - D_1^2 / 2 (J_1 + K)`` with ``K = precision``. With a precise
    baseline the correction vanishes; with a vague one a run that differs from the baseline
    by less than the baseline's own error earns nothing (it is a two-sample test).
    """
    return (
        m.stat
        + m.score_f * m.score_f / (2.0 * (m.fisher_f + precision))
        - m.score_1 * m.score_1 / (2.0 * (m.fisher_1 + precision))
    )


def _log_distance(a: float, b: float) -> float:
    if not (a > 0.0 and b > 0.0):
        return 0.0 if a == b else math.inf
    return abs(math.log(a / b))


def _encode(x: float) -> float | None:
    """JSON has no NaN: store it as null."""
    return None if math.isnan(x) else x


def _decode(x: Any) -> float:
    return math.nan if x is None else float(x)

"""Online change points of one segment's platform/backend ratio (count or value).

Model: per closed window, ``platform ~ NegBin(mean = rho * backend, dispersion alpha)``: the
backend count is the exposure, ``rho`` the platform/backend ratio. A window with few backend
events carries little likelihood, so low volume cannot raise alarms by itself; a window with
``backend == 0`` carries none and is skipped.

Detection is a bank of one-sided CUSUMs on the negative-binomial log-likelihood ratio of
``rho0 -> rho0 * f`` for a grid of factors ``f`` (drops and inflations from 5 % to 5x), which
approximates the GLR over the unknown size of the change at O(1) cost. The baseline is an
exponentially weighted ratio of sums (half-life ``baseline_half_life_s``) that never freezes;
each CUSUM run is tested against a reference from before the run (the baseline when the
oldest running member of its direction started), so a change does not leak into its own
reference while evidence builds. ``alpha`` is a bounded, winsorised method-of-moments estimate
on the same exponential weights. Each member's alarm statistic is a two-sample test of its run
against its reference (the reference's sampling error and its lag behind an allowed drift are
profiled out, see ``_two_sample``; the lag is the reference's own plus half the run, where a
linear drift puts the run's mean, see ``_run_lag``); its threshold comes from the false-alarm
budget (``detectors.calibration``). Members whose change is below the baseline's resolution,
or whose per-window information is so high that a smaller member detects the same change as
fast, stay idle.

An alarm's life is explicit (``alarm_state``): an alarm is ``pending`` until a sequential test
on the windows after it confirms the level it claimed (``confirmed``) or withdraws it (the
baseline returns to the level before it, and an incident it opened is resolved by a change
point with ``resolves=True``). The level before the incident stays as ``reference_ratio``; a
confirmed incident resolves when a later change brings the ratio back near it, or when the
level since the alarm is back within the reference's own error. A change far past the
reference is a new change, never a ``resolves``.

Memory: a fixed number of floats (14 CUSUM members x 14 + ~35 scalars); O(1) per update.

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
>>> detector.alarm_state, round(detector.reference_ratio, 1)   # confirmed; the level before
('confirmed', 0.8)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

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

_STATE_VERSION = 3

AlarmState = Literal["none", "pending", "confirmed"]


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
    #: the counted thing is rare in a healthy segment (duplicate triggers, conversions with no
    #: order): its baseline may never hold ``min_baseline_events``, and a rate of ~0 is then
    #: known only as an upper bound. While the baseline holds fewer events than that (after the
    #: warm-up, and with ``min_baseline_exposure`` of exposure), inflations are tested against
    #: that bound taken as known (events + 2 sqrt(events) + 2: ~95 %), drops not at all
    rare_events: bool = False
    min_baseline_exposure: float = 200.0
    #: callers (the seasonal profile) stop learning while the evidence is at least this; the
    #: baseline itself never freezes: each CUSUM run is tested against the baseline from
    #: before it, and a baseline frozen while evidence builds learns only from the windows
    #: that agree with it, which makes a chance error stick
    freeze_evidence: float = 0.5
    #: after an alarm the baseline restarts at the post-change level with this many events
    rebaseline_events: float = 5.0
    #: an alarm is confirmed or withdrawn by a sequential test on the windows after it: the
    #: level before the alarm against a level this fraction (in log) of the way to the
    #: claimed one, stopped at +-``confirm_evidence`` nats (Wald: ~5 % errors each way at 3)
    confirm_fraction: float = 0.5
    confirm_evidence: float = 3.0
    confirm_z: float = 3.0
    #: a confirmed incident resolves when its level is back within this many standard errors
    #: of the reference (see ``RatioDetector._check_return``)
    resolve_z: float = 1.0
    confirm_runs: float = 1.5
    #: ... but never before this many windows
    min_confirm_windows: int = 12
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
        # asdict walks every field recursively: ~60 us, most of a detector's own to_dict;
        # the config is frozen, so its dict is made once (a copy is handed out)
        cached: dict[str, Any] | None = self.__dict__.get("_as_dict")
        if cached is None:
            cached = asdict(self)
            object.__setattr__(self, "_as_dict", cached)
        return dict(cached)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RatioDetectorConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class _Member:
    """One one-sided CUSUM of the bank, tuned to ``rho0 -> rho0 * exp(log_factor)``."""

    __slots__ = (
        "log_factor", "factor", "stat", "start", "start_at", "run_p", "run_b", "info", "active",
        "two_sample",
        "score_f", "fisher_f", "score_1", "fisher_1", "ref_p", "ref_b", "ref_var",
        "ref_index",
    )

    def __init__(self, log_factor: float) -> None:
        self.log_factor = log_factor
        self.factor = math.exp(log_factor)
        self.reset(0, None)
        self.info = 0.0  # EW mean of the per-update null drift magnitude (KL)
        self.active = False
        self.two_sample = 0.0  # the run's statistic after the last update (not state)

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
        # the baseline as it was when the run started: the run is tested against data before
        # it, so a slow change cannot leak into its own reference while the run accumulates
        self.ref_p = 0.0
        self.ref_b = 0.0
        self.ref_var = 0.0
        self.ref_index = 0

    def to_list(self) -> list[Any]:
        return [
            self.stat, self.start, self.start_at, self.run_p, self.run_b, self.info,
            self.score_f, self.fisher_f, self.score_1, self.fisher_1,
            self.ref_p, self.ref_b, self.ref_var, self.ref_index,
        ]

    def load(self, data: list[Any]) -> None:
        self.stat = float(data[0])
        self.start = int(data[1])
        self.start_at = None if data[2] is None else float(data[2])
        self.run_p = float(data[3])
        self.run_b = float(data[4])
        self.info = float(data[5])
        # version 1 state had no score sums: start them from zero
        sums = [float(x) for x in data[6:13]] + [0.0] * max(0, 13 - len(data))
        self.score_f, self.fisher_f, self.score_1, self.fisher_1 = sums[:4]
        self.ref_p, self.ref_b, self.ref_var = sums[4:7]
        self.ref_index = int(data[13]) if len(data) > 13 else self.start


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
        self._drift_per_window = cfg.drift_allowance_per_30_days * cfg.window_seconds / (30 * 86400.0)
        self._drift_lag = self._drift_per_window * mean_age
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
        self._state: AlarmState = "none"
        self._alarm_direction: Direction | None = None
        self._reference_ratio = math.nan  # level before the open incident
        self._reference_var = 0.0  # its relative sampling variance
        self._incident_direction: Direction = "drop"
        # the alarm under test (state "pending"): what it does when confirmed or withdrawn
        # ("open" an incident, "resolve" it, or "move" an open one), the baseline before it
        # (decayed like the live one), its claimed level, the test's log-likelihood ratio,
        # the baseline sums of the windows since it, and its change index / time
        self._pending_kind = ""
        self._prior = [0.0, 0.0, 0.0]
        self._claimed = math.nan
        self._sprt = 0.0
        self._post = [0.0, 0.0, 0.0]
        self._pending_change = (0, math.nan)
        self._pending_deadline = 0
        self._alarms = 0
        self._evidence = 0.0

    # ------------------------------------------------------------------ read-only state
    @property
    def index(self) -> int:
        """Number of windows seen (the next window's index)."""
        return self._index

    @property
    def in_alarm(self) -> bool:
        """True while an incident is open: from an alarm until it is withdrawn or resolved."""
        if self._state == "pending":
            return self._pending_kind != "resolve"
        return self._state == "confirmed"

    @property
    def alarm_state(self) -> AlarmState:
        """``pending`` while the windows after the last alarm decide between its claimed
        level and the level before it; ``confirmed`` while a confirmed incident is open."""
        return self._state

    @property
    def alarm_direction(self) -> Direction | None:
        """Direction of the last alarm (``None`` before any)."""
        return self._alarm_direction

    @property
    def incident_direction(self) -> Direction | None:
        """Direction of the open incident (``None`` when none is open)."""
        return self._incident_direction if self.in_alarm else None

    @property
    def settling(self) -> bool:
        """True while the pending alarm moves an open incident's level back toward its
        reference without passing it (a partial return, or the noise of a level still moved):
        part of that incident, not a new change."""
        if self._state != "pending" or self._pending_kind != "move":
            return False
        if self._alarm_direction == self._incident_direction or not math.isfinite(self._reference_ratio):
            return False
        if self._incident_direction == "inflation":
            return self._claimed >= self._reference_ratio
        return self._claimed <= self._reference_ratio

    @property
    def recovered(self) -> bool:
        """True after an alarm was resolved or withdrawn and no new alarm is open."""
        return self._alarms > 0 and not self.in_alarm

    @property
    def reference_ratio(self) -> float:
        """Baseline before the open incident (``nan`` when none is open)."""
        return self._reference_ratio if self.in_alarm else math.nan

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

    def _sparse(self) -> bool:
        """A rare-event rate whose baseline is still thin (see ``rare_events``)."""
        cfg = self.config
        return (
            cfg.rare_events
            and self._updates >= self._warmup_windows
            and self._base_p < cfg.min_baseline_events
            and self._base_b >= cfg.min_baseline_exposure
        )

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
        if self._state == "pending":
            result = self._test_alarm(index, backend, platform, at)
        elif self._base_b > 0.0 and (self._base_p > 0.0 or self._sparse()):
            result, pending = self._detect(index, backend, platform, at)
        if result is None or self._state != "pending":
            self._learn(backend, platform, freeze_baseline=pending)
        if result is None and self._state == "confirmed":
            result = self._check_return(index, at)
        return result

    def _check_return(self, index: int, at: float | None) -> ChangePoint | None:
        """Resolve a confirmed incident whose level is back within the reference's error.

        A change back is normally found by the CUSUMs (and resolves the incident there); this
        catches the incident whose reference was off by chance, or whose level drifted back:
        once the level since the alarm is known as precisely as the reference, it must stay
        ``resolve_z`` standard errors away from it (confirmation needed ``confirm_z``).
        """
        if self._base_p <= 0.0 or self._base_b <= 0.0:
            return None
        phi = 1.0 + self.dispersion * self._mean_mu
        current_var = phi * self._baseline_rel_var()
        reference_var = phi * self._reference_var + self._drift_lag**2
        if current_var > reference_var:
            return None
        current = self.baseline_ratio
        ref = self._reference_ratio
        away = math.log(current / ref) * (1.0 if self._incident_direction == "inflation" else -1.0)
        if away / math.sqrt(current_var + reference_var) >= self.config.resolve_z:
            return None
        direction: Direction = "drop" if self._incident_direction == "inflation" else "inflation"
        self._state = "none"
        self._alarm_direction = direction
        before = self._reference_ratio
        self._reference_ratio = math.nan
        lo, hi = self.baseline_interval
        return ChangePoint(
            metric=self.metric,
            direction=direction,
            detected_index=index,
            change_index=index,
            ratio_before=before,
            ratio_before_low=before,
            ratio_before_high=before,
            ratio_after=current,
            ratio_after_low=lo,
            ratio_after_high=hi,
            statistic=away / math.sqrt(current_var + reference_var),
            threshold=self.config.resolve_z,
            p_value=1.0,
            resolves=True,
            change_at=at,
            detected_at=at,
        )

    def _test_alarm(
        self, index: int, backend: float, platform: float, at: float | None
    ) -> ChangePoint | None:
        """One step of the sequential test of a pending alarm (Wald's SPRT).

        The level before the alarm ``L`` against ``M = L (C / L)^confirm_fraction`` (``C`` the
        claimed level): the run that crossed the threshold is a selected sample whose ratio
        overshoots the change, so the test asks only whether the level moved a good part of the
        way, on windows the alarm did not see. Withdrawn: the baseline returns to ``L`` (plus
        the windows since), and an alarm that opened an incident is resolved by a change point.
        """
        cfg = self.config
        lam = self._decay
        self._prior = [lam * self._prior[0], lam * self._prior[1], lam * lam * self._prior[2]]
        self._post = [
            lam * self._post[0] + platform,
            lam * self._post[1] + backend,
            lam * lam * self._post[2] + platform,
        ]
        level = max(self._prior[0], 0.5) / self._prior[1]
        log_step = cfg.confirm_fraction * math.log(self._claimed / level)
        mu_l = level * backend
        mu_m = mu_l * math.exp(log_step)
        alpha = self.dispersion
        if alpha > 1e-12:
            llr = platform * log_step - (platform + 1.0 / alpha) * math.log(
                (1.0 + alpha * mu_m) / (1.0 + alpha * mu_l)
            )
        else:
            llr = platform * log_step - (mu_m - mu_l)
        self._sprt += llr
        # The test above takes the level before the alarm as exact; it is an estimate, and an
        # alarm is likelier where it happens to be off. A confirmation also needs the windows
        # since the alarm to differ from it by ``confirm_z`` standard errors of both.
        post_p, post_b, _ = self._post
        phi = 1.0 + alpha * self._mean_mu
        prior_var = (
            self._prior[2] / (self._prior[0] * self._prior[0]) if self._prior[0] > 0.0 else math.inf
        ) * phi + self._drift_lag**2
        post_var = phi / max(level * post_b, 0.5)  # under the level before: stable at zero counts
        moved = math.log(max(post_p, 0.5) / (level * post_b)) if post_b > 0.0 else 0.0
        z = moved / math.sqrt(prior_var + post_var) * (1.0 if log_step > 0.0 else -1.0)
        # a change of the claimed size confirms in about the windows its run took to raise
        # the alarm; one that has not confirmed in ``confirm_runs`` times that is withdrawn
        withdraw = (
            self._sprt <= -cfg.confirm_evidence
            or (post_var <= prior_var and z < cfg.confirm_z)
            or index >= self._pending_deadline
        )
        if self._sprt >= cfg.confirm_evidence and z >= cfg.confirm_z:
            self._state = "none" if self._pending_kind == "resolve" else "confirmed"
            if self._state == "none":
                self._reference_ratio = math.nan
            return None
        if not withdraw:
            return None
        # withdrawn: the level before the alarm still holds
        kind = self._pending_kind
        post_var = self._post[2]
        self._base_p = self._prior[0] + post_p
        self._base_b = self._prior[1] + post_b
        self._base_var = self._prior[2] + post_var
        for m in self._members:
            m.reset(index + 1, None)
        if kind == "move":
            self._state = "confirmed"
            return None
        claimed = self._claimed
        now = post_p / post_b if post_b > 0.0 else level
        if kind == "open":  # the incident it opened is resolved
            self._state = "none"
            resolves = True
            direction: Direction = "inflation" if claimed < level else "drop"
        else:  # a resolve that did not hold: the incident is open again
            self._state = "confirmed"
            resolves = False
            direction = "inflation" if claimed < level else "drop"
        self._alarm_direction = direction
        lo, hi = self._interval(post_p, post_b, post_var)
        change_index, change_at = self._pending_change
        return ChangePoint(
            metric=self.metric,
            direction=direction,
            detected_index=index,
            change_index=change_index,
            ratio_before=claimed,
            ratio_before_low=claimed,
            ratio_before_high=claimed,
            ratio_after=now,
            ratio_after_low=lo,
            ratio_after_high=hi,
            statistic=-self._sprt,
            threshold=cfg.confirm_evidence,
            p_value=min(1.0, math.exp(self._sprt)),
            resolves=resolves,
            change_at=None if math.isnan(change_at) else change_at,
            detected_at=at,
        )

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
        sparse = self._sparse()
        # the reference a new run is tested against: the baseline, or (a thin rare-event
        # baseline) its upper bound, taken as known
        base = (self._base_p, self._base_b, self._base_var)
        if sparse:
            base = (self._base_p + 2.0 * math.sqrt(self._base_p) + 2.0, self._base_b, 0.0)
        rho0 = max(base[0], 0.5) / base[1]
        mu0 = rho0 * backend
        alpha = self.dispersion
        inv_alpha = 1.0 / alpha if alpha > 1e-12 else 0.0
        ready = self._ready() or sparse
        baseline_se = math.sqrt(
            (0.0 if sparse else self._baseline_rel_var()) * (1.0 + alpha * self._mean_mu)
            + self._drift_lag**2
        )

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
                    and (m.log_factor > 0 or not sparse)
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
        # (index, p, b, var) of the oldest reference a running member holds, per direction
        oldest: dict[bool, tuple[int, float, float, float]] = {}
        for m in self._members:
            if m.active and m.stat > 0.0 and m.ref_b > 0.0:
                up = m.log_factor > 0
                if up not in oldest or m.ref_index < oldest[up][0]:
                    oldest[up] = (m.ref_index, m.ref_p, m.ref_b, m.ref_var)
        # see _run_lag (inlined: this loop runs for every member on every window)
        lag0, drift = self._drift_lag, self._drift_per_window
        for m in self._members:
            delta = mu0 * (m.factor - 1.0)
            if inv_alpha > 0.0:
                shrink = math.log1p(alpha * delta / (1.0 + alpha * mu0))
                null_drift = mu0 * m.log_factor - (mu0 + inv_alpha) * shrink
            else:
                null_drift = mu0 * m.log_factor - delta
            m.info = lam * m.info + (1.0 - lam) * max(-null_drift, 0.0)
            if not m.active:
                m.reset(index + 1, None)
                continue
            if m.stat <= 0.0 or m.ref_b <= 0.0:
                m.reset(index, at)
                # the reference of the oldest running member of its direction, else the
                # baseline now: a change of a size between two members' makes the nearer,
                # larger one restart often, and the live baseline has meanwhile learnt part of
                # the change; a running member's reference predates its run
                m.ref_index, m.ref_p, m.ref_b, m.ref_var = oldest.get(
                    m.log_factor > 0, (index, *base)
                )
            # the run is tested against the baseline from before it started
            mu_ref = max(m.ref_p, 0.5) / m.ref_b * backend
            delta = mu_ref * (m.factor - 1.0)
            if inv_alpha > 0.0:
                shrink = math.log1p(alpha * delta / (1.0 + alpha * mu_ref))
                llr = platform * m.log_factor - (platform + inv_alpha) * shrink
            else:
                llr = platform * m.log_factor - delta
            m.stat = max(0.0, m.stat + llr)
            m.run_p += platform
            m.run_b += backend
            if m.stat <= 0.0:
                m.reset(index + 1, None)
                continue
            mu_f = mu_ref * m.factor
            m.score_f += (platform - mu_f) / (1.0 + alpha * mu_f)
            m.fisher_f += mu_f / (1.0 + alpha * mu_f)
            m.score_1 += (platform - mu_ref) / (1.0 + alpha * mu_ref)
            m.fisher_1 += mu_ref / (1.0 + alpha * mu_ref)
            h = max(cusum_threshold(threshold_arl, max(m.info, 1e-9)), MIN_THRESHOLD)
            # its error: sampling (the reference's own) and its lag behind an allowed drift,
            # which grows with the age of the run
            ref_rel_var = m.ref_var / (m.ref_p * m.ref_p) if m.ref_p > 0.0 else math.inf
            lag = lag0 + drift * (m.start - m.ref_index + 0.5 * (index - m.start + 1))
            se_sq = ref_rel_var * (1.0 + alpha * self._mean_mu) + lag * lag
            stat = _two_sample(m, 1.0 / max(se_sq, 1e-300))
            m.two_sample = stat
            if stat <= 0.0:
                # the run is explained by its reference's own error: a run that keeps going
                # against a reference that was off by chance must not hold on to it
                m.reset(index + 1, None)
                continue
            ratio = stat / h
            evidence = max(evidence, ratio)
            if ratio >= 1.0 and ratio > best_ratio:
                best, best_ratio, best_h, best_stat = m, ratio, h, stat
        self._evidence = evidence
        if best is None:
            return None, False
        return self._alarm(index, at, best, best_stat, best_h, active), False

    def _run_lag(self, m: _Member, index: int) -> float:
        """Offset of a run's mean level from its reference under the allowed linear drift.

        The reference (an EW mean) sits ``mean_age`` windows behind the level at the time it
        was taken, ``m.start - m.ref_index`` windows pass before the run starts, and the run's
        windows average the level half-way through it. (Counting the whole run instead of half
        of it, as before, doubled the allowance's growth and cost ~1 point of detectable
        misses in tests/bench/bench_detectors.py at an unchanged false-alarm rate.)
        """
        run = index - m.start + 1
        lag: float = self._drift_lag + self._drift_per_window * (m.start - m.ref_index + 0.5 * run)
        return lag

    def _change_start(self, member: _Member, index: int) -> _Member:
        """Member whose run start best explains the change (max profile GLR of its run).

        Every member restarts its run at its own last zero; the alarming one is not always the
        best estimate of the change time (a small member restarts rarely, so its run starts
        early). The likelihood-ratio of "new ratio since k" is maximised over those starts.
        """
        best, best_glr = member, -math.inf
        phi = 1.0 + self.dispersion * self._mean_mu
        for m in self._members:
            if not m.active or m.stat <= 0.0 or (m.log_factor > 0) != (member.log_factor > 0):
                continue
            if m.run_p <= 0.0 or m.ref_p <= 0.0:
                continue
            # two-sample GLR (normal approximation on the log scale) of the run against its
            # own reference: the run's error, the reference's, and its lag behind a drift
            moved = math.log(m.run_p / m.run_b * m.ref_b / m.ref_p)
            lag = self._run_lag(m, index)
            var = phi / m.run_p + phi * m.ref_var / (m.ref_p * m.ref_p) + lag * lag
            glr = moved * moved / (2.0 * var)
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
        start = self._change_start(member, index)
        prior = [start.ref_p, start.ref_b, start.ref_var]
        before = max(prior[0], 0.5) / prior[1]
        before_lo, before_hi = self._interval(*prior)
        after = start.run_p / start.run_b if start.run_b > 0.0 else math.nan
        after_lo, after_hi = self._interval(start.run_p, start.run_b, start.run_p)
        direction: Direction = "inflation" if member.log_factor > 0 else "drop"
        # inside an open incident, a change resolves it only when it goes back at least half
        # of the way (in log) to the reference, and not further past it than half the way
        resolves = False
        kind = "open"
        if self._state == "confirmed":
            kind = "move"
            ref = self._reference_ratio
            if _log_distance(after, ref) <= 0.5 * _log_distance(before, ref) and (
                (after > before) == (ref > before)
            ):
                resolves = True
                kind = "resolve"
        elif self._state == "none":
            self._reference_ratio = before
            self._reference_var = prior[2] / (prior[0] * prior[0]) if prior[0] > 0.0 else 0.0
            self._incident_direction = direction
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
        self._state = "pending"
        self._pending_kind = kind
        self._alarm_direction = direction
        self._prior = prior
        self._claimed = after if after > 0.0 else 0.5 / start.run_b
        self._sprt = 0.0
        self._post = [0.0, 0.0, 0.0]
        self._pending_change = (start.start, math.nan if start.start_at is None else start.start_at)
        run_windows = index - start.start + 1
        self._pending_deadline = index + max(
            self.config.min_confirm_windows, math.ceil(self.config.confirm_runs * run_windows)
        )
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

    # ------------------------------------------------------------------ people's feedback
    # Two additions on the alarm life above, for what a person says about an open incident
    # (detectors.monitor applies them; docs/oncall.md). Both close the incident without a
    # change point: the monitor reports the resolution itself, with the person's reason.
    def accept_level(self) -> None:
        """"Expected": the level since the alarm is the new normal; re-baseline at it.

        The baseline already follows the post-alarm level (re-baselined at the alarm, learning
        since); the incident and its reference are dropped and the CUSUMs restart on it. No-op
        without an open incident.
        """
        if not self.in_alarm:
            return
        self._state = "none"
        self._reference_ratio = math.nan
        self._reset_members()

    def reject_alarm(self) -> None:
        """"False alarm": close the incident and keep the baseline from before it.

        A pending alarm goes back to the level before it (its decayed prior, without the
        disputed windows since); a confirmed one to its reference level, with the reference's
        precision. If the level really stays moved, the CUSUMs alarm again: a new incident.
        """
        if not self.in_alarm:
            return
        if self._state == "pending" and self._prior[1] > 0.0:
            self._base_p, self._base_b, self._base_var = self._prior
        elif math.isfinite(self._reference_ratio) and self._base_b > 0.0:
            self._base_p = self._reference_ratio * self._base_b
            self._base_var = self._reference_var * self._base_p * self._base_p
        self._state = "none"
        self._reference_ratio = math.nan
        self._reset_members()

    def _reset_members(self) -> None:
        for m in self._members:
            m.reset(self._index, None)
        self._evidence = 0.0

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
            "state": self._state,
            "alarm_direction": self._alarm_direction,
            "reference_ratio": _encode(self._reference_ratio),
            "reference_var": self._reference_var,
            "incident_direction": self._incident_direction,
            "pending": [
                self._pending_kind, self._prior, _encode(self._claimed), self._sprt, self._post,
                self._pending_change[0], _encode(self._pending_change[1]),
                self._pending_deadline,
            ],
            "alarms": self._alarms,
            "evidence": self._evidence,
            "members": [m.to_list() for m in self._members],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RatioDetector:
        if data.get("version") not in (1, 2, _STATE_VERSION):
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
        d._reference_ratio = _decode(data["reference_ratio"])
        if "state" in data:
            state = str(data["state"])
            if state not in ("none", "pending", "confirmed"):
                raise ValueError(f"unknown alarm state {state!r}")
            d._state = "none" if state == "none" else "pending" if state == "pending" else "confirmed"
            direction = data["alarm_direction"]
            d._alarm_direction = None if direction is None else (
                "drop" if direction == "drop" else "inflation"
            )
            kind, prior, claimed, sprt, post, change_index, change_at, deadline = data["pending"]
            d._pending_deadline = int(deadline)
            d._pending_kind = str(kind)
            d._reference_var = float(data["reference_var"])
            d._incident_direction = (
                "drop" if data["incident_direction"] == "drop" else "inflation"
            )
            d._prior = [float(x) for x in prior]
            d._claimed = _decode(claimed)
            d._sprt = float(sprt)
            d._post = [float(x) for x in post]
            d._pending_change = (int(change_index), _decode(change_at))
        elif data["in_alarm"]:  # versions 1 and 2: an open alarm was a confirmed incident
            d._state = "confirmed"
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

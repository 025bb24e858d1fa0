"""Change points of a real-world series: straight-line segments, autocorrelated noise, outliers.

The default model of ``gapwatch detect``. Each segment is a straight line or a constant (a
change is a break in level, in trend, or both); the noise around them may be serially
correlated, carry a regular cycle (a season) and have isolated spikes. The steps:

1. **Outliers.** One or two points that stand apart, in the same direction, from the three
   points on each side (their median and their straight-line extrapolation) by more than 5
   robust standard deviations form an isolated spike: left out of the fit like a missing
   value, it cannot open a segment. A step edge agrees with one side and a sharp turn (a V)
   with the extrapolations, so neither is a spike. A strong regular cycle is then removed
   (``detectors.seasonal_cycle``): its turns are no changes.
2. **Noise scale.** A segment's cost is its residual sum of squares over the noise's
   *long-run* variance ``gamma0 (1 + phi) / (1 - phi)`` (AR(1)): the variance that governs
   how much a spurious fit can gain on correlated noise, so the penalty keeps its meaning on
   autocorrelated series. ``phi`` is clipped to [0, (m - 1) / (m + 1)] (m = min_size; 2/3 by
   default): noise correlated over more than a shortest segment is not told from segments. First fitted to a robust variogram of
   second differences at lags 1..16 (slopes cancel; a few changes touch few differences),
   then re-estimated from the residuals of the segmentation it gives (MAD and a robust lag-1
   correlation, never local first differences) until the segmentation repeats (at most 10
   rounds).
3. **Search.** PELT (``detectors.pelt``), BIC-like: each change pays ``(p + 2) log n`` with
   ``p = 1`` (its new level), the rule of the ``mean`` model, and a segment that uses a slope
   pays ``log n`` more for it (so a pure step is not charged for a slope it does not need).
   The search runs on Huber pseudo-observations: each round replaces every point by its
   segment's fit plus its residual clipped at ``HUBER_K = 3`` robust standard deviations,
   so heavy-tailed noise does not pay for segments (a robust cost, with cumulative sums).
4. **Placement.** Two free lines place a continuous bend poorly; each change is moved (within
   ``3 * min_size`` points) to the best continuous kink instead when that wins by BIC (three
   parameters against the two levels and any slopes of two free segments).
5. **Curvature** (``curves=True`` only): a change that one parabola over its two neighbouring
   segments explains as well is dropped (``drop_curvature``).
6. **A smooth alternative** (default): the segmentation is weighed, by the same BIC count
   and noise, against one parabola over the whole series and no change (``smooth_beats``):
   smooth acceleration over the whole record is then no run of changes.
7. **Consensus** (``consensus_change_points``, the default of ``gapwatch detect``): steps
   1-6 run three times, at ``3 log n``, ``2 log n`` and ``3 log n_eff`` per change; the
   changes that two of the three place within 5 points of each other are kept.

Times are the original indices, so missing values leave gaps in time, not in the lines.

>>> import numpy as np
>>> rng = np.random.default_rng(3)
>>> t = np.arange(300.0)
>>> signal = np.where(t < 120, 0.02 * t, 4.0 - 0.03 * (t - 120)) + np.where(t >= 220, 4.0, 0.0)
>>> x = signal + rng.normal(0, 0.5, 300)
>>> x[[50, 51, 170]] += 6.0  # spikes, not segments
>>> trend_change_points(t, x)
[120, 220]
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from detectors.pelt import EXACT_LIMIT, pelt
from detectors.seasonal_cycle import remove_seasonal_cycle

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

PHI_MAX = 2.0 / 3.0  # phi_cap(5): the default min_size
OUTLIER_SDS = 5.0
# below this fraction of the series' range, noise is treated as rounding: keeps noiseless
# series finite and float error in the cumulative sums far below any penalty
RESOLUTION = 1e-4
MAD_TO_SD = 1.4826
VARIOGRAM_LAGS = (1, 2, 4, 8, 16)
# a parabola is fitted only where its own direction keeps this share of the series' t^4 sum
# (t in [0, 1]); below it the power sums cannot resolve the curvature
_QUAD_TOL = 1e-12
MAX_ROUNDS = 10
HUBER_K = 3.0


def mad_scale(x: FloatArray) -> float:
    """Robust standard deviation: 1.4826 x median absolute deviation.

    >>> mad_scale(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    1.4826
    """
    if x.size == 0:
        return 0.0
    return MAD_TO_SD * float(np.median(np.abs(x - np.median(x))))


def outlier_mask(x: FloatArray) -> NDArray[np.bool_]:
    """True where a point is part of an isolated spike (one or two points wide).

    A spike stands apart from *both* sides, in the same direction: every point of it differs
    from the median of the three points before the spike, from that of the three after it,
    by more than 5 times the robust
    scale of ``x[t] - (x[t-1] + x[t+1]) / 2`` (noise plus local curvature), and from the
    straight-line extrapolation of each side by half that. A step edge agrees with one side,
    a slope or a sharp turn (a V) with the extrapolations.

    >>> x = np.tile([0.0, 0.1, -0.1, 0.05, -0.05], 6)
    >>> x[7] = 9.0
    >>> x[[15, 16]] = -6.0
    >>> x[22:] += 5.0  # a step is no spike
    >>> np.flatnonzero(outlier_mask(x)).tolist()
    [7, 15, 16]
    """
    out = np.zeros(x.size, dtype=bool)
    if x.size < 8:
        return out
    bend = x[1:-1] - 0.5 * (x[:-2] + x[2:])
    limit = OUTLIER_SDS * max(mad_scale(bend), RESOLUTION * float(np.ptp(x)))
    for width in (1, 2):
        n = x.size - 5 - width  # spike starts t = 3 .. n + 2
        left = [x[k : k + n] for k in range(3)]
        right = [x[3 + width + k : 3 + width + k + n] for k in range(3)]
        # each side's level (median) and its straight-line extrapolation to the spike
        # (extrapolation is noisier: half the limit is enough to tell a spike from a V)
        sides = [
            (np.median(np.stack(left), axis=0), limit),
            (np.median(np.stack(right), axis=0), limit),
            (left[2] + (left[2] - left[0]) * (1 + width) / 2, limit / 2),
            (right[0] - (right[2] - right[0]) * (1 + width) / 2, limit / 2),
        ]
        up = np.ones(n, dtype=bool)
        down = np.ones(n, dtype=bool)
        for offset in range(width):
            point = x[3 + offset : 3 + offset + n]
            for ref, bar in sides:
                up &= point - ref > bar
                down &= ref - point > bar
        for offset in range(width):
            out[3 + offset : 3 + offset + n] |= up | down
    return out


def phi_cap(min_size: int) -> float:
    """Largest AR(1) coefficient taken as noise: correlation length ``(1 + phi) / (1 - phi)``
    (points per independent observation) up to ``min_size``. Noise persistent over longer
    than the shortest segment cannot be told from segments at that resolution.

    >>> round(phi_cap(5), 3)
    0.667
    """
    return max(min_size - 1, 0) / (min_size + 1)


def ar1_long_run_variance(gamma0: float, phi: float, phi_max: float = PHI_MAX) -> float:
    """Long-run variance of AR(1) noise with marginal variance ``gamma0``.

    >>> round(ar1_long_run_variance(1.0, 0.5), 6)
    3.0
    """
    phi = min(max(phi, 0.0), phi_max)
    return gamma0 * (1.0 + phi) / (1.0 - phi)


def variogram_long_run_variance(x: FloatArray, phi_max: float = PHI_MAX) -> float:
    """AR(1) fit to the robust variance of second differences at lags 1, 2, 4, 8, 16.

    ``Var(x[t+k] - 2 x[t] + x[t-k]) = 2 gamma0 (1 - phi^k) (3 - phi^k)`` for AR(1) noise; a
    line's slope cancels, and a few changes touch few differences (MAD).

    >>> e = np.random.default_rng(0).normal(0.0, 1.0, 5000)
    >>> round(variogram_long_run_variance(e), 1)
    1.0
    """
    lags = [k for k in VARIOGRAM_LAGS if 4 * k < x.size]
    if not lags:
        return float(np.var(x))
    observed = []
    for k in lags:
        second = x[2 * k :] - 2.0 * x[k:-k] + x[: -2 * k]
        observed.append(mad_scale(second) ** 2)
    v = np.array(observed)
    if np.any(v <= 0.0):
        return 0.0
    lag = np.array(lags, dtype=float)
    best = (math.inf, 0.0, 0.0)
    for phi in np.linspace(0.0, phi_max, 91):
        shape = 2.0 * (1.0 - phi**lag) * (3.0 - phi**lag)
        log_gamma0 = float(np.mean(np.log(v / shape)))
        misfit = float(np.sum((np.log(v / shape) - log_gamma0) ** 2))
        if misfit < best[0]:
            best = (misfit, float(phi), math.exp(log_gamma0))
    return ar1_long_run_variance(best[2], best[1], phi_max)


def residual_ar1(residuals: list[FloatArray], phi_max: float = PHI_MAX) -> tuple[float, float]:
    """Robust marginal variance and lag-1 correlation (clipped to [0, phi_max]) of segment
    residuals (see ``residual_long_run_variance``).

    >>> gamma0, phi = residual_ar1([np.tile([1.0, -1.0], 50)])
    >>> round(gamma0, 3), phi
    (2.198, 0.0)
    """
    pairs = [r for r in residuals if r.size >= 2]
    if not pairs:
        return 0.0, 0.0
    everything = np.concatenate(residuals)
    before = np.concatenate([r[:-1] for r in pairs])
    after = np.concatenate([r[1:] for r in pairs])
    su, sv = mad_scale(before + after) ** 2, mad_scale(before - after) ** 2
    phi = (su - sv) / (su + sv) if su + sv > 0.0 else 0.0
    return mad_scale(everything) ** 2, min(max(phi, 0.0), phi_max)


def effective_size(n: int, phi: float) -> float:
    """Independent observations worth of ``n`` points of AR(1) noise: ``n (1 - phi) / (1 + phi)``
    (at least 2). The BIC charge per parameter is ``log`` of it: a parameter is pinned down
    by effective, not nominal, observations.

    >>> effective_size(100, 0.0), round(effective_size(100, 2 / 3), 6)
    (100.0, 20.0)
    """
    return max(n * (1.0 - phi) / (1.0 + phi), 2.0)


def residual_long_run_variance(residuals: list[FloatArray], phi_max: float = PHI_MAX) -> float:
    """Long-run variance from segment residuals: robust lag-1 correlation and scale.

    The lag-1 correlation is Gnanadesikan-Kettenring's, ``(s(a+b)^2 - s(a-b)^2) /
    (s(a+b)^2 + s(a-b)^2)`` over the pairs of neighbours within a segment, ``s`` the MAD scale.

    >>> rng = np.random.default_rng(5)
    >>> e = np.zeros(20000)
    >>> for i in range(1, e.size):
    ...     e[i] = 0.5 * e[i - 1] + rng.normal()
    >>> round(residual_long_run_variance([e[:9000], e[9000:]]) / 4.0, 1)  # 1 / (1 - 0.5)^2
    1.0
    """
    gamma0, phi = residual_ar1(residuals, phi_max)
    return ar1_long_run_variance(gamma0, phi, phi_max)


class LinearTrendCost:
    """Residual sum of squares of a least-squares line per segment, over a noise variance.

    Built once per series from cumulative sums (times and values rescaled to [0, 1] so the
    sums stay accurate for 10^5 points); ``cost(starts, ends)`` is vectorised.

    >>> cost = LinearTrendCost(np.arange(6.0), np.array([0.0, 1, 2, 3, 2, 1]), 1.0)
    >>> [round(float(c), 6) for c in cost(np.array([0, 0, 3]), np.array([4, 6, 6]))]
    [0.0, 4.342857, 0.0]
    """

    def __init__(
        self,
        times: FloatArray,
        values: FloatArray,
        noise_variance: float,
        slope_penalty: float = 0.0,
        curve_penalty: float | None = None,
    ) -> None:
        self.slope_penalty = slope_penalty
        self.times = times
        self.values = values
        span_t = float(times[-1] - times[0]) or 1.0
        self.value_scale = float(np.ptp(values)) or 1.0
        t = (times - times[0]) / span_t
        x = (values - float(np.median(values))) / self.value_scale
        self.noise_variance = noise_variance
        self.unit_variance = noise_variance / self.value_scale**2
        self._t = t
        zero = np.zeros(1)
        self._s = [np.concatenate([zero, np.cumsum(v)]) for v in (t, t * t, x, t * x, x * x)]
        self.curve_penalty = curve_penalty
        if curve_penalty is not None:
            # the curve's power sums cancel heavily: extended precision, and a curve only where
            # its fit is well conditioned (``_QUAD_TOL``)
            tl, xl = t.astype(np.longdouble), x.astype(np.longdouble)
            zl = np.zeros(1, dtype=np.longdouble)
            self._q = [
                np.concatenate([zl, np.cumsum(v)])
                for v in (tl, tl**2, tl**3, tl**4, xl, tl * xl, tl**2 * xl)
            ]
            self._quad_tol = _QUAD_TOL * float(t.size)

    def rss(self, starts: IntArray, ends: IntArray) -> FloatArray:
        """Residual sum of squares of each segment, in units of ``value_scale**2``."""
        s_t, s_tt, s_x, s_tx, s_xx = (s[ends] - s[starts] for s in self._s)
        n = (ends - starts).astype(np.float64)
        c_tt = s_tt - s_t * s_t / n
        c_tx = s_tx - s_t * s_x / n
        c_xx = s_xx - s_x * s_x / n
        fit = np.where(c_tt > 1e-300, c_tx * c_tx / np.maximum(c_tt, 1e-300), 0.0)
        return np.asarray(np.maximum(c_xx - fit, 0.0), dtype=np.float64)

    def rss_flat(self, starts: IntArray, ends: IntArray) -> FloatArray:
        """Residual sum of squares around each segment's mean (no slope)."""
        s_x, s_xx = (self._s[k][ends] - self._s[k][starts] for k in (2, 4))
        n = (ends - starts).astype(np.float64)
        return np.asarray(np.maximum(s_xx - s_x * s_x / n, 0.0), dtype=np.float64)

    def rss_curve(self, starts: IntArray, ends: IntArray) -> FloatArray:
        """Residual sum of squares of a least-squares parabola per segment (``rss`` units);
        the line's where the parabola is too ill-conditioned to fit from the sums.

        >>> t = np.arange(8.0)
        >>> cost = LinearTrendCost(t, (t - 3.0) ** 2, 1.0, curve_penalty=1.0)
        >>> float(cost.rss_curve(np.array([0]), np.array([8]))[0]) < 1e-12
        True
        """
        line = self.rss(starts, ends)
        if self.curve_penalty is None:
            return line
        s1, s2, s3, s4, sx, stx, sttx = (q[ends] - q[starts] for q in self._q)
        n = (ends - starts).astype(np.longdouble)
        tc = s1 / n
        m2 = s2 - n * tc * tc
        m3 = s3 - 3 * tc * s2 + 2 * n * tc**3
        m4 = s4 - 4 * tc * s3 + 6 * tc * tc * s2 - 3 * n * tc**4
        ux = stx - tc * sx
        uux = sttx - 2 * tc * stx + tc * tc * sx
        ok = m2 > 0
        safe_m2 = np.where(ok, m2, 1)
        # u^2 less its projection on (1, u): the curve's own direction
        qq = m4 - m2 * m2 / n - np.where(ok, m3 * m3 / safe_m2, 0)
        qx = uux - m2 * sx / n - np.where(ok, m3 * ux / safe_m2, 0)
        good = ok & (qq > self._quad_tol) & (n >= 4)
        gain = np.where(good, qx * qx / np.where(good, qq, 1), 0).astype(np.float64)
        return np.asarray(np.maximum(line - gain, 0.0), dtype=np.float64)

    def __call__(self, starts: IntArray, ends: IntArray) -> FloatArray:
        # a segment's slope (and curvature) are parameters it pays for (BIC) only when used
        sloped = self.rss(starts, ends) / self.unit_variance + self.slope_penalty
        flat = self.rss_flat(starts, ends) / self.unit_variance
        return np.asarray(np.minimum(flat, sloped), dtype=np.float64)

    def curve_cost(self, starts: IntArray, ends: IntArray) -> FloatArray:
        """``__call__`` with a parabola as a third choice (its curvature pays ``curve_penalty``)."""
        best = self(starts, ends)
        if self.curve_penalty is None:
            return best
        curved = (
            self.rss_curve(starts, ends) / self.unit_variance
            + self.slope_penalty
            + self.curve_penalty
        )
        return np.asarray(np.minimum(best, curved), dtype=np.float64)

    def degree(self, start: int, end: int) -> int:
        """The polynomial degree (0, 1, 2) that ``__call__`` charges for ``[start, end)``."""
        a, b = np.array([start]), np.array([end])
        options = [
            float(self.rss_flat(a, b)[0]) / self.unit_variance,
            float(self.rss(a, b)[0]) / self.unit_variance + self.slope_penalty,
        ]
        if self.curve_penalty is not None:
            options.append(
                float(self.rss_curve(a, b)[0]) / self.unit_variance
                + self.slope_penalty
                + self.curve_penalty
            )
        return int(np.argmin(options))

    def hinge_rss(self, left: int, right: int, positions: IntArray) -> FloatArray:
        """RSS over ``[left, right)`` of one *continuous* line with a kink at each position.

        Least squares on ``1, t, (t - t[p])_+`` (same units as ``rss``, here 1/4^2): a change of slope
        without a jump, which pins a kink down where two free lines would not.

        >>> x = np.array([0.0, 1, 2, 3, 4, 3, 2, 1, 0])
        >>> cost = LinearTrendCost(np.arange(9.0), x, 1.0)
        >>> [round(float(v), 6) for v in cost.hinge_rss(0, 9, np.array([3, 4, 5]))]
        [0.138889, 0.0, 0.138889]
        """
        s_t, s_tt, s_x, s_tx, s_xx = (s[right] - s[left] for s in self._s)
        r_t, r_tt, r_x, r_tx = (s[right] - s[positions] for s in self._s[:4])
        n = float(right - left)
        n_r = (right - positions).astype(np.float64)
        t0 = float(self._t[left])
        tau = self._t[positions] - t0
        # shift times to the window's start: the normal equations stay well conditioned
        c_t, c_tt, c_tx = s_t - t0 * n, s_tt - 2 * t0 * s_t + t0 * t0 * n, s_tx - t0 * s_x
        q_t = r_t - t0 * n_r
        q_tt = r_tt - 2 * t0 * r_t + t0 * t0 * n_r
        q_tx = r_tx - t0 * r_x
        s_h = q_t - tau * n_r
        s_hh = q_tt - 2 * tau * q_t + tau * tau * n_r
        s_th = q_tt - tau * q_t
        s_hx = q_tx - tau * r_x
        m = positions.size
        a = np.empty((m, 3, 3))
        a[:, 0, 0], a[:, 0, 1], a[:, 0, 2] = n, c_t, s_h
        a[:, 1, 0], a[:, 1, 1], a[:, 1, 2] = c_t, c_tt, s_th
        a[:, 2, 0], a[:, 2, 1], a[:, 2, 2] = s_h, s_th, s_hh
        b = np.stack([np.full(m, s_x), np.full(m, c_tx), s_hx], axis=1)
        coef = np.linalg.solve(a, b[:, :, None])[:, :, 0]
        return np.asarray(np.maximum(s_xx - np.sum(coef * b, axis=1), 0.0), dtype=np.float64)

    def residuals(self, changes: list[int]) -> list[FloatArray]:
        """Each segment's residuals around its own least-squares line (original units)."""
        bounds = [0, *changes, int(self.values.size)]
        out = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            t, x = self.times[a:b], self.values[a:b]
            degree = min(self.degree(a, b), b - a - 1)
            if degree > 0:
                u = (t - t[0]) / (float(t[-1] - t[0]) or 1.0)
                fit = np.polyval(np.polyfit(u, x, degree), u)
                out.append(np.asarray(x - fit, dtype=np.float64))
            else:
                out.append(np.asarray(x - x.mean(), dtype=np.float64))
        return out


def relocate(
    cost: LinearTrendCost, changes: list[int], min_size: int, per_parameter: float
) -> list[int]:
    """Move each change to its best place near where the search put it, kink or jump.

    For each change, within ``3 * min_size`` points of its place and with its neighbours
    fixed, BIC in the parameters between the neighbours (``per_parameter`` each): two free
    segments (two levels, plus a slope each that uses one, as charged by ``cost``) against
    one continuous kink (level, slope, change of slope: three). The change goes where the
    better of the two puts it. Two passes.
    """
    out = list(changes)
    n = int(cost.values.size)
    for _ in range(2):
        for k in range(len(out)):
            left = out[k - 1] if k > 0 else 0
            right = out[k + 1] if k + 1 < len(out) else n
            lo = max(left + min_size, changes[k] - 3 * min_size)
            hi = min(right - min_size, changes[k] + 3 * min_size)
            pos = np.arange(lo, hi + 1, dtype=np.int64)
            if pos.size == 0:
                continue
            lefts, rights = np.full(pos.size, left), np.full(pos.size, right)
            free = cost(lefts, pos) + cost(pos, rights) + 2 * per_parameter
            hinge = cost.hinge_rss(left, right, pos) / cost.unit_variance + 3 * per_parameter
            i_free, i_hinge = int(np.argmin(free)), int(np.argmin(hinge))
            out[k] = int(pos[i_hinge] if hinge[i_hinge] <= free[i_free] else pos[i_free])
    return out


def drop_curvature(cost: LinearTrendCost, changes: list[int], penalty: float) -> list[int]:
    """Drop the changes that a smooth curve explains as well: evidence beyond curvature.

    A change (with its neighbours fixed) stays only if its two segments, plus the change's
    ``penalty``, cost less than one segment that may also bend (a parabola, charged one
    parameter more by ``cost.curve_penalty``). The two segments may also be one continuous
    kink (a slope and a change of slope, like ``relocate``): the same count of parameters
    as the parabola, plus the change's place. The change that loses most goes first, then
    the others are weighed again.
    """
    out = list(changes)
    n = int(cost.values.size)
    per_parameter = cost.slope_penalty
    while out:
        bounds = np.array([0, *out, n], dtype=np.int64)
        lefts, mids, rights = bounds[:-2], bounds[1:-1], bounds[2:]
        split = cost(lefts, mids) + cost(mids, rights) + penalty
        # or a continuous kink: a slope and its change, the change's place (penalty less
        # the new level it does not have)
        kink = np.array(
            [
                float(cost.hinge_rss(int(a), int(b), np.array([c]))[0]) / cost.unit_variance
                for a, c, b in zip(lefts, mids, rights, strict=True)
            ]
        )
        split = np.minimum(split, kink + per_parameter + penalty)
        gain = split - cost.curve_cost(lefts, rights)
        k = int(np.argmax(gain))
        if gain[k] < 0.0:
            break
        del out[k]
    return out


def smooth_beats(
    times: FloatArray,
    values: FloatArray,
    changes: list[int],
    noise_variance: float,
    penalty: float,
    slope_penalty: float,
) -> bool:
    """True when one parabola over the whole series explains it as well as ``changes``.

    The last model-selection step: the segmentation's cost (each segment a constant or a line,
    over the long-run noise variance, plus ``penalty`` per change and ``slope_penalty`` per
    slope) against one smooth curve and no change at all (a parabola: its slope and its
    curvature pay ``slope_penalty`` each, the same BIC count). Smooth acceleration or
    deceleration over the whole record (Mauna Loa CO2) is then no run of changes, while a
    turn, a jump or a bend inside the series, which no single parabola follows, keeps its
    changes. Only the whole series is weighed: a parabola over two neighbouring segments
    (``drop_curvature``) also swallows the smooth turns that people mark.

    >>> t = np.arange(200.0)
    >>> x = 1e-3 * t**2 + np.random.default_rng(1).normal(0.0, 1.0, 200)
    >>> smooth_beats(t, x, [70, 140], 1.0, 3 * math.log(200), math.log(200))
    True
    >>> smooth_beats(t, x + np.where(t >= 100, 10.0, 0.0), [100], 1.0, 3 * math.log(200),
    ...              math.log(200))
    False
    """
    if not changes:
        return False
    n = int(values.size)
    cost = LinearTrendCost(times, values, noise_variance, slope_penalty, slope_penalty)
    bounds = np.array([0, *changes, n], dtype=np.int64)
    segmented = float(np.sum(cost(bounds[:-1], bounds[1:]))) + penalty * len(changes)
    smooth = float(cost.curve_cost(np.array([0]), np.array([n]))[0])
    return smooth <= segmented


def _segment_innovations(
    cost: LinearTrendCost, changes: list[int], phi: float | None
) -> tuple[float, int, float]:
    """Sum of squared AR(1) innovations of a segmentation's residuals, their count, and the
    AR(1) coefficient used (the residuals' own lag-1 correlation, uncapped, when ``phi`` is
    None). Innovations ``r[t] - phi r[t-1]`` are taken within segments."""
    residuals = cost.residuals(changes)
    if phi is None:
        _, phi = residual_ar1(residuals, 0.999)
    total, count = 0.0, 0
    for r in residuals:
        if r.size >= 2:
            e = r[1:] - phi * r[:-1]
            total += float(np.dot(e, e))
            count += int(e.size)
    return total, count, phi


def innovation_bic(
    cost: LinearTrendCost, changes: list[int], penalty: float, slope_penalty: float,
    phi: float | None = None,
) -> float:
    """Gaussian BIC of a segmentation with AR(1) noise of free (uncapped) coefficient:
    ``m log(RSS_innov / m)`` plus ``penalty`` per change and ``slope_penalty`` per sloped
    segment (the search's count); the noise variance is profiled out, not fixed, so a
    persistent, random-walk-like noise is weighed as noise rather than as segments."""
    rss, m, _ = _segment_innovations(cost, changes, phi)
    bounds = [0, *changes, int(cost.values.size)]
    slopes = sum(cost.degree(a, b) > 0 for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    floor = (RESOLUTION * cost.value_scale) ** 2 * max(m, 1)
    return m * math.log(max(rss, floor) / max(m, 1)) + penalty * len(changes) + slope_penalty * slopes


def select_changes(
    cost: LinearTrendCost, changes: list[int], penalty: float, slope_penalty: float
) -> list[int]:
    """Backward elimination by ``innovation_bic``: drop, one at a time, the change whose
    removal lowers the BIC most, while one does (zero, one or several changes)."""
    out = list(changes)
    phi = _segment_innovations(cost, out, None)[2]
    current = innovation_bic(cost, out, penalty, slope_penalty, phi)
    while out:
        scores = [
            innovation_bic(cost, out[:k] + out[k + 1 :], penalty, slope_penalty, phi)
            for k in range(len(out))
        ]
        k = int(np.argmin(scores))
        if scores[k] >= current:
            break
        current = scores[k]
        del out[k]
    return out


def differenced_beats(
    times: FloatArray, y: FloatArray, changes: list[int], penalty: float, slope_penalty: float,
    min_size: int,
) -> list[int] | None:
    """A difference-stationary alternative: the series as a random walk whose drift
    changes (AR(1) increments, piecewise-constant mean: a change of drift is a change of
    trend in the levels). Both models are weighed by ``innovation_bic`` (free AR(1)
    coefficient, variance profiled out, the same charge per change). Returns the drift
    changes (as level indices) when the random walk wins, else None."""
    if y.size < 4 * min_size:
        return None
    level_cost = LinearTrendCost(times, y, 1.0, slope_penalty)
    level_bic = innovation_bic(level_cost, changes, penalty, slope_penalty)
    d = np.diff(y) / np.maximum(np.diff(times), 1e-12)
    td = times[1:]
    floor = (RESOLUTION * float(np.ptp(d) or 1.0)) ** 2
    gamma0, phi = residual_ar1([d - np.median(d)], phi_cap(min_size))
    variance = max(ar1_long_run_variance(gamma0, phi, phi_cap(min_size)), floor)
    seen: list[list[int]] = []
    drift: list[int] = []
    for _ in range(MAX_ROUNDS):
        # flat segments only: an infinite slope charge
        dcost = LinearTrendCost(td, d, variance, math.inf)
        drift = pelt(dcost, int(d.size), penalty, min_size, EXACT_LIMIT, 0.0)
        if drift in seen:
            break
        seen.append(drift)
        gamma0, phi = residual_ar1(dcost.residuals(drift), phi_cap(min_size))
        variance = max(ar1_long_run_variance(gamma0, phi, phi_cap(min_size)), floor)
    dcost = LinearTrendCost(td, d, 1.0, math.inf)
    rss, m, phi_d = _segment_innovations(dcost, drift, None)
    # adequacy: the random walk is an alternative only where the levels' noise is more
    # persistent than the levels model can take as noise (phi above the cap) and its own
    # increments are not (a smooth, integrated-twice series is neither model's noise)
    phi_l = _segment_innovations(level_cost, changes, None)[2]
    cap = phi_cap(min_size)
    if not (phi_l > cap and phi_d <= cap):
        return None
    scale = max(m, 1)
    diff_bic = m * math.log(max(rss, (RESOLUTION * level_cost.value_scale) ** 2 * scale) / scale)
    diff_bic += penalty * len(drift)
    # levels: first level and phi extra; random walk: first drift and phi: same count
    if diff_bic < level_bic:
        return [c + 1 for c in drift]
    return None


def default_trend_penalty(n: int, phi: float = 0.0, per_change: float = 3.0) -> float:
    """``(p + 2) log n_eff`` with p = 1 (the new level): ``per_change = 3`` (MBIC-style;
    ``2`` is plain BIC, the change's place and level); a segment's slope pays ``log n_eff``
    more. ``n_eff = n (1 - phi) / (1 + phi)`` for AR(1) noise of lag-1 correlation ``phi``
    (``effective_size``): ``n`` for independent noise.

    >>> round(default_trend_penalty(100), 2), round(default_trend_penalty(100, 2 / 3), 2)
    (13.82, 8.99)
    """
    return per_change * math.log(effective_size(max(n, 2), phi))


def trend_change_points(
    times: FloatArray,
    values: FloatArray,
    penalty: float | None = None,
    min_size: int = 5,
    exact_limit: int = EXACT_LIMIT,
    curves: bool = False,
    smooth_null: bool = True,
    effective_n: bool = False,
    penalty_scale: float = 1.0,
    noise_cap: bool = False,
    select: bool = False,
    differenced: bool = False,
    min_fraction: float = 0.0,
    per_change: float = 3.0,
    seasonal_repeat: bool = False,
) -> list[int]:
    """Positions (into ``values``) where a new straight-line segment starts.

    ``times`` are increasing and ``values`` finite (missing points already left out).
    Fewer than ``2 * min_size`` points, or a constant series: no change point.
    ``curves=True`` also drops each change that a parabola explains as well
    (``drop_curvature``): smooth growth is then no change, but neither is a smooth turn, which
    people do mark (it lowered F1 on the benchmark's real series); off by default.
    ``smooth_null`` (on by default): the segmentation found is finally weighed against one
    parabola over the whole series (``smooth_beats``); when the parabola costs no more,
    there is no change. ``effective_n=True`` (off by default): after the first round each
    parameter pays ``log n_eff`` instead of ``log n`` (``effective_size``, from the
    residuals' AR(1) correlation); it raised the development set's scores but lowered the
    fresh set's and raised false alarms on short autocorrelated noise (BENCHMARKS.md).

    Fourth-round options, all off by default (none helped out of sample, BENCHMARKS.md):
    ``noise_cap`` (a round's noise variance never above the first residual estimate),
    ``select`` (``select_changes``: backward elimination by ``innovation_bic``),
    ``differenced`` (``differenced_beats``: a random walk with drift changes as the
    alternative), ``min_fraction`` (shortest segment ``ceil(min_fraction * n)``),
    ``per_change`` (``log n`` charges per change: 3 MBIC-style, 2 plain BIC) and
    ``penalty_scale`` (every charge times it; the benchmark's per-series ceiling).
    Fifth-round option, off: ``seasonal_repeat`` (the looser seasonality test,
    ``detectors.seasonal_cycle.repeating_period``; no gain on the seen real sets).
    """
    # a shortest segment of a share of the series: noise correlated over fewer points is
    # noise (the AR(1) cap grows with it)
    min_size = max(min_size, math.ceil(min_fraction * values.size))
    if values.size < 2 * min_size or float(np.ptp(values)) == 0.0:
        return []
    clean = ~outlier_mask(values)
    keep = np.flatnonzero(clean)
    t, x = times[keep], values[keep]
    x, _ = remove_seasonal_cycle(t, x, seasonal_repeat)
    if x.size < 2 * min_size or float(np.ptp(x)) == 0.0:
        return []
    # log n per parameter; with effective_n, rounds after the first charge log n_eff, the
    # effective number of observations under the AR(1) noise of the last round's residuals
    pen = (
        penalty_scale * default_trend_penalty(int(x.size), per_change=per_change)
        if penalty is None else float(penalty)
    )
    slope_penalty = penalty_scale * math.log(x.size)
    slack = slope_penalty  # the largest slope charge: pruning stays exact
    floor = (RESOLUTION * float(np.ptp(x))) ** 2
    cap = phi_cap(min_size)
    variance = max(variogram_long_run_variance(x, cap), floor)
    seen: list[list[int]] = []
    changes: list[int] = []
    first_residual_variance = math.inf
    y = x  # pseudo-observations: the fit plus Huber-clipped residuals (a robust cost)
    for _ in range(MAX_ROUNDS):
        # drafts: a long series stays on the search's grid until the variance settles
        cost = LinearTrendCost(t, y, variance, slope_penalty)
        changes = pelt(cost, int(x.size), pen, min_size, exact_limit, slack, False)
        if changes in seen:
            break
        seen.append(changes)
        residuals = cost.residuals(changes)
        gamma0, phi = residual_ar1(residuals, cap)
        variance = max(ar1_long_run_variance(gamma0, phi, cap), floor)
        if noise_cap:
            # a later round with fewer changes carries their misfit: never let it grow
            first_residual_variance = min(first_residual_variance, variance)
            variance = first_residual_variance
        # the correlation that shrinks n_eff must stand out from its sampling noise (its
        # standard error is about 1 / sqrt(n) on independent noise): two standard errors
        phi_eff = phi if effective_n and phi > 2.0 / math.sqrt(x.size) else 0.0
        slope_penalty = penalty_scale * math.log(effective_size(int(x.size), phi_eff))
        if penalty is None:
            pen = penalty_scale * default_trend_penalty(int(x.size), phi_eff, per_change)
        if math.isfinite(HUBER_K):
            fit = y - np.concatenate(residuals)
            r = x - fit
            bound = HUBER_K * max(mad_scale(r), math.sqrt(floor))
            y = fit + np.clip(r, -bound, bound)
    cost = LinearTrendCost(t, y, variance, slope_penalty, slope_penalty if curves else None)
    if x.size > exact_limit:
        changes = pelt(cost, int(x.size), pen, min_size, exact_limit, slack)
    changes = relocate(cost, changes, min_size, slope_penalty)
    if curves:
        changes = drop_curvature(cost, changes, pen)
    if smooth_null and smooth_beats(t, y, changes, variance, pen, slope_penalty):
        changes = []
    if select and changes:
        changes = select_changes(cost, changes, pen, slope_penalty)
    if differenced:
        drift = differenced_beats(t, y, changes, pen, slope_penalty, min_size)
        if drift is not None:
            changes = drift
    return [int(keep[c]) for c in changes]


# the three BIC-like penalties the consensus default weighs, as (``per_change``,
# ``effective_n``): MBIC-style (3 log n per change, the reference placement), plain BIC
# (2 log n) and MBIC in effective observations (3 log n_eff)
CONSENSUS_SETTINGS: tuple[tuple[float, bool], ...] = ((3.0, False), (2.0, False), (3.0, True))
CONSENSUS_MARGIN = 5


def majority_changes(
    runs: list[list[int]], need: int = 2, margin: int = CONSENSUS_MARGIN, min_size: int = 1
) -> list[int]:
    """Changes that at least ``need`` of the ``runs`` agree on, within ``margin`` points.

    The changes of all runs, in order, are grouped greedily: a group holds the changes
    within ``margin`` points of its first one. A group that ``need`` different runs take
    part in is one change, placed where the first run puts it when that run is among them
    (the reference placement), else at the median of the group (rounded down). A change closer
    than ``min_size`` to the one before it is dropped.

    >>> majority_changes([[20, 50], [22, 80], [49, 81]])
    [20, 50, 80]
    >>> majority_changes([[20], [30], [40]])
    []
    """
    points = sorted((c, run) for run, changes in enumerate(runs) for c in changes)
    groups: list[list[tuple[int, int]]] = []
    for c, run in points:
        if groups and c - groups[-1][0][0] <= margin:
            groups[-1].append((c, run))
        else:
            groups.append([(c, run)])
    out: list[int] = []
    for group in groups:
        if len({run for _, run in group}) < need:
            continue
        first = [c for c, run in group if run == 0]
        place = first[0] if first else int(np.median([c for c, _ in group]))
        if out and place - out[-1] < min_size:
            continue
        out.append(int(place))
    return out


def consensus_change_points(
    times: FloatArray,
    values: FloatArray,
    min_size: int = 5,
    margin: int = CONSENSUS_MARGIN,
    penalty_scale: float = 1.0,
) -> list[int]:
    """The default of ``gapwatch detect``: the changes that at least two of three BIC-like
    penalties agree on (``CONSENSUS_SETTINGS``: ``3 log n``, ``2 log n`` and ``3 log n_eff``
    per change, each a full ``trend_change_points`` run), within ``margin`` points, placed
    where the ``3 log n`` run puts them (``majority_changes``). ``penalty_scale`` multiplies
    every run's charges (the benchmark's per-series ceiling).

    No one of the three is best across series: ``3 log n`` misses the turns people mark
    on short smooth transitions, ``2 log n`` splits correlated noise, ``log n_eff`` cuts
    random-walk-like prices. A change two of them find is rarely a failure of both
    (BENCHMARKS.md, fifth round).

    >>> t = np.arange(200.0)
    >>> x = np.where(t < 100, 0.0, 3.0) + np.random.default_rng(1).normal(0, 1, 200)
    >>> consensus_change_points(t, x)
    [100]
    """
    runs: list[list[int]] = []
    for per_change, effective_n in CONSENSUS_SETTINGS:
        if len(runs) == 2 and not runs[0] and not runs[1]:
            return []  # two runs found nothing: no change can have two votes
        runs.append(trend_change_points(
            times, values, min_size=min_size, per_change=per_change, effective_n=effective_n,
            penalty_scale=penalty_scale,
        ))
    return majority_changes(runs, 2, margin, min_size)

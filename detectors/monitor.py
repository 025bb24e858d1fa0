"""From closed windows to gap alerts: detectors per segment, incidents, verdicts, causes.

Pure: the worker (per partials partition) and `gapwatch backtest` feed the same windows in
the same order and get the same alerts. One `GroupMonitor` serves many groups
(`platform|event_name`); each group tracks its segments at the platform, platform x browser
and platform x region levels with these signals (all but the first two at the platform level only):

* ``count_ratio``       platform conversions / backend conversions
* ``value_ratio``       platform value / backend value (as compound counts of the mean order)
* ``duplicate_rate``    conversions counted twice (duplicate triggers, broken dedupe) / platform conversions
* ``click_id_coverage`` platform conversions with a click id / platform conversions
* ``unmatched_rate``    platform conversions with no backend order / platform conversions
* ``channel_ratio:<ch>`` one delivery channel's events / backend conversions (platform level)

An incident is one cause: signals of one family and direction in a group, and the same on
other platforms or conversions (same browser / region, change within 12 h), which join it
(`Alert.affected`). It fires once, names the narrowest segment that explains the change
(localisation), and resolves when that segment's detector reports the level went back. The backend series of each event name has its own seasonal detector:
a backend move with a steady ratio is a business change, not a tracking gap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detectors.alert import (
    Alert,
    Cause,
    ChildChange,
    Evidence,
    Localisation,
    NearbyChange,
    ReconciliationRow,
    Segment,
    Verdict,
)
from detectors.changepoint import ChangePoint, rate_interval, step_start
from detectors.pooled import PooledSegments, agreement
from detectors.pooled import change_time as pooled_change_time
from detectors.ratio import RatioDetector, RatioDetectorConfig
from detectors.seasonal import BackendDetector, BackendDetectorConfig
from detectors.windows import ClosedWindow

__all__ = ["MonitorConfig", "GroupMonitor", "rank_changes", "METRICS"]

METRICS = ("count_ratio", "value_ratio", "duplicate_rate", "click_id_coverage", "unmatched_rate")
TRACKED_LEVELS = ("platform", "platform_browser", "platform_region")
HISTORY = 96  # windows of per-segment history kept for localisation and reconciliation

# history row layout: numbers, then (from state version 2 of the row) the platform events per
# channel as a {channel: count} object; rows written before it have 13 numbers
(H_START, H_B, H_P, H_BV, H_PV, H_DUP, H_MISS_VALUE, H_MISS_CLICK, H_DENIED_B, H_BROKEN,
 H_PAIR, H_IMPORT, H_EVENTS, H_MATCHED, H_CHANNELS) = range(15)
H_NUMBERS = H_CHANNELS  # the summed columns are 1 .. H_NUMBERS - 1
#: a later platform's or conversion's alarm joins an open incident of the same signal family,
#: direction and browser / region when their change times are this close
JOIN_S = 12 * 3600.0


@dataclass(frozen=True)
class MonitorConfig:
    window_s: int = 300
    false_alarms_per_30_days: float = 1.0
    change_lookback_s: float = 30 * 86_400.0
    #: nearby changes: from this long before the estimated change time ...
    nearby_before_s: float = 7 * 86_400.0
    #: ... to this long after it (clocks and change estimates are not exact)
    nearby_after_s: float = 3_600.0
    #: a child segment explains the parent's change when it carries this share of it
    localise_share: float = 0.6
    #: a child "moved" when its post-change ratio differs by this much and its interval excludes the baseline
    moved_min_change: float = 0.1
    #: data before the backend detector judges: it must learn the daily profile first (the
    #: weekly profile keeps learning after); shorter than the detector's own default so a
    #: new deployment gives business-reality verdicts after two days
    backend_warmup_s: float = 2 * 86_400.0

    #: smallest relative move worth an alert, per signal: a ratio of conversions matters at
    #: 5 %, a duplicate rate only when it doubles, click-id coverage when it loses 40 %
    min_relative_change: tuple[tuple[str, float], ...] = (
        ("count_ratio", 0.0), ("value_ratio", 0.1), ("duplicate_rate", 1.0), ("click_id_coverage", 0.4),
        ("unmatched_rate", 1.0), ("channel_ratio", 0.5),
    )
    #: the backend's own day-to-day swings reach 20-25 %: a business change is a bigger move
    backend_min_relative_change: float = 0.3
    #: `false_alarms_per_30_days` is per alert unit (platform x event name); the unit's
    #: detectors (5 signals and up to 2 delivery channels at the platform level, 2 on each of
    #: ~15 browser / region children) share it equally, so the user's rate is the rate of
    #: alerts they receive
    detectors_per_group: int = 37
    #: a child is named only when its share of the change is this many times its share of traffic
    localise_concentration: float = 1.5
    #: order values are spread out: a window's value is compound Poisson, whose variance is
    #: count x E[v^2]; in units of E[v^2]/E[v] = mean x (1 + cv^2) it behaves like a count.
    #: cv ~ 1 is typical of order values
    value_cv: float = 1.0
    #: a re-fire of one incident (same group, signal family, segment) this soon after it
    #: resolved is the same incident: an ack carries over, Slack threads it (docs/alerts.md)
    refire_cooldown_s: float = 6 * 3600.0
    #: a planned change (change event with `expected`) explains moves from 1 h before its
    #: `at` (clocks are not exact) to this long after it
    plan_window_s: float = 2 * 86_400.0
    #: a move matches the plan when |observed - expected| <= max(0.1, this x |expected|)
    plan_tolerance: float = 0.5
    #: pooled evidence across platforms (detectors/pooled.py): per event name, a ratio
    #: detector on every platform's browser-tag events summed, for the event name, each
    #: browser and each region; budgeted like one platform's detectors (`detectors_per_group`)
    pooled: bool = True
    #: a platform is named in a pooled incident when its own windows since the pooled change
    #: time carry this much evidence (nats, quasi-likelihood) in its direction: a one-sided
    #: test at ~2 %; a pooled alarm opens an incident when at least two platforms agree
    pooled_agree_nats: float = 2.0

    def detector_config(self, metric: str = "count_ratio") -> RatioDetectorConfig:
        if metric.startswith(CHANNEL_METRIC):
            metric = "channel_ratio"
        return RatioDetectorConfig(
            window_seconds=float(self.window_s),
            false_alarms_per_segment_per_30_days=self.false_alarms_per_30_days / self.detectors_per_group,
            min_relative_change=dict(self.min_relative_change).get(metric, 0.0),
            # ~0 in a healthy shop: a thin baseline of them is an upper bound (RatioDetectorConfig)
            rare_events=metric in RARE_METRICS,
        )


#: signals that count something rare in a healthy shop (duplicate triggers, conversions with
#: no order behind them): their detectors judge inflations against an upper bound of a thin baseline
RARE_METRICS = ("duplicate_rate", "unmatched_rate")
#: a cause whose evidence is a change event of these kinds: that change is named first
CAUSE_CHANGE_KINDS: dict[str, tuple[str, ...]] = {"attribution_change": ("attribution_setting",)}
#: rates whose denominator is the platform's conversions: when the conversions themselves move
#: (a wrong trigger's extra ones), these fall with no cause of their own
RATES_PER_CONVERSION = ("duplicate_rate", "unmatched_rate")
_PRIORITY = ("duplicate_rate", "click_id_coverage", "count_ratio", "unmatched_rate", "value_ratio", "channel_ratio")
#: delivery paths watched one by one at the platform level (`channel_ratio:<channel>`: that
#: channel's events per backend conversion): a path that stops is found before the platform's
#: count, which the other path still partly carries, moves enough. A closed set: labels stay bounded
WATCHED_CHANNELS = ("pixel", "capi", "server", "import")
CHANNEL_METRIC = "channel_ratio:"
#: state items of the pooled segments (detectors/pooled.py): `g:*pooled*|<event_name>`
POOLED_GROUP = "*pooled*|"


def _priority(metric: str) -> int:
    return _PRIORITY.index("channel_ratio" if metric.startswith(CHANNEL_METRIC) else metric)


def _family(metric: str, direction: str) -> str:
    """Signals that move together for one root cause form one incident."""
    if metric in ("count_ratio", "value_ratio", "duplicate_rate", "unmatched_rate") or metric.startswith(CHANNEL_METRIC):
        return f"conversions|{direction}"
    return f"{metric}|{direction}"


def _alert_id(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:20]


def _signal(metric: str, row: Sequence[float], unit: float) -> tuple[float, float]:
    """(exposure, count) of one window for a metric."""
    if metric == "count_ratio":
        return row[H_B], row[H_P]
    if metric == "value_ratio":
        if unit <= 0:
            return 0.0, 0.0
        return row[H_BV] / unit, row[H_PV] / unit
    if metric == "duplicate_rate":
        # every conversion the platform counts twice for one order: the same event_id again on
        # one channel (a duplicate trigger) or one order under two event_ids (a broken pixel /
        # server dedupe). Both are ~0 in a healthy shop, so a rare-event test finds either in a
        # window or two, where the count ratio needs 4-6 at 4,000 orders a day (docs/detection.md,
        # "Detection speed")
        return row[H_P], row[H_DUP] + row[H_BROKEN]
    if metric == "click_id_coverage":
        return row[H_P], row[H_P] - row[H_MISS_CLICK]
    if metric == "unmatched_rate":
        return row[H_P], _unmatched(row)
    if metric.startswith(CHANNEL_METRIC):
        if len(row) <= H_CHANNELS:
            return 0.0, 0.0  # sums of rows keep no channels
        channels: Any = row[H_CHANNELS]
        return row[H_B], float(channels.get(metric[len(CHANNEL_METRIC):], 0))
    raise ValueError(metric)


def _unmatched(row: Sequence[float]) -> float:
    """Platform conversions with no backend order behind them (duplicates are not new orders)."""
    if len(row) <= H_MATCHED:
        return 0.0
    return max(0.0, row[H_P] - row[H_MATCHED] - row[H_DUP])


def _row(w: ClosedWindow) -> list[Any]:
    return [
        w.window_start, w.backend_count, w.platform_count, round(w.backend_value, 4),
        round(w.platform_value, 4), w.platform_duplicates, w.platform_missing_value,
        w.platform_missing_click_ids, w.backend_consent_denied, w.platform_broken_dedupe,
        w.platform_pair_deduped, w.platform_channels.get("import", 0), w.platform_events,
        w.platform_matched_orders, dict(w.platform_channels),
    ]


#: signals tracked below the platform level; the rates of rare things (duplicates, missing
#: click ids) are judged per platform only, where their volume makes them meaningful
CHILD_METRICS = ("count_ratio", "value_ratio")


class _Segment:
    """Detectors and recent history of one segment."""

    def __init__(self, key: str, config: MonitorConfig, state: Mapping[str, Any] | None = None) -> None:
        self.key = key
        self.value_cv = config.value_cv
        self.config = config
        if state is None:
            parent = key.endswith("|*|*")
            self.detectors = {m: RatioDetector(config.detector_config(m), metric=m)
                              for m in (METRICS if parent else CHILD_METRICS)}
            self.history: list[list[Any]] = []
            self.unit = 0.0  # exponentially weighted mean backend value per conversion
        else:
            self.detectors = {m: RatioDetector.from_dict(d) for m, d in state["det"].items()}
            self.history = [list(r) for r in state["hist"]]
            self.unit = float(state["unit"])

    def to_dict(self) -> dict[str, Any]:
        return {"det": {m: d.to_dict() for m, d in self.detectors.items()}, "hist": self.history, "unit": self.unit}

    def update(self, w: ClosedWindow) -> list[ChangePoint]:
        row = _row(w)
        self.history.append(row)
        if len(self.history) > HISTORY:
            del self.history[0]
        if w.backend_count > 0 and w.backend_value > 0:
            mean = w.backend_value / w.backend_count * (1.0 + self.value_cv ** 2)
            self.unit = mean if self.unit <= 0 else 0.98 * self.unit + 0.02 * mean
        if self.key.endswith("|*|*"):
            for ch in w.platform_channels:
                name = CHANNEL_METRIC + ch
                if ch in WATCHED_CHANNELS and name not in self.detectors:
                    self.detectors[name] = RatioDetector(self.config.detector_config(name), metric=name)
        out = []
        for metric, det in self.detectors.items():
            exposure, count = _signal(metric, row, self.unit)
            cp = det.update(exposure, max(0.0, min(count, exposure * 50)), at=float(w.window_start))
            if cp is not None:
                out.append(cp)
        return out

    def since(self, start: float) -> list[float]:
        """Sums of the history rows from window `start` on."""
        return self._sum(lambda t: t >= start)

    def before(self, start: float) -> list[float]:
        return self._sum(lambda t: t < start)

    def _sum(self, take: Any) -> list[float]:
        total = [0.0] * H_NUMBERS
        for r in self.history:
            if take(r[H_START]):
                for i in range(1, min(len(r), H_NUMBERS)):
                    total[i] += r[i]
        return total

    def channels(self, start: float) -> tuple[dict[str, float], dict[str, float], float, float]:
        """(platform events per channel before `start`, since `start`, backend before, since)."""
        before: dict[str, float] = {}
        after: dict[str, float] = {}
        b_before = b_after = 0.0
        for r in self.history:
            if len(r) <= H_CHANNELS:
                continue  # a row from before the channels were kept
            side = after if r[H_START] >= start else before
            if r[H_START] >= start:
                b_after += r[H_B]
            else:
                b_before += r[H_B]
            for ch, n in r[H_CHANNELS].items():
                side[ch] = side.get(ch, 0.0) + n
        return before, after, b_before, b_after


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def _r(x: float, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def _at(t: float | None) -> float:
    if t is None:  # the monitor passes `at=` to every detector update
        raise ValueError("a change point without its window time")
    return t


#: the change time is searched from this long before the alarming run's start
REFINE_S = 6 * 3600.0


def _change_time(seg: _Segment, cp: ChangePoint) -> float:
    """The window where the change most likely began: the arg-max over the windows from
    `REFINE_S` before the alarming run's start to the alarm of the likelihood ratio of "the
    ratio is the run's reference before k and one new level from k on" (Poisson; the
    overdispersion scales it, the arg-max stays). The run's own start is where its CUSUM last
    left zero: a stray event hours before a jump (one duplicate at 0.3 %) starts it early, and
    a run that restarted starts it late.
    """
    start = _at(cp.change_at)
    r0 = cp.ratio_before
    if not (math.isfinite(r0) and r0 > 0.0) or cp.detected_at is None:
        return start
    rows = [r for r in seg.history if start - REFINE_S <= r[H_START] <= cp.detected_at]
    points = ((r[H_START], *_signal(cp.metric, r, seg.unit)) for r in reversed(rows))
    return step_start(points, r0, cp.direction == "inflation", start)


def _duration(seconds: float) -> str:
    """`40 s`, `12 min`, `3.0 h`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _evidence(cp: ChangePoint) -> Evidence:
    return Evidence(_r(cp.statistic, 3), _r(cp.threshold, 3), cp.p_value if math.isfinite(cp.p_value) else None)


def rank_changes(
    changes: Iterable[Mapping[str, Any]], change_at: float, segment: Segment,
    before_s: float, after_s: float, resolution_s: float = 0.0, prefer_kinds: Sequence[str] = (),
) -> list[NearbyChange]:
    """Change events near `change_at`, best first: close in time (before beats after) and in scope.

    `change_at` is known to a window (`resolution_s`): a change inside that window counts as at it.
    Changes of a kind in `prefer_kinds` (the kind the first cause names: an attribution change
    is that cause's own evidence) count twice: at low volume the change time is known to hours.

    >>> seg = Segment("meta", "purchase", "safari", "*")
    >>> ranked = rank_changes([
    ...     {"change_id": "a", "kind": "deploy", "at": 1000.0 - 1200, "scope": {"platform": "meta"}},
    ...     {"change_id": "b", "kind": "crm_change", "at": 1000.0 - 3 * 86400, "scope": {}},
    ...     {"change_id": "c", "kind": "deploy", "at": 1000.0 + 7200, "scope": {}},
    ... ], 1000.0, seg, 7 * 86400, 3600)
    >>> [c.change_id for c in ranked]
    ['a', 'b']
    """
    out = []
    have_dims = segment.to_dict()
    for ch in changes:
        at = float(ch["at"])
        dt = at - change_at
        if dt < -before_s or dt > after_s:
            continue
        if dt <= resolution_s:
            proximity = math.exp(min(dt, 0.0) / (6 * 3600.0))  # decays over hours before
        else:
            proximity = 0.5 * math.exp(-(dt - resolution_s) / 900.0)  # after: rarely its cause
        scope = ch.get("scope") or {}
        fit = 2.0 if ch.get("kind") in prefer_kinds else 1.0
        for dim in ("platform", "browser", "region", "event_name"):
            want = scope.get(dim)
            if want:
                have = have_dims.get(dim, "*")
                if have == want:
                    fit *= 1.5
                elif have != "*":
                    fit *= 0.2
                elif dim == "platform":
                    fit *= 0.2
        out.append(NearbyChange(
            change_id=ch["change_id"], kind=ch["kind"], summary=ch.get("summary", ""),
            service=ch.get("service", ""), author=ch.get("author", ""), url=ch.get("url", ""),
            at=at, distance_s=round(dt, 1), score=round(proximity * fit, 4),
        ))
    out.sort(key=lambda c: (-c.score, abs(c.distance_s), c.change_id))
    return out[:5]


class GroupMonitor:
    """Detection state of every group owned by one partials partition."""

    def __init__(self, config: MonitorConfig | None = None) -> None:
        self.config = config or MonitorConfig()
        self.segments: dict[str, dict[str, _Segment]] = {}  # group -> segment key -> state
        self.incidents: dict[str, dict[str, dict[str, Any]]] = {}  # group -> incident key -> alert
        self.backend: dict[str, BackendDetector] = {}  # event_name -> seasonal backend detector
        self.backend_incidents: dict[str, dict[str, Any]] = {}
        self.last_window: dict[str, int] = {}  # group -> newest window start applied
        #: group -> incident_key -> when an acknowledged incident resolved (re-fires stay acked)
        self.acked: dict[str, dict[str, float]] = {}
        #: group -> signal family -> [window end, action] of an incident a person closed
        #: ("expected" / "false") or a plan explained: the change's other signals and segments
        #: that alarm later (their change began before) get the same treatment, silently
        self.settled: dict[str, dict[str, list[Any]]] = {}
        self._dirty: set[str] = set()
        self._gauges: dict[str, ClosedWindow] = {}  # segment -> newest window, for export_metrics
        #: group -> channel -> the delay jump seen (`_delay_signal`): [p95 before, after, at,
        #: alert document of its own incident or None]
        self.delay_jumps: dict[str, dict[str, list[Any]]] = {}
        #: group -> [incident key, firing alert document, resolved at] of its last drop that
        #: resolved: delayed events arriving later may show it was their delay (`_delay_signal`)
        self.delay_resolved: dict[str, list[Any]] = {}
        #: per event name, every platform's conversions summed (detectors/pooled.py)
        self.pooled = PooledSegments(self.config.detector_config("count_ratio"), self.config.window_s)

    # ---- persistence ----------------------------------------------------------------------
    def take_changes(self, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for group in self._dirty:
            if group.startswith("*backend*|"):
                event_name = group.split("|", 1)[1]
                out[f"{prefix}g:{group}"] = {
                    "det": self.backend[event_name].to_dict(),
                    "incident": self.backend_incidents.get(event_name),
                    "last": self.last_window.get(group, -1),
                }
            else:
                out[f"{prefix}g:{group}"] = {
                    "segments": {k: s.to_dict() for k, s in self.segments[group].items()},
                    "incidents": self.incidents.get(group, {}),
                    "last": self.last_window.get(group, -1),
                    "acked": self.acked.get(group, {}),
                    "settled": self.settled.get(group, {}),
                    "delay_jumps": self.delay_jumps.get(group, {}),
                    "delay_resolved": self.delay_resolved.get(group),
                }
        self._dirty = set()
        for event_name, state in self.pooled.take_changes().items():
            out[f"{prefix}g:{POOLED_GROUP}{event_name}"] = state
        return out

    def restore(self, items: Mapping[str, Any], prefix: str) -> None:
        for key, value in items.items():
            if not key.startswith(f"{prefix}g:") or value is None:
                continue
            group = key[len(prefix) + 2:]
            if group.startswith(POOLED_GROUP):
                self.pooled.restore(group[len(POOLED_GROUP):], value)
                continue
            self.last_window[group] = int(value.get("last", -1))
            if group.startswith("*backend*|"):
                event_name = group.split("|", 1)[1]
                self.backend[event_name] = BackendDetector.from_dict(value["det"])
                if value.get("incident"):
                    self.backend_incidents[event_name] = value["incident"]
            else:
                self.segments[group] = {k: _Segment(k, self.config, s) for k, s in value["segments"].items()}
                self.incidents[group] = dict(value["incidents"])
                if value.get("acked"):
                    self.acked[group] = dict(value["acked"])
                if value.get("settled"):
                    self.settled[group] = dict(value["settled"])
                if value.get("delay_jumps"):
                    self.delay_jumps[group] = {ch: list(v) for ch, v in value["delay_jumps"].items()}
                if value.get("delay_resolved"):
                    self.delay_resolved[group] = list(value["delay_resolved"])

    # ---- the per-window step --------------------------------------------------------------
    def on_windows(self, windows: Sequence[ClosedWindow], changes: Iterable[Mapping[str, Any]] = (),
                   feedback: Iterable[Mapping[str, Any]] = ()) -> list[Alert]:
        """Feed every segment window of one closed window; returns alerts to emit.

        `feedback`: what people said about alerts (`{alert_id, action, at, note}`, action ack /
        expected / false); each applies at the first closed window whose end is >= its `at`.
        """
        if not windows:
            return []
        window_end = windows[0].window_end
        # only changes published by the end of this window: live and backtest agree
        changes = [c for c in changes if float(c["at"]) <= window_end]
        # people's feedback first: it applies at this window, before its data
        alerts = self._apply_feedback([f for f in feedback if float(f["at"]) <= window_end], windows)
        by_group: dict[str, list[ClosedWindow]] = {}
        backend_windows: dict[str, ClosedWindow] = {}
        for w in windows:
            if w.level == "backend":
                backend_windows[w.event_name] = w
            else:
                by_group.setdefault(f"{w.platform}|{w.event_name}", []).append(w)
        backend_moves: dict[str, ChangePoint | None] = {}
        start = windows[0].window_start
        for w in backend_windows.values():
            backend_moves[w.event_name] = self._update_backend(w, changes, alerts, emit=True)
        for group in sorted(by_group):
            # idempotent: a window re-closed after a crash does not update a group twice
            if self.last_window.get(group, -1) >= start:
                continue
            self.last_window[group] = start
            parent = next((w for w in by_group[group] if w.level == "platform"), None)
            if parent is not None and parent.event_name not in backend_moves:
                backend_moves[parent.event_name] = self._update_backend(parent, changes, alerts, emit=False)
            open_before = {k: inc["alert"] for k, inc in self.incidents.get(group, {}).items() if "alert" in inc}
            group_alerts = self._update_group(group, by_group[group], changes, backend_moves)
            self._remember_resolved(group, open_before, group_alerts)
            alerts.extend(group_alerts)
            alerts.extend(self._delay_signal(group, by_group[group], changes))
        if self.config.pooled:
            alerts.extend(self._pooled_step(windows, changes, backend_moves))
        # an incident joined in the step that opened it is sent once, naming every segment
        last = {a.alert_id: a for a in alerts if a.status == "firing"}
        out: list[Alert] = []
        sent: set[str] = set()
        for a in alerts:
            if a.status == "firing":
                if a.alert_id in sent:
                    continue
                sent.add(a.alert_id)
                a = last[a.alert_id]
            out.append(a)
        return out

    def _update_backend(self, parent: ClosedWindow, changes: list[Mapping[str, Any]], alerts: list[Alert],
                        emit: bool) -> ChangePoint | None:
        event_name = parent.event_name
        if self.last_window.get(f"*backend*|{event_name}", -1) >= parent.window_start:
            return None
        self.last_window[f"*backend*|{event_name}"] = parent.window_start
        det = self.backend.get(event_name)
        if det is None:
            det = self.backend[event_name] = BackendDetector(BackendDetectorConfig(
                window_seconds=float(self.config.window_s),
                false_alarms_per_segment_per_30_days=self.config.false_alarms_per_30_days,
                profile_warmup_s=self.config.backend_warmup_s,
                min_relative_change=self.config.backend_min_relative_change,
            ))
        cp = det.update(float(parent.window_start), float(parent.backend_count))
        self._dirty.add(f"*backend*|{event_name}")
        if cp is None or not emit:
            return cp
        # The business-change alert is emitted by whoever owns the first group of this event
        # name in this monitor; it names platform "*" (the backend is shared).
        seg = Segment("*", event_name, "*", "*")
        open_inc = self.backend_incidents.get(event_name)
        change_at, detected_at = _at(cp.change_at), _at(cp.detected_at)
        if cp.resolves and open_inc is not None:
            resolved = Alert.from_dict(open_inc).resolved(current=_r(cp.ratio_after, 3), detected_at=detected_at)
            self.backend_incidents.pop(event_name, None)
            if not open_inc.get("declared"):  # a declared promotion's move was never posted
                alerts.append(resolved)
            return cp
        declared = self._declared(change_at, event_name, changes)
        alert = Alert(
            alert_id=_alert_id("backend", event_name, cp.direction, cp.change_at),
            status="firing", segment=seg, metric="backend_count", direction=cp.direction,
            baseline=_r(cp.ratio_before, 3), current=_r(cp.ratio_after, 3),
            baseline_interval=(_r(cp.ratio_before_low, 3), _r(cp.ratio_before_high, 3)),
            current_interval=(_r(cp.ratio_after_low, 3), _r(cp.ratio_after_high, 3)),
            change_at=change_at, detected_at=detected_at,
            verdict="business_change",
            likely_causes=(Cause(
                "business_change", 1.0,
                f"backend {event_name} per window moved {cp.relative_change:+.0%} against its daily/weekly profile; "
                "platform/backend ratios held, so the platforms still see the same reality",
            ),),
            nearby_changes=tuple(rank_changes(changes, change_at, seg, self.config.nearby_before_s, self.config.nearby_after_s, float(self.config.window_s))),
            localisation=Localisation(moved=(), steady=()),
            reconciliation=(),
            evidence=_evidence(cp),
        )
        # state is JSON: the open incident is kept as the alert document
        self.backend_incidents[event_name] = alert.to_dict()
        if declared is not None:
            # a declared promotion / holiday: tracked (it resolves quietly), never a business alert
            self.backend_incidents[event_name]["declared"] = declared
            return cp
        alerts.append(alert)
        return cp

    def _update_group(self, group: str, windows: list[ClosedWindow], changes: list[Mapping[str, Any]],
                      backend_moves: Mapping[str, ChangePoint | None]) -> list[Alert]:
        segs = self.segments.setdefault(group, {})
        incidents = self.incidents.setdefault(group, {})
        self._dirty.add(group)
        fired: list[tuple[_Segment, ClosedWindow, ChangePoint]] = []
        for w in windows:
            if w.level not in TRACKED_LEVELS:
                continue
            seg = segs.get(w.segment_key)
            if seg is None:
                seg = segs[w.segment_key] = _Segment(w.segment_key, self.config)
            for cp in seg.update(w):
                fired.append((seg, w, cp))
            self._gauges[w.segment_key] = w
        alerts: list[Alert] = []
        # resolutions first: the segment an incident named reports the level came back
        for seg, _w, cp in fired:
            if not cp.resolves:
                continue
            for key, inc in list(incidents.items()):
                if inc["segment_key"] == seg.key and inc["metric"] == cp.metric:
                    if "joined" in inc:
                        del incidents[key]
                        continue  # a member of another group's incident: that one resolves it
                    child = self._still_moved(segs, seg.key, cp, inc["alert"]["direction"])
                    if child is not None:
                        # the platform's level came back while a child still carries the change
                        # (a region's values, at an hour it has no orders): the incident goes
                        # on there, and its alert names the child too
                        inc["segment_key"] = child
                        alert = Alert.from_dict(inc["alert"])
                        affected = alert.affected or (alert.segment.key,)
                        if child not in affected:
                            alert = dataclasses.replace(alert, affected=(*affected, child))
                            inc["alert"] = alert.to_dict()
                            alerts.append(alert)  # the same alert_id: an update
                        continue
                    resolved = Alert.from_dict(inc["alert"]).resolved(current=_r(cp.ratio_after, 4),
                                                                      detected_at=_at(cp.detected_at))
                    self._close_incident(group, key, resolved.detected_at)
                    self._release_members(group, key)
                    alerts.append(resolved)
        # a move back toward the level before a segment's own open change, not past it, is
        # that change settling (a partial return, or noise on a level still moved): never a
        # new cause (a resolve, which goes most of the way back, is handled above)
        new = [(seg, w, cp) for seg, w, cp in fired if not cp.resolves and self._channel_known(seg, cp)
               and not seg.detectors[cp.metric].settling]
        by_incident: dict[str, list[tuple[_Segment, ClosedWindow, ChangePoint]]] = {}
        for item in new:
            by_incident.setdefault(_family(item[2].metric, item[2].direction), []).append(item)
        # click-id coverage falling while the conversions themselves moved is a symptom inside
        # that incident (a wrong trigger's extra conversions carry no click id), not a second one
        # the same for the other rates per platform conversion falling: a wrong trigger's extra
        # conversions dilute the duplicate rate, a new level of conversions is their denominator
        if any(k.startswith("conversions|") for k in (*incidents, *by_incident)):
            by_incident.pop("click_id_coverage|drop", None)
        conversions_moved = any(k.startswith("conversions|") for k in incidents) or any(
            it[2].metric not in RATES_PER_CONVERSION
            for k, its in by_incident.items() if k.startswith("conversions|") for it in its)
        if conversions_moved and "conversions|drop" in by_incident:
            rest = [it for it in by_incident["conversions|drop"] if it[2].metric not in RATES_PER_CONVERSION]
            if rest:
                by_incident["conversions|drop"] = rest
            else:
                del by_incident["conversions|drop"]
        # a move back on a signal whose opposite incident is still open belongs to that
        # incident (the level is settling), not to a new cause
        open_on = {inc["metric"] for inc in incidents.values()}
        for key in list(by_incident):
            by_incident[key] = [it for it in by_incident[key] if it[2].metric not in open_on]
            if not by_incident[key]:
                del by_incident[key]
        for key, items in sorted(by_incident.items()):
            if key in incidents:
                continue  # one alert per incident: children join the open one as localisation
            closed = self.settled.get(group, {}).get(key)
            if closed is not None and min(cp.change_at or 0.0 for _, _, cp in items) < closed[0]:
                # another signal of the change a person already judged: same verdict, no alert
                self._rebaseline(group, key, closed[1])
                continue
            # the most specific signal names the alert: duplicates over counts over values
            items.sort(key=lambda it: (_priority(it[2].metric), it[0].key))
            alert, named = self._make_alert(group, segs, items, changes, backend_moves)
            alert = dataclasses.replace(alert, incident_key=_alert_id(group, key, named))
            alert, as_planned = self._against_plans(alert, key, changes)
            if as_planned:  # a notice: the planned level is the new normal
                self._rebaseline(group, key, "expected")
                # the change's other signals (and segments) that alarm later join it silently
                self.settled.setdefault(group, {})[key] = [float(windows[0].window_end), "expected"]
                alerts.append(alert)
                continue
            acked_at = self.acked.get(group, {}).get(alert.incident_key)
            if acked_at is not None and alert.detected_at - acked_at <= self.config.refire_cooldown_s:
                alert = dataclasses.replace(alert, acknowledged=True)  # a re-fire of an acked incident
            owner = self._incident_to_join(group, key, named, alert)
            if owner is not None:
                # another platform (or conversion) already has this cause open: join it
                o_group, o_key = owner
                o_inc = self.incidents[o_group][o_key]
                o_alert = Alert.from_dict(o_inc["alert"])
                affected = o_alert.affected or (o_inc["segment_key"],)
                if named not in affected:
                    o_alert = dataclasses.replace(o_alert, affected=(*affected, named))
                    o_inc["alert"] = o_alert.to_dict()
                    self._dirty.add(o_group)
                    alerts.append(o_alert)  # the same alert_id, now naming every affected segment
                incidents[key] = {"segment_key": named, "metric": alert.metric, "joined": [o_group, o_key],
                                  "change_at": alert.change_at}
                continue
            # state is JSON: the open incident is kept as the alert document
            incidents[key] = {"segment_key": named, "metric": alert.metric, "alert": alert.to_dict()}
            alerts.append(alert)
        return alerts

    # ---- delayed channels (docs/detection.md, "Delayed and batch channels") ---------------
    #: a channel's delay jumped when the 95th percentile of its last hours is this many times
    #: the one over the days before, and at least `DELAY_JUMP_MIN_S` longer
    DELAY_JUMP_FACTOR = 4.0
    DELAY_JUMP_MIN_S = 1800.0
    #: ... with at least this many (decayed) events of the last hours behind it
    DELAY_JUMP_MIN_WEIGHT = 5.0
    #: a delay incident stays open this long after the jump (the group's drops join it)
    DELAY_INCIDENT_S = 2 * 86_400.0

    def _delay_signal(self, group: str, windows: list[ClosedWindow], changes: list[Mapping[str, Any]]) -> list[Alert]:
        """A jump in a channel's reporting delay is its own signal, `delayed_events`.

        The window assembler learns each channel's delay (`ClosedWindow.delay_p95` at the
        platform level: p95 over the days before, p95 of the last hours). A jump is seen when
        the delayed events arrive. An open incident of the group (the channel's events stopped
        arriving on time: a drop) is then re-sent with `delayed_events` first, naming the delay
        before and after. Without one, the jump opens its own incident (metric
        `delay_p95:<channel>`, direction drop: the conversions reach their windows late), which
        the group's drops join while it is open: until the learned delay has had
        `DELAY_INCIDENT_S` to catch up (a nightly batch shows its full delay only at its second
        run) or the delay is back."""
        parent = next((w for w in windows if w.level == "platform"), None)
        if parent is None or not parent.delay_p95:
            return []
        jumps = self.delay_jumps.setdefault(group, {})
        incidents = self.incidents.setdefault(group, {})
        alerts: list[Alert] = []
        at = float(parent.window_end)
        for ch, (before, recent, weight) in sorted(parent.delay_p95.items()):
            seen = jumps.get(ch)
            if seen is not None:
                if recent < 2.0 * float(seen[0]) or at - float(seen[2]) > self.DELAY_INCIDENT_S:
                    del jumps[ch]  # back, or learned: the windows wait for it now
                    self._dirty.add(group)
                    key = seen[3]
                    if key is not None and key in incidents and "alert" in incidents[key]:
                        doc = incidents[key]["alert"]
                        self._close_incident(group, key, at)
                        alerts.append(Alert.from_dict(doc).resolved(current=round(recent, 1), detected_at=at))
                continue
            if not (recent >= self.DELAY_JUMP_FACTOR * before and recent - before >= self.DELAY_JUMP_MIN_S
                    and weight >= self.DELAY_JUMP_MIN_WEIGHT):
                continue
            cause = Cause("delayed_events", 1.0,
                          f"{parent.platform} {ch} events arrive later: p95 delay {_duration(before)} -> "
                          f"{_duration(recent)} ({parent.late_events} arrived after their window was judged); "
                          f"not lost: the windows of {group} wait for the learned delay")
            self._dirty.add(group)
            updated = self._lead_with_cause(group, cause)
            if updated is not None:
                jumps[ch] = [before, recent, at, None]
                alerts.append(updated)
                continue
            memo = self.delay_resolved.pop(group, None)
            if memo is not None and float(memo[1]["change_at"]) >= at - recent - 2 * self.config.window_s:
                # a drop that began within the delayed span and resolved when the first
                # delayed events came back in time: it was the delay. The same incident fires
                # again with the cause, and stays open while the learned delay catches up
                key, doc = memo[0], memo[1]
                alert = Alert.from_dict(doc)
                alert = dataclasses.replace(alert, likely_causes=(cause, *(c for c in alert.likely_causes
                                                                           if c.cause != cause.cause)))
                incidents[key] = {"segment_key": alert.segment.key, "metric": alert.metric, "alert": alert.to_dict()}
                jumps[ch] = [before, recent, at, key]
                alerts.append(alert)
                continue
            seg = Segment(parent.platform, parent.event_name, "*", "*")
            change_at = max(0.0, at - recent)
            key = "conversions|drop"
            alert = Alert(
                alert_id=_alert_id(group, "delay", ch, parent.window_start), status="firing", segment=seg,
                metric=f"delay_p95:{ch}", direction="drop", baseline=round(before, 1), current=round(recent, 1),
                baseline_interval=(None, None), change_at=change_at, detected_at=at, verdict="tracking_gap",
                likely_causes=(cause,),
                nearby_changes=tuple(rank_changes(changes, change_at, seg, self.config.nearby_before_s,
                                                  max(self.config.nearby_after_s, recent), float(self.config.window_s))),
                localisation=Localisation(moved=(), steady=(), alarming=(seg.key,)), reconciliation=(),
                evidence=Evidence(round(recent / max(before, 1.0), 3), self.DELAY_JUMP_FACTOR, None),
                incident_key=_alert_id(group, key, seg.key),
            )
            incidents[key] = {"segment_key": seg.key, "metric": alert.metric, "alert": alert.to_dict()}
            jumps[ch] = [before, recent, at, key]
            alerts.append(alert)
        return alerts

    def _remember_resolved(self, group: str, open_before: Mapping[str, Any], alerts: list[Alert]) -> None:
        """Keep the last drop of the group that resolved in this step (see `delay_resolved`)."""
        resolved = {a.alert_id: a for a in alerts if a.status == "resolved"}
        for key, doc in open_before.items():
            if doc["alert_id"] in resolved and doc["direction"] == "drop" and key not in self.incidents.get(group, {}):
                self.delay_resolved[group] = [key, doc, resolved[doc["alert_id"]].detected_at]
                self._dirty.add(group)
        memo = self.delay_resolved.get(group)
        if memo is not None and alerts and max(a.detected_at for a in alerts) - float(memo[2]) > self.DELAY_INCIDENT_S:
            del self.delay_resolved[group]

    def _lead_with_cause(self, group: str, cause: Cause) -> Alert | None:
        """Re-send the group's open incident (or the one it joined) with `cause` first."""
        for inc in self.incidents.get(group, {}).values():
            owner = inc
            if "joined" in inc:
                o_group, o_key = inc["joined"]
                owner = self.incidents.get(o_group, {}).get(o_key, {})
                self._dirty.add(o_group)
            if "alert" not in owner:
                continue
            alert = Alert.from_dict(owner["alert"])
            others = tuple(c for c in alert.likely_causes if c.cause != cause.cause)
            alert = dataclasses.replace(alert, likely_causes=(cause, *others))
            owner["alert"] = alert.to_dict()
            return alert
        return None

    # ---- people and plans (docs/oncall.md) ------------------------------------------------
    def _close_incident(self, group: str, key: str, at: float) -> None:
        inc = self.incidents[group].pop(key)
        acked = self.acked.get(group, {})
        # forget acks whose cooldown has passed; remember this one's
        for k, t in list(acked.items()):
            if at - t > self.config.refire_cooldown_s:
                del acked[k]
        closed = self.settled.get(group, {})
        for k, (t, _action) in list(closed.items()):
            if at - t > self.config.plan_window_s:
                del closed[k]
        doc = inc["alert"]
        if doc.get("acknowledged") and doc.get("incident_key"):
            self.acked.setdefault(group, {})[doc["incident_key"]] = at
        self._dirty.add(group)

    def _rebaseline(self, group: str, key: str, action: str) -> None:
        """Apply "expected" (accept the new level) or "false" (keep the old one) to every
        detector of the group in alarm in the incident's signal family."""
        for seg in self.segments.get(group, {}).values():
            for metric, det in seg.detectors.items():
                if det.in_alarm and det.alarm_direction is not None and _family(metric, det.alarm_direction) == key:
                    if action == "expected":
                        det.accept_level()
                    else:
                        det.reject_alarm()
        self._dirty.add(group)

    def _apply_feedback(self, feedback: list[Mapping[str, Any]], windows: Sequence[ClosedWindow]) -> list[Alert]:
        """Apply ack / expected / false to the open incidents they name (idempotent: an
        incident already acked, or closed, is not touched again)."""
        if not feedback:
            return []
        wanted = {str(f["alert_id"]): f for f in feedback}
        at = float(windows[0].window_end)
        out: list[Alert] = []
        for group, incs in sorted(self.incidents.items()):
            for key, inc in sorted(incs.items()):
                if "joined" in inc:
                    continue  # a member of another group's incident: feedback names the owner's alert
                fb = wanted.get(inc["alert"]["alert_id"])
                if fb is None:
                    continue
                action, note = str(fb["action"]), str(fb.get("note") or "")
                alert = Alert.from_dict(inc["alert"])
                if action == "ack":
                    if alert.acknowledged:
                        continue
                    alert = dataclasses.replace(alert, acknowledged=True, note=note or alert.note)
                    inc["alert"] = alert.to_dict()
                    self._dirty.add(group)
                    out.append(alert)  # same alert_id and status: an update, never a new post
                    continue
                if action not in ("expected", "false"):
                    continue
                seg = self.segments.get(group, {}).get(inc["segment_key"])
                det = seg.detectors.get(inc["metric"]) if seg is not None else None
                self._rebaseline(group, key, action)
                if inc.get("pooled"):  # the pooled detector that opened it takes the verdict too
                    pooled_key = str(inc["pooled"])
                    if action == "expected":
                        self.pooled.accept_level(pooled_key)
                    else:
                        self.pooled.reject_alarm(pooled_key)
                self.settled.setdefault(group, {})[key] = [at, action]
                level = det.baseline_ratio if det is not None else math.nan
                resolved = dataclasses.replace(
                    alert.resolved(current=_r(level) if action == "expected" else alert.baseline, detected_at=at),
                    resolution="expected" if action == "expected" else "false_alarm", note=note)
                self._close_incident(group, key, at)
                for o_group, incs_o in self.incidents.items():  # the platforms that joined it too
                    for o_key, o_inc in incs_o.items():
                        if o_inc.get("joined") == [group, key]:
                            self._rebaseline(o_group, o_key, action)
                self._release_members(group, key)
                out.append(resolved)
        for event_name, doc in sorted(self.backend_incidents.items()):
            fb = wanted.get(doc["alert_id"])
            if fb is None:
                continue
            action, note = str(fb["action"]), str(fb.get("note") or "")
            alert = Alert.from_dict(doc)
            if action == "ack" and not alert.acknowledged:
                alert = dataclasses.replace(alert, acknowledged=True, note=note)
                self.backend_incidents[event_name] = {**doc, **alert.to_dict()}
                out.append(alert)
            elif action in ("expected", "false"):
                self.backend_incidents.pop(event_name)
                out.append(dataclasses.replace(alert.resolved(current=alert.current, detected_at=at),
                                               resolution="expected" if action == "expected" else "false_alarm",
                                               note=note))
            else:
                continue
            self._dirty.add(f"*backend*|{event_name}")
        return out

    def _against_plans(self, alert: Alert, family: str, changes: list[Mapping[str, Any]]) -> tuple[Alert, bool]:
        """Compare a new incident with the planned changes (change events with `expected`).

        The nearest plan whose scope and signal family fit and whose time window holds the
        change decides: the move matches (a notice: verdict ``expected_change``) or it does not
        (still a gap, and the alert names the plan: "expected -25 %, observed -70 %").
        """
        cfg = self.config
        seg = alert.segment.to_dict()
        best: tuple[float, Mapping[str, Any]] | None = None
        for ch in changes:
            plan = ch.get("expected")
            if not plan:
                continue
            dt = alert.change_at - float(ch["at"])
            if not (-3600.0 <= dt <= cfg.plan_window_s):
                continue
            if _family(str(plan["metric"]), alert.direction).split("|")[0] != family.split("|")[0]:
                continue
            if any(seg.get(dim, "*") not in (want, "*") for dim, want in (plan.get("scope") or {}).items()):
                continue
            if best is None or abs(dt) < best[0]:
                best = (abs(dt), ch)
        if best is None or alert.baseline is None or alert.current is None or not alert.baseline:
            return alert, False
        ch = best[1]
        plan = ch["expected"]
        expected = float(plan["size"])
        observed = alert.current / alert.baseline - 1.0
        text = (f"expected {expected * 100:+.0f} %, observed {observed * 100:+.0f} % "
                f"(planned change {ch['change_id']}{': ' + ch['summary'] if ch.get('summary') else ''})")
        matches = (plan["direction"] == alert.direction
                   and abs(observed - expected) <= max(0.1, cfg.plan_tolerance * abs(expected)))
        if matches:
            return dataclasses.replace(alert, verdict="expected_change", plan=text), True
        cause = Cause("planned_change_mismatch", 0.95,
                      f"a planned change was expected here but the move does not match it: {text}")
        return dataclasses.replace(alert, plan=text, likely_causes=(cause, *alert.likely_causes)), False

    def _declared(self, change_at: float, event_name: str, changes: list[Mapping[str, Any]]) -> str | None:
        """The declared promotion / holiday (change event with `until`) running at `change_at`."""
        for ch in changes:
            until = ch.get("until")
            if until is None or ch.get("kind") not in ("promotion", "holiday"):
                continue
            want = (ch.get("scope") or {}).get("event_name")
            if want and want != event_name:
                continue
            if float(ch["at"]) - 3600.0 <= change_at <= float(until) + 3600.0:
                return str(ch["change_id"])
        return None

    #: a delivery channel is said to stop only when it carried this many events before
    CHANNEL_MIN_EVENTS = 30

    def _channel_known(self, seg: _Segment, cp: ChangePoint) -> bool:
        """A channel alarm counts once the history holds enough of the channel to say it
        changed (a thin channel's first days alarmed falsely at 400 orders a day, tiktok leads)."""
        if not cp.metric.startswith(CHANNEL_METRIC):
            return True
        before, _, _, _ = seg.channels(cp.change_at if cp.change_at is not None else _at(cp.detected_at))
        return before.get(cp.metric[len(CHANNEL_METRIC):], 0.0) >= self.CHANNEL_MIN_EVENTS

    def _incident_to_join(self, group: str, key: str, named: str, alert: Alert) -> tuple[str, str] | None:
        """The open incident of another group with the same signal family and direction, on the
        same browser and region, changed within `JOIN_S` of this one: one cause, one incident."""
        if alert.verdict != "tracking_gap":
            return None
        dims = named.split("|")[2:]
        best: tuple[float, str, str] | None = None
        for o_group, incs in self.incidents.items():
            if o_group == group:
                continue
            inc = incs.get(key)
            if inc is None or "joined" in inc or inc["alert"]["verdict"] != "tracking_gap":
                continue
            if inc["segment_key"].split("|")[2:] != dims:
                continue
            dt = abs(float(inc["alert"]["change_at"]) - alert.change_at)
            if dt <= JOIN_S and (best is None or dt < best[0]):
                best = (dt, o_group, key)
        return None if best is None else (best[1], best[2])

    def _still_moved(self, segs: Mapping[str, _Segment], key: str, cp: ChangePoint, direction: str) -> str | None:
        """The child of platform segment `key` whose open change (in `direction`, on `cp`'s
        signal) still holds, significantly, over the windows since the parent's level came
        back: the child with the largest deficit, else None."""
        if not key.endswith("|*|*"):
            return None
        prefix = key[: -len("*|*")]
        # the windows since the parent's level came back (never those before: a fix seen by
        # the parent first must not read as a child still broken), at least one
        since = _at(cp.change_at if cp.change_at is not None else cp.detected_at)
        sign = 1.0 if direction == "drop" else -1.0
        best: tuple[float, str] | None = None
        for k, child in segs.items():
            if k == key or not k.startswith(prefix) or cp.metric not in child.detectors:
                continue
            det = child.detectors[cp.metric]
            if det.incident_direction != direction:
                continue
            ref = det.reference_ratio
            e, c = _signal(cp.metric, child.since(since), child.unit)
            if not (math.isfinite(ref) and ref > 0.0) or e <= 0.0:
                continue
            now = c / e
            low, high = rate_interval(c, e)
            if sign * (1.0 - now / ref) < self.config.moved_min_change or low <= ref <= high:
                continue
            deficit = sign * (ref - now) * e
            if best is None or deficit > best[0]:
                best = (deficit, k)
        return None if best is None else best[1]

    def _release_members(self, group: str, key: str) -> None:
        """An incident resolved: the segments that joined it from other groups are free again."""
        for o_group, incs in self.incidents.items():
            for o_key, inc in list(incs.items()):
                if inc.get("joined") == [group, key]:
                    del incs[o_key]
                    self._dirty.add(o_group)

    # ---- pooled evidence across platforms (detectors/pooled.py) ---------------------------
    def _pooled_step(self, windows: Sequence[ClosedWindow], changes: list[Mapping[str, Any]],
                     backend_moves: Mapping[str, ChangePoint | None]) -> list[Alert]:
        """Feed the pooled segments; a pooled alarm opens (or joins) one incident naming every
        platform whose own windows agree, a pooled resolution closes the incident it opened."""
        alerts: list[Alert] = []
        for event_name, pseg, start, cp in self.pooled.update(windows):
            if cp is None:
                cp = pseg.waiting
                if cp is None:
                    continue
                if not pseg.detector.in_alarm or start - _at(cp.change_at) > JOIN_S:
                    pseg.waiting = None  # withdrawn, or the platforms never agreed
                    continue
                # the platforms' own evidence grows with every window: ask them again
                cp = dataclasses.replace(cp, detected_at=float(start))
            elif cp.resolves:
                pseg.waiting = None
                alerts.extend(self._pooled_resolve(pseg.key, cp))
                continue
            else:
                cp = dataclasses.replace(cp, change_at=pooled_change_time(pseg.history, cp))
            alert, done = self._pooled_alarm(event_name, pseg.key, _at(cp.change_at), cp, changes, backend_moves)
            pseg.waiting = None if done else cp
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _agreeing(self, event_name: str, dims: Sequence[str], change_at: float,
                  direction: str) -> list[tuple[float, str, float]]:
        """(evidence in nats, group, relative change) of every pooled platform whose own
        windows since `change_at`, on the pooled segment's browser / region, agree with a
        pooled change in `direction` (`detectors.pooled.agreement`), strongest first."""
        out = []
        for platform in self.pooled.members_of(event_name):
            group = f"{platform}|{event_name}"
            seg = self.segments.get(group, {}).get(f"{group}|{dims[0]}|{dims[1]}")
            if seg is None:
                continue
            det = seg.detectors["count_ratio"]
            # the level before the change: the open incident's reference, else the baseline
            # (3 days of memory: the few windows since the change hardly move it)
            ref = det.reference_ratio if det.in_alarm else det.baseline_ratio
            rows = [r for r in seg.history if r[H_START] >= change_at]
            exposure = sum(r[H_B] for r in rows)
            count = sum(r[H_P] for r in rows)
            nats = agreement(count, exposure, ref, direction, det.dispersion, len(rows))
            if nats >= self.config.pooled_agree_nats:
                out.append((nats, group, count / exposure / ref - 1.0))
        return sorted(out, reverse=True)

    def _pooled_alarm(self, event_name: str, pooled_key: str, change_at: float, cp: ChangePoint,
                      changes: list[Mapping[str, Any]],
                      backend_moves: Mapping[str, ChangePoint | None]) -> tuple[Alert | None, bool]:
        """(the alert to send, if any; whether the alarm is dealt with: False while fewer than
        two platforms agree, so it is asked again at the next pooled window)."""
        key = _family("count_ratio", cp.direction)
        dims = pooled_key.split("|")[2:]
        agree = self._agreeing(event_name, dims, change_at, cp.direction)
        if len(agree) < 2:
            # one platform (or none): a break of that platform alone, which its own detector
            # sees undiluted, or chance in the sum
            return None, False
        free: list[tuple[float, str, float]] = []
        owner: tuple[str, str] | None = None
        for item in agree:
            inc = self.incidents.get(item[1], {}).get(key)
            if inc is None:
                free.append(item)
                continue
            o_group, o_key = inc["joined"] if "joined" in inc else (item[1], key)
            o_inc = self.incidents.get(o_group, {}).get(o_key)
            if owner is not None or o_inc is None or "alert" not in o_inc:
                continue
            o_dims = o_inc["segment_key"].split("|")[2:]
            if (o_inc["alert"]["verdict"] == "tracking_gap" and (o_dims == dims or dims == ["*", "*"])
                    and abs(float(o_inc["alert"]["change_at"]) - change_at) <= JOIN_S):
                owner = (o_group, o_key)
        if owner is None:
            # the same cause already open on another event name (one consent change moves
            # purchases and leads): the platforms join it, as their own alarms would
            owner = self._open_incident_like(key, dims, change_at)
        if owner is not None:
            return (self._pooled_join(owner, key, free) if free else None), True
        if len(free) < 2:
            return None, True
        lead = free[0][1]
        segs = self.segments[lead]
        seg = segs[f"{lead}|{dims[0]}|{dims[1]}"]
        closed = self.settled.get(lead, {}).get(key)
        if closed is not None and change_at < float(closed[0]):
            return None, True  # a change a person already judged on the leading platform
        det = seg.detectors["count_ratio"]
        ref = det.reference_ratio if det.in_alarm else det.baseline_ratio
        low, high = det.baseline_interval
        after = seg.since(change_at)
        e_a, c_a = _signal("count_ratio", after, seg.unit)
        after_low, after_high = rate_interval(c_a, e_a)
        # the leading platform's own view of the pooled change: its levels, the pool's evidence
        own = ChangePoint("count_ratio", cp.direction, cp.detected_index, cp.change_index, ref, low, high,
                          c_a / e_a, after_low, after_high, cp.statistic, cp.threshold, cp.p_value,
                          change_at=change_at, detected_at=cp.detected_at)
        alert, named = self._make_alert(lead, segs, [(seg, None, own)], changes, backend_moves, change_at=change_at)
        alert = dataclasses.replace(alert, incident_key=_alert_id(lead, key, named))
        alert, as_planned = self._against_plans(alert, key, changes)
        if as_planned:
            return None, True  # a planned move: the platforms' own detectors give its notice
        acked_at = self.acked.get(lead, {}).get(alert.incident_key)
        if acked_at is not None and alert.detected_at - acked_at <= self.config.refire_cooldown_s:
            alert = dataclasses.replace(alert, acknowledged=True)
        named_dims = named.split("|")[2:]
        members = [("|".join([group, *named_dims]), group) for _, group, _ in free[1:]]
        together = ", ".join(f"{g.split('|')[0]} {rel:+.0%}" for _, g, rel in free)
        top, *rest = alert.likely_causes
        top = Cause(top.cause, top.score, f"{top.evidence}; every platform at once ({together}): "
                    f"their browser-tag events summed, per backend conversion, {cp.relative_change:+.0%}")
        alarming = tuple(sorted({*(alert.localisation.alarming or ()), pooled_key}))
        alert = dataclasses.replace(alert, likely_causes=(top, *rest), affected=(named, *(m for m, _ in members)),
                                    localisation=dataclasses.replace(alert.localisation, alarming=alarming))
        self.incidents.setdefault(lead, {})[key] = {"segment_key": named, "metric": "count_ratio",
                                                    "alert": alert.to_dict(), "pooled": pooled_key}
        self._dirty.add(lead)
        for member, group in members:
            self.incidents.setdefault(group, {})[key] = {"segment_key": member, "metric": "count_ratio",
                                                         "joined": [lead, key], "change_at": change_at}
            self._dirty.add(group)
        return alert, True

    def _open_incident_like(self, key: str, dims: Sequence[str], change_at: float) -> tuple[str, str] | None:
        """The open tracking-gap incident of signal family `key` on browser / region `dims`,
        changed within `JOIN_S` of `change_at` (the nearest), of any group."""
        best: tuple[float, str] | None = None
        for group, incs in self.incidents.items():
            inc = incs.get(key)
            if inc is None or "alert" not in inc or inc["alert"]["verdict"] != "tracking_gap":
                continue
            if inc["segment_key"].split("|")[2:] != list(dims):
                continue
            dt = abs(float(inc["alert"]["change_at"]) - change_at)
            if dt <= JOIN_S and (best is None or dt < best[0]):
                best = (dt, group)
        return None if best is None else (best[1], key)

    def _pooled_join(self, owner: tuple[str, str], key: str, free: list[tuple[float, str, float]]) -> Alert:
        """Platforms whose own windows agree with a pooled change join the incident already open
        for it (on another platform) now, before their own detectors alarm."""
        o_group, o_key = owner
        o_inc = self.incidents[o_group][o_key]
        alert = Alert.from_dict(o_inc["alert"])
        affected = list(alert.affected or (o_inc["segment_key"],))
        o_dims = o_inc["segment_key"].split("|")[2:]
        for _, group, _ in free:
            member = "|".join([group, *o_dims])
            self.incidents.setdefault(group, {})[key] = {"segment_key": member, "metric": "count_ratio",
                                                         "joined": [o_group, o_key], "change_at": alert.change_at}
            self._dirty.add(group)
            if member not in affected:
                affected.append(member)
        alert = dataclasses.replace(alert, affected=tuple(affected))
        o_inc["alert"] = alert.to_dict()
        self._dirty.add(o_group)
        return alert  # the same alert_id: an update naming every affected segment

    def _pooled_resolve(self, pooled_key: str, cp: ChangePoint) -> list[Alert]:
        """The pooled level came back (or its alarm was withdrawn): the incident it opened
        resolves, unless the named platform's own detector now carries it (that one resolves it)."""
        out = []
        for group, incs in list(self.incidents.items()):
            for key, inc in list(incs.items()):
                if inc.get("pooled") != pooled_key or "alert" not in inc:
                    continue
                seg = self.segments.get(group, {}).get(inc["segment_key"])
                det = seg.detectors.get(inc["metric"]) if seg is not None else None
                if det is not None and det.incident_direction == inc["alert"]["direction"]:
                    del inc["pooled"]
                    self._dirty.add(group)
                    continue
                current = math.nan
                if seg is not None:
                    e, c = _signal(inc["metric"], seg.since(_at(cp.change_at)), seg.unit)
                    current = _ratio(c, e)
                resolved = Alert.from_dict(inc["alert"]).resolved(current=_r(current, 4), detected_at=_at(cp.detected_at))
                self._close_incident(group, key, resolved.detected_at)
                self._release_members(group, key)
                out.append(resolved)
        return out

    # ---- alert content --------------------------------------------------------------------
    def _make_alert(self, group: str, segs: dict[str, _Segment],
                    items: Sequence[tuple[_Segment, ClosedWindow | None, ChangePoint]],
                    changes: list[Mapping[str, Any]], backend_moves: Mapping[str, ChangePoint | None],
                    change_at: float | None = None) -> tuple[Alert, str]:
        """The alert of a new incident and the segment it names. `change_at`: known already
        (a pooled alarm's, estimated on the sum of the platforms), else from the signals."""
        cfg = self.config
        metric, direction = items[0][2].metric, items[0][2].direction
        # the latest run start among the signals that fired: each run starts at or before the
        # break, and one that drifted up before it (hours earlier, on a slow drift) would put
        # the change, and with it the nearby changes, too early. A re-opened alarm carries no
        # change time: its detection time stands in
        if change_at is None:
            starts = [_change_time(seg, cp) for seg, _, cp in items if cp.change_at is not None]
            change_at = max(starts) if starts else _at(items[0][2].detected_at)
        # what came before a person's verdict on this family (false alarm, expected) was
        # judged: a new alarm starts after it, and is a new alert (a new id), never the judged
        # one again (its feedback would close it again, silently, for ever)
        judged = self.settled.get(group, {}).get(_family(metric, direction))
        if judged is not None and change_at < float(judged[0]):
            change_at = float(judged[0])
        platform, event_name = group.split("|", 1)
        parent_key = f"{platform}|{event_name}|*|*"
        parent = segs.get(parent_key)
        # Localisation: which children moved, and which one carries the parent's change.
        moved: list[ChildChange] = []
        steady: list[ChildChange] = []
        deficits: dict[str, float] = {}
        for key, seg in sorted(segs.items()):
            if key == parent_key:
                continue
            before, after = seg.before(change_at), seg.since(change_at)
            if metric not in seg.detectors:
                continue
            e_b, c_b = _signal(metric, before, seg.unit)
            e_a, c_a = _signal(metric, after, seg.unit)
            base = seg.detectors[metric].reference_ratio
            if not math.isfinite(base):
                base = _ratio(c_b, e_b)
            now = _ratio(c_a, e_a)
            if not (math.isfinite(base) and math.isfinite(now)) or e_a <= 0:
                continue
            low, high = rate_interval(c_a, e_a)
            rel = now / base - 1 if base > 0 else 0.0
            entry = ChildChange(Segment.from_key(key), round(base, 4), round(now, 4), round(rel, 3), int(e_a))
            # expected minus seen, in conversions, for every child: a share of the change is
            # judged against all of its siblings, not only those that moved significantly
            deficits[key] = (base - now) * e_a
            if abs(rel) >= cfg.moved_min_change and not (low <= base <= high):
                moved.append(entry)
            else:
                steady.append(entry)
        moved_keys = {c.segment.key for c in moved}
        sign = 1.0 if direction == "drop" else -1.0
        # A child explains the change when it carries most of it and far more than its share
        # of the traffic (its siblings held); otherwise the change belongs to the parent.
        exposure = {}
        for key, seg in segs.items():
            if key != parent_key and metric in seg.detectors:
                exposure[key] = _signal(metric, seg.since(change_at), seg.unit)[0]
        best_share, best_key, best_rank = 0.0, None, (0.0, 0.0)
        for dim_index in (2, 3):  # browser children have region "*", and the other way round
            keys = [k for k in exposure if k.split("|")[5 - dim_index] == "*"]
            # the change of a dimension: its children's deficits in the alert's direction
            dim_change = sum(max(0.0, sign * deficits.get(k, 0.0)) for k in keys)
            dim_exposure = sum(exposure[k] for k in keys)
            for k in keys:
                if k not in moved_keys:
                    continue
                share = _share(max(0.0, sign * deficits[k]), dim_change)
                traffic = _share(exposure[k], dim_exposure)
                # ties (a region's drop carries all of the browser dimension's moved deficit too)
                # go to the child whose share most exceeds its share of the traffic
                rank = (share, share / traffic if traffic > 0 else math.inf)
                if share >= cfg.localise_share and share >= cfg.localise_concentration * traffic and rank > best_rank:
                    best_share, best_key, best_rank = share, k, rank
        named = parent_key
        alarming = [seg.key for seg, _, _ in items]
        if best_key is not None:
            named = best_key
        elif parent_key not in alarming:
            named = alarming[0]
        seg_obj = segs.get(named) or items[0][0]
        det = seg_obj.detectors[metric]
        own = next((cp for s, _, cp in items if s.key == named), None)
        ref = own or items[0][2]
        baseline = ref.ratio_before if own else (det.reference_ratio if math.isfinite(det.reference_ratio) else det.baseline_ratio)
        after = seg_obj.since(change_at)
        e_a, c_a = _signal(metric, after, seg_obj.unit)
        current = _ratio(c_a, e_a) if e_a > 0 else ref.ratio_after
        segment = Segment.from_key(named)
        backend_cp = backend_moves.get(event_name)
        verdict: Verdict = "tracking_gap"
        if backend_cp is not None and backend_cp.direction == direction and abs(ref.relative_change) < 0.15:
            verdict = "inconclusive"
        causes = self._causes(metric, direction, named, parent, segs, change_at, best_share, moved, changes)
        nearby = rank_changes(changes, change_at, segment, cfg.nearby_before_s, cfg.nearby_after_s, float(cfg.window_s),
                              prefer_kinds=CAUSE_CHANGE_KINDS.get(causes[0].cause, ()))
        alert = Alert(
            alert_id=_alert_id(group, metric, direction, named, change_at),
            status="firing",
            segment=segment,
            metric=metric,
            direction=direction,
            baseline=_r(baseline),
            current=_r(current),
            baseline_interval=(_r(ref.ratio_before_low), _r(ref.ratio_before_high)),
            change_at=change_at,
            detected_at=_at(ref.detected_at),
            verdict=verdict,
            likely_causes=tuple(causes),
            nearby_changes=tuple(nearby),
            localisation=Localisation(tuple(moved), tuple(steady), alarming=tuple(sorted(alarming))),
            reconciliation=tuple(self._reconciliation(seg_obj, parent, change_at, baseline, metric)),
            evidence=_evidence(ref),
        )
        return alert, named

    def _causes(self, metric: str, direction: str, named: str, parent: _Segment | None, segs: dict[str, _Segment],
                change_at: float, share: float, moved: list[ChildChange], changes: list[Mapping[str, Any]]) -> list[Cause]:
        causes: list[Cause] = []
        src = parent or segs[named]
        b, a = src.before(change_at), src.since(change_at)
        _, _, browser, region = named.split("|")

        def rate(t: list[float], num: int, den: int) -> float:
            return _ratio(t[num], t[den])

        count_drop = direction == "drop" and (metric == "count_ratio" or metric.startswith(CHANNEL_METRIC))
        if count_drop:
            if browser != "*":
                causes.append(Cause("browser_restriction", round(0.5 + 0.5 * share, 3),
                                    f"{share:.0%} of the missing conversions are on {browser}; other browsers held"))
            denied_b, denied_a = rate(b, H_DENIED_B, H_B), rate(a, H_DENIED_B, H_B)
            consent_rise = (denied_a - denied_b) if math.isfinite(denied_a) and math.isfinite(denied_b) else 0.0
            if region != "*" or consent_rise > 0.05:
                score = (0.5 + 0.5 * share if region != "*" else 0.3) + min(0.4, 2 * max(0.0, consent_rise))
                causes.append(Cause("consent", round(min(score, 1.0), 3),
                                    (f"drop concentrated in region {region}; " if region != "*" else "")
                                    + f"consent-denied share of backend orders {denied_b:.0%} -> {denied_a:.0%}"))
            imp_b, imp_a = rate(b, H_IMPORT, H_B), rate(a, H_IMPORT, H_B)
            if math.isfinite(imp_b) and imp_b > 0.05 and (not math.isfinite(imp_a) or imp_a < 0.5 * imp_b):
                causes.append(Cause("crm_import", 0.8,
                                    f"import channel per backend conversion {imp_b:.2f} -> {imp_a if math.isfinite(imp_a) else 0:.2f}"))
            if browser == "*" and region == "*":
                causes.append(Cause("broken_tag", 0.5,
                                    "the drop is spread over every browser and region: the tag or trigger itself"))
        if count_drop:
            causes.extend(self._channel_causes(src, change_at, named))
            drift = self._event_definition_drift(named, src, change_at)
            if drift is not None:
                causes.append(drift)
        if direction == "inflation" and metric in ("count_ratio", "unmatched_rate", "duplicate_rate"):
            un_b, un_a = _ratio(_unmatched(b), b[H_P]), _ratio(_unmatched(a), a[H_P])
            if math.isfinite(un_a) and un_a > (un_b if math.isfinite(un_b) else 0.0) + 0.05:
                cov_b, cov_a = 1 - rate(b, H_MISS_CLICK, H_P), 1 - rate(a, H_MISS_CLICK, H_P)
                causes.append(Cause(
                    "wrong_trigger", round(min(1.0, 0.7 + un_a), 3),
                    f"platform conversions without a backend order {un_b:.1%} -> {un_a:.1%} "
                    f"({int(_unmatched(a))} since the change): the event fires before (or without) the order; "
                    f"click-id coverage {cov_b:.0%} -> {cov_a:.0%} follows from it"))
        if direction == "inflation" and metric in ("count_ratio", "duplicate_rate"):
            dup_b, dup_a = rate(b, H_DUP, H_P), rate(a, H_DUP, H_P)
            if math.isfinite(dup_a) and dup_a > (dup_b if math.isfinite(dup_b) else 0) + 0.02:
                causes.append(Cause("duplicate_trigger", round(min(1.0, 0.6 + dup_a), 3),
                                    f"same event_id on the same channel: {dup_b:.1%} -> {dup_a:.1%} of conversions"))
            brk_b, brk_a = rate(b, H_BROKEN, H_P), rate(a, H_BROKEN, H_P)
            pair_b, pair_a = rate(b, H_PAIR, H_P), rate(a, H_PAIR, H_P)
            if math.isfinite(brk_a) and brk_a > (brk_b if math.isfinite(brk_b) else 0) + 0.02:
                causes.append(Cause("broken_dedupe", round(min(1.0, 0.6 + brk_a), 3),
                                    f"one order under two event_ids: {brk_b:.1%} -> {brk_a:.1%}; pixel/server pairs {pair_b:.0%} -> {pair_a:.0%}"))
        if metric == "value_ratio":
            mv_b, mv_a = rate(b, H_MISS_VALUE, H_P), rate(a, H_MISS_VALUE, H_P)
            count_held = not src.detectors["count_ratio"].in_alarm
            currency = self._currency_mix(moved, region, count_held, mv_b, mv_a, src, change_at)
            if currency is not None:
                causes.append(currency)
            score = 0.5 + (0.3 if count_held else 0.0) + (0.2 if math.isfinite(mv_a) and mv_a > (mv_b or 0) + 0.05 else 0.0)
            causes.append(Cause("missing_value", round(score, 3),
                                f"value ratio moved while the count ratio {'held' if count_held else 'moved too'}; "
                                f"events without value {mv_b:.0%} -> {mv_a:.0%}"))
        if metric == "click_id_coverage":
            mc_b, mc_a = rate(b, H_MISS_CLICK, H_P), rate(a, H_MISS_CLICK, H_P)
            causes.append(Cause("missing_click_ids", 0.9,
                                f"conversions without click ids {mc_b:.0%} -> {mc_a:.0%}"))
        for ch in changes:
            if ch.get("kind") == "attribution_setting" and -self.config.nearby_before_s <= float(ch["at"]) - change_at <= self.config.nearby_after_s:
                causes.append(Cause("attribution_change", 0.7,
                                    f"attribution setting changed {abs(float(ch['at']) - change_at) / 3600:.1f} h "
                                    f"{'before' if float(ch['at']) <= change_at else 'after'} the change: {ch.get('summary', '')}"))
                break
        if any(c.cause in ("server_event_failure", "event_definition_drift") for c in causes):
            # a channel split or a rename explains where the drop landed (a channel's share of
            # a browser or region): the localisation causes come after it
            causes = [Cause(c.cause, round(0.7 * c.score, 3), c.evidence)
                      if c.cause in ("browser_restriction", "consent") else c for c in causes]
        if not causes:
            causes.append(Cause("unknown", 0.1, "no specific pattern; check the event path"))
        causes.sort(key=lambda c: -c.score)
        return causes

    def _channel_causes(self, src: _Segment, change_at: float, named: str) -> list[Cause]:
        """One channel of the platform fell while another held (server_event_failure), or every
        channel fell silent (missing_tag): per-channel events per backend conversion."""
        before, after, b_before, b_after = src.channels(change_at)
        if b_before <= 0 or b_after <= 0:
            return []
        rates = {ch: (before.get(ch, 0.0) / b_before, after.get(ch, 0.0) / b_after)
                 for ch in sorted(set(before) | set(after)) if before.get(ch, 0.0) / b_before >= 0.05}
        if not rates:
            return []
        fell = {ch: r for ch, r in rates.items() if r[1] < 0.5 * r[0]}
        # held: not below 85 % of its rate before by more than its sampling error (a few
        # windows after a break at 400 orders a day carry a dozen events a channel)
        held = {ch: r for ch, r in rates.items() if ch not in fell
                and rate_interval(after.get(ch, 0.0), b_after)[1] >= 0.85 * r[0]}

        def text(chs: Mapping[str, tuple[float, float]]) -> str:
            return ", ".join(f"{ch} {r0:.2f} -> {r1:.2f} ({r1 / r0 - 1:+.0%})" for ch, (r0, r1) in chs.items())

        out = []
        if fell and held and "import" not in fell:
            out.append(Cause("server_event_failure", 0.97,
                             f"per backend conversion: {text(fell)} fell while {text(held)} held: "
                             "one delivery path of the platform stopped"))
        elif fell and len(fell) == len(rates) and all(r1 < 0.25 * r0 for r0, r1 in fell.values()) \
                and named.split("|")[2:] == ["*", "*"] and "import" not in fell:
            out.append(Cause("missing_tag", 0.9,
                             f"every channel went silent (per backend conversion: {text(fell)}): "
                             "the tag or the server call is gone"))
        return out

    def _event_definition_drift(self, named: str, src: _Segment, change_at: float) -> Cause | None:
        """The event vanished while another event name of the same platform appeared with a
        similar volume and the same orders (needs every event name of the platform in this
        monitor: the partials are routed so, see docs/architecture.md)."""
        platform, event_name = named.split("|")[:2]
        b, a = src.before(change_at), src.since(change_at)
        base = _ratio(b[H_P], b[H_B])
        if not math.isfinite(base) or a[H_B] <= 0:
            return None
        missing = base * a[H_B] - a[H_P]
        if missing <= 0:
            return None
        best: tuple[float, str, list[float], list[float]] | None = None
        for group, segs in self.segments.items():
            g_platform, g_name = group.split("|", 1)
            if g_platform != platform or g_name == event_name:
                continue
            other = segs.get(f"{group}|*|*")
            if other is None:
                continue
            ob, oa = other.before(change_at), other.since(change_at)
            n_b = sum(1 for r in other.history if r[H_START] < change_at) or 1
            n_a = sum(1 for r in other.history if r[H_START] >= change_at) or 1
            appeared = oa[H_P] / n_a > 4 * (ob[H_P] / n_b) + 0.5
            similar = 0.5 * missing <= oa[H_P] - ob[H_P] / n_b * n_a <= 2.0 * missing
            same_orders = _share(oa[H_MATCHED], oa[H_P]) >= 0.8
            if appeared and similar and same_orders:
                fit = abs(math.log(max(oa[H_P], 1.0) / missing))
                if best is None or fit < best[0]:
                    best = (fit, g_name, ob, oa)
        if best is None:
            return None
        _, new_name, ob, oa = best
        return Cause("event_definition_drift", 0.98,
                     f"'{event_name}' fell ({int(round(missing))} conversions missing since the change) while "
                     f"'{new_name}' appeared: {int(ob[H_P])} events before, {int(oa[H_P])} since, "
                     f"{_share(oa[H_MATCHED], oa[H_P]):.0%} of them on backend orders: the event was renamed")

    def _currency_mix(self, moved: list[ChildChange], region: str, count_held: bool, mv_b: float, mv_a: float,
                      src: _Segment, change_at: float) -> Cause | None:
        """The value ratio moved in some regions (currencies) and held in others, with counts
        held and values present: the value is sent in another currency or unit there."""
        if not count_held or (math.isfinite(mv_a) and mv_a > (mv_b if math.isfinite(mv_b) else 0.0) + 0.05):
            return None
        moved_regions = [c for c in moved if c.segment.browser == "*" and c.segment.region != "*"]
        if region == "*" and not moved_regions:
            return None
        regions = {c.segment.region for c in moved_regions} | ({region} if region != "*" else set())
        if len(regions) > 2:
            return None  # every currency moved: not a mix effect
        detail = ", ".join(f"{c.segment.region} {c.baseline:.2f} -> {c.current:.2f} (x{c.current / c.baseline:.2g})"
                           for c in moved_regions if c.baseline) or region
        return Cause("wrong_currency", 0.9,
                     f"value ratio moved only where one currency is used ({detail}); the count ratio held "
                     f"and events without value {mv_b:.0%} -> {mv_a:.0%}: value sent in another currency or unit")

    def _reconciliation(self, seg: _Segment, parent: _Segment | None, change_at: float, baseline: float, metric: str) -> list[ReconciliationRow]:
        a = seg.since(change_at)
        rows = [
            ReconciliationRow("backend", int(a[H_B]), round(a[H_BV], 2), "source of truth"),
            ReconciliationRow("platform", int(a[H_P]), round(a[H_PV], 2),
                              f"{_share(a[H_P], a[H_B]):.0%} of backend (baseline {baseline:.0%})" if metric == "count_ratio" and math.isfinite(baseline)
                              else f"{_share(a[H_P], a[H_B]):.0%} of backend conversions, {_share(a[H_PV], a[H_BV]):.0%} of value"),
        ]
        if metric == "count_ratio" and math.isfinite(baseline):
            expected = baseline * a[H_B]
            rows.append(ReconciliationRow("expected at baseline", int(round(expected)), None,
                                          f"{int(round(expected - a[H_P])):+d} vs platform" if expected else ""))
        if a[H_DUP]:
            rows.append(ReconciliationRow("duplicate triggers", int(a[H_DUP]), None, "same event_id, same channel"))
        if a[H_BROKEN]:
            rows.append(ReconciliationRow("broken dedupe", int(a[H_BROKEN]), None, "one order, two event_ids"))
        if a[H_MISS_VALUE]:
            rows.append(ReconciliationRow("missing value", int(a[H_MISS_VALUE]), None, "platform events without value"))
        return rows

    # ---- metrics --------------------------------------------------------------------------
    def export_metrics(self, metrics: Any) -> None:
        """Set the per-segment gauges of the last step (bounded labels, see streams.metrics)."""
        gauges, self._gauges = self._gauges, {}
        for w in gauges.values():
            labels = metrics.seg_labels(w)
            seg = self.segments.get(f"{w.platform}|{w.event_name}", {}).get(w.segment_key)
            if seg is None:
                continue
            for metric, det in seg.detectors.items():
                base = det.baseline_ratio
                if math.isfinite(base):
                    metrics.segment_baseline.labels(**labels, metric=metric).set(base)
                    low, high = det.baseline_interval
                    if math.isfinite(low) and math.isfinite(high):
                        metrics.segment_baseline_low.labels(**labels, metric=metric).set(low)
                        metrics.segment_baseline_high.labels(**labels, metric=metric).set(high)
                metrics.evidence.labels(**labels, metric=metric).set(det.evidence)
        active: dict[tuple[str, str, str, str], int] = {}
        for group, incs in self.incidents.items():
            platform, event_name = group.split("|", 1)
            for inc in incs.values():
                if "alert" not in inc:
                    continue  # a member of another group's incident
                key = (metrics.platform_cap(platform), metrics.event_name_cap(event_name), inc["metric"], inc["alert"]["direction"])
                active[key] = active.get(key, 0) + 1
        for group in self.incidents:
            platform, event_name = group.split("|", 1)
            for metric in METRICS:
                for direction in ("drop", "inflation"):
                    key = (metrics.platform_cap(platform), metrics.event_name_cap(event_name), metric, direction)
                    metrics.active_gaps.labels(*key).set(active.get(key, 0))

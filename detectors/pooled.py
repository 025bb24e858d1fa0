"""Pooled evidence across platforms: one cause that moves every platform is found on their sum.

Per event name, `PooledSegments` keeps one ratio detector for the whole event name, each
browser and each region, whose ratio is every pooled platform's browser-tag (`pixel`) events
summed over the backend's conversions (the same backend orders for every platform, so the
sum is a ratio like any other and runs through the same `RatioDetector`). The causes that
span platforms act in the browser: a consent banner, a browser's restrictions, a tag manager
or checkout page change. Their sum carries the evidence of every platform, undiluted by the
server channels (CAPI, events API) that such a cause leaves alone, so it crosses the
threshold sooner than any one platform's conversions do (consent in one region at 4,000
orders a day: ga4's conversions -47 %, meta's -15 %, every pixel summed -70 %).

The monitor (`GroupMonitor`, detectors/monitor.py) decides what a pooled alarm means: it asks
each platform's own windows whether they agree (`agreement`), opens one incident when at
least two do, and leaves a break of a single platform to that platform's own detector, which
sees it undiluted and so sooner. Pure, JSON state, no clocks.

>>> from detectors.ratio import RatioDetectorConfig
>>> pool = PooledSegments(RatioDetectorConfig(window_seconds=3600.0), window_s=3600)
>>> pool.members_of("purchase")
()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from detectors.changepoint import ChangePoint, step_start
from detectors.ratio import RatioDetector, RatioDetectorConfig
from detectors.windows import ClosedWindow

__all__ = ["PooledSegments", "PooledSegment", "agreement", "change_time", "POOLED_CHANNEL", "POOLED_LEVELS"]

#: the delivery channel pooled: where the causes that span platforms act
POOLED_CHANNEL = "pixel"
#: the levels pooled: every platform's parent, browser and region windows
POOLED_LEVELS = ("platform", "platform_browser", "platform_region")
#: windows of pooled history kept for the change time (like a platform segment's)
HISTORY = 96
#: a platform is in the pool while it delivered windows within this long (event time) ...
MEMBER_RECENT_S = 86_400.0
#: ... and its windows are judged at most this long after they end (or two windows): a
#: platform whose channel is held back for a day (a nightly import) would hold every other
#: platform's pooled windows back with it; it is left to its own detectors
MEMBER_MAX_HOLD_S = 3600.0
#: a pooled window waits at most this long (event time) for a member's window
MAX_WAIT_S = 3 * 3600.0
#: the change time is searched from this long before the alarming run's start
REFINE_S = 6 * 3600.0


class PooledSegment:
    """One pooled segment (`*|event_name|browser|region`): its detector and recent windows."""

    def __init__(self, key: str, config: RatioDetectorConfig, state: Mapping[str, Any] | None = None) -> None:
        self.key = key
        #: an alarm the platforms did not (yet) agree with: its change point, kept while the
        #: detector stays in alarm, so their evidence can catch up (the monitor retries)
        self.waiting: ChangePoint | None = None
        if state is None:
            self.detector = RatioDetector(config, metric="count_ratio")
            #: [window start, backend conversions, members' browser-tag events summed]
            self.history: list[list[float]] = []
        else:
            self.detector = RatioDetector.from_dict(dict(state["det"]))
            self.history = [list(r) for r in state["hist"]]
            if state.get("wait"):
                self.waiting = ChangePoint.from_dict(dict(state["wait"]))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"det": self.detector.to_dict(), "hist": self.history}
        if self.waiting is not None:
            out["wait"] = self.waiting.to_dict()
        return out

    def update(self, start: int, backend: float, platform: float) -> ChangePoint | None:
        self.history.append([float(start), backend, platform])
        if len(self.history) > HISTORY:
            del self.history[0]
        return self.detector.update(backend, max(0.0, min(platform, backend * 50)), at=float(start))


class _EventPool:
    """The pool of one event name: members, windows waiting for them, the pooled segments."""

    def __init__(self, state: Mapping[str, Any] | None, config: RatioDetectorConfig) -> None:
        self.config = config
        state = state or {}
        #: platform -> [newest window start delivered, its hold (s)]
        self.seen: dict[str, list[float]] = {p: list(v) for p, v in state.get("seen", {}).items()}
        self.members: list[str] = list(state.get("members", []))
        #: window start (as text: JSON keys) -> {"from": [platforms], "rows": {"b|r": [backend, platform]}}
        self.pending: dict[str, dict[str, Any]] = {k: {"from": list(v["from"]), "rows": dict(v["rows"])}
                                                   for k, v in state.get("pending", {}).items()}
        self.flushed = int(state.get("flushed", -1))
        self.segments: dict[str, PooledSegment] = {
            k: PooledSegment(k, config, s) for k, s in state.get("segments", {}).items()}

    def to_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "members": self.members, "pending": self.pending, "flushed": self.flushed,
                "segments": {k: s.to_dict() for k, s in self.segments.items()}}


class PooledSegments:
    """The pooled segments of every event name a monitor sees (see the module docstring)."""

    def __init__(self, config: RatioDetectorConfig, window_s: int) -> None:
        self.config = config
        self.window_s = window_s
        self.max_hold_s = max(MEMBER_MAX_HOLD_S, 2.0 * window_s)
        self.pools: dict[str, _EventPool] = {}
        self._dirty: set[str] = set()

    def members_of(self, event_name: str) -> tuple[str, ...]:
        pool = self.pools.get(event_name)
        return tuple(pool.members) if pool is not None else ()

    def segment(self, key: str) -> PooledSegment | None:
        pool = self.pools.get(key.split("|")[1])
        return pool.segments.get(key) if pool is not None else None

    # ---- persistence: one item per event name ---------------------------------------------
    def take_changes(self) -> dict[str, Any]:
        out = {name: self.pools[name].to_dict() for name in sorted(self._dirty) if name in self.pools}
        self._dirty = set()
        return out

    def restore(self, event_name: str, state: Mapping[str, Any]) -> None:
        self.pools[event_name] = _EventPool(state, self.config)

    # ---- the per-window step ----------------------------------------------------------------
    def update(self, windows: Sequence[ClosedWindow]) -> list[tuple[str, PooledSegment, int, ChangePoint | None]]:
        """Add the platform windows of one closed window (any groups); returns
        `(event_name, segment, window start, change point or None)` of every pooled window
        completed."""
        by_name: dict[str, list[ClosedWindow]] = {}
        for w in windows:
            if w.level in POOLED_LEVELS and w.platform != "*":
                by_name.setdefault(w.event_name, []).append(w)
        out: list[tuple[str, PooledSegment, int, ChangePoint | None]] = []
        for event_name, ws in sorted(by_name.items()):
            pool = self.pools.get(event_name)
            if pool is None:
                pool = self.pools[event_name] = _EventPool(None, self.config)
            self._dirty.add(event_name)
            self._add(pool, ws)
            out.extend((event_name, seg, start, cp) for seg, start, cp in self._flush(event_name, pool))
        return out

    def _add(self, pool: _EventPool, ws: list[ClosedWindow]) -> None:
        start = ws[0].window_start
        for w in ws:
            if w.level == "platform":
                pool.seen[w.platform] = [float(w.window_start), float(w.judged_after_s)]
        if start <= pool.flushed:
            return  # re-closed after a crash, or a member judged after the pool moved on
        entry = pool.pending.setdefault(str(start), {"from": [], "rows": {}})
        platforms = sorted({w.platform for w in ws if w.platform in pool.members})
        new = [p for p in platforms if p not in entry["from"]]
        if not new:
            return
        entry["from"] = sorted({*entry["from"], *new})
        rows = entry["rows"]
        for w in ws:
            if w.platform not in new:
                continue
            dims = f"{w.browser}|{w.region}"
            row = rows.setdefault(dims, [0.0, 0.0])
            # the backend orders are the same for every platform of the event name
            row[0] = max(row[0], float(w.backend_count))
            row[1] += float(w.platform_channels.get(POOLED_CHANNEL, 0))

    def _flush(self, event_name: str, pool: _EventPool) -> list[tuple[PooledSegment, int, ChangePoint | None]]:
        newest = max((v[0] for v in pool.seen.values()), default=-math.inf)
        members = sorted(p for p, (last, hold) in pool.seen.items()
                         if last >= newest - MEMBER_RECENT_S and hold <= self.max_hold_s)
        if members != pool.members:
            # a pool of other platforms is another ratio: its detectors start afresh
            pool.members = members
            pool.segments = {}
            pool.pending = {}
            pool.flushed = int(newest)
            return []
        if len(members) < 2:
            pool.pending = {}
            pool.flushed = int(newest)
            return []  # one platform: its own detectors are the pool
        out: list[tuple[PooledSegment, int, ChangePoint | None]] = []
        for text in sorted(pool.pending, key=int):
            start = int(text)
            entry = pool.pending[text]
            waiting = [p for p in members if p not in entry["from"] and pool.seen[p][0] < start]
            if waiting and newest - start <= MAX_WAIT_S:
                break
            del pool.pending[text]
            pool.flushed = start
            for dims, (backend, platform) in sorted(entry["rows"].items()):
                key = f"*|{event_name}|{dims}"
                seg = pool.segments.get(key)
                if seg is None:
                    if backend <= 0:
                        continue
                    seg = pool.segments[key] = PooledSegment(key, self.config)
                out.append((seg, start, seg.update(start, backend, platform)))
        return out

    def accept_level(self, key: str) -> None:
        """A person said the pooled incident's change was expected: its level is the new normal."""
        seg = self.segment(key)
        if seg is not None and seg.detector.in_alarm:
            seg.detector.accept_level()
            self._dirty.add(key.split("|")[1])

    def reject_alarm(self, key: str) -> None:
        """A person said the pooled incident was false: the level before it holds."""
        seg = self.segment(key)
        if seg is not None and seg.detector.in_alarm:
            seg.detector.reject_alarm()
            self._dirty.add(key.split("|")[1])


def change_time(history: Iterable[Sequence[float]], cp: ChangePoint) -> float:
    """The window where the pooled change most likely began: the arg-max, over the windows
    from `REFINE_S` before the alarming run's start to the alarm, of the Poisson likelihood
    ratio of "the run's reference before k, one new level from k on" (as a platform
    segment's, `detectors.monitor._change_time`)."""
    start = cp.change_at if cp.change_at is not None else cp.detected_at
    if start is None:
        raise ValueError("a change point without its window time")
    r0 = cp.ratio_before
    if not (math.isfinite(r0) and r0 > 0.0) or cp.detected_at is None:
        return float(start)
    rows = [r for r in history if start - REFINE_S <= r[0] <= cp.detected_at]
    points = ((r[0], r[1], r[2]) for r in reversed(rows))
    return step_start(points, r0, cp.direction == "inflation", float(start))


def agreement(count: float, exposure: float, reference: float, direction: str, dispersion: float,
              windows: int) -> float:
    """A platform's own evidence for a pooled change: the log-likelihood ratio (nats) of its
    windows since the pooled change time at their own ratio against its reference, in the
    pooled change's direction (0 the other way), divided by the overdispersion of a window
    (`1 + alpha mu`: quasi-likelihood).

    >>> round(agreement(14, 40, 0.5, "drop", 0.0, 4), 2)
    1.01
    >>> agreement(26, 40, 0.5, "drop", 0.0, 4)
    0.0
    """
    if exposure <= 0.0 or not (math.isfinite(reference) and reference > 0.0):
        return 0.0
    ratio = count / exposure
    if (ratio < reference) != (direction == "drop") or ratio == reference:
        return 0.0
    llr = (count * math.log(ratio / reference) if count > 0 else 0.0) - exposure * (ratio - reference)
    mu = reference * exposure / max(windows, 1)
    return max(0.0, llr) / (1.0 + max(0.0, dispersion) * mu)

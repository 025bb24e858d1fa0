"""Plain-text views of alerts and reconciliation tables, for the terminal.

One renderer for every verb that prints: `gapwatch demo` (`alert_text` as alerts arrive,
`reconciliation_table` at the end), `gapwatch backtest` (`alert_line` per alert) and
`gapwatch reconcile` (`reconciliation_table`). Slack has its own Block Kit formatter
(streams/slack.py); both read the typed `Alert`, never the JSON.

>>> from detectors.alert import Alert
>>> alert = Alert.from_dict({"alert_id": "a1", "status": "firing", "metric": "count_ratio",
...     "segment": {"platform": "meta", "event_name": "purchase", "browser": "safari", "region": "*"},
...     "direction": "drop", "baseline": 0.97, "current": 0.61, "change_at": 1767225600.0,
...     "detected_at": 1767229200.0, "verdict": "tracking_gap",
...     "likely_causes": [{"cause": "browser_restriction", "score": 0.93, "evidence": "safari only"}]})
>>> print(alert_line(alert))
[firing] tracking_gap: meta/purchase/safari count_ratio drop 0.970 -> 0.610 since 2026-01-01 00:00 UTC, cause browser_restriction
>>> print(alert_text(alert))
TRACKING GAP  platform=meta / event_name=purchase / browser=safari: drop, count_ratio 0.970 -> 0.610 (-37%), since Thu 01 Jan 00:00 UTC
    cause    browser_restriction  0.93  safari only
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from detectors.alert import Alert, ReconciliationRow

__all__ = ["alert_line", "alert_text", "reconciliation_table"]

_HEADS = {"tracking_gap": "TRACKING GAP", "business_change": "BUSINESS CHANGE", "inconclusive": "INCONCLUSIVE",
          "expected_change": "EXPECTED CHANGE (notice)"}


def alert_line(alert: Alert) -> str:
    """One line per alert (`gapwatch backtest`)."""
    seg = alert.segment
    where = "/".join(v for v in (seg.platform, seg.event_name, seg.browser, seg.region) if v != "*")
    cause = alert.likely_causes[0].cause if alert.likely_causes else "-"
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(alert.change_at)) if alert.change_at else "?"
    base, cur = alert.baseline, alert.current
    ratio = f"{base:.3f} -> {cur:.3f}" if base is not None and cur is not None else ""
    return (f"[{alert.status}] {alert.verdict}: {where} {alert.metric} {alert.direction} {ratio} "
            f"since {when} UTC, cause {cause}")


def alert_text(alert: Alert) -> str:
    """A few lines per alert (`gapwatch demo`): the move, top causes and changes, where it moved."""
    where = " / ".join(f"{k}={v}" for k, v in alert.segment.to_dict().items() if v != "*")
    if alert.status == "resolved":
        why = {"expected": " as the new normal", "false_alarm": " as a false alarm"}.get(alert.resolution or "", "")
        if why:
            note = f": {alert.note}" if alert.note else ""
            return f"RESOLVED{why}  {where}  {alert.metric} at {alert.current}  (alert {alert.alert_id}){note}"
        return f"RESOLVED  {where}  {alert.metric} back to {alert.current}  (alert {alert.alert_id})"
    t = time.strftime("%a %d %b %H:%M", time.gmtime(alert.change_at)) if alert.change_at else "?"
    base, cur = alert.baseline, alert.current
    if base is not None and cur is not None and base:
        move = f"{alert.metric} {base:.3f} -> {cur:.3f} ({cur / base - 1:+.0%})"
    else:
        move = alert.metric
    lines = [f"{_HEADS[alert.verdict]}  {where}: {alert.direction}, {move}, since {t} UTC"]
    for c in alert.likely_causes[:3]:
        lines.append(f"    cause    {c.cause:<20} {c.score:.2f}  {c.evidence}")
    for ch in alert.nearby_changes[:3]:
        minutes = ch.distance_s / 60
        side = "before" if minutes <= 0 else "after"
        when = f"{abs(minutes):.0f} min {side}" if abs(minutes) < 180 else f"{abs(minutes) / 60:.1f} h {side}"
        lines.append(f"    change   {ch.kind:<14} {ch.service or '-':<16} {when:<16} {ch.summary[:60]}")
    loc = alert.localisation
    moved = ", ".join(f"{m.segment.browser}|{m.segment.region} {m.change:+.0%}" for m in loc.moved[:4])
    held = ", ".join(f"{m.segment.browser}|{m.segment.region}" for m in loc.steady[:5])
    if moved:
        lines.append(f"    moved    {moved}")
    if held:
        lines.append(f"    held     {held}")
    return "\n".join(lines)


def reconciliation_table(rows: Sequence[ReconciliationRow], title: str = "") -> str:
    """Source, count, value and notes as aligned columns (`gapwatch reconcile`, `gapwatch demo`).

    >>> print(reconciliation_table([ReconciliationRow("Backend purchase", 1204, 98350.5, "source of truth"),
    ...                             ReconciliationRow("meta purchase", 1130, 91002.0, "94% of backend")]))
    Source            Count   Value  Notes
    ----------------  -----  ------  ---------------
    Backend purchase  1,204  98,350  source of truth
    meta purchase     1,130  91,002  94% of backend
    """
    head = ("Source", "Count", "Value", "Notes")
    body = [(r.source, f"{r.count:,}", "" if r.value is None else f"{r.value:,.0f}", r.note) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    numeric = (1, 2)  # right-aligned columns

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    lines = [title] if title else []
    lines += [line(head), "  ".join("-" * w for w in widths), *(line(b) for b in body)]
    return "\n".join(lines)

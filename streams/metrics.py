"""Every Prometheus metric of the worker, built on one registry (tests build their own).

Labels come from closed sets only (topics, reason codes, normalised browsers / regions, a
capped set of platform and event names). No order, click or event id ever becomes a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from detectors.windows import ClosedWindow

__all__ = ["Metrics", "LabelCap"]

SEG = ("platform", "event_name", "browser", "region")


class LabelCap:
    """Admit at most `limit` distinct values; later newcomers become `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.known: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.known:
            return value
        if len(self.known) < self.limit:
            self.known.add(value)
            return value
        return "other"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, max_platforms: int = 20, max_event_names: int = 20):
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.platform_cap = LabelCap(max_platforms)
        self.event_name_cap = LabelCap(max_event_names)
        self.consumed = Counter("gapwatch_events_consumed", "Events consumed, valid or not", ["topic"], registry=r)
        self.invalid = Counter("gapwatch_invalid_events", "Events rejected to the DLQ, by reason", ["topic", "reason"], registry=r)
        self.redelivered = Counter("gapwatch_redelivered_events", "Messages seen again after a restart (same partition and offset), skipped", ["topic"], registry=r)
        self.late = Counter("gapwatch_late_events", "Events later than the allowed lateness (counted as late)", ["topic"], registry=r)
        self.backend = Counter("gapwatch_backend_events", "Valid backend events", ["event_name", "browser", "region"], registry=r)
        self.platform = Counter("gapwatch_platform_events", "Valid platform events (raw, before pixel/server dedupe)", list(SEG), registry=r)
        self.folded = Counter("gapwatch_folded_events", "Events whose platform or event name was beyond its cap (max_platforms, max_event_names), counted as 'other'", ["field"], registry=r)
        self.duplicates = Counter("gapwatch_platform_duplicates", "Platform events with an event_id already seen on the same channel", ["platform", "event_name"], registry=r)
        self.alert_feedback = Counter("gapwatch_alert_feedback", "What people said about alerts (ack / expected / false): false / firing alerts is the false-alarm rate users see", ["action"], registry=r)
        self.watermark = Gauge("gapwatch_watermark_seconds", "Lowest event-time watermark of this worker's partitions", registry=r)
        self.watermark_lag = Gauge("gapwatch_watermark_lag_seconds", "Wall clock minus the watermark", registry=r)
        self.consumer_lag = Gauge("gapwatch_consumer_lag_messages", "Messages behind the end of the assigned partitions", ["topic"], registry=r)
        self.windows_closed = Counter("gapwatch_windows_closed", "Closed segment windows published", ["level"], registry=r)
        self.segment_ratio = Gauge("gapwatch_segment_ratio", "Platform/backend ratio of the last closed window", list(SEG) + ["metric"], registry=r)
        self.segment_baseline = Gauge("gapwatch_segment_baseline", "Detector baseline of the ratio", list(SEG) + ["metric"], registry=r)
        self.segment_baseline_low = Gauge("gapwatch_segment_baseline_low", "Lower end of the baseline interval", list(SEG) + ["metric"], registry=r)
        self.segment_baseline_high = Gauge("gapwatch_segment_baseline_high", "Upper end of the baseline interval", list(SEG) + ["metric"], registry=r)
        self.evidence = Gauge("gapwatch_detector_evidence", "Detector statistic over its threshold (>= 1 alarms)", list(SEG) + ["metric"], registry=r)
        self.active_gaps = Gauge("gapwatch_active_gaps", "Firing gap alerts", ["platform", "event_name", "metric", "direction"], registry=r)
        self.alerts = Counter("gapwatch_alerts", "Alerts emitted", ["platform", "verdict", "direction", "status"], registry=r)
        self.change_events = Counter("gapwatch_change_events", "Change events received", ["kind"], registry=r)
        self.change_ts = Gauge("gapwatch_change_event_timestamp_seconds", "Time of the last change of this kind and service (Grafana annotations)", ["kind", "service"], registry=r)
        self.late_in_windows = Counter("gapwatch_window_late_events", "Platform events counted late in a closed platform window: arrived after their own window was judged (beyond their channel's learned delay) or beyond max_delay_seconds; in the window's late_events, not in its counts", ["platform", "event_name"], registry=r)
        self.channel_delay = Gauge("gapwatch_channel_delay_seconds", "Learned reporting delay of a platform's channel (95th percentile over the last days)", ["platform", "event_name", "channel"], registry=r)
        self.judged_after = Gauge("gapwatch_window_judged_after_seconds", "How long after its end a platform's window is judged (its channels' learned delay, at most max_delay_seconds)", ["platform", "event_name"], registry=r)
        self.build_info = Gauge("gapwatch_build_info", "Build information", ["version"], registry=r)
        self.build_info.labels(version=_version()).set(1)
        self.service_cap = LabelCap(50)
        self.channel_cap = LabelCap(32)

    def seg_labels(self, w: ClosedWindow) -> dict[str, str]:
        return {
            "platform": self.platform_cap(w.platform), "event_name": self.event_name_cap(w.event_name),
            "browser": w.browser, "region": w.region,
        }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gapwatch")
    except Exception:
        return "dev"

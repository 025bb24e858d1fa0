"""`gapwatch slack`: forwards alerts from `gap-alerts` to a Slack incoming webhook.

`format_alert` turns one alert into a Block Kit payload (pure, no I/O); `SlackForwarder`
consumes the topic in order, posts with retries, records each post on the compacted posted
topic, and commits an offset only once its alert is delivered and recorded or parked on the
DLQ; any number of replicas in one group post each (alert_id, status) once. See docs/slack.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import enum
import logging
import math
import os
import random
import re
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from detectors.alert import (
    Alert,
    AlertFormatError,
    Cause,
    ChildChange,
    NearbyChange,
    ReconciliationRow,
    Segment,
)

__all__ = [
    "DEFAULT_DLQ_TOPIC",
    "DEFAULT_GROUP_ID",
    "DEFAULT_POSTED_RETENTION_S",
    "DEFAULT_POSTED_TOPIC",
    "DEFAULT_TOPIC",
    "ForwarderSetupError",
    "SlackForwarder",
    "SlackMetrics",
    "format_alert",
    "grafana_url",
    "kafka_client",
    "load_webhook_url",
    "posted_key",
    "register",
    "run",
]

log = logging.getLogger("gapwatch.slack")

DEFAULT_TOPIC = "gap-alerts"
DEFAULT_DLQ_TOPIC = "gapwatch-dlq"
DEFAULT_GROUP_ID = "gapwatch-slack"
DEFAULT_POSTED_TOPIC = "gapwatch-slack-posted"
DEFAULT_POSTED_RETENTION_S = 90 * 86_400.0
WEBHOOK_ENV = "GAPWATCH_SLACK_WEBHOOK_URL"
#: a Slack bot token (xoxb-...): threads and updates through the Web API instead of the webhook
BOT_TOKEN_ENV = "GAPWATCH_SLACK_BOT_TOKEN"
DEFAULT_API_BASE = "https://slack.com/api"
#: a re-fire of one incident (same `incident_key`) this soon (event time) is not a new post
DEFAULT_COOLDOWN_S = 6 * 3600.0
GRAFANA_ENV = "GAPWATCH_GRAFANA_URL_TEMPLATE"

# Block Kit limits (docs.slack.dev/reference/block-kit): we stay under them by construction.
MAX_BLOCKS = 50
MAX_HEADER_CHARS = 150
MAX_SECTION_CHARS = 3000
MAX_FIELD_CHARS = 2000
MAX_FIELDS = 10
MAX_CONTEXT_ELEMENTS = 10
MAX_BUTTON_TEXT_CHARS = 75
MAX_URL_CHARS = 3000
MAX_FALLBACK_CHARS = 3000

TOP_CAUSES = 3
TOP_CHANGES = 3
MAX_LOCALISATION_ITEMS = 8
MAX_RECONCILIATION_ROWS = 12
# Raw user strings are clipped before escaping so that one long summary cannot push a whole
# section over its limit (escaping can grow a string up to 5x: "&" -> "&amp;").
MAX_RAW_SNIPPET = 280

# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------

_BROWSERS = {
    "chrome": "Chrome",
    "safari": "Safari",
    "firefox": "Firefox",
    "edge": "Edge",
    "samsung": "Samsung Internet",
    "other": "other browsers",
    "unknown": "unknown browser",
}
_REGIONS = {
    "na": "NA",
    "eu": "EU",
    "uk": "UK",
    "latam": "LATAM",
    "apac": "APAC",
    "mea": "MEA",
    "other": "other regions",
    "unknown": "unknown region",
}
_METRICS = {
    "count_ratio": "count ratio",
    "value_ratio": "value ratio",
    "duplicate_rate": "duplicate rate",
}
_VERDICTS = {
    "tracking_gap": "Tracking gap",
    "business_change": "Business change",
    "inconclusive": "Possible tracking gap",
    "expected_change": "Expected change (as planned)",
}
_VERDICT_EXPLANATIONS = {
    "tracking_gap": "the platform stopped seeing what the backend sees; the backend itself held",
    "business_change": "the backend itself moved and the platform followed: a business change, not a tracking gap",
    "inconclusive": "the ratio moved but the evidence does not separate measurement from business",
    "expected_change": "a planned change had the effect it was announced with: the new level is the new normal",
}
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "…"


def _raw(value: str | None, limit: int = MAX_RAW_SNIPPET) -> str:
    """A user-provided value as one clipped line of plain text (not yet escaped)."""
    if value is None:
        return ""
    return _clip(_CONTROL_CHARS.sub(" ", value).strip(), limit)


def _md(value: str | None, limit: int = MAX_RAW_SNIPPET) -> str:
    """A user-provided value, clipped and escaped for mrkdwn."""
    return _escape(_raw(value, limit))


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _iso(epoch: float | None) -> str:
    epoch = _finite(epoch)
    if epoch is None:
        return "unknown"
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "unknown"


def _metric_label(metric: str) -> str:
    name = _raw(metric, 60) or "ratio"
    return _METRICS.get(name, name.replace("_", " "))


def _is_rate(metric: str) -> bool:
    return metric.endswith("_rate")


def _fmt_ratio(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 0.1 else f"{value:.2f}"


def _fmt_metric_value(metric: str, value: float | None) -> str:
    number = _finite(value)
    if number is None:
        return "?"
    return f"{number * 100:.1f}%" if _is_rate(metric) else _fmt_ratio(number)


def _relative_change(baseline: float | None, current: float | None) -> float | None:
    base, cur = _finite(baseline), _finite(current)
    if base is None or cur is None or base == 0:
        return None
    return cur / base - 1.0


def _segment_of(segment: Segment) -> dict[str, str]:
    """The segment's parts, clipped for display ("*" = all)."""
    return {k: _raw(v, 60) or "*" for k, v in segment.to_dict().items()}


def _browser_label(browser: str) -> str:
    return _BROWSERS.get(browser, browser)


def _region_label(region: str) -> str:
    return _REGIONS.get(region, region)


def _segment_title(segment: Mapping[str, str]) -> str:
    """"meta purchase, Safari, EU": the rollups ("*") are left out."""
    head = " ".join(p for p in (segment.get("platform", "*"), segment.get("event_name", "*")) if p != "*")
    tail = []
    if segment.get("browser", "*") != "*":
        tail.append(_browser_label(segment["browser"]))
    if segment.get("region", "*") != "*":
        tail.append(_region_label(segment["region"]))
    title = ", ".join(x for x in [head or "all platforms", *tail] if x)
    return title


def _segment_detail(segment: Mapping[str, str]) -> str:
    browser = segment.get("browser", "*")
    region = segment.get("region", "*")
    return " · ".join(
        [
            f"platform `{_escape(segment.get('platform', '*'))}`",
            f"event `{_escape(segment.get('event_name', '*'))}`",
            f"browser {'all' if browser == '*' else _escape(_browser_label(browser))}",
            f"region {'all' if region == '*' else _escape(_region_label(region))}",
        ]
    )


def _child_label(child: ChildChange) -> str:
    """One localisation entry: "Safari · EU (0.97 → 0.41)"."""
    segment = _segment_of(child.segment)
    base, cur, change = _finite(child.baseline), _finite(child.current), _finite(child.change)
    ratio = ""
    if base is not None and cur is not None:
        ratio = f" ({_fmt_ratio(base)} → {_fmt_ratio(cur)})"
    elif change is not None:
        ratio = f" ({change * 100:+.0f}%)"
    parts = []
    if segment["browser"] != "*":
        parts.append(_browser_label(segment["browser"]))
    if segment["region"] != "*":
        parts.append(_region_label(segment["region"]))
    label = " · ".join(parts) if parts else _segment_title(segment)
    return _md(label, 120) + ratio


def _distance_text(change: NearbyChange, change_at: float) -> str:
    """ "18 min before" the change point."""
    delta = _finite(change_at - change.at)
    if delta is None:
        return ""
    seconds = abs(delta)
    if seconds < 90:
        amount = f"{seconds:.0f} s"
    elif seconds < 90 * 60:
        amount = f"{seconds / 60:.0f} min"
    elif seconds < 48 * 3600:
        amount = f"{seconds / 3600:.1f} h"
    else:
        amount = f"{seconds / 86400:.1f} d"
    return f"{amount} {'before' if delta >= 0 else 'after'}"


def _safe_url(value: str) -> str | None:
    """An http(s) URL that can sit inside <url|text> and a button, or None."""
    url = value.strip()
    if not url.lower().startswith(("https://", "http://")) or len(url) > MAX_URL_CHARS:
        return None
    if any(c.isspace() for c in url) or _CONTROL_CHARS.search(url):
        return None
    return url


def _link(url: str, text: str) -> str:
    """mrkdwn link; `text` must already be escaped."""
    return f"<{_escape(url).replace('|', '%7C')}|{text.replace('|', '¦')}>"


_Scored = TypeVar("_Scored", Cause, NearbyChange)


def _ranked(items: Sequence[_Scored], limit: int) -> list[_Scored]:
    """The first `limit` entries, highest `score` first (stable for equal scores)."""

    def rank(entry: _Scored) -> tuple[int, float]:
        score = _finite(entry.score)
        return (0, -score) if score is not None else (1, 0.0)

    return sorted(items, key=rank)[:limit]


def _lines_within(lines: Iterable[str], limit: int, more_template: str = "… and {n} more") -> str:
    """Join whole lines while they fit in `limit`; never cut a line (or a link) in half."""
    all_lines = list(lines)
    kept: list[str] = []
    size = 0
    reserve = len(more_template) + 6
    for index, line in enumerate(all_lines):
        extra = len(line) + (1 if kept else 0)
        last = index == len(all_lines) - 1
        if size + extra > (limit if last else limit - reserve):
            kept.append(more_template.format(n=len(all_lines) - index))
            break
        kept.append(line)
        size += extra
    return "\n".join(kept)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, MAX_SECTION_CHARS)}}


def _reconciliation_table(rows: Sequence[ReconciliationRow]) -> str | None:
    if not rows:
        return None
    table: list[tuple[str, str, str, str]] = [("source", "count", "value", "note")]
    for row in rows[:MAX_RECONCILIATION_ROWS]:
        value = _finite(row.value)
        table.append(
            (
                _raw(row.source, 24) or "?",
                f"{row.count:,}",
                "" if value is None else f"{value:,.2f}",
                _raw(row.note, 80),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()
        for r in table
    ]
    if len(rows) > MAX_RECONCILIATION_ROWS:
        lines.append(f"… {len(rows) - MAX_RECONCILIATION_ROWS} more rows")
    body = _lines_within((_escape(line) for line in lines), MAX_SECTION_CHARS - 40, "… {n} more rows")
    return f"*Reconciliation*\n```\n{body}\n```"


def grafana_url(template: str | None, alert: Alert, segment: Mapping[str, str] | None = None) -> str | None:
    """The Grafana link for an alert, or None when no usable template is configured.

    Placeholders: {platform} {event_name} {browser} {region} {from_ms} {to_ms}. A rollup ("*")
    becomes Grafana's `$__all`. Other braces in the template are left alone.

    >>> alert = Alert.from_dict({"alert_id": "a1", "status": "firing", "metric": "count_ratio",
    ...     "segment": {"platform": "meta", "event_name": "purchase", "browser": "safari", "region": "*"},
    ...     "direction": "drop", "change_at": 1000, "detected_at": 1600, "verdict": "tracking_gap"})
    >>> grafana_url("https://g/d/x?var-b={browser}&from={from_ms}&to={to_ms}", alert)
    'https://g/d/x?var-b=safari&from=-20600000&to=5200000'
    """
    if not template:
        return None
    segment = segment or _segment_of(alert.segment)
    change_at = _finite(alert.change_at)
    detected_at = _finite(alert.detected_at)
    anchor_from = change_at if change_at is not None else detected_at
    anchor_to = detected_at if detected_at is not None else change_at
    values = {
        "from_ms": "now-6h" if anchor_from is None else str(int((anchor_from - 6 * 3600) * 1000)),
        "to_ms": "now" if anchor_to is None else str(int((anchor_to + 3600) * 1000)),
    }
    for name in ("platform", "event_name", "browser", "region"):
        raw = segment.get(name, "*")
        values[name] = "$__all" if raw == "*" else quote(raw, safe="")
    url = template
    for name, value in values.items():
        url = url.replace("{" + name + "}", value)
    return _safe_url(url)


def format_alert(alert: Alert, grafana_url_template: str | None = None) -> dict[str, Any]:
    """Slack incoming-webhook payload (`text` fallback + Block Kit `blocks`) for one alert.

    >>> payload = format_alert(Alert.from_dict({"alert_id": "a1", "status": "firing",
    ...     "segment": {"platform": "meta", "event_name": "purchase", "browser": "safari", "region": "*"},
    ...     "metric": "count_ratio", "direction": "drop", "baseline": 1.0, "current": 0.62,
    ...     "change_at": 1767225600, "detected_at": 1767229200, "verdict": "tracking_gap"}))
    >>> payload["blocks"][0]["text"]["text"]
    ':rotating_light: Tracking gap: meta purchase, Safari — 38% drop'
    """
    segment = _segment_of(alert.segment)
    status = alert.status
    resolved = status == "resolved"
    verdict = alert.verdict
    metric = alert.metric or "count_ratio"
    metric_label = _metric_label(metric)
    baseline, current = alert.baseline, alert.current
    change = _relative_change(baseline, current)
    direction = alert.direction
    alert_id = _raw(alert.alert_id, 120) or "unknown"
    change_at = alert.change_at

    # Header (plain_text: Slack shows it verbatim, so it is not mrkdwn-escaped).
    if _is_rate(metric):
        magnitude = f"{metric_label} {_fmt_metric_value(metric, baseline)} → {_fmt_metric_value(metric, current)}"
    elif change is not None:
        magnitude = f"{abs(change) * 100:.0f}% {direction}"
        if metric != "count_ratio":
            magnitude += f" in {metric_label}"
    else:
        magnitude = f"{metric_label} {direction}"
    title = _VERDICTS[verdict]
    if resolved:
        emoji = ":white_check_mark:"
        title = f"Resolved: {title[0].lower()}{title[1:]}"
    elif verdict == "tracking_gap":
        emoji = ":rotating_light:"
    elif verdict == "business_change":
        emoji = ":chart_with_downwards_trend:" if direction == "drop" else ":chart_with_upwards_trend:"
    else:
        emoji = ":warning:"
    header = _clip(f"{emoji} {title}: {_segment_title(segment)} — {magnitude}", MAX_HEADER_CHARS)

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}}
    ]

    # Summary fields.
    value_line = f"{_fmt_metric_value(metric, baseline)} → {_fmt_metric_value(metric, current)}"
    if change is not None and not _is_rate(metric):
        value_line += f" ({change * 100:+.0f}%)"
    verdict_text = f"`{_escape(verdict)}`: {_VERDICT_EXPLANATIONS[verdict]}"
    fields = [
        f"*Segment*\n{_segment_detail(segment)}",
        f"*{_escape(metric_label.capitalize())}* (baseline → current)\n{value_line}",
        f"*Changed at*\n{_iso(alert.change_at)}",
        f"*Detected at*\n{_iso(alert.detected_at)}",
        f"*Verdict*\n{verdict_text}",
        f"*Status*\n{_escape(status)}",
    ]
    blocks.append(
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": _clip(f, MAX_FIELD_CHARS)} for f in fields[:MAX_FIELDS]],
        }
    )

    causes = _ranked(alert.likely_causes, TOP_CAUSES)
    if causes:
        lines = ["*Likely causes*"]
        for rank, cause in enumerate(causes, 1):
            name = _raw(cause.cause, 80) or "unknown"
            score = _finite(cause.score)
            line = f"{rank}. *{_escape(name.replace('_', ' '))}*"
            if score is not None:
                line += f" (score {score:.2f})"
            evidence = _md(cause.evidence)
            if evidence:
                line += f"\n      {evidence}"
            lines.append(line)
        blocks.append(_section(_lines_within(lines, MAX_SECTION_CHARS)))

    changes = _ranked(alert.nearby_changes, TOP_CHANGES)
    if changes:
        lines = ["*Nearby changes*"]
        for item in changes:
            summary = _md(item.summary, 160) or _md(item.change_id, 80) or "change"
            url = _safe_url(item.url)
            shown = _link(url, summary) if url else summary
            kind = _md(item.kind, 40) or "change"
            pieces = [f"*{kind}*"]
            if item.service:
                pieces.append(f"`{_md(item.service, 60)}`")
            pieces.append(shown)
            distance = _distance_text(item, change_at)
            if distance:
                pieces.append(distance)
            line = "• " + " · ".join(pieces)
            if item.author:
                line += f" (by {_md(item.author, 60)})"
            lines.append(line)
        blocks.append(_section(_lines_within(lines, MAX_SECTION_CHARS)))

    loc_lines = []
    for items, label in ((alert.localisation.moved, "Moved"), (alert.localisation.steady, "Held")):
        if not items:
            continue
        labels = [_child_label(i) for i in items[:MAX_LOCALISATION_ITEMS]]
        if len(items) > MAX_LOCALISATION_ITEMS:
            labels.append(f"+{len(items) - MAX_LOCALISATION_ITEMS} more")
        loc_lines.append(f"*{label}:* " + ", ".join(labels))
    if loc_lines:
        blocks.append(_section(_lines_within(["*Where*", *loc_lines], MAX_SECTION_CHARS)))

    table = _reconciliation_table(alert.reconciliation)
    if table:
        blocks.append(_section(table))

    # the lifecycle: the plan it was compared with, who said what, and how to answer
    life = []
    if alert.plan:
        life.append(f"*Plan:* {_md(alert.plan, 300)}")
    if alert.resolution == "expected":
        life.append("*Marked expected*: the new level is the new normal" + (f": {_md(alert.note, 300)}" if alert.note else ""))
    elif alert.resolution == "false_alarm":
        life.append("*Marked a false alarm*" + (f": {_md(alert.note, 300)}" if alert.note else ""))
    elif alert.acknowledged:
        life.append("*Acknowledged*" + (f": {_md(alert.note, 300)}" if alert.note else ""))
    if not resolved and not alert.is_notice:
        safe_id = _raw(alert.alert_id, 120).replace("`", "")
        life.append(f"Answer with `gapwatch alert ack|expected|false {safe_id}` (see docs/oncall.md)")
    if life:
        blocks.append(_section(_lines_within(life, MAX_SECTION_CHARS)))

    link = grafana_url(grafana_url_template, alert, segment)
    if link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in Grafana", "emoji": True},
                        "url": link,
                        "action_id": "gapwatch_open_grafana",
                    }
                ],
            }
        )

    context = [
        f"alert_id `{_escape(alert_id)}`",
        f"metric `{_escape(_raw(metric, 60))}`",
        f"direction {_escape(direction)}",
    ]
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": _clip(" · ".join(context), MAX_SECTION_CHARS)}][
                :MAX_CONTEXT_ELEMENTS
            ],
        }
    )

    if len(blocks) > MAX_BLOCKS:  # cannot happen with the sections above; kept as a guard
        blocks = blocks[: MAX_BLOCKS - 1] + [blocks[-1]]
    fallback = _clip(
        f"{_escape(header)} | {_escape(metric_label)} {value_line} | changed {_iso(alert.change_at)}"
        f" | alert {_escape(alert_id)}",
        MAX_FALLBACK_CHARS,
    )
    return {"text": fallback, "blocks": blocks}


def _minimal_payload(alert_id: str, status: str) -> dict[str, Any]:
    """Used only if formatting fails: the alert still reaches Slack, just without detail."""
    return {"text": f"gapwatch alert {_md(alert_id, 120)} ({_md(status, 20)}); details in Grafana / gap-alerts"}


# --------------------------------------------------------------------------------------------
# Forwarder
# --------------------------------------------------------------------------------------------


class SlackMetrics:
    """The forwarder's Prometheus metrics, on the registry given (a fresh one by default)."""

    OUTCOMES = ("delivered", "retried", "rate_limited", "failed_permanent")

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.posts = Counter(
            "gapwatch_slack_posts",
            "Slack webhook post outcomes: delivered, retried (5xx/connection error), "
            "rate_limited (429), failed_permanent (other 4xx or undecodable alert, sent to the DLQ)",
            ["outcome"],
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "gapwatch_slack_delivery_seconds",
            "Time from the first post attempt of an alert until Slack accepted it (retries included)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=self.registry,
        )
        self.skipped = Counter(
            "gapwatch_slack_skipped",
            "Alerts on the topic not posted: duplicate ((alert_id, status) already posted by any replica), "
            "acknowledged (someone acked the incident), cooldown (a re-fire of a posted incident, webhook mode), "
            "digest (a notice held for the digest)",
            ["reason"],
            registry=self.registry,
        )
        self.record_seconds = Histogram(
            "gapwatch_slack_record_seconds",
            "Time from Slack accepting an alert until Kafka acknowledged its record on the posted "
            "topic: a crash inside this window posts the alert a second time",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.unrecorded = Counter(
            "gapwatch_slack_unrecorded",
            "Alerts Slack accepted whose posted record could not be written before the forwarder "
            "stopped (they will be posted again by the next owner of their partition)",
            registry=self.registry,
        )
        self.partitions = Gauge(
            "gapwatch_slack_partitions",
            "Partitions of the alerts topic this forwarder owns and has loaded the posted record of",
            registry=self.registry,
        )
        self.remembered = Gauge(
            "gapwatch_slack_remembered_posts",
            "(alert_id, status) pairs held in memory for the owned partitions (bounded by the "
            "posted retention and the per-partition capacity)",
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "gapwatch_slack_posted_load_seconds",
            "Time to read the posted record of newly assigned partitions to its end (per rebalance)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        for outcome in self.OUTCOMES:
            self.posts.labels(outcome=outcome)
        for reason in ("duplicate", "acknowledged", "cooldown", "digest"):
            self.skipped.labels(reason=reason)


class _Secret:
    """Holds the webhook URL so that repr()/str() of a forwarder can never leak it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class _Outcome(enum.Enum):
    DELIVERED = "delivered"
    PERMANENT = "failed_permanent"
    ABANDONED = "abandoned"  # stopping, or the partition was revoked: not committed


class ForwarderSetupError(RuntimeError):
    """The topics do not fit together (e.g. the posted topic has too few partitions)."""


def kafka_client(kind: str, options: Mapping[str, Any]) -> Any:
    """Every Kafka client of the forwarder is built here: `kind` is "consumer", "producer" or
    "admin", `options` the aiokafka keyword arguments, starting from
    `streams.kafka.client_options(settings)` (bootstrap servers and security) in the CLI."""
    if kind == "consumer":
        from aiokafka import AIOKafkaConsumer

        return AIOKafkaConsumer(**options)
    if kind == "producer":
        from aiokafka import AIOKafkaProducer

        return AIOKafkaProducer(**options)
    if kind == "admin":
        from aiokafka.admin import AIOKafkaAdminClient

        return AIOKafkaAdminClient(**options)
    raise ValueError(f"unknown Kafka client kind {kind!r}")


def posted_key(alert_id: str, status: str) -> bytes:
    """Key of a record on the posted topic: the identity of one Slack post."""
    return orjson.dumps([alert_id, status])


class _Partition:
    """What the forwarder knows about one owned partition of the alerts topic: the identities
    posted from it (by any replica), oldest first, with the time they were posted."""

    __slots__ = ("tp", "posted", "ready", "threads")

    def __init__(self, tp: Any):
        self.tp = tp
        self.posted: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.ready = asyncio.Event()
        #: incident_key -> {"detected_at", "ts", "channel"} of its first post (quiet rules)
        self.threads: dict[str, dict[str, Any]] = {}


def _rebalance_listener(forwarder: SlackForwarder) -> Any:
    from aiokafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            await forwarder._on_revoked(set(revoked))

        async def on_partitions_assigned(self, assigned: Any) -> None:
            await forwarder._on_assigned(set(assigned))

    return Listener()


class SlackForwarder:
    """Consumes `topic` and posts each alert to the Slack webhook, in order, once.

    Any number of replicas may run in one consumer group. Each (alert_id, status) posted is
    recorded on the compacted `posted_topic`, in the partition of the same number as the
    alert's, right after Slack accepted it and before the alert's offset is committed. A
    forwarder that is assigned a partition reads that partition of the posted topic to its end
    before it posts anything from it, and a forwarder that loses a partition first finishes
    the post in hand (its HTTP request, its record, its commit). Offsets are committed one
    message at a time; a message that cannot be delivered yet blocks its partition.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        webhook_url: str,
        *,
        topic: str = DEFAULT_TOPIC,
        dlq_topic: str = DEFAULT_DLQ_TOPIC,
        posted_topic: str = DEFAULT_POSTED_TOPIC,
        group_id: str = DEFAULT_GROUP_ID,
        grafana_url_template: str | None = None,
        registry: CollectorRegistry | None = None,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        max_retry_after_s: float = 3600.0,
        request_timeout_s: float = 10.0,
        posted_retention_s: float = DEFAULT_POSTED_RETENTION_S,
        dedupe_capacity: int = 100_000,
        auto_offset_reset: str = "earliest",
        client_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        bot_token: str | None = None,
        channel: str | None = None,
        api_base_url: str = DEFAULT_API_BASE,
        digest_s: float | None = None,
        feedback_topic: str | None = None,
    ):
        if not (bot_token and not webhook_url) and not _safe_url(webhook_url):
            raise ValueError("the Slack webhook URL must be an http(s) URL without spaces")
        self.bootstrap_servers = bootstrap_servers
        self._webhook = _Secret(webhook_url)
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.posted_topic = posted_topic
        self.group_id = group_id
        self.grafana_url_template = grafana_url_template
        self.metrics = SlackMetrics(registry)
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.request_timeout_s = request_timeout_s
        self.posted_retention_s = posted_retention_s
        self.dedupe_capacity = dedupe_capacity
        self.auto_offset_reset = auto_offset_reset
        self.client_options = dict(client_options or {})
        self.consumer_options = dict(consumer_options or {})
        self.producer_options = dict(producer_options or {})
        self._rng = rng or random.Random()
        # quiet rules (docs/slack.md): cooldown of re-fires, Web API threads, notice digest
        self.cooldown_s = cooldown_s
        self._bot = _Secret(bot_token) if bot_token else None
        if self._bot is not None and not channel:
            raise ValueError("a bot token needs a channel (--channel)")
        self.channel = channel
        self.api_base_url = api_base_url.rstrip("/")
        self.digest_s = digest_s
        self._digest: list[tuple[Any, Alert, Any]] = []  # (tp, notice, record) held for the digest
        self._digest_due = 0.0
        self._last_ts: tuple[str, str] | None = None  # (channel, ts) of the last Web API post
        self._deferred: dict[Any, int] = {}  # tp -> newest offset handled behind a held notice
        #: the feedback topic (`gapwatch alert`): alert ids people acknowledged are not posted
        self.feedback_topic = feedback_topic
        self._acked: set[str] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # set on stop() and on a revocation: ends retry sleeps
        self._handling = asyncio.Lock()  # held while one alert is handled; a revocation waits for it
        self._partitions: dict[Any, _Partition] = {}
        self._active: set[Any] = set()  # owned, loaded, not being revoked
        self._generation = 0  # bumped on every revocation
        self._accepted_at = 0.0
        self._in_hand = ""  # alert_id being handled, for the logs
        self._consumer: Any = None
        self._producer: Any = None
        self._session: Any = None

    def __repr__(self) -> str:
        return f"SlackForwarder(topic={self.topic!r}, group_id={self.group_id!r}, webhook=<secret>)"

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the forwarder to stop; safe from a signal handler. An alert that is mid-retry is
        left uncommitted and will be delivered after the next start."""
        self._stopping.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _options(self, **options: Any) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers, **self.client_options, **options}

    async def start(self) -> None:
        import aiohttp

        consumer_options = self._options(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            # We deliberately sit on one message for as long as Slack is down; liveness is
            # judged by heartbeats (session timeout), not by how often we poll.
            max_poll_interval_ms=7 * 24 * 3600 * 1000,
            # A revocation waits for the post in hand (at most one HTTP timeout) and its record:
            # the group must wait for us rather than hand the partition over meanwhile.
            rebalance_timeout_ms=int(self.request_timeout_s * 1000) + 30_000,
        )
        consumer_options.update(self.consumer_options)
        self._consumer = kafka_client("consumer", consumer_options)
        # linger 0: the posted record leaves at once (it is the window a crash can repost in).
        self._producer = kafka_client("producer", self._options(acks="all", linger_ms=0, **self.producer_options))
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            headers={"Content-Type": "application/json"},
        )
        try:
            await self._ensure_posted_topic()
            await self._producer.start()
            self._consumer.subscribe([self.topic], listener=_rebalance_listener(self))
            await self._consumer.start()
        except BaseException:
            await self.close()
            raise
        log.info(
            "slack forwarder started: topic=%s group=%s posted=%s dlq=%s webhook configured: yes",
            self.topic, self.group_id, self.posted_topic, self.dlq_topic,
        )

    async def _ensure_posted_topic(self) -> None:
        """Create the posted topic like the alerts topic (partitions, replication), compacted
        with a retention, unless it exists; refuse to run when it has fewer partitions."""
        from aiokafka.admin import NewTopic

        admin = kafka_client("admin", self._options())
        await admin.start()
        try:
            alerts = await self._describe(admin, self.topic, wait=True)
            if alerts is None:  # stopped while waiting
                return
            partitions = len(alerts["partitions"])
            replication = max(1, min(len(p["replicas"]) for p in alerts["partitions"]))
            posted = await self._describe(admin, self.posted_topic, wait=False)
            if posted is None:
                retention_ms = int((self.posted_retention_s + 86_400) * 1000)
                configs = {"cleanup.policy": "compact,delete", "retention.ms": str(retention_ms)}
                with contextlib.suppress(Exception):  # a concurrent replica may win the race
                    await admin.create_topics([NewTopic(self.posted_topic, partitions, replication, topic_configs=configs)])
                posted = await self._describe(admin, self.posted_topic, wait=True)
                if posted is None:
                    return
                log.info("created %s: %d partitions, compacted, retention %d ms", self.posted_topic, partitions, retention_ms)
            if len(posted["partitions"]) < partitions:
                raise ForwarderSetupError(
                    f"{self.posted_topic} has {len(posted['partitions'])} partitions, {self.topic} has {partitions}: "
                    f"the posted topic needs at least as many (add partitions to {self.posted_topic})"
                )
        finally:
            await admin.close()

    async def _describe(self, admin: Any, topic: str, *, wait: bool) -> dict[str, Any] | None:
        """The topic's metadata; None if it does not exist (and `wait` is false) or we stop.
        Existence is checked by listing, so that the check never auto-creates the topic."""
        warned = False
        while not self.stopping:
            described: dict[str, Any] = {}
            try:
                if topic in await admin.list_topics():
                    (described,) = await admin.describe_topics([topic])
            except Exception as exc:
                log.warning("reading the metadata of %s failed: %s", topic, type(exc).__name__)
            if described.get("error_code") == 0 and described.get("partitions"):
                return dict(described)
            if not wait:
                return None
            if not warned:
                log.info("waiting for topic %s to exist", topic)
                warned = True
            await self._sleep(0.5)
        return None

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        session, self._session = self._session, None
        for closer in (
            _stop_consumer(consumer) if consumer is not None else None,
            producer.stop() if producer is not None else None,
            session.close() if session is not None else None,
        ):
            if closer is not None:
                try:
                    await closer
                except Exception as exc:  # closing must not mask the reason we stopped
                    log.warning("error while closing: %s", type(exc).__name__)

    async def run(self) -> None:
        """Start (unless started), forward until stop(), then close."""
        if self._consumer is None:
            await self.start()
        announce = asyncio.ensure_future(self._announce_stop())
        feedback = asyncio.ensure_future(self._follow_feedback()) if self.feedback_topic else None
        try:
            while not self.stopping:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=100)
                if self._digest and time.monotonic() >= self._digest_due:
                    async with self._handling:
                        await self.flush_digest()
                generation = self._generation
                for tp, records in batch.items():
                    for record in records:
                        # A revocation since the fetch: whoever owns tp now (maybe us again)
                        # re-reads from the committed offset.
                        if self.stopping or self._generation != generation:
                            break
                        if not await self._wait_ready(tp, generation):
                            break
                        async with self._handling:
                            if tp not in self._active or self._generation != generation:
                                break
                            await self._handle(tp, record)
        finally:
            announce.cancel()
            if feedback is not None:
                feedback.cancel()
                with contextlib.suppress(BaseException):
                    await feedback
            await self.close()
            log.info("slack forwarder stopped")

    async def _announce_stop(self) -> None:
        await self._stopping.wait()
        if self._handling.locked():
            log.info("stop requested while alert %s is in hand: a request under way is awaited, no retry started", self._in_hand)
        else:
            log.info("stop requested")

    async def _wait_ready(self, tp: Any, generation: int) -> bool:
        """Wait until tp's posted record is loaded: a fetch can return records of a new
        assignment before the assignment callback has even started. False if tp is not ours
        (or no longer: a revocation resets the fetch positions, nothing is skipped)."""
        while not self.stopping and self._generation == generation:
            state = self._partitions.get(tp)
            if state is not None and state.ready.is_set():
                return True
            if state is None and tp not in self._consumer.assignment():
                return False
            with contextlib.suppress(TimeoutError):
                if state is None:  # the assignment callback has not run yet
                    await asyncio.wait_for(self._wake.wait(), timeout=0.05)
                else:
                    await asyncio.wait_for(state.ready.wait(), timeout=0.5)
        return False

    # -- rebalances -------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[Any]) -> None:
        """Called by the group coordinator before the group re-forms: nothing new is started
        on a revoked partition, and the alert in hand is finished (its HTTP request ends within
        the request timeout; if Slack accepted it, it is recorded and committed) before the
        partitions can move to another replica."""
        self._generation += 1
        self._active -= revoked
        self._wake.set()
        if self._handling.locked():
            log.info("partitions %s revoked while alert %s is in hand: finishing it first",
                     _partition_list(revoked), self._in_hand)
        async with self._handling:
            pass
        if not self.stopping:
            self._wake.clear()
        for tp in revoked:
            self._partitions.pop(tp, None)
            self._deferred.pop(tp, None)
        # held notices of a revoked partition were not committed: its next owner re-reads them
        self._digest = [item for item in self._digest if item[0] not in revoked]
        self._update_gauges()
        if revoked:
            log.info("partitions revoked: %s", _partition_list(revoked))

    async def _on_assigned(self, assigned: set[Any]) -> None:
        """Called after the group re-formed: read the posted topic's partitions of the same
        numbers to their end, then (only then) allow posting from them."""
        fresh = {tp: _Partition(tp) for tp in assigned}
        self._partitions.update(fresh)
        if not fresh:
            self._update_gauges()
            return
        started = time.monotonic()
        attempt = 0
        while not self.stopping:
            try:
                loaded, expired = await self._load_posted(fresh)
                break
            except Exception as exc:
                wait = self.backoff_delay(attempt)
                attempt += 1
                log.warning("reading %s failed (%s): retry in %.1f s", self.posted_topic, type(exc).__name__, wait)
                for state in fresh.values():
                    state.posted.clear()
                if not await self._sleep(wait):
                    return
        else:
            return
        for tp, state in fresh.items():
            if self._partitions.get(tp) is state:
                state.ready.set()
                self._active.add(tp)
        elapsed = time.monotonic() - started
        self.metrics.load_seconds.observe(elapsed)
        self._update_gauges()
        log.info(
            "partitions assigned: %s; %d posted records read in %.2f s (%d expired)",
            _partition_list(assigned), loaded, elapsed, expired,
        )

    async def _load_posted(self, states: Mapping[Any, _Partition]) -> tuple[int, int]:
        """Read the posted topic's partitions matching `states` from the beginning to the end
        they had when we started. Entries older than the retention are forgotten and a
        tombstone is written for them (so a compact-only topic stays bounded too)."""
        from aiokafka import TopicPartition

        by_posted = {TopicPartition(self.posted_topic, tp.partition): state for tp, state in states.items()}
        reader = kafka_client("consumer", self._options(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"))
        await reader.start()
        loaded = 0
        expired: list[tuple[Any, bytes]] = []
        try:
            reader.assign(list(by_posted))
            await reader.seek_to_beginning(*by_posted)
            ends = await reader.end_offsets(list(by_posted))
            pending = {ptp for ptp in by_posted if await reader.position(ptp) < ends[ptp]}
            while pending and not self.stopping:
                batch = await reader.getmany(*pending, timeout_ms=500)
                for ptp, records in batch.items():
                    state = by_posted[ptp]
                    for record in records:
                        if record.offset >= ends[ptp]:
                            break
                        loaded += 1
                        identity = _identity_of(record.key)
                        if identity is None:
                            continue
                        if record.value is None:
                            state.posted.pop(identity, None)
                            continue
                        posted_at = _posted_at(record)
                        state.posted.pop(identity, None)
                        state.posted[identity] = posted_at
                        _remember_thread(state, record.value)
                for ptp in list(pending):
                    if await reader.position(ptp) >= ends[ptp]:
                        pending.discard(ptp)
        finally:
            await reader.stop()
        horizon = time.time() - self.posted_retention_s
        for ptp, state in by_posted.items():
            # Arrival order is posting order up to clock skew between replicas: sort to be exact.
            ordered = sorted(state.posted.items(), key=lambda item: item[1])
            state.posted = OrderedDict(item for item in ordered if item[1] >= horizon)
            expired.extend((ptp.partition, posted_key(*identity)) for identity, at in ordered if at < horizon)
            self._trim(state)
        for partition, key in expired:
            await self._producer.send(self.posted_topic, key=key, value=None, partition=partition)
        if expired:
            await self._producer.flush()
        return loaded, len(expired)

    def _update_gauges(self) -> None:
        self.metrics.partitions.set(len(self._active))
        self.metrics.remembered.set(sum(len(s.posted) for s in self._partitions.values()))

    # -- one message ----------------------------------------------------------------------

    async def _handle(self, tp: Any, record: Any) -> None:
        try:
            alert = Alert.from_json(record.value if record.value is not None else b"")
        except AlertFormatError as exc:
            # not an alert: parked on the DLQ (original bytes) and skipped, never guessed at
            log.warning(
                "unreadable alert at %s[%d]@%d (%s): sent to %s",
                tp.topic, tp.partition, record.offset, exc.detail, self.dlq_topic,
            )
            self.metrics.posts.labels(outcome="failed_permanent").inc()
            if await self._send_to_dlq(tp, record, exc.reason):
                await self._commit(tp, record.offset)
            return
        key_id = record.key.decode("utf-8", "replace") if isinstance(record.key, bytes) else ""
        alert_id = _raw(alert.alert_id, 200) or _raw(key_id, 200) or f"{tp.topic}-{tp.partition}-{record.offset}"
        status = alert.status
        self._in_hand = alert_id
        identity = (alert_id, status)
        state = self._partitions[tp]
        # Alerts are keyed by alert_id, so an identity's posts are all in tp's number; the other
        # owned partitions are checked too, for a topic keyed otherwise (one replica then still
        # never posts an identity twice).
        if any(identity in other.posted for other in self._partitions.values()):
            self.metrics.skipped.labels(reason="duplicate").inc()
            log.info("alert %s (%s) already posted: skipped", alert_id, status)
            await self._commit(tp, record.offset)
            return
        thread = self._thread_of(alert)
        quiet = self._quiet_reason(alert, thread)
        if quiet == "digest":
            self._digest.append((tp, alert, record))
            self._digest_due = self._digest_due or time.monotonic() + (self.digest_s or 0.0)
            self.metrics.skipped.labels(reason="digest").inc()
            return  # committed with the digest (a crash before it re-reads the notice)
        if quiet is not None:
            # not posted, but recorded like a post: every replica agrees, nothing is re-read
            self.metrics.skipped.labels(reason=quiet).inc()
            log.info("alert %s (%s): not posted (%s)", alert_id, status, quiet)
            if await self._record_posted(tp, identity, record, alert, quiet=quiet):
                self._remember(state, identity)
                await self._commit(tp, record.offset)
            return
        try:
            payload = format_alert(alert, self.grafana_url_template)
        except Exception as exc:  # a formatting bug must not lose the alert
            log.error("could not format alert %s (%s): posting a minimal message", alert_id, type(exc).__name__)
            payload = _minimal_payload(alert_id, status)
        if self._bot is not None:
            payload = {**payload, "channel": self.channel}
            if thread is not None and thread.get("ts"):
                payload["thread_ts"] = thread["ts"]  # a re-fire or a resolution: a reply in its thread
                payload["channel"] = thread.get("channel") or self.channel
        outcome, reason = await self._deliver(payload, alert_id, tp)
        if outcome is _Outcome.DELIVERED:
            # The one unavoidable window: Slack has the message, Kafka does not know yet.
            recorded = await self._record_posted(tp, identity, record, alert, reply="thread_ts" in payload)
            self.metrics.record_seconds.observe(time.monotonic() - self._accepted_at)
            self._remember(state, identity)
            if recorded:
                await self._commit(tp, record.offset)
            log.info("alert %s (%s) posted to Slack", alert_id, status)
        elif outcome is _Outcome.PERMANENT:
            if await self._send_to_dlq(tp, record, reason):
                await self._commit(tp, record.offset)

    async def _record_posted(self, tp: Any, identity: tuple[str, str], record: Any,
                             alert: Alert | None = None, quiet: str = "", reply: bool = False) -> bool:
        """Write (and wait for the ack of) the posted record of `identity` to the posted topic's
        partition of tp's number. Retried until Kafka takes it, also across a revocation (the
        next owner must see it); after stop() for at most one request timeout more."""
        doc: dict[str, Any] = {
            "alert_id": identity[0],
            "status": identity[1],
            "posted_at": time.time(),
            "source": f"{record.topic}/{record.partition}/{record.offset}",
        }
        if alert is not None and alert.incident_key:
            # the incident's first post opens its thread; re-fires and resolutions find it here
            doc["incident_key"] = alert.incident_key
            doc["detected_at"] = alert.detected_at
            if quiet:
                doc["quiet"] = quiet
            elif reply:
                doc["reply"] = True
            elif self._last_ts is not None:
                doc["channel"], doc["ts"] = self._last_ts
        value = orjson.dumps(doc)
        state = self._partitions.get(tp)
        if state is not None:
            _remember_thread(state, value)
        key = posted_key(*identity)
        attempt = 0
        give_up_at: float | None = None
        while True:
            try:
                await self._producer.send_and_wait(self.posted_topic, key=key, value=value, partition=tp.partition)
                return True
            except Exception as exc:
                if self.stopping:
                    give_up_at = give_up_at or time.monotonic() + self.request_timeout_s
                    if time.monotonic() > give_up_at:
                        self.metrics.unrecorded.inc()
                        log.error(
                            "alert %s (%s) was posted but could not be recorded (%s): the next owner of "
                            "partition %d will post it again", identity[0], identity[1], type(exc).__name__, tp.partition,
                        )
                        return False
                wait = min(1.0, self.backoff_delay(attempt))
                attempt += 1
                log.warning("recording alert %s failed (%s): retry in %.2f s", identity[0], type(exc).__name__, wait)
                await asyncio.sleep(wait)

    def _remember(self, state: _Partition, identity: tuple[str, str]) -> None:
        now = time.time()
        state.posted.pop(identity, None)
        state.posted[identity] = now
        horizon = now - self.posted_retention_s
        while state.posted:
            oldest, at = next(iter(state.posted.items()))
            if at >= horizon:
                break
            state.posted.popitem(last=False)
            # Bounded on a compact-only topic as well; fire and forget (the next load retries).
            task = asyncio.ensure_future(
                self._producer.send(self.posted_topic, key=posted_key(*oldest), value=None, partition=state.tp.partition)
            )
            task.add_done_callback(_ignore_result)
        self._trim(state)
        self._update_gauges()

    def _trim(self, state: _Partition) -> None:
        if len(state.posted) > self.dedupe_capacity:
            log.warning(
                "partition %d: more than %d posts within the retention: forgetting the oldest "
                "(a re-send of those would be posted again)", state.tp.partition, self.dedupe_capacity,
            )
            while len(state.posted) > self.dedupe_capacity:
                state.posted.popitem(last=False)

    async def _commit(self, tp: Any, offset: int) -> None:
        from aiokafka.errors import KafkaError

        held = [r.offset for t, _, r in self._digest if t == tp]
        if held and min(held) <= offset:
            # a notice held for the digest: commit only up to it (a crash re-reads it; what
            # follows it was recorded as posted and is skipped as a duplicate)
            self._deferred[tp] = max(offset, self._deferred.get(tp, -1))
            offset = min(held) - 1
            if offset < 0:
                return
        try:
            await self._consumer.commit({tp: offset + 1})
        except KafkaError as exc:
            # Typically a rebalance took the partition away. The next owner re-reads the
            # message and finds it on the posted topic.
            log.warning("commit of %s[%d]@%d failed: %s", tp.topic, tp.partition, offset, type(exc).__name__)

    def _owns(self, tp: Any) -> bool:
        return self._consumer is not None and tp in self._active

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": in [d/2, d], d = min(cap, base * 2^attempt)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * (2 ** min(attempt, 62)))
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless asked to stop (or a revocation wakes us); True if we should carry on."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, seconds))
        return not self.stopping

    async def _post(self, payload: Mapping[str, Any]) -> tuple[int | None, str, str | None]:
        """One POST: (status or None on a connection error, short description, Retry-After)."""
        import aiohttp

        if self._bot is not None:
            return await self._post_api(payload)
        try:
            async with self._session.post(self._webhook.reveal(), data=orjson.dumps(payload)) as response:
                body = await response.text(errors="replace")
                return response.status, _slack_error(body), response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # Only the exception type (and OS reason): some aiohttp errors embed the URL.
            return None, _describe_error(exc), None

    async def _post_api(self, payload: Mapping[str, Any]) -> tuple[int | None, str, str | None]:
        """`chat.postMessage` through Slack's Web API (bot token in the header, never logged).

        Slack answers 200 with ``{"ok": false, "error": ...}`` for most failures: ratelimited is
        a 429, invalid_blocks a 400 (the text-only retry), the rest permanent 4xx."""
        import aiohttp

        self._last_ts = None
        headers = {"Authorization": f"Bearer {self._bot.reveal() if self._bot else ''}",
                   "Content-Type": "application/json; charset=utf-8"}
        try:
            async with self._session.post(f"{self.api_base_url}/chat.postMessage", data=orjson.dumps(payload),
                                          headers=headers) as response:
                body = await response.text(errors="replace")
                retry_after = response.headers.get("Retry-After")
                if response.status != 200:
                    return response.status, _slack_error(body), retry_after
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, _describe_error(exc), None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 502, "not JSON", None
        if doc.get("ok"):
            self._last_ts = (str(doc.get("channel") or payload.get("channel") or ""), str(doc.get("ts") or ""))
            return 200, "", None
        error = _raw(str(doc.get("error") or "unknown_error"), 80)
        if error == "ratelimited":
            return 429, error, retry_after
        if error in ("internal_error", "fatal_error", "service_unavailable", "request_timeout"):
            return 503, error, None
        return 400, error, None

    async def _follow_feedback(self) -> None:
        """Read the compacted feedback topic from the start, keep following it: an alert someone
        acknowledged is not posted (also when the worker has not re-sent it yet)."""
        reader = kafka_client("consumer", self._options(group_id=None, enable_auto_commit=False,
                                                        auto_offset_reset="earliest"))
        try:
            reader.subscribe([self.feedback_topic])
            await reader.start()
            while not self.stopping:
                batch = await reader.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        key = record.key.decode("utf-8", "replace") if isinstance(record.key, bytes) else ""
                        try:
                            doc = orjson.loads(record.value) if record.value else None
                        except orjson.JSONDecodeError:
                            continue
                        if isinstance(doc, dict) and doc.get("action") == "ack":
                            self._acked.add(str(doc.get("alert_id") or key))
                        elif key:
                            self._acked.discard(key)  # a newer word (expected / false) replaces it
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the forwarder goes on without it (the worker's re-send still says it)
            log.warning("cannot follow the feedback topic %s: %s", self.feedback_topic, type(exc).__name__)
        finally:
            with contextlib.suppress(Exception):
                await reader.stop()

    def _thread_of(self, alert: Alert) -> dict[str, Any] | None:
        """The incident's first post, when it was posted within the cooldown (event time)."""
        if not alert.incident_key:
            return None
        for state in self._partitions.values():
            thread = state.threads.get(alert.incident_key)
            if thread is not None and abs(alert.detected_at - float(thread.get("detected_at", 0.0))) <= self.cooldown_s:
                return thread
        return None

    def _quiet_reason(self, alert: Alert, thread: dict[str, Any] | None) -> str | None:
        """Why this alert is not posted as a new message (None: it is). docs/slack.md."""
        if alert.status == "firing" and (alert.acknowledged or alert.alert_id in self._acked):
            return "acknowledged"  # someone is on it: no repeat posts
        if alert.is_notice and alert.status == "firing" and self.digest_s:
            return "digest"
        if alert.status == "firing" and thread is not None and self._bot is None:
            return "cooldown"  # the webhook cannot thread: a re-fire posts nothing new
        return None

    async def flush_digest(self) -> None:
        """Post the held notices as one message, record each, commit past them."""
        held, self._digest, self._digest_due = self._digest, [], 0.0
        if not held:
            return
        lines = [f"• {_md(a.segment.platform)}/{_md(a.segment.event_name)} {_md(a.metric)} "
                 f"{_md(a.plan) or _md(a.direction)} (alert `{_raw(a.alert_id, 40)}`)" for _, a, _ in held]
        text = f"gapwatch digest: {len(held)} expected change(s) happened as planned"
        payload: dict[str, Any] = {"text": text, "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(":memo: " + text, MAX_HEADER_CHARS)}},
            _section(_lines_within(lines, 2900)),
        ]}
        if self._bot is not None:
            payload["channel"] = self.channel
        tp0 = held[0][0]
        outcome, _reason = await self._deliver(payload, "digest", tp0)
        if outcome is not _Outcome.DELIVERED:
            self._digest = held + self._digest  # not committed: retried with the next digest
            self._digest_due = time.monotonic() + (self.digest_s or 0.0)
            return
        for tp, alert, record in held:
            identity = (alert.alert_id, alert.status)
            if await self._record_posted(tp, identity, record, alert, quiet="digest"):
                state = self._partitions.get(tp)
                if state is not None:
                    self._remember(state, identity)
                await self._commit(tp, max(record.offset, self._deferred.get(tp, -1)))
        for tp in {tp for tp, _, _ in held}:
            self._deferred.pop(tp, None)

    async def _deliver(self, payload: dict[str, Any], alert_id: str, tp: Any) -> tuple[_Outcome, str]:
        started = time.monotonic()
        attempt = 0
        text_only = False
        while True:
            # Checked before every attempt, never during one: a request that is under way is
            # always awaited, since Slack may accept it whatever we do.
            if self.stopping or not self._owns(tp):
                return _Outcome.ABANDONED, ""
            status, detail, retry_after = await self._post(payload)
            if status is not None and 200 <= status < 300:
                self._accepted_at = time.monotonic()
                self.metrics.posts.labels(outcome="delivered").inc()
                self.metrics.delivery_seconds.observe(self._accepted_at - started)
                return _Outcome.DELIVERED, ""
            if status == 429:
                self.metrics.posts.labels(outcome="rate_limited").inc()
                wait = _parse_retry_after(retry_after, self.max_retry_after_s)
                if wait is None:
                    wait = self.backoff_delay(attempt)
                    attempt += 1
                else:  # a little extra so a herd of forwarders does not return at the same instant
                    wait += self._rng.uniform(0, min(1.0, 0.1 * wait))
                log.warning("Slack rate limited alert %s: retrying in %.1f s", alert_id, wait)
            elif status is not None and 400 <= status < 500 and status != 408:
                if status == 400 and "blocks" in payload and not text_only:
                    # Slack refused our blocks (e.g. invalid_blocks): the plain text still informs.
                    log.warning("Slack rejected the blocks of alert %s (%s): retrying as text only", alert_id, detail)
                    payload = {"text": payload.get("text") or _minimal_payload(alert_id, "")["text"]}
                    text_only = True
                    continue
                self.metrics.posts.labels(outcome="failed_permanent").inc()
                log.error(
                    "Slack rejected alert %s permanently: HTTP %d %s; sent to %s",
                    alert_id, status, detail, self.dlq_topic,
                )
                return _Outcome.PERMANENT, f"slack_http_{status}" + (f": {detail}" if detail else "")
            else:
                self.metrics.posts.labels(outcome="retried").inc()
                wait = self.backoff_delay(attempt)
                attempt += 1
                what = f"HTTP {status}" if status is not None else detail
                log.warning("posting alert %s failed (%s): retry %d in %.1f s", alert_id, what, attempt, wait)
            if not await self._sleep(wait):
                return _Outcome.ABANDONED, ""

    async def _send_to_dlq(self, tp: Any, record: Any, reason: str) -> bool:
        """Park the original message on the DLQ (original key and bytes, reason in headers).
        Retries until the broker takes it, so nothing is committed that is not kept (or until
        tp is revoked: its next owner gets the same answer from Slack and parks it)."""
        headers = [
            ("gapwatch-reason", reason.encode()),
            ("gapwatch-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ("gapwatch-consumer", b"gapwatch-slack"),
        ]
        attempt = 0
        while not self.stopping:
            try:
                await self._producer.send_and_wait(self.dlq_topic, value=record.value, key=record.key, headers=headers)
                return True
            except Exception as exc:
                wait = self.backoff_delay(attempt)
                attempt += 1
                log.warning("DLQ send failed (%s): retry in %.1f s", type(exc).__name__, wait)
                if not await self._sleep(wait) or not self._owns(tp):
                    break
        return False


def _identity_of(key: bytes | None) -> tuple[str, str] | None:
    try:
        value = orjson.loads(key) if key is not None else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[0], value[1]
    return None


def _remember_thread(state: _Partition, value: bytes | None) -> None:
    """Keep the incident's first post (its thread) from a posted record that names one."""
    try:
        doc = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return
    if not isinstance(doc, dict) or not isinstance(doc.get("incident_key"), str):
        return
    # the newest top-level post of the incident (replies and quiet records are not)
    key = doc["incident_key"]
    if doc.get("quiet") or doc.get("reply") or doc.get("status") != "firing":
        return
    state.threads[key] = {"detected_at": float(doc.get("detected_at") or 0.0), "ts": doc.get("ts"),
                          "channel": doc.get("channel")}


def _posted_at(record: Any) -> float:
    try:
        value = orjson.loads(record.value)
        at = value.get("posted_at") if isinstance(value, dict) else None
    except orjson.JSONDecodeError:
        at = None
    if isinstance(at, int | float) and not isinstance(at, bool) and math.isfinite(at):
        return float(at)
    return record.timestamp / 1000.0 if record.timestamp is not None else time.time()


def _partition_list(tps: Iterable[Any]) -> str:
    return ",".join(str(p) for p in sorted(tp.partition for tp in tps)) or "none"


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _stop_consumer(consumer: Any) -> None:
    """Stop the consumer and leave the group, also when the group is in generation 0.

    Tansu numbers a group's first generation 0 while aiokafka only sends LeaveGroup for
    generation > 0; without this, the next forwarder of the group (a restart) waits a whole
    session timeout for us to expire. Best effort, on aiokafka internals, guarded: a real Kafka
    cluster starts at generation 1 and never takes this path.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    maybe_leave = getattr(coordinator, "_maybe_leave_group", None)
    send_req = getattr(coordinator, "_send_req", None)
    if coordinator is not None and callable(maybe_leave) and callable(send_req):
        from aiokafka.protocol.group import LeaveGroupRequest

        async def leave_group() -> None:
            if getattr(coordinator, "generation", None) == 0 and getattr(coordinator, "member_id", ""):
                with contextlib.suppress(Exception):
                    await send_req(LeaveGroupRequest(coordinator.group_id, coordinator.member_id))
            await maybe_leave()

        coordinator._maybe_leave_group = leave_group
    await consumer.stop()


def _slack_error(body: str) -> str:
    """Slack answers errors with a short code such as `invalid_blocks`; keep only that shape."""
    text = body.strip()
    return text if re.fullmatch(r"[a-z0-9_]{1,60}", text) else ""


def _describe_error(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    reason = getattr(os_error, "strerror", None)
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def _parse_retry_after(value: str | None, cap: float) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP date), bounded by [0, cap]."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), cap)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def load_webhook_url(webhook_url_file: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The webhook URL from `--webhook-url-file` (wins when given) or $GAPWATCH_SLACK_WEBHOOK_URL."""
    environ = os.environ if environ is None else environ
    if webhook_url_file:
        with open(webhook_url_file, encoding="utf-8") as handle:
            return handle.read().strip() or None
    return (environ.get(WEBHOOK_ENV) or "").strip() or None


def load_bot_token(bot_token_file: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The bot token from `--bot-token-file` (wins when given) or $GAPWATCH_SLACK_BOT_TOKEN."""
    environ = os.environ if environ is None else environ
    if bot_token_file:
        with open(bot_token_file, encoding="utf-8") as handle:
            return handle.read().strip() or None
    return (environ.get(BOT_TOKEN_ENV) or "").strip() or None


def _duration_arg(text: str) -> float:
    from detectors.events import InvalidEvent, parse_duration

    try:
        return parse_duration(text, "duration")
    except InvalidEvent as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "slack",
        allow_abbrev=False,
        help="forward gap alerts to a Slack incoming webhook",
        description=(
            "Consume gap-alerts and post each alert to Slack (Block Kit). The webhook URL comes "
            f"from ${WEBHOOK_ENV} or --webhook-url-file and is never printed."
        ),
    )
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help="alerts topic (default %(default)s)")
    parser.add_argument("--dlq-topic", default=DEFAULT_DLQ_TOPIC, help="dead-letter topic (default %(default)s)")
    parser.add_argument("--group-id", default=DEFAULT_GROUP_ID, help="consumer group (default %(default)s)")
    parser.add_argument(
        "--posted-topic", default=DEFAULT_POSTED_TOPIC,
        help="compacted topic recording every (alert_id, status) posted, shared by all replicas; "
        "created like the alerts topic when missing (default %(default)s)",
    )
    parser.add_argument(
        "--posted-retention-days", type=float, default=DEFAULT_POSTED_RETENTION_S / 86_400,
        help="how long a post is remembered: a re-send of an alert older than this is posted again "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--webhook-url-file", metavar="FILE",
        help=f"file holding the webhook URL (else env {WEBHOOK_ENV})",
    )
    parser.add_argument(
        "--grafana-url-template", default=os.environ.get(GRAFANA_ENV) or None, metavar="URL",
        help=(
            f"Grafana link with {{platform}} {{event_name}} {{browser}} {{region}} {{from_ms}} {{to_ms}} "
            f"(env {GRAFANA_ENV})"
        ),
    )
    parser.add_argument(
        "--cooldown", type=_duration_arg, default=DEFAULT_COOLDOWN_S, metavar="DURATION",
        help="a re-fire of one incident within this (event time) posts nothing new with the webhook, "
        "and is a reply in the incident's thread with a bot token (default 6h)",
    )
    parser.add_argument(
        "--digest", type=_duration_arg, default=None, metavar="DURATION",
        help="collect low-priority notices (expected changes that happened as planned) and post them "
        "as one message every DURATION, e.g. 1h (default: post each)",
    )
    parser.add_argument(
        "--bot-token-file", metavar="FILE",
        help=f"file holding a Slack bot token (else env {BOT_TOKEN_ENV}): post through the Web API "
        "(chat.postMessage) so re-fires and resolutions become thread replies; never printed",
    )
    parser.add_argument("--channel", default=os.environ.get("GAPWATCH_SLACK_CHANNEL") or None,
                        help="channel id for the bot token (env GAPWATCH_SLACK_CHANNEL)")
    parser.add_argument(
        "--feedback-topic", default=os.environ.get("GAPWATCH_FEEDBACK_TOPIC") or "gapwatch-feedback",
        help="the topic `gapwatch alert` writes to: acknowledged alerts are not posted (default %(default)s; '' to ignore)",
    )
    parser.add_argument("--slack-api-url", default=DEFAULT_API_BASE, help="Slack Web API base URL (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address for /metrics (default %(default)s)")
    parser.add_argument(
        "--max-backoff-seconds", type=float, default=60.0,
        help="cap of the exponential backoff between retries (default %(default)s)",
    )
    parser.add_argument(
        "--session-timeout-ms", type=int, default=10_000,
        help="consumer group session timeout; short values join faster on the embedded broker "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--offset-reset", choices=("earliest", "latest"), default="earliest",
        help="where a brand-new consumer group starts (default %(default)s: nothing is skipped)",
    )
    from streams.kafka import add_kafka_arguments

    add_kafka_arguments(parser)  # --broker and SASL/TLS: the same flags, env and TOML as the worker
    parser.set_defaults(func=run)
    return parser


def _group_timeouts(session_timeout_ms: int) -> dict[str, int]:
    return {
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": max(100, min(3000, session_timeout_ms // 3)),
    }


def run(args: argparse.Namespace) -> int:
    """`gapwatch slack`: forward until SIGTERM/SIGINT. Exit 2 on configuration errors."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        webhook_url = load_webhook_url(getattr(args, "webhook_url_file", None))
    except OSError as exc:
        print(f"gapwatch slack: cannot read --webhook-url-file: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        bot_token = load_bot_token(getattr(args, "bot_token_file", None))
    except OSError as exc:
        print(f"gapwatch slack: cannot read --bot-token-file: {exc.strerror}", file=sys.stderr)
        return 2
    if bot_token and not getattr(args, "channel", None):
        print("gapwatch slack: a bot token needs --channel (or GAPWATCH_SLACK_CHANNEL)", file=sys.stderr)
        return 2
    if bot_token and not webhook_url:
        webhook_url = ""  # the Web API is used instead
    elif not webhook_url:
        print(
            f"gapwatch slack: no webhook URL configured: set {WEBHOOK_ENV} or pass --webhook-url-file",
            file=sys.stderr,
        )
        return 2
    if webhook_url and not _safe_url(webhook_url):
        print("gapwatch slack: the webhook URL is not an http(s) URL (value not shown)", file=sys.stderr)
        return 2
    if getattr(args, "session_timeout_ms", 10_000) < 1000:
        print("gapwatch slack: --session-timeout-ms must be at least 1000", file=sys.stderr)
        return 2
    if args.max_backoff_seconds <= 0:
        print("gapwatch slack: --max-backoff-seconds must be positive", file=sys.stderr)
        return 2
    retention_days = getattr(args, "posted_retention_days", DEFAULT_POSTED_RETENTION_S / 86_400)
    if not (retention_days > 0):
        print("gapwatch slack: --posted-retention-days must be positive", file=sys.stderr)
        return 2
    template = getattr(args, "grafana_url_template", None) or None
    if template and not template.lower().startswith(("http://", "https://")):
        print("gapwatch slack: --grafana-url-template must be an http(s) URL", file=sys.stderr)
        return 2

    from streams.config import ConfigError, load_settings
    from streams.kafka import client_options

    try:
        settings = load_settings(args)
        kafka_options = client_options(settings)  # bootstrap servers and security, as every verb
    except ConfigError as exc:
        print(f"gapwatch slack: {exc}", file=sys.stderr)
        return 2
    registry = CollectorRegistry()
    forwarder = SlackForwarder(
        settings.broker,
        webhook_url,
        topic=args.topic,
        dlq_topic=getattr(args, "dlq_topic", DEFAULT_DLQ_TOPIC),
        posted_topic=getattr(args, "posted_topic", DEFAULT_POSTED_TOPIC),
        posted_retention_s=retention_days * 86_400,
        group_id=getattr(args, "group_id", DEFAULT_GROUP_ID),
        grafana_url_template=template,
        registry=registry,
        max_backoff_s=args.max_backoff_seconds,
        initial_backoff_s=min(1.0, args.max_backoff_seconds),
        auto_offset_reset=getattr(args, "offset_reset", "earliest"),
        client_options=kafka_options,
        consumer_options=_group_timeouts(getattr(args, "session_timeout_ms", 10_000)),
        cooldown_s=getattr(args, "cooldown", DEFAULT_COOLDOWN_S),
        digest_s=getattr(args, "digest", None),
        bot_token=bot_token,
        channel=getattr(args, "channel", None),
        api_base_url=getattr(args, "slack_api_url", DEFAULT_API_BASE),
        feedback_topic=getattr(args, "feedback_topic", None) or None,
    )
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=getattr(args, "metrics_host", "0.0.0.0"), registry=registry)
        log.info("metrics on %s:%d/metrics", getattr(args, "metrics_host", "0.0.0.0"), args.metrics_port)
    log.info("webhook configured: %s; bot token configured: %s; grafana link: %s",
             "yes" if webhook_url else "no", "yes" if bot_token else "no", "yes" if template else "no")

    async def _main() -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, forwarder.stop)
        try:
            await forwarder.run()
        except ForwarderSetupError as exc:
            log.error("slack forwarder cannot start: %s", exc)
            return 2
        except Exception as exc:
            log.error("slack forwarder failed: %s", _describe_error(exc))
            return 1
        return 0

    return asyncio.run(_main())

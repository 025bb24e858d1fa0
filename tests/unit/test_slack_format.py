"""format_alert: Block Kit structure, Slack limits, mrkdwn escaping, Grafana links; the forwarder
parks what is not an alert."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from detectors.alert import Alert, AlertFormatError
from streams import slack
from streams.slack import grafana_url

GRAFANA = (
    "https://grafana.example/d/gaps?var-platform={platform}&var-event={event_name}"
    "&var-browser={browser}&var-region={region}&from={from_ms}&to={to_ms}"
)


def format_alert(doc: dict[str, Any], template: str | None = None) -> dict[str, Any]:
    """The forwarder's path: the JSON document read as an `Alert`, then formatted."""
    return slack.format_alert(Alert.from_dict(doc), template)


def child(key: str, baseline: float, current: float) -> dict[str, Any]:
    return {"segment": key, "baseline": baseline, "current": current,
            "change": round(current / baseline - 1, 3), "events": 40}


def full_alert() -> dict[str, Any]:
    return {
        "alert_id": "a-7f3c",
        "status": "firing",
        "segment": {"platform": "meta", "event_name": "purchase", "browser": "safari", "region": "*"},
        "metric": "count_ratio",
        "direction": "drop",
        "baseline": 0.97,
        "current": 0.6014,
        "change_at": 1767225600,
        "detected_at": 1767227400.0,
        "verdict": "tracking_gap",
        "likely_causes": [
            {"cause": "consent_banner_change", "score": 0.42, "evidence": "denied share 8% -> 31%"},
            {"cause": "pixel_broken", "score": 0.81, "evidence": "pixel_share: 0.12; capi_share: 0.97"},
            {"cause": "capi_outage", "score": 0.2, "evidence": "capi steady"},
            {"cause": "duplicate_trigger", "score": 0.01, "evidence": "none"},
        ],
        "nearby_changes": [
            {
                "change_id": "c1", "kind": "deploy", "summary": "Move pixel to GTM server container",
                "service": "checkout-web", "author": "alice", "url": "https://git.example/pr/1?a=1&b=2",
                "at": 1767224520, "distance_s": 1080, "score": 0.9,
            },
            {"change_id": "c2", "kind": "tag_publish", "summary": "GTM v41", "at": 1767226200, "score": 0.3},
        ],
        "localisation": {
            "moved": [child("meta|purchase|safari|eu", 0.97, 0.41), child("meta|purchase|safari|na", 0.95, 0.62)],
            "steady": [child("meta|purchase|chrome|*", 0.97, 0.96), child("meta|purchase|firefox|*", 0.9, 0.93)],
            "alarming": ["meta|purchase|safari|*"],
        },
        "reconciliation": [
            {"source": "backend", "count": 120, "value": 11850.0, "note": ""},
            {"source": "meta", "count": 72, "value": 7011.5, "note": "pixel 41 / capi 82"},
        ],
    }


def blocks_of(payload: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b for b in payload["blocks"] if b["type"] == kind]


def all_texts(payload: dict[str, Any]) -> list[str]:
    """Every mrkdwn/plain text in the payload (section text, fields, context, header)."""
    texts = [payload["text"]]
    for block in payload["blocks"]:
        if "text" in block:
            texts.append(block["text"]["text"])
        texts.extend(f["text"] for f in block.get("fields", []))
        texts.extend(e["text"] for e in block.get("elements", []) if e.get("type") == "mrkdwn")
    return texts


def assert_within_limits(payload: dict[str, Any]) -> None:
    blocks = payload["blocks"]
    assert 1 <= len(blocks) <= 50
    assert len(json.dumps(payload)) < 40_000
    for block in blocks:
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"
            assert len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            if "text" in block:
                assert len(block["text"]["text"]) <= 3000
            assert len(block.get("fields", [])) <= 10
            assert all(len(f["text"]) <= 2000 for f in block.get("fields", []))
        if block["type"] == "context":
            assert 1 <= len(block["elements"]) <= 10
        if block["type"] == "actions":
            for element in block["elements"]:
                assert len(element["text"]["text"]) <= 75
                assert len(element["url"]) <= 3000


def test_firing_alert_structure() -> None:
    payload = format_alert(full_alert(), GRAFANA)
    kinds = [b["type"] for b in payload["blocks"]]
    assert kinds[0] == "header" and kinds[-1] == "context"
    assert "actions" in kinds
    header = payload["blocks"][0]["text"]["text"]
    assert header == ":rotating_light: Tracking gap: meta purchase, Safari — 38% drop"
    assert "38% drop" in payload["text"] and "a-7f3c" in payload["text"]

    fields = "\n".join(f["text"] for f in payload["blocks"][1]["fields"])
    assert "0.97 → 0.60 (-38%)" in fields
    assert "2026-01-01T00:00:00Z" in fields  # change_at in UTC ISO
    assert "tracking_gap" in fields

    texts = "\n".join(all_texts(payload))
    # top 3 causes, highest score first, with their evidence; the 4th is left out
    causes = next(t for t in all_texts(payload) if t.startswith("*Likely causes*"))
    assert causes.index("pixel broken") < causes.index("consent banner change") < causes.index("capi outage")
    assert "duplicate trigger" not in texts
    assert "pixel_share: 0.12" in texts and "denied share 8% -&gt; 31%" in texts
    # nearby change with link, service, distance
    assert "<https://git.example/pr/1?a=1&amp;b=2|Move pixel to GTM server container>" in texts
    assert "`checkout-web`" in texts and "18 min before" in texts and "(by alice)" in texts
    assert "10 min after" in texts  # the tag publish came after the change point
    # localisation
    assert "*Moved:* Safari · EU (0.97 → 0.41), Safari · NA (0.95 → 0.62)" in texts
    assert "*Held:* Chrome (0.97 → 0.96), Firefox (0.90 → 0.93)" in texts
    # reconciliation in a code block
    table = next(t for t in all_texts(payload) if t.startswith("*Reconciliation*"))
    assert "```\nsource" in table and "11,850.00" in table and "pixel 41 / capi 82" in table
    # context with the alert id
    assert "a-7f3c" in blocks_of(payload, "context")[0]["elements"][0]["text"]
    assert_within_limits(payload)


def test_resolved_variant() -> None:
    alert = full_alert() | {"status": "resolved"}
    payload = format_alert(alert, None)
    header = payload["blocks"][0]["text"]["text"]
    assert header.startswith(":white_check_mark: Resolved: tracking gap: meta purchase, Safari")
    assert ":rotating_light:" not in header
    assert "resolved" in "\n".join(all_texts(payload))
    assert not blocks_of(payload, "actions")  # no template, no button


@pytest.mark.parametrize(
    ("verdict", "emoji", "title"),
    [
        ("business_change", ":chart_with_downwards_trend:", "Business change"),
        ("inconclusive", ":warning:", "Possible tracking gap"),
    ],
)
def test_verdict_headers(verdict: str, emoji: str, title: str) -> None:
    header = format_alert(full_alert() | {"verdict": verdict})["blocks"][0]["text"]["text"]
    assert header.startswith(f"{emoji} {title}: ")


def test_inflation_and_rate_metric_headers() -> None:
    inflation = full_alert() | {"direction": "inflation", "baseline": 1.0, "current": 1.25, "metric": "value_ratio"}
    assert format_alert(inflation)["blocks"][0]["text"]["text"].endswith("25% inflation in value ratio")
    rate = full_alert() | {"metric": "duplicate_rate", "baseline": 0.01, "current": 0.12, "direction": "inflation"}
    assert format_alert(rate)["blocks"][0]["text"]["text"].endswith("duplicate rate 1.0% → 12.0%")


def test_grafana_link_substitution() -> None:
    payload = format_alert(full_alert(), GRAFANA)
    url = blocks_of(payload, "actions")[0]["elements"][0]["url"]
    assert url.startswith("https://grafana.example/d/gaps?var-platform=meta&var-event=purchase")
    assert "var-browser=safari" in url
    assert "var-region=$__all" in url  # a rollup is Grafana's "All"
    assert "{" not in url and "}" not in url
    frm = int(url.split("from=")[1].split("&")[0])
    to = int(url.split("to=")[1])
    assert frm < 1767225600 * 1000 < 1767227400 * 1000 < to


def test_grafana_link_encodes_values_and_keeps_other_braces() -> None:
    doc = full_alert() | {"segment": {"platform": "my platform&x", "event_name": "lead", "browser": "*", "region": "eu"},
                          "change_at": 7200, "detected_at": 9000}
    url = grafana_url("https://g.example/d?p={platform}&r={region}&x={unknown}&f={from_ms}&t={to_ms}", Alert.from_dict(doc))
    assert url == "https://g.example/d?p=my%20platform%26x&r=eu&x={unknown}&f=-14400000&t=12600000"


def test_bad_grafana_template_gives_no_button() -> None:
    assert not blocks_of(format_alert(full_alert(), "javascript:alert(1)"), "actions")
    assert not blocks_of(format_alert(full_alert(), ""), "actions")


def test_user_strings_are_escaped() -> None:
    alert = full_alert()
    alert["likely_causes"] = [{"cause": "x<y", "score": 1, "evidence": "<!channel> & <https://evil|click>"}]
    alert["nearby_changes"] = [
        {"change_id": "c<1>", "kind": "deploy", "summary": "a <b> & c", "service": "svc>1", "author": "<@U123>",
         "url": "https://ok.example/x|y>z", "at": 1767224520, "score": 0.5}
    ]
    alert["reconciliation"] = [{"source": "meta<", "count": 1, "value": 2, "note": "a & b"}]
    alert["alert_id"] = "id<&>"
    payload = format_alert(alert)
    texts = "\n".join(all_texts(payload)[1:])  # header is plain_text, shown verbatim
    assert "<!channel>" not in texts and "<@U123>" not in texts and "<https://evil" not in texts
    assert "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;" in texts
    assert "a &lt;b&gt; &amp; c" in texts and "svc&gt;1" in texts
    assert "meta&lt;" in texts and "a &amp; b" in texts and "id&lt;&amp;&gt;" in texts
    # the link itself cannot be broken open by | or >
    assert "<https://ok.example/x%7Cy&gt;z|a &lt;b&gt; &amp; c>" in texts
    assert "id&lt;&amp;&gt;" in payload["text"]


def test_limits_hold_for_huge_alerts() -> None:
    alert = full_alert()
    alert["segment"]["platform"] = "p" * 500
    alert["likely_causes"] = [{"cause": "c" * 1000, "score": i, "evidence": "&" * 5000} for i in range(50)]
    alert["nearby_changes"] = [
        {"change_id": "c", "kind": "deploy", "summary": "<" * 4000, "service": "s" * 500,
         "url": "https://x.example/" + "a" * 2900, "at": 1767224520, "score": 0.5}
        for _ in range(50)
    ]
    alert["localisation"] = {"moved": [child(f"meta|purchase|{'b' * 200}{i}|r{i}", 1.0, 0.5) for i in range(500)],
                             "steady": [child("meta|purchase|*|" + "x" * 9000, 1.0, 1.0)]}
    alert["reconciliation"] = [{"source": "s" * 300, "count": i, "value": i * 1.5, "note": "&" * 400} for i in range(500)]
    alert["alert_id"] = "id" * 3000
    payload = format_alert(alert, GRAFANA + "&pad=" + "x" * 2990)
    assert_within_limits(payload)
    assert len(payload["text"]) <= 3000
    assert "…" in payload["blocks"][0]["text"]["text"]
    # a too-long Grafana URL is dropped, not truncated into a broken link
    assert not blocks_of(payload, "actions")


def minimal_alert() -> dict[str, Any]:
    return {"alert_id": "x", "status": "firing", "metric": "count_ratio", "direction": "drop",
            "segment": {"platform": "meta", "event_name": "lead", "browser": "*", "region": "eu"},
            "change_at": 1767225600, "detected_at": 1767229200, "verdict": "inconclusive"}


@pytest.mark.parametrize(
    "doc",
    [
        minimal_alert(),
        minimal_alert() | {"baseline": None, "current": None, "status": "resolved"},
        minimal_alert() | {"baseline": 0, "current": 0.5, "metric": ""},
        minimal_alert() | {"change_at": 1e30, "detected_at": -1e30, "baseline_interval": [None, None]},
        minimal_alert() | {"likely_causes": [{"cause": "", "score": 0.1}], "reconciliation": [{"source": "", "count": 0}],
                           "nearby_changes": [{"change_id": "", "kind": "", "at": 0, "score": 0}]},
    ],
)
def test_sparse_alerts_format_within_limits(doc: dict[str, Any]) -> None:
    payload = format_alert(doc, GRAFANA)
    assert payload["blocks"][0]["type"] == "header"
    assert payload["text"]
    assert_within_limits(payload)
    json.dumps(payload)  # serialisable


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"alert_id": "x"},
        minimal_alert() | {"segment": "meta|lead|*|eu"},  # a key string is not a segment object
        minimal_alert() | {"change_at": "2026-01-01T00:00:00Z"},  # times are epoch seconds
        minimal_alert() | {"status": "open"},
        minimal_alert() | {"verdict": None},
        minimal_alert() | {"current": "n/a"},
        minimal_alert() | {"likely_causes": "oops"},
        minimal_alert() | {"nearby_changes": [None, 3, {"kind": None}]},
        minimal_alert() | {"localisation": {"moved": [None, 1, {"weird": True}], "steady": "x"}},
        minimal_alert() | {"reconciliation": [{}, 1]},
        minimal_alert() | {"likely_causes": [{"cause": "c", "score": 1, "evidence": {"nested": {"a": [1, 2]}}}]},
    ],
)
def test_odd_shapes_are_not_alerts(doc: dict[str, Any]) -> None:
    with pytest.raises(AlertFormatError) as err:
        Alert.from_dict(doc)
    assert err.value.reason == "invalid_alert"


def test_distance_is_measured_from_the_change_point() -> None:
    doc = minimal_alert() | {"nearby_changes": [
        {"change_id": "d1", "kind": "deploy", "at": 1767225600 + 120, "score": 0.4},
        {"change_id": "d2", "kind": "deploy", "at": 1767225600 - 3 * 3600, "distance_s": -10800.0, "score": 0.3},
    ]}
    texts = "\n".join(all_texts(format_alert(doc)))
    assert "2 min after" in texts and "3.0 h before" in texts
    assert "2026-01-01T00:00:00Z" in texts


class _Record:
    def __init__(self, value: bytes | None, offset: int) -> None:
        self.value, self.key, self.offset = value, b"k", offset
        self.topic, self.partition = "gap-alerts", 0


async def test_forwarder_parks_what_is_not_an_alert(caplog: pytest.LogCaptureFixture) -> None:
    forwarder = slack.SlackForwarder("127.0.0.1:1", "https://hooks.example/services/T/B/secret",
                                     registry=CollectorRegistry())
    parked: list[tuple[int, str]] = []
    committed: list[int] = []

    async def to_dlq(tp: Any, record: Any, reason: str) -> bool:
        parked.append((record.offset, reason))
        return True

    async def commit(tp: Any, offset: int) -> None:
        committed.append(offset)

    forwarder._send_to_dlq = to_dlq  # type: ignore[method-assign]
    forwarder._commit = commit  # type: ignore[method-assign]
    tp = argparse.Namespace(topic="gap-alerts", partition=0)
    for offset, value in enumerate([b"{not json", None, json.dumps({"alert_id": "x", "status": "firing"}).encode()]):
        await forwarder._handle(tp, _Record(value, offset))
    assert parked == [(0, "invalid_alert_json"), (1, "invalid_alert_json"), (2, "invalid_alert")]
    assert committed == [0, 1, 2]
    assert "segment: expected an object" in caplog.text


def test_metrics_registry_is_injectable() -> None:
    registry = CollectorRegistry()
    slack.SlackMetrics(registry)
    assert registry.get_sample_value("gapwatch_slack_posts_total", {"outcome": "delivered"}) == 0.0
    # a second set on its own registry does not clash
    slack.SlackMetrics()


def test_retry_after_parsing() -> None:
    assert slack._parse_retry_after("1", 3600) == 1.0
    assert slack._parse_retry_after(" 30 ", 10) == 10.0
    assert slack._parse_retry_after("-5", 10) == 0.0
    assert slack._parse_retry_after("soon", 10) is None
    assert slack._parse_retry_after(None, 10) is None
    assert slack._parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 10) == 0.0


def test_backoff_is_exponential_jittered_and_capped() -> None:
    import random

    forwarder = slack.SlackForwarder(
        "127.0.0.1:1", "https://hooks.example/services/T/B/XyZtOkEn",
        initial_backoff_s=1, max_backoff_s=60, rng=random.Random(7),
    )
    for attempt, ceiling in [(0, 1), (1, 2), (3, 8), (10, 60), (500, 60)]:
        delays = [forwarder.backoff_delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter
    assert "XyZtOkEn" not in repr(forwarder) and "XyZtOkEn" not in str(vars(forwarder))


def test_cli_requires_a_webhook(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(slack.WEBHOOK_ENV, raising=False)
    parser = argparse.ArgumentParser()
    slack.register(parser.add_subparsers())
    args = parser.parse_args(["slack", "--broker", "127.0.0.1:1"])
    assert args.func is slack.run
    assert slack.run(args) == 2
    assert "GAPWATCH_SLACK_WEBHOOK_URL" in capsys.readouterr().err


def test_webhook_file_wins_over_env(tmp_path: Any) -> None:
    path = tmp_path / "hook"
    path.write_text("https://hooks.example/from-file\n")
    env = {slack.WEBHOOK_ENV: "https://hooks.example/from-env"}
    assert slack.load_webhook_url(str(path), env) == "https://hooks.example/from-file"
    assert slack.load_webhook_url(None, env) == "https://hooks.example/from-env"
    assert slack.load_webhook_url(None, {}) is None

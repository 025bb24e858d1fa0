"""Validation and normalisation of raw events (detectors.events): every reason code, labels,
event names, timestamps."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from detectors.events import (
    BROWSERS,
    MAX_TS,
    MIN_TS,
    REASONS,
    REGIONS,
    InvalidEvent,
    canonical_event_name,
    normalise_browser,
    normalise_region,
    parse_backend,
    parse_change,
    parse_platform,
    parse_time,
)

TS = 1767607200  # 2026-01-05T10:00:00Z
BACKEND = {"event_id": "o1", "type": "order", "order_id": "o1", "occurred_at": TS, "value": 10, "currency": "EUR"}
PLATFORM = {"event_id": "o1", "platform": "meta", "channel": "pixel", "event_name": "Purchase", "order_id": "o1",
            "occurred_at": TS, "value": 10, "currency": "EUR"}
CHANGE = {"change_id": "d-1", "kind": "deploy", "at": TS}


def with_(base: dict[str, Any], **kw: Any) -> bytes:
    d = {**base, **kw}
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


# (parser, raw, reason): at least one case per reason code
CASES: list[tuple[Any, Any, str]] = [
    (parse_backend, b"x" * (64 * 1024 + 1), "too_large"),
    (parse_backend, with_(BACKEND, pad="x" * 70_000), "too_large"),
    (parse_backend, b'{"event_id": ', "malformed_json"),
    (parse_backend, b"\xff\xfe", "malformed_json"),
    (parse_backend, b"", "malformed_json"),
    (parse_backend, None, "malformed_json"),
    (parse_platform, b"NaN", "malformed_json"),
    (parse_backend, b"[1]", "not_an_object"),
    (parse_platform, b'"s"', "not_an_object"),
    (parse_platform, b"null", "not_an_object"),
    (parse_backend, with_(BACKEND, event_id=...), "missing_event_id"),
    (parse_backend, with_(BACKEND, event_id=""), "missing_event_id"),
    (parse_platform, with_(PLATFORM, event_id=None), "missing_event_id"),
    (parse_backend, with_(BACKEND, event_id=1.5), "invalid_event_id"),
    (parse_backend, with_(BACKEND, event_id=True), "invalid_event_id"),
    (parse_platform, with_(PLATFORM, event_id="x" * 257), "invalid_event_id"),
    (parse_backend, with_(BACKEND, occurred_at=...), "missing_occurred_at"),
    (parse_platform, with_(PLATFORM, occurred_at=None), "missing_occurred_at"),
    (parse_backend, with_(BACKEND, occurred_at="yesterday"), "invalid_occurred_at"),
    (parse_backend, with_(BACKEND, occurred_at=True), "invalid_occurred_at"),
    (parse_platform, with_(PLATFORM, occurred_at={"t": 1}), "invalid_occurred_at"),
    (parse_backend, with_(BACKEND, occurred_at="1990-01-01T00:00:00Z"), "implausible_timestamp"),
    (parse_backend, with_(BACKEND, occurred_at=TS * 1000), "implausible_timestamp"),
    (parse_platform, with_(PLATFORM, occurred_at="2100-01-01T00:00:00Z"), "implausible_timestamp"),
    (parse_platform, with_(PLATFORM, occurred_at="nan"), "implausible_timestamp"),
    (parse_platform, with_(PLATFORM, platform=...), "missing_platform"),
    (parse_platform, with_(PLATFORM, platform=""), "missing_platform"),
    (parse_platform, with_(PLATFORM, platform=3), "invalid_platform"),
    (parse_platform, with_(PLATFORM, platform="meta!"), "invalid_platform"),
    (parse_platform, with_(PLATFORM, platform="x" * 41), "invalid_platform"),
    (parse_platform, with_(PLATFORM, platform="méta"), "invalid_platform"),
    (parse_backend, with_(BACKEND, value="abc"), "invalid_value"),
    (parse_backend, with_(BACKEND, value=[1]), "invalid_value"),
    (parse_platform, with_(PLATFORM, value="inf"), "invalid_value"),
    (parse_platform, with_(PLATFORM, value=True), "invalid_value"),
    (parse_backend, with_(BACKEND, value=-0.01), "negative_value"),
    (parse_platform, with_(PLATFORM, value="-3"), "negative_value"),
    (parse_backend, with_(BACKEND, currency="EURO"), "invalid_currency"),
    (parse_platform, with_(PLATFORM, currency=978), "invalid_currency"),
    (parse_platform, with_(PLATFORM, currency="XXX"), "invalid_currency"),
    (parse_backend, with_(BACKEND, click_ids=["gclid"]), "invalid_click_ids"),
    (parse_platform, with_(PLATFORM, click_ids="gclid=1"), "invalid_click_ids"),
    (parse_backend, with_(BACKEND, order_id={"a": 1}), "invalid_field"),
    (parse_backend, with_(BACKEND, type=5), "invalid_field"),
    (parse_platform, with_(PLATFORM, channel=1), "invalid_field"),
    (parse_platform, with_(PLATFORM, event_name=["x"]), "invalid_field"),
    (parse_change, {"kind": "deploy", "at": TS}, "missing_change_id"),
    (parse_change, with_(CHANGE, change_id=""), "missing_change_id"),
    (parse_change, {**CHANGE, "kind": "reboot"}, "invalid_kind"),
    (parse_change, {**CHANGE, "kind": 3}, "invalid_kind"),
    (parse_change, {**CHANGE, "at": None}, "invalid_field"),
    (parse_change, {**CHANGE, "scope": "meta"}, "invalid_field"),
    (parse_change, {**CHANGE, "at": 100}, "implausible_timestamp"),
]


@pytest.mark.parametrize(("parse", "raw", "reason"), CASES,
                         ids=[f"{i}-{c[2]}" for i, c in enumerate(CASES)])
def test_invalid_event_reason(parse: Any, raw: Any, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse(raw)
    assert info.value.reason == reason
    assert info.value.reason in REASONS
    assert info.value.detail


def test_every_reason_code_is_reachable() -> None:
    assert {reason for _, _, reason in CASES} == set(REASONS)


def test_valid_events_are_normalised() -> None:
    b = parse_backend(orjson.dumps({"event_id": 7, "type": "Subscription", "order_id": 42, "occurred_at": "2026-01-05T11:00:00+01:00",
                                    "value": "19.9", "currency": "usd", "browser": "Mobile Safari", "region": "US-CA",
                                    "consent": " Denied ", "click_ids": {"gclid": "", "fbclid": "x"}}))
    assert b == (("7", "subscribe", "42", float(TS), 19.9, "safari", "na", True, True))
    p = parse_platform(orjson.dumps({"event_id": "e", "platform": " Google Ads ", "channel": " CAPI ",
                                     "event_name": "CompletePayment", "occurred_at": str(TS), "browser": None,
                                     "click_ids": {"gclid": ""}}))
    assert (p.platform, p.channel, p.event_name, p.ts, p.value, p.currency, p.browser, p.region,
            p.consent_denied, p.has_click_ids, p.order_id) == (
        "google_ads", "capi", "purchase", float(TS), None, None, "unknown", "unknown", False, False, None)
    assert parse_platform(with_(PLATFORM, channel="")).channel == "unknown"
    assert parse_backend(with_(BACKEND, type=...)).event_name == "purchase"  # default
    # unknown fields are ignored, value 0 is a value
    assert parse_backend(with_(BACKEND, extra={"a": 1}, value=0)).value == 0.0


@pytest.mark.parametrize(("raw", "want"), [
    ("Chrome", "chrome"), ("Google Chrome", "chrome"), ("CriOS", "chrome"), ("Chrome/120.0", "chrome"),
    ("Mobile Safari", "safari"), ("iOS", "safari"), ("FxiOS", "firefox"), ("Microsoft Edge", "edge"),
    ("SamsungBrowser", "samsung"), ("Opera", "other"), ("", "unknown"), (None, "unknown"), ("null", "unknown"),
    (3, "other"), ("  SAFARI  ", "safari"),
])
def test_browser_normalisation(raw: Any, want: str) -> None:
    assert normalise_browser(raw) == want
    assert want in BROWSERS


@pytest.mark.parametrize(("raw", "want"), [
    ("DE", "eu"), ("fr", "eu"), ("Europe", "eu"), ("US", "na"), ("US-CA", "na"), ("ca", "na"), ("GB", "uk"),
    ("United Kingdom", "uk"), ("BR", "latam"), ("Latin America", "latam"), ("JP", "apac"), ("au", "apac"),
    ("AE", "mea"), ("Mars", "other"), ("", "unknown"), (None, "unknown"), (12, "other"),
])
def test_region_normalisation(raw: Any, want: str) -> None:
    assert normalise_region(raw) == want
    assert want in REGIONS


@pytest.mark.parametrize(("raw", "want"), [
    ("order", "purchase"), ("Purchase", "purchase"), ("CompletePayment", "purchase"), ("complete_payment", "purchase"),
    ("checkout_completed", "purchase"), ("Lead", "lead"), ("generate_lead", "lead"), ("SubmitForm", "lead"),
    ("qualified_lead", "qualified_lead"), ("Schedule", "booking"), ("subscription", "subscribe"),
    ("refund", "refund"), ("CompleteRegistration", "registration"), ("Add To Cart", "add_to_cart"),
    ("add-to-cart", "add_to_cart"), (None, "DEFAULT"), ("", "DEFAULT"),
])
def test_event_name_aliases(raw: Any, want: str) -> None:
    assert canonical_event_name(raw, "DEFAULT") == want


def test_event_names_are_bounded() -> None:
    assert len(canonical_event_name("x" * 100, "d")) == 40


@pytest.mark.parametrize("raw", ["purchase|gift", "a|b|c|d"])
def test_event_names_never_contain_the_segment_key_separator(raw: str) -> None:
    """Segment keys are `platform|event_name|browser|region` and are split on "|" in stage B
    (detectors/windows.py WindowAssembler._build, group_of): a name with "|" must be folded
    or the event rejected."""
    try:
        name = canonical_event_name(raw, "purchase")
    except InvalidEvent:
        return
    assert "|" not in name, (
        f"PRODUCT BUG: canonical_event_name({raw!r}) = {name!r} keeps the segment-key separator; "
        "stage B then crashes with ValueError (too many values to unpack)")


@pytest.mark.parametrize(("raw", "want"), [
    ("2026-01-05T10:00:00Z", TS), ("2026-01-05T10:00:00+00:00", TS), ("2026-01-05T11:00:00+01:00", TS),
    ("2026-01-05T10:00:00", TS), ("2026-01-05 10:00:00", TS), ("2026-01-05T10:00:00.500Z", TS + 0.5),
    (TS, TS), (float(TS) + 0.25, TS + 0.25), (str(TS), TS), (" 1767607200 ", TS),
    (MIN_TS, MIN_TS), ("2000-01-01T00:00:00Z", MIN_TS), (MAX_TS - 1, MAX_TS - 1),
])
def test_timestamps(raw: Any, want: float) -> None:
    assert parse_time(raw) == want


@pytest.mark.parametrize("raw", [MIN_TS - 1, MAX_TS, MAX_TS + 1, "1999-12-31T23:59:59Z", 0, -1, "inf", "-inf", 1e300])
def test_implausible_timestamps(raw: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_time(raw)
    assert info.value.reason == "implausible_timestamp"


def test_epoch_milliseconds_get_a_hint() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_time(TS * 1000)
    assert "milliseconds" in info.value.detail


def test_change_events() -> None:
    ch = parse_change(orjson.dumps({"change_id": "d-1", "kind": " Deploy ", "at": "2026-01-05T09:40:00Z",
                                    "summary": "s" * 600, "service": "web",
                                    "scope": {"platform": "Meta", "browser": "Mobile Safari", "region": "DE",
                                              "event_name": "Purchase"}}))
    assert ch.kind == "deploy" and ch.at == TS - 1200 and len(ch.summary) == 500
    assert ch.scope == {"platform": "meta", "browser": "safari", "region": "eu", "event_name": "purchase"}

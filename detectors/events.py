"""Decode, validate and normalise raw event bytes into compact tuples (the hot path).

Pure and Faust-free: the worker and `gapwatch backtest` call the same functions, so both see
the same events. An invalid event raises `InvalidEvent` with a short, stable reason code
(used as a metric label and the DLQ header) and a human-readable detail.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

import orjson

__all__ = [
    "InvalidEvent",
    "BackendEvent",
    "PlatformEvent",
    "ChangeEvent",
    "CALENDAR_KINDS",
    "parse_duration",
    "parse_size",
    "parse_backend",
    "parse_platform",
    "parse_change",
    "parse_time",
    "normalise_browser",
    "normalise_region",
    "canonical_event_name",
    "BROWSERS",
    "REGIONS",
    "REASONS",
    "MIN_TS",
    "MAX_TS",
]

MAX_EVENT_BYTES = 64 * 1024
MIN_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_TS = 4_102_444_800.0  # 2100-01-01T00:00:00Z

BROWSERS = ("chrome", "safari", "firefox", "edge", "samsung", "other", "unknown")
REGIONS = ("na", "eu", "uk", "latam", "apac", "mea", "other", "unknown")

#: Every reason code an event can be rejected with (bounded metric label set).
REASONS = (
    "too_large",
    "malformed_json",
    "not_an_object",
    "missing_event_id",
    "invalid_event_id",
    "missing_occurred_at",
    "invalid_occurred_at",
    "implausible_timestamp",
    "missing_platform",
    "invalid_platform",
    "invalid_value",
    "negative_value",
    "invalid_currency",
    "invalid_click_ids",
    "invalid_field",
    "missing_change_id",
    "invalid_kind",
)


class InvalidEvent(ValueError):
    """An event that cannot be counted; `reason` is a stable code from REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BackendEvent(NamedTuple):
    event_id: str
    event_name: str  # canonical (order -> purchase)
    order_id: str | None
    ts: float  # event time, epoch seconds
    value: float | None
    browser: str
    region: str
    consent_denied: bool
    has_click_ids: bool


class PlatformEvent(NamedTuple):
    platform: str
    channel: str
    event_name: str
    event_id: str
    order_id: str | None
    ts: float
    value: float | None
    currency: str | None
    browser: str
    region: str
    consent_denied: bool
    has_click_ids: bool
    #: when the event reached the pipeline (optional `arrived_at`, epoch s or ISO-8601): the
    #: reporting delay is measured from it, else from the input's arrival order (docs/events.md)
    arrived_at: float | None = None


class ChangeEvent(NamedTuple):
    change_id: str
    kind: str
    at: float
    summary: str
    service: str
    author: str
    url: str
    scope: dict[str, str]
    #: a planned change's expected effect: {metric, direction, size, scope} (docs/events.md)
    expected: dict[str, Any] | None = None
    #: end of a declared promotion / holiday (kinds `promotion`, `holiday`): `at` + duration
    until: float | None = None


# ISO 4217 active codes (plus common precious-metal / testing codes are deliberately absent).
_CURRENCIES = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP
    BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL
    GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW
    KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN
    NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK
    SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU
    UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL""".split()
)

_BROWSER_ALIASES = {
    "chrome": "chrome", "google chrome": "chrome", "chromium": "chrome", "crios": "chrome",
    "chrome mobile": "chrome", "chrome ios": "chrome", "android": "chrome",
    "safari": "safari", "mobile safari": "safari", "ios safari": "safari", "webkit": "safari",
    "safari mobile": "safari", "iphone": "safari", "ios": "safari",
    "firefox": "firefox", "fxios": "firefox", "mozilla firefox": "firefox", "firefox mobile": "firefox",
    "edge": "edge", "microsoft edge": "edge", "edg": "edge", "edgios": "edge",
    "samsung": "samsung", "samsung internet": "samsung", "samsungbrowser": "samsung",
    "unknown": "unknown", "": "unknown", "none": "unknown", "null": "unknown",
}

_REGION_GROUPS = {
    "na": "us usa ca na north_america northamerica",
    "eu": "eu europe de fr es it nl be at pl se dk fi ie pt cz gr ro hu sk si hr bg lt lv ee lu mt cy "
          "ch no is li",
    "uk": "uk gb united_kingdom great_britain england scotland wales",
    "latam": "latam mx br ar cl co pe uy py bo ec ve cr pa gt do latin_america south_america",
    "apac": "apac au nz jp kr cn in sg hk tw id th my ph vn asia asia_pacific oceania",
    "mea": "mea ae sa za eg il tr ng ke ma qa kw bh om jo middle_east africa emea_other",
    "unknown": "unknown none null",
}
_REGION_ALIASES = {alias: group for group, names in _REGION_GROUPS.items() for alias in names.split()}
_REGION_ALIASES[""] = "unknown"

_EVENT_NAME_ALIASES = {
    # backend types
    "order": "purchase", "purchase": "purchase", "completepayment": "purchase",
    "complete_payment": "purchase", "placeanorder": "purchase", "checkout_completed": "purchase",
    "lead": "lead", "generate_lead": "lead", "submitform": "lead", "submit_form": "lead",
    "qualified_lead": "qualified_lead", "booking": "booking", "schedule": "booking",
    "subscription": "subscribe", "subscribe": "subscribe", "refund": "refund",
    "completeregistration": "registration", "complete_registration": "registration",
    "sign_up": "registration",
}

_NAME_UNSAFE = re.compile(r"[^a-z0-9_]")
_browser_cache: dict[str, str] = {}
_region_cache: dict[str, str] = {}
_name_cache: dict[str, str] = {}
_CACHE_MAX = 4096


def normalise_browser(raw: Any) -> str:
    """Fold a browser string into the closed set BROWSERS.

    >>> normalise_browser("Mobile Safari"), normalise_browser(None), normalise_browser("Opera")
    ('safari', 'unknown', 'other')
    """
    if raw is None:
        return "unknown"
    if not isinstance(raw, str):
        return "other"
    hit = _browser_cache.get(raw)
    if hit is not None:
        return hit
    key = raw.strip().lower()
    out = _BROWSER_ALIASES.get(key)
    if out is None:
        out = _BROWSER_ALIASES.get(key.split("/")[0].split(" ")[0], "other")
    if len(_browser_cache) < _CACHE_MAX:
        _browser_cache[raw] = out
    return out


def normalise_region(raw: Any) -> str:
    """Fold a region or ISO 3166 country (or subdivision) code into the closed set REGIONS.

    >>> normalise_region("DE"), normalise_region("US-CA"), normalise_region("Mars"), normalise_region(None)
    ('eu', 'na', 'other', 'unknown')
    """
    if raw is None:
        return "unknown"
    if not isinstance(raw, str):
        return "other"
    hit = _region_cache.get(raw)
    if hit is not None:
        return hit
    key = raw.strip().lower().replace(" ", "_")
    out = _REGION_ALIASES.get(key)
    if out is None:
        out = _REGION_ALIASES.get(key.split("-")[0], "other")
    if len(_region_cache) < _CACHE_MAX:
        _region_cache[raw] = out
    return out


def canonical_event_name(raw: Any, default: str) -> str:
    """Canonical conversion name shared by backend types and platform event names.

    >>> canonical_event_name("order", "purchase"), canonical_event_name("CompletePayment", "x")
    ('purchase', 'purchase')
    >>> canonical_event_name("Add To Cart", "x"), canonical_event_name("Purchase|gift", "x")
    ('add_to_cart', 'purchase_gift')
    """
    if raw is None or raw == "":
        return default
    if not isinstance(raw, str):
        raise InvalidEvent("invalid_field", "event_name/type must be a string")
    hit = _name_cache.get(raw)
    if hit is not None:
        return hit
    key = _NAME_UNSAFE.sub("_", raw.strip().lower())  # `|` separates segment keys: never in a name
    out = _EVENT_NAME_ALIASES.get(key) or _EVENT_NAME_ALIASES.get(key.replace("_", "")) or key[:40]
    if len(_name_cache) < _CACHE_MAX:
        _name_cache[raw] = out
    return out


def parse_time(raw: Any, field: str = "occurred_at") -> float:
    """Event time as epoch seconds from ISO-8601 or epoch seconds; must lie in 2000..2100.

    >>> parse_time("2026-01-05T10:00:00Z"), parse_time(1767607200)
    (1767607200.0, 1767607200.0)
    """
    if raw is None:
        raise InvalidEvent(f"missing_{field}" if field == "occurred_at" else "invalid_field", f"{field} is required")
    if isinstance(raw, bool):
        raise InvalidEvent("invalid_occurred_at", f"{field} must be ISO-8601 or epoch seconds, got a boolean")
    if isinstance(raw, int | float):
        ts = float(raw)
    elif isinstance(raw, str):
        try:
            ts = float(raw)
        except ValueError:
            try:
                dt = datetime.fromisoformat(raw.strip())
            except ValueError:
                raise InvalidEvent("invalid_occurred_at", f"{field} is not ISO-8601 nor epoch seconds") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ts = dt.timestamp()
    else:
        raise InvalidEvent("invalid_occurred_at", f"{field} must be ISO-8601 or epoch seconds")
    if not (MIN_TS <= ts < MAX_TS):  # also rejects nan
        hint = " (epoch milliseconds? send seconds)" if MIN_TS * 1000 <= ts < MAX_TS * 1000 else ""
        raise InvalidEvent("implausible_timestamp", f"{field} outside 2000-2100{hint}")
    return ts


def _decode(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        raise InvalidEvent("malformed_json", "empty message")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("too_large", f"event is {len(raw)} bytes, limit {MAX_EVENT_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("malformed_json", f"not valid UTF-8 JSON ({str(exc)[:80]})") from None
    if type(obj) is not dict:
        raise InvalidEvent("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _event_id(obj: dict[str, Any], field: str = "event_id") -> str:
    raw = obj.get(field)
    if raw is None or raw == "":
        raise InvalidEvent(f"missing_{field}", f"{field} is required")
    if type(raw) is str:
        if len(raw) > 256:
            raise InvalidEvent(f"invalid_{field}", f"{field} longer than 256 characters")
        return raw
    if type(raw) is int:
        return str(raw)
    raise InvalidEvent(f"invalid_{field}", f"{field} must be a string or integer")


def _order_id(obj: dict[str, Any]) -> str | None:
    raw = obj.get("order_id")
    if raw is None or raw == "":
        return None
    if type(raw) is str:
        return raw[:256]
    if type(raw) is int:
        return str(raw)
    raise InvalidEvent("invalid_field", "order_id must be a string or integer")


def _value(obj: dict[str, Any]) -> float | None:
    raw = obj.get("value")
    if raw is None:
        return None
    if type(raw) is float or type(raw) is int:
        value = float(raw)
    elif type(raw) is str:
        try:
            value = float(raw)
        except ValueError:
            raise InvalidEvent("invalid_value", "value must be a number") from None
    else:
        raise InvalidEvent("invalid_value", "value must be a number")
    if not math.isfinite(value):
        raise InvalidEvent("invalid_value", "value must be finite")
    if value < 0:
        raise InvalidEvent("negative_value", "value must be >= 0 (refunds are their own event type)")
    return value


def _currency(obj: dict[str, Any]) -> str | None:
    raw = obj.get("currency")
    if raw is None or raw == "":
        return None
    if type(raw) is not str or raw.upper() not in _CURRENCIES:
        raise InvalidEvent("invalid_currency", "currency must be an ISO 4217 code such as EUR or USD")
    return raw.upper()


def _click_ids(obj: dict[str, Any]) -> bool:
    raw = obj.get("click_ids")
    if raw is None:
        return False
    if type(raw) is not dict:
        raise InvalidEvent("invalid_click_ids", "click_ids must be an object such as {\"gclid\": \"...\"}")
    for v in raw.values():
        if v:
            return True
    return False


def _consent_denied(obj: dict[str, Any]) -> bool:
    raw = obj.get("consent")
    return isinstance(raw, str) and raw.strip().lower() == "denied"


def parse_backend(raw: bytes | str | None) -> BackendEvent:
    """Validate one backend event.

    >>> parse_backend(b'{"event_id":"o1","type":"order","occurred_at":1767607200,"value":30,"browser":"Safari","region":"DE"}')
    BackendEvent(event_id='o1', event_name='purchase', order_id=None, ts=1767607200.0, value=30.0, browser='safari', region='eu', consent_denied=False, has_click_ids=False)
    """
    obj = _decode(raw)
    event_id = _event_id(obj)
    ts = parse_time(obj.get("occurred_at"))
    value = _value(obj)
    _currency(obj)
    return BackendEvent(
        event_id,
        canonical_event_name(obj.get("type"), "purchase"),
        _order_id(obj),
        ts,
        value,
        normalise_browser(obj.get("browser")),
        normalise_region(obj.get("region")),
        _consent_denied(obj),
        _click_ids(obj),
    )


def _platform_name(obj: dict[str, Any]) -> str:
    raw = obj.get("platform")
    if raw is None or raw == "":
        raise InvalidEvent("missing_platform", "platform is required (meta, google_ads, tiktok, ga4, ...)")
    if type(raw) is not str:
        raise InvalidEvent("invalid_platform", "platform must be a string")
    name = raw.strip().lower().replace(" ", "_").replace("-", "_")
    if not name or len(name) > 40 or not name.replace("_", "").isalnum() or not name.isascii():
        raise InvalidEvent("invalid_platform", "platform must be 1-40 letters, digits or _")
    return name


def parse_platform(raw: bytes | str | None) -> PlatformEvent:
    """Validate one platform event.

    >>> e = parse_platform(b'{"event_id":"o1-p","platform":"Meta","channel":"CAPI","event_name":"Purchase","occurred_at":"2026-01-05T10:00:00Z","value":"30.5","currency":"eur"}')
    >>> e.platform, e.channel, e.event_name, e.value, e.currency, e.browser
    ('meta', 'capi', 'purchase', 30.5, 'EUR', 'unknown')
    """
    obj = _decode(raw)
    event_id = _event_id(obj)
    platform = _platform_name(obj)
    ts = parse_time(obj.get("occurred_at"))
    channel = obj.get("channel")
    if channel is None or channel == "":
        channel = "unknown"
    elif type(channel) is not str:
        raise InvalidEvent("invalid_field", "channel must be a string")
    else:
        channel = channel.strip().lower()[:20] or "unknown"
    return PlatformEvent(
        platform,
        channel,
        canonical_event_name(obj.get("event_name"), "purchase"),
        event_id,
        _order_id(obj),
        ts,
        _value(obj),
        _currency(obj),
        normalise_browser(obj.get("browser")),
        normalise_region(obj.get("region")),
        _consent_denied(obj),
        _click_ids(obj),
        _arrived_at(obj.get("arrived_at")),
    )


def _arrived_at(raw: Any) -> float | None:
    """The optional arrival time; anything that is not a time is ignored (None), never rejected.

    >>> _arrived_at(1767607200), _arrived_at("2026-01-05T10:00:00Z"), _arrived_at("soon"), _arrived_at(None)
    (1767607200.0, 1767607200.0, None, None)
    """
    if raw is None:
        return None
    if (type(raw) is float or type(raw) is int) and MIN_TS <= raw < MAX_TS:
        return float(raw)
    try:
        return parse_time(raw, "arrived_at")
    except InvalidEvent:
        return None


CHANGE_KINDS = (
    "deploy", "tag_publish", "consent_update", "pixel_change", "crm_change",
    "attribution_setting", "conversion_action", "other", "promotion", "holiday",
)
#: declared calendar periods: no business-change alert while one runs (docs/events.md)
CALENDAR_KINDS = ("promotion", "holiday")
EXPECTED_METRICS = ("count_ratio", "value_ratio", "duplicate_rate", "click_id_coverage", "backend_count")
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(raw: Any, field: str = "duration") -> float:
    """Seconds from a number of seconds or a string such as ``90m``, ``2h``, ``3d``.

    >>> parse_duration("2h"), parse_duration(600), parse_duration("1.5d")
    (7200.0, 600.0, 129600.0)
    """
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        seconds = float(raw)
    elif isinstance(raw, str) and raw.strip():
        text = raw.strip().lower()
        unit = _DURATION_UNITS.get(text[-1])
        try:
            seconds = float(text[:-1]) * unit if unit else float(text)
        except ValueError:
            raise InvalidEvent("invalid_field", f"{field} must be seconds or like 90m, 2h, 3d") from None
    else:
        raise InvalidEvent("invalid_field", f"{field} must be seconds or like 90m, 2h, 3d")
    if not (0 < seconds <= 366 * 86400.0):
        raise InvalidEvent("invalid_field", f"{field} must be positive and at most a year")
    return seconds


def parse_size(raw: Any) -> float:
    """A relative change as a fraction: ``-0.25``, ``"-25%"`` and ``"-25 %"`` are the same.

    >>> parse_size("-25 %"), parse_size(-0.25), parse_size("+40%")
    (-0.25, -0.25, 0.4)
    """
    if isinstance(raw, str):
        text = raw.replace(" ", "")
        try:
            value = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise InvalidEvent("invalid_field", "expected.size must be like -0.25 or \"-25 %\"") from None
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    else:
        raise InvalidEvent("invalid_field", "expected.size must be like -0.25 or \"-25 %\"")
    if not (-1.0 < value <= 10.0) or value == 0.0:
        raise InvalidEvent("invalid_field", "expected.size must be a non-zero change above -100 %")
    return value


def _parse_expected(raw: Any) -> dict[str, Any]:
    """The `expected` object of a planned change: metric, direction, size (fraction), scope."""
    if not isinstance(raw, dict):
        raise InvalidEvent("invalid_field", "expected must be an object with metric, direction, size, scope")
    metric = raw.get("metric", "count_ratio")
    if metric not in EXPECTED_METRICS:
        raise InvalidEvent("invalid_field", f"expected.metric must be one of {', '.join(EXPECTED_METRICS)}")
    if raw.get("size") is None:
        raise InvalidEvent("invalid_field", "expected.size is required (for example \"-25 %\")")
    size = parse_size(raw["size"])
    direction = raw.get("direction") or ("drop" if size < 0 else "inflation")
    if direction not in ("drop", "inflation") or (direction == "drop") != (size < 0):
        raise InvalidEvent("invalid_field", "expected.direction must be drop (size < 0) or inflation (size > 0)")
    scope = _parse_scope(raw.get("scope") or {}, "expected.scope")
    return {"metric": metric, "direction": direction, "size": size, "scope": scope}


def _parse_scope(scope_raw: Any, where: str = "scope") -> dict[str, str]:
    if not isinstance(scope_raw, dict):
        raise InvalidEvent("invalid_field", f"{where} must be an object with platform / region / browser")
    scope: dict[str, str] = {}
    if scope_raw.get("platform"):
        scope["platform"] = _platform_name({"platform": scope_raw["platform"]})
    if scope_raw.get("region"):
        scope["region"] = normalise_region(scope_raw["region"])
    if scope_raw.get("browser"):
        scope["browser"] = normalise_browser(scope_raw["browser"])
    if scope_raw.get("event_name"):
        scope["event_name"] = canonical_event_name(scope_raw["event_name"], "purchase")
    return scope


def _text(obj: dict[str, Any], field: str, limit: int = 500) -> str:
    raw = obj.get(field)
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise InvalidEvent("invalid_field", f"{field} must be a string")
    return raw[:limit]


def parse_change(raw: bytes | str | dict[str, Any] | None) -> ChangeEvent:
    """Validate one change event (deploy, tag publish, consent update, ...).

    >>> parse_change({"change_id": "d-1", "kind": "deploy", "at": "2026-01-05T09:40:00Z", "scope": {"platform": "Meta"}}).scope
    {'platform': 'meta'}
    """
    obj = raw if isinstance(raw, dict) else _decode(raw)
    change_id = _event_id(obj, "change_id")
    kind = obj.get("kind", "other")
    if not isinstance(kind, str) or kind.strip().lower() not in CHANGE_KINDS:
        raise InvalidEvent("invalid_kind", f"kind must be one of {', '.join(CHANGE_KINDS)}")
    at = parse_time(obj.get("at"), "at") if obj.get("at") is not None else None
    if at is None:
        raise InvalidEvent("invalid_field", "at is required (ISO-8601 or epoch seconds)")
    scope = _parse_scope(obj.get("scope") or {})
    kind = kind.strip().lower()
    expected = None
    if obj.get("expected") is not None:
        expected = _parse_expected(obj["expected"])
        # the plan's scope narrows the change's own
        expected["scope"] = {**scope, **expected["scope"]}
    until = None
    if kind in CALENDAR_KINDS:
        if obj.get("until") is not None:
            until = parse_time(obj["until"], "until")
            if until <= at:
                raise InvalidEvent("invalid_field", "until must be after at")
        else:
            until = at + parse_duration(obj.get("duration", 86400.0))
    return ChangeEvent(
        change_id, kind, at, _text(obj, "summary"), _text(obj, "service", 100),
        _text(obj, "author", 100), _text(obj, "url", 1000), scope, expected, until,
    )


# ---- fast path --------------------------------------------------------------------------------
# Most events are well formed. These versions check the common shapes inline (exact type tests,
# bounded caches of already-normalised strings) and fall back to the careful functions above
# for anything unusual, so every error message and reason code stays theirs.

_channel_cache: dict[str, str] = {}
# A NamedTuple's constructor is a Python function (one frame per event); `tuple.__new__` on
# the class builds the same object in C.
_new_backend: Callable[[tuple[Any, ...]], BackendEvent] = partial(tuple.__new__, BackendEvent)
_new_platform: Callable[[tuple[Any, ...]], PlatformEvent] = partial(tuple.__new__, PlatformEvent)
_platform_cache: dict[str, str] = {}
_currency_cache: dict[str, str] = {c: c for c in _CURRENCIES}
_currency_cache.update({c.lower(): c for c in _CURRENCIES})


def _fast_time(raw: Any) -> float:
    t = type(raw)
    if (t is float or t is int) and MIN_TS <= raw < MAX_TS:
        return float(raw)
    if t is str and len(raw) >= 10 and raw[4] == "-":
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            return parse_time(raw)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
        if MIN_TS <= ts < MAX_TS:
            return ts
    return parse_time(raw)


def _fast_common(obj: dict[str, Any]) -> tuple[str, str | None, float, float | None, str, str, bool, bool]:
    get = obj.get
    event_id = get("event_id")
    if type(event_id) is not str or not event_id or len(event_id) > 256:
        event_id = _event_id(obj)
    order_id = get("order_id")
    if order_id is not None and (type(order_id) is not str or not order_id or len(order_id) > 256):
        order_id = _order_id(obj)
    ts = _fast_time(get("occurred_at"))
    value = get("value")
    if value is not None and not ((type(value) is float or type(value) is int) and value >= 0 and value - value == 0):
        value = _value(obj)
    elif value is not None:
        value = float(value)
    browser = get("browser")
    b = _browser_cache.get(browser) if type(browser) is str else None
    if b is None:
        b = normalise_browser(browser)
    region = get("region")
    r = _region_cache.get(region) if type(region) is str else None
    if r is None:
        r = normalise_region(region)
    consent = get("consent")
    denied = consent == "denied" or (type(consent) is str and consent != "granted" and _consent_denied(obj))
    clicks = get("click_ids")
    if clicks is None:
        has_clicks = False
    elif type(clicks) is dict:
        has_clicks = any(clicks.values())
    else:
        has_clicks = _click_ids(obj)
    return event_id, order_id, ts, value, b, r, denied, has_clicks


def parse_backend_fast(raw: bytes | str | None) -> BackendEvent:
    """Same result as `parse_backend`, faster for well-formed events.

    >>> raw = b'{"event_id":"o1","type":"order","occurred_at":"2026-01-05T10:00:00Z","value":3,"currency":"eur","region":"FR"}'
    >>> parse_backend_fast(raw) == parse_backend(raw)
    True
    """
    obj = _decode(raw)
    try:
        return _backend_fast(obj)
    except InvalidEvent:
        return parse_backend(raw)  # the careful path names the first fault, in its order


def _backend_fast(obj: dict[str, Any]) -> BackendEvent:
    event_id, order_id, ts, value, browser, region, denied, has_clicks = _fast_common(obj)
    currency = obj.get("currency")
    if currency is not None and currency != "" and (type(currency) is not str or currency not in _currency_cache):
        _currency(obj)
    kind = obj.get("type")
    name = _name_cache.get(kind) if type(kind) is str else None
    if name is None:
        name = canonical_event_name(kind, "purchase")
    return _new_backend((event_id, name, order_id, ts, value, browser, region, denied, has_clicks))


def parse_platform_fast(raw: bytes | str | None) -> PlatformEvent:
    """Same result as `parse_platform`, faster for well-formed events.

    >>> raw = b'{"event_id":"e","platform":"Meta","channel":"CAPI","occurred_at":1767607200,"value":"2.5","currency":"usd"}'
    >>> parse_platform_fast(raw) == parse_platform(raw)
    True
    """
    obj = _decode(raw)
    try:
        return _platform_fast(obj)
    except InvalidEvent:
        return parse_platform(raw)  # the careful path names the first fault, in its order


def _platform_fast(obj: dict[str, Any]) -> PlatformEvent:
    get = obj.get
    platform = get("platform")
    p = _platform_cache.get(platform) if type(platform) is str else None
    if p is None:
        p = _platform_name(obj)
        if type(platform) is str and len(_platform_cache) < _CACHE_MAX:
            _platform_cache[platform] = p
    event_id, order_id, ts, value, browser, region, denied, has_clicks = _fast_common(obj)
    channel = get("channel")
    c = _channel_cache.get(channel) if type(channel) is str else None
    if c is None:
        if channel is None or channel == "":
            c = "unknown"
        elif type(channel) is not str:
            raise InvalidEvent("invalid_field", "channel must be a string")
        else:
            c = channel.strip().lower()[:20] or "unknown"
            if len(_channel_cache) < _CACHE_MAX:
                _channel_cache[channel] = c
    name_raw = get("event_name")
    name = _name_cache.get(name_raw) if type(name_raw) is str else None
    if name is None:
        name = canonical_event_name(name_raw, "purchase")
    currency = get("currency")
    if currency is None or currency == "":
        cur = None
    else:
        cur = _currency_cache.get(currency) if type(currency) is str else None
        if cur is None:
            cur = _currency(obj)
    arrived = get("arrived_at")
    if arrived is not None:
        arrived = _arrived_at(arrived)
    return _new_platform((p, c, name, event_id, order_id, ts, value, cur, browser, region, denied, has_clicks,
                          arrived))

"""The fast parsers must agree with the careful ones on every input, valid or not."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.events import (
    InvalidEvent,
    parse_backend,
    parse_backend_fast,
    parse_platform,
    parse_platform_fast,
)


def outcome(parse, raw):  # type: ignore[no-untyped-def]
    try:
        return parse(raw)
    except InvalidEvent as exc:
        return ("invalid", exc.reason, exc.detail)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**13, 10**13), st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["", "denied", "granted", "EUR", "eur", "XXX", "2026-01-05T10:00:00Z", "2026-01-05",
                     "1767607200", "meta", "Safari", "DE", "US-CA", "purchase", "Purchase", "capi", "-3"]),
)
field_values = st.one_of(scalars, st.dictionaries(st.sampled_from(["gclid", "fbclid", "x"]), scalars, max_size=2),
                         st.lists(scalars, max_size=2))
FIELDS = ["event_id", "platform", "channel", "event_name", "type", "order_id", "occurred_at", "value",
          "currency", "browser", "region", "consent", "click_ids"]
events = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=len(FIELDS))


@settings(max_examples=1500, deadline=None)
@given(events)
def test_fast_parsers_agree_with_careful_ones(obj: dict) -> None:  # type: ignore[type-arg]
    raw = orjson.dumps(obj)
    assert outcome(parse_platform_fast, raw) == outcome(parse_platform, raw)
    assert outcome(parse_backend_fast, raw) == outcome(parse_backend, raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fast_parsers_agree_on_arbitrary_bytes(raw: bytes) -> None:
    assert outcome(parse_platform_fast, raw) == outcome(parse_platform, raw)
    assert outcome(parse_backend_fast, raw) == outcome(parse_backend, raw)

"""What a person says back about an alert: ack, expected, false (docs/oncall.md).

One feedback message per alert on the compacted feedback topic (key `alert_id`, the newest
word wins): ``{"alert_id", "action", "at", "note", "by"}``. ``at`` (epoch seconds, event time)
decides when it applies: at the first closed window whose end is >= ``at``, in the worker and
in `gapwatch backtest --feedback FILE` alike. Pure: no I/O.

>>> parse_feedback({"alert_id": "a1", "action": "false", "at": 1767225600, "note": "load test"})
{'alert_id': 'a1', 'action': 'false', 'at': 1767225600.0, 'note': 'load test', 'by': ''}
>>> parse_feedback(b'{"alert_id": "a1", "action": "snooze", "at": 1}')
Traceback (most recent call last):
...
detectors.events.InvalidEvent: invalid_field: action must be one of ack, expected, false
"""

from __future__ import annotations

from typing import Any

import orjson

from detectors.events import InvalidEvent, parse_time

__all__ = ["ACTIONS", "parse_feedback"]

#: ack: acknowledged, no repeat posts, still tracked; expected: the new level is the new
#: normal (re-baseline, resolve); false: a false alarm (resolve, keep the old baseline)
ACTIONS = ("ack", "expected", "false")


def parse_feedback(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Validate one feedback message; `InvalidEvent` (reason code + detail) when it is not one."""
    if isinstance(raw, dict):
        obj = raw
    else:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidEvent("malformed_json", "feedback is not JSON") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not_an_object", "feedback must be a JSON object")
    alert_id = obj.get("alert_id")
    if not isinstance(alert_id, str) or not alert_id or len(alert_id) > 256:
        raise InvalidEvent("missing_field", "alert_id is required (a string)")
    action = obj.get("action")
    if action not in ACTIONS:
        raise InvalidEvent("invalid_field", f"action must be one of {', '.join(ACTIONS)}")
    if obj.get("at") is None:
        raise InvalidEvent("invalid_field", "at is required (ISO-8601 or epoch seconds)")
    at = parse_time(obj["at"], "at")
    out: dict[str, Any] = {"alert_id": alert_id, "action": action, "at": at}
    for field, limit in (("note", 500), ("by", 100)):
        value = obj.get(field) or ""
        if not isinstance(value, str):
            raise InvalidEvent("invalid_field", f"{field} must be a string")
        out[field] = value[:limit]
    return out

"""The alert on `gap-alerts`: one typed shape for every alert the monitor raises.

`Alert.to_json()` gives the bytes the worker publishes (field names, order and values of the
"Alert" contract in DESIGN.md and docs/alerts.md); `Alert.from_json()` reads them back, and
``Alert.from_json(a.to_json()) == a`` for every alert. Business-change alerts (metric
``backend_count``) and tracking-gap alerts share the shape; two fields are optional:
``current_interval`` (only the backend detector reports one) and ``localisation.alarming``
(the business alert has no child segments). ``None`` there means "not in the JSON".

Reading is strict about types (a wrong type is an `AlertFormatError`, so a consumer can park
the message instead of guessing) but accepts the collections and free texts a hand-written or
older producer leaves out: they read as empty, and `to_json()` writes them.

>>> seg = Segment("meta", "purchase", "safari", "*")
>>> alert = Alert(
...     alert_id="a1", status="firing", segment=seg, metric="count_ratio", direction="drop",
...     baseline=0.97, current=0.61, baseline_interval=(0.95, 0.99), change_at=1767225600.0,
...     detected_at=1767229200.0, verdict="tracking_gap",
...     likely_causes=(Cause("browser_restriction", 0.9, "92% of the missing conversions are on safari"),),
...     nearby_changes=(), localisation=Localisation((), (), alarming=(seg.key,)),
...     reconciliation=(ReconciliationRow("backend", 120, 11850.0, "source of truth"),),
...     evidence=Evidence(14.2, 9.5, 1e-05))
>>> alert.to_json()[:63]
b'{"alert_id":"a1","status":"firing","segment":{"platform":"meta"'
>>> Alert.from_json(alert.to_json()) == alert
True
>>> alert.resolved(current=0.96, detected_at=1767240000.0).status
'resolved'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import orjson

__all__ = [
    "Alert", "AlertFormatError", "Cause", "ChildChange", "Evidence", "Interval", "Localisation",
    "NearbyChange", "ReconciliationRow", "Segment", "Status", "Direction", "Verdict", "STATUSES",
    "DIRECTIONS", "VERDICTS", "Resolution", "RESOLUTIONS",
]

Status = Literal["firing", "resolved"]
Direction = Literal["drop", "inflation"]
Verdict = Literal["tracking_gap", "business_change", "inconclusive", "expected_change"]
STATUSES: tuple[Status, ...] = ("firing", "resolved")
DIRECTIONS: tuple[Direction, ...] = ("drop", "inflation")
VERDICTS: tuple[Verdict, ...] = ("tracking_gap", "business_change", "inconclusive", "expected_change")
#: how a person closed an incident (`gapwatch alert expected|false`); None: the data did
Resolution = Literal["expected", "false_alarm"]
RESOLUTIONS: tuple[Resolution, ...] = ("expected", "false_alarm")

#: (low, high) of a 95 % interval; an end the detector could not estimate is None (JSON null)
Interval = tuple[float | None, float | None]


class AlertFormatError(ValueError):
    """A message on `gap-alerts` that is not an alert. ``reason`` is a closed code (DLQ header)."""

    def __init__(self, reason: Literal["invalid_alert_json", "invalid_alert"], detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Segment:
    """`platform|event_name|browser|region`; ``*`` is the rollup ("all")."""

    platform: str
    event_name: str
    browser: str
    region: str

    @property
    def key(self) -> str:
        return f"{self.platform}|{self.event_name}|{self.browser}|{self.region}"

    @classmethod
    def from_key(cls, key: str) -> Segment:
        """The segment of a key such as ``meta|purchase|*|eu``."""
        parts = key.split("|")
        if len(parts) != 4:
            raise AlertFormatError("invalid_alert", "a segment key has four parts: platform|event_name|browser|region")
        return cls(*parts)

    def to_dict(self) -> dict[str, str]:
        return {"platform": self.platform, "event_name": self.event_name, "browser": self.browser,
                "region": self.region}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "segment") -> Segment:
        doc = _object(doc, where)
        return cls(*(_str(doc, k, where) for k in ("platform", "event_name", "browser", "region")))


@dataclass(frozen=True)
class Cause:
    """One ranked likely cause, with the evidence (a sentence) that supports it."""

    cause: str
    score: float
    evidence: str

    def to_dict(self) -> dict[str, Any]:
        return {"cause": self.cause, "score": self.score, "evidence": self.evidence}

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> Cause:
        doc = _object(doc, where)
        return cls(_str(doc, "cause", where), _num(doc, "score", where), _str(doc, "evidence", where, ""))


@dataclass(frozen=True)
class NearbyChange:
    """A change event near the change time; ``distance_s`` = at - change_at (negative = before)."""

    change_id: str
    kind: str
    summary: str
    service: str
    author: str
    url: str
    at: float
    distance_s: float
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"change_id": self.change_id, "kind": self.kind, "summary": self.summary,
                "service": self.service, "author": self.author, "url": self.url, "at": self.at,
                "distance_s": self.distance_s, "score": self.score}

    @classmethod
    def from_dict(cls, doc: Any, where: str, change_at: float) -> NearbyChange:
        doc = _object(doc, where)
        at = _num(doc, "at", where)
        if "distance_s" in doc:
            distance = _num(doc, "distance_s", where)
        else:  # derivable, so a hand-written alert may leave it out: what the monitor would write
            distance = round(at - change_at, 1)
        return cls(_str(doc, "change_id", where), _str(doc, "kind", where), _str(doc, "summary", where, ""),
                   _str(doc, "service", where, ""), _str(doc, "author", where, ""), _str(doc, "url", where, ""),
                   at, distance, _num(doc, "score", where))


@dataclass(frozen=True)
class ChildChange:
    """A child segment's ratio since the change time against its own baseline (localisation)."""

    segment: Segment
    baseline: float
    current: float
    change: float  #: current / baseline - 1
    events: int  #: exposure since the change (backend conversions for count_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {"segment": self.segment.key, "baseline": self.baseline, "current": self.current,
                "change": self.change, "events": self.events}

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> ChildChange:
        doc = _object(doc, where)
        return cls(Segment.from_key(_str(doc, "segment", where)), _num(doc, "baseline", where),
                   _num(doc, "current", where), _num(doc, "change", where), _int(doc, "events", where))


@dataclass(frozen=True)
class Localisation:
    """Which children moved and which held; ``alarming``: the segments whose detectors fired
    (None on a business-change alert, which has no children)."""

    moved: tuple[ChildChange, ...]
    steady: tuple[ChildChange, ...]
    alarming: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"moved": [c.to_dict() for c in self.moved],
                               "steady": [c.to_dict() for c in self.steady]}
        if self.alarming is not None:
            out["alarming"] = list(self.alarming)
        return out

    @classmethod
    def from_dict(cls, doc: Any, where: str = "localisation") -> Localisation:
        doc = _object(doc, where)
        moved = _list(doc, "moved", where, ChildChange.from_dict)
        steady = _list(doc, "steady", where, ChildChange.from_dict)
        alarming = None
        if "alarming" in doc:
            alarming = _list(doc, "alarming", where, lambda v, w: _as_str(v, w))
        return cls(moved, steady, alarming)


@dataclass(frozen=True)
class ReconciliationRow:
    """One row of a reconciliation table: the source, its count and value, and what explains it."""

    source: str
    count: int
    value: float | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "count": self.count, "value": self.value, "note": self.note}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "row") -> ReconciliationRow:
        doc = _object(doc, where)
        return cls(_str(doc, "source", where), _int(doc, "count", where), _opt_num(doc, "value", where),
                   _str(doc, "note", where, ""))


@dataclass(frozen=True)
class Evidence:
    """The detector's statistic at the alarm, its threshold and the p-value it corresponds to."""

    statistic: float | None
    threshold: float | None
    p_value: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "threshold": self.threshold, "p_value": self.p_value}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "evidence") -> Evidence:
        doc = _object(doc, where)
        return cls(*(_opt_num(doc, k, where) for k in ("statistic", "threshold", "p_value")))


_NO_EVIDENCE = Evidence(None, None, None)
_NOWHERE = Localisation((), ())


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One alert on `gap-alerts` (key `alert_id`); see docs/alerts.md for what each field means."""

    alert_id: str
    status: Status
    segment: Segment
    metric: str
    direction: Direction
    baseline: float | None
    current: float | None
    baseline_interval: Interval
    #: business-change alerts only (the backend detector's interval of the new level)
    current_interval: Interval | None = None
    change_at: float
    detected_at: float
    verdict: Verdict
    likely_causes: tuple[Cause, ...]
    nearby_changes: tuple[NearbyChange, ...]
    localisation: Localisation
    reconciliation: tuple[ReconciliationRow, ...]
    evidence: Evidence
    # ---- lifecycle (optional: written only when set; docs/alerts.md "Lifecycle") ----------
    #: stable over re-fires of one incident (group, signal family, segment): Slack threads it
    incident_key: str = ""
    #: someone acknowledged it (`gapwatch alert ack`): still tracked, not posted again
    acknowledged: bool = False
    #: set on a resolution a person made: "expected" (new normal) or "false_alarm"
    resolution: Resolution | None = None
    #: the person's note with an ack / expected / false
    note: str = ""
    #: a planned change this move was compared with: "expected -25 %, observed -70 % (change c-1)"
    plan: str = ""
    #: tracking gaps of one cause on several platforms or conversions (one incident): every
    #: affected segment key, the named one first; None (not in the JSON) for a single segment
    affected: tuple[str, ...] | None = None

    @property
    def is_notice(self) -> bool:
        """A low-priority notice (an expected change happened as planned), not an alert."""
        return self.verdict == "expected_change"

    def resolved(self, *, current: float | None, detected_at: float) -> Alert:
        """The same incident (same `alert_id`), reported back at its level."""
        return dataclasses.replace(self, status="resolved", current=current, detected_at=detected_at)

    # ---- wire format ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON document, fields in the published order."""
        out: dict[str, Any] = {
            "alert_id": self.alert_id, "status": self.status, "segment": self.segment.to_dict(),
            "metric": self.metric, "direction": self.direction, "baseline": self.baseline,
            "current": self.current, "baseline_interval": list(self.baseline_interval),
        }
        if self.current_interval is not None:
            out["current_interval"] = list(self.current_interval)
        out.update({
            "change_at": self.change_at, "detected_at": self.detected_at, "verdict": self.verdict,
            "likely_causes": [c.to_dict() for c in self.likely_causes],
            "nearby_changes": [c.to_dict() for c in self.nearby_changes],
            "localisation": self.localisation.to_dict(),
            "reconciliation": [r.to_dict() for r in self.reconciliation],
            "evidence": self.evidence.to_dict(),
        })
        if self.incident_key:
            out["incident_key"] = self.incident_key
        if self.acknowledged:
            out["acknowledged"] = True
        if self.resolution is not None:
            out["resolution"] = self.resolution
        if self.note:
            out["note"] = self.note
        if self.plan:
            out["plan"] = self.plan
        if self.affected is not None:
            out["affected"] = list(self.affected)
        return out

    def to_json(self) -> bytes:
        """The value published on `gap-alerts` (UTF-8 JSON, compact)."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes | str) -> Alert:
        """Parse one `gap-alerts` value; `AlertFormatError` when it is not an alert.

        >>> Alert.from_json(b"{not json")
        Traceback (most recent call last):
        ...
        detectors.alert.AlertFormatError: not JSON
        >>> Alert.from_json(b'{"alert_id": "a1", "status": "firing"}')
        Traceback (most recent call last):
        ...
        detectors.alert.AlertFormatError: segment: expected an object
        """
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise AlertFormatError("invalid_alert_json", "not JSON") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> Alert:
        doc = _object(doc, "alert")
        # fields are read in the published order, so the first problem is the one reported
        alert_id = _str(doc, "alert_id", "alert")
        status = _choice(doc, "status", STATUSES)
        segment = Segment.from_dict(doc.get("segment"))
        metric = _str(doc, "metric", "alert")
        direction = _choice(doc, "direction", DIRECTIONS)
        baseline, current = _opt_num(doc, "baseline", "alert"), _opt_num(doc, "current", "alert")
        baseline_interval = _interval(doc, "baseline_interval") if "baseline_interval" in doc else (None, None)
        current_interval = _interval(doc, "current_interval") if "current_interval" in doc else None
        change_at = _num(doc, "change_at", "alert")
        return cls(
            alert_id=alert_id, status=status, segment=segment, metric=metric, direction=direction,
            baseline=baseline, current=current, baseline_interval=baseline_interval,
            current_interval=current_interval, change_at=change_at,
            detected_at=_num(doc, "detected_at", "alert"),
            verdict=_choice(doc, "verdict", VERDICTS),
            likely_causes=_list(doc, "likely_causes", "alert", Cause.from_dict),
            nearby_changes=_list(doc, "nearby_changes", "alert",
                                 lambda v, w: NearbyChange.from_dict(v, w, change_at)),
            localisation=Localisation.from_dict(doc["localisation"]) if "localisation" in doc else _NOWHERE,
            reconciliation=_list(doc, "reconciliation", "alert", ReconciliationRow.from_dict),
            evidence=Evidence.from_dict(doc["evidence"]) if "evidence" in doc else _NO_EVIDENCE,
            incident_key=_str(doc, "incident_key", "alert", ""),
            acknowledged=_bool(doc, "acknowledged"),
            resolution=_choice(doc, "resolution", RESOLUTIONS) if doc.get("resolution") is not None else None,
            note=_str(doc, "note", "alert", ""),
            plan=_str(doc, "plan", "alert", ""),
            affected=(_list(doc, "affected", "alert", lambda v, w: _as_str(v, w))
                      if "affected" in doc else None),
        )


# ---- reading helpers: strict types, a message that names the field ----------------------------
_T = TypeVar("_T")
_C = TypeVar("_C", bound=str)
_MISSING = object()


def _fail(where: str, key: str, what: str) -> AlertFormatError:
    return AlertFormatError("invalid_alert", f"{where}.{key}: {what}")


def _object(doc: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise AlertFormatError("invalid_alert", f"{where}: expected an object")
    return doc


def _as_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise AlertFormatError("invalid_alert", f"{where}: expected a string")
    return value


def _str(doc: Mapping[str, Any], key: str, where: str, default: object = _MISSING) -> str:
    value = doc.get(key, default)
    if value is _MISSING:
        raise _fail(where, key, "missing")
    if not isinstance(value, str):
        raise _fail(where, key, "expected a string")
    return value


def _choice(doc: Mapping[str, Any], key: str, choices: tuple[_C, ...]) -> _C:
    value = _str(doc, key, "alert")
    for choice in choices:
        if value == choice:
            return choice
    raise _fail("alert", key, f"expected one of {', '.join(choices)}")


def _bool(doc: Mapping[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise _fail("alert", key, "expected true or false")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(doc: Mapping[str, Any], key: str, where: str) -> float:
    # an int stays an int: the JSON written back is the JSON read
    value = doc.get(key)
    if not _is_number(value):
        raise _fail(where, key, "expected a number")
    return cast(float, value)


def _opt_num(doc: Mapping[str, Any], key: str, where: str) -> float | None:
    value = doc.get(key)
    if value is not None and not _is_number(value):
        raise _fail(where, key, "expected a number or null")
    return cast("float | None", value)


def _int(doc: Mapping[str, Any], key: str, where: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(where, key, "expected an integer")
    return value


def _interval(doc: Mapping[str, Any], key: str) -> Interval:
    value = doc.get(key)
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2
            or not all(v is None or _is_number(v) for v in value)):
        raise _fail("alert", key, "expected [low, high]")
    return (value[0], value[1])


def _list(doc: Mapping[str, Any], key: str, where: str, item: Callable[[Any, str], _T]) -> tuple[_T, ...]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise _fail(where, key, "expected a list")
    return tuple(item(v, f"{where}.{key}[{i}]") for i, v in enumerate(value))

"""A real `gapwatch worker` on the embedded broker: closed windows, DLQ and metrics.

a. a small hand-made stream with known answers (pixel + capi pairs, a duplicate trigger,
   broken dedupe, missing value / currency, consent denied, ghost orders, name aliases):
   every closed window on the windows topic equals an independent reference count;
b. bad input of every kind lands on the DLQ with its original bytes and reason header,
   is counted by reason, and the valid events around it still count;
c. hypothesis: arbitrary bytes, arbitrary JSON and mutated valid events on both topics
   never crash the worker, and every message is either counted or dead-lettered, exactly as
   `detectors.events.parse_backend` / `parse_platform` decide.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from detectors.events import MAX_TS, MIN_TS, InvalidEvent, parse_backend, parse_platform
from streams.broker import EmbeddedBroker
from streams.simulate import message_key
from tests.integration.worker_harness import (
    MetricsSnapshot,
    WorkerPool,
    consume,
    create_topics,
    distinct_windows,
    flush_messages,
    produce_messages,
    run,
    unique_names,
    window_values,
)

pytestmark = pytest.mark.slow

T0 = 1767571200  # 2026-01-05T00:00:00Z, aligned to the 60 s window
W = 60
MINUTES = 30


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def pool(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerPool]:
    p = WorkerPool(broker.bootstrap, tmp_path_factory.mktemp("workers"))
    try:
        yield p
    finally:
        p.stop_all()


# =============================================================================================
# a. hand-made stream, independent reference counts


@dataclass
class Ev:
    """One produced event: its raw JSON and the canonical attributes the reference uses."""

    role: str  # backend / platform
    raw: dict[str, Any]
    ts: float
    event_name: str
    browser: str
    region: str
    value: float | None = None
    denied: bool = False
    platform: str = ""
    channel: str = ""
    event_id: str = ""
    order_id: str | None = None
    currency: str | None = None
    click: bool = False


RAW_BROWSERS = [("Chrome", "chrome"), ("Mobile Safari", "safari"), ("chrome", "chrome"), ("Safari", "safari")]
RAW_REGIONS = [("DE", "eu"), ("US", "na"), ("gb", "uk")]


def handmade_stream() -> tuple[list[Ev], list[Ev]]:
    """30 minutes, 4 orders a minute, two platforms (meta: pixel + capi, google_ads: pixel)."""
    backend: list[Ev] = []
    platform: list[Ev] = []
    for m in range(MINUTES):
        for j in range(4):
            oid = f"o{m:02d}{j}"
            ts = T0 + 60 * m + 5 + 12 * j
            braw, browser = RAW_BROWSERS[j]
            rraw, region = RAW_REGIONS[(m + j) % 3]
            value = 10.5 + j
            denied = (m * 4 + j) % 7 == 0
            consent = "denied" if denied else ("granted" if j % 2 else "unknown")
            occurred: Any = iso(ts) if (m + j) % 2 else ts  # ISO-8601 and epoch seconds
            backend.append(Ev("backend", {
                "event_id": f"b-{oid}", "type": "order", "order_id": oid, "occurred_at": occurred,
                "value": value, "currency": "EUR", "browser": braw, "region": rraw, "consent": consent,
            }, ts, "purchase", browser, region, value, denied, order_id=oid))

            def pe(platform_name: str, channel: str, event_id: str, at: float, *, name: str = "Purchase",
                   val: float | None = value, cur: str | None = "eur", click: dict[str, str] | None = None,
                   _oid: str = oid, _b: str = browser, _r: str = region, _braw: str = braw, _rraw: str = rraw,
                   _denied: bool = denied, _consent: str = consent) -> Ev:
                raw: dict[str, Any] = {
                    "event_id": event_id, "platform": platform_name, "channel": channel, "event_name": name,
                    "order_id": _oid, "occurred_at": at, "browser": _braw.lower(), "region": _rraw.lower(),
                    "consent": _consent,
                }
                if val is not None:
                    raw["value"] = val
                if cur is not None:
                    raw["currency"] = cur
                if click is not None:
                    raw["click_ids"] = click
                return Ev("platform", raw, at, "purchase", _b, _r, val, _denied,
                          platform=platform_name.lower(), channel=channel.lower(), event_id=event_id,
                          order_id=_oid, currency=cur.upper() if cur else None,
                          click=bool(click and any(click.values())))

            # meta: pixel + CAPI pair (j 0, 1), CAPI only (j 2), missed (j 3)
            if j in (0, 1):
                platform.append(pe("Meta", "pixel", f"m-{oid}", ts + 1, click={"fbclid": "fb.1"} if j == 0 else None))
                capi_id = f"mc-{oid}" if (m in (8, 21) and j == 1) else f"m-{oid}"  # broken dedupe
                platform.append(pe("meta", "CAPI", capi_id, ts + 3, name="CompletePayment"))
            elif j == 2:
                platform.append(pe("meta", "capi", f"m-{oid}", ts + 2))
            if m in (3, 17) and j == 0:  # duplicate trigger: same event id, same channel, later offset
                platform.append(pe("Meta", "pixel", f"m-{oid}", ts + 20, click={"fbclid": "fb.1"}))
            # google_ads pixel, with gclid on even j; missing value (and currency) now and then
            if not (m % 5 == 4 and j == 0):
                missing_value = m % 4 == 1 and j == 1
                missing_currency_only = m % 10 == 7 and j == 2
                platform.append(pe(
                    "google_ads", "pixel", f"g-{oid}", ts + 4, name="purchase",
                    val=None if missing_value else value,
                    cur=None if (missing_value or missing_currency_only) else "USD",
                    click={"gclid": "Cj0"} if j % 2 == 0 else {"gclid": ""},
                ))
        # a lead every 6 minutes, seen by meta; a google_ads conversion of an order the backend
        # never had (view-through "ghost"): counted, not matched
        if m % 6 == 0:
            lid = f"l{m:02d}"
            ts = T0 + 60 * m + 50
            backend.append(Ev("backend", {"event_id": f"b-{lid}", "type": "lead", "order_id": lid,
                                          "occurred_at": ts, "browser": "Firefox", "region": "FR"},
                              ts, "lead", "firefox", "eu", None, False, order_id=lid))
            platform.append(Ev("platform", {"event_id": f"ml-{lid}", "platform": "meta", "channel": "capi",
                                            "event_name": "Lead", "order_id": lid, "occurred_at": ts + 1,
                                            "browser": "Firefox", "region": "fr"},
                               ts + 1, "lead", "firefox", "eu", None, False, platform="meta", channel="capi",
                               event_id=f"ml-{lid}", order_id=lid))
        if m % 7 == 2:
            gid = f"ghost{m:02d}"
            ts = T0 + 60 * m + 55
            platform.append(Ev("platform", {"event_id": f"g-{gid}", "platform": "google_ads", "channel": "pixel",
                                            "order_id": gid, "occurred_at": ts, "value": 5, "currency": "USD",
                                            "browser": "edge", "region": "jp", "click_ids": {"gbraid": "x"}},
                               ts, "purchase", "edge", "apac", 5.0, False, platform="google_ads",
                               channel="pixel", event_id=f"g-{gid}", order_id=gid, currency="USD", click=True))
    backend.sort(key=lambda e: e.ts)
    platform.sort(key=lambda e: e.ts)
    return backend, platform


ROLLUPS = (("platform", True, True), ("platform_browser", False, True), ("platform_region", True, False),
           ("leaf", False, False))


def new_window(platform: str, event_name: str, browser: str, region: str, level: str, start: int) -> dict[str, Any]:
    return {
        "segment": {"platform": platform, "event_name": event_name, "browser": browser, "region": region},
        "segment_key": f"{platform}|{event_name}|{browser}|{region}", "level": level,
        "window_start": start, "window_end": start + W,
        "backend_count": 0, "backend_value": 0.0, "backend_consent_denied": 0,
        "platform_count": 0, "platform_value": 0.0, "platform_duplicates": 0, "platform_pair_deduped": 0,
        "platform_broken_dedupe": 0, "platform_missing_value": 0, "platform_missing_currency": 0,
        "platform_missing_click_ids": 0, "platform_consent_denied": 0, "platform_matched_orders": 0,
        "platform_events": 0, "platform_channels": {}, "late_events": 0,
    }


def reference_windows(backend: list[Ev], platform: list[Ev]) -> dict[tuple[str, int], dict[str, Any]]:
    """Expected closed windows, computed from the semantics in docs/architecture.md (every
    backend event is known before any platform event, none is late)."""
    groups = sorted({(e.platform, e.event_name) for e in platform})
    backend_orders = {e.order_id for e in backend if e.order_id}
    out: dict[tuple[str, int], dict[str, Any]] = {}

    def seg(platform_name: str, event_name: str, level: str, b: str, r: str, start: int) -> dict[str, Any]:
        key = (f"{platform_name}|{event_name}|{b}|{r}", start)
        if key not in out:
            out[key] = new_window(platform_name, event_name, b, r, level, start)
        return out[key]

    def rollups(platform_name: str, e: Ev, start: int) -> list[dict[str, Any]]:
        return [seg(platform_name, e.event_name, level, "*" if all_b else e.browser, "*" if all_r else e.region, start)
                for level, all_b, all_r in ROLLUPS]

    starts = range(T0, T0 + MINUTES * W, W)
    for start in starts:
        for p, name in groups:
            seg(p, name, "platform", "*", "*", start)
        for name in {n for _, n in groups}:
            seg("*", name, "backend", "*", "*", start)
    for e in backend:
        start = int(e.ts // W) * W
        for target in [seg("*", e.event_name, "backend", "*", "*", start)] + [
            w for p, name in groups if name == e.event_name for w in rollups(p, e, start)
        ]:
            target["backend_count"] += 1
            target["backend_value"] += e.value or 0.0
            target["backend_consent_denied"] += int(e.denied)
    seen: dict[tuple[str, str], set[str]] = {}
    first_event_of_order: dict[tuple[str, str], str] = {}
    for e in platform:
        start = int(e.ts // W) * W
        targets = rollups(e.platform, e, start)
        for t in targets:
            t["platform_events"] += 1
            t["platform_channels"][e.channel] = t["platform_channels"].get(e.channel, 0) + 1
        channels = seen.get((e.platform, e.event_id))
        if channels is not None and e.channel not in channels:
            channels.add(e.channel)
            for t in targets:
                t["platform_pair_deduped"] += 1
            continue
        duplicate = channels is not None
        if channels is None:
            seen[(e.platform, e.event_id)] = {e.channel}
        broken = matched = False
        if not duplicate and e.order_id:
            matched = e.order_id in backend_orders
            first = first_event_of_order.setdefault((e.platform, e.order_id), e.event_id)
            broken = first != e.event_id
        for t in targets:
            t["platform_count"] += 1
            t["platform_duplicates"] += int(duplicate)
            t["platform_value"] += e.value or 0.0
            t["platform_missing_value"] += int(e.value is None)
            t["platform_missing_currency"] += int(e.currency is None)
            t["platform_missing_click_ids"] += int(not e.click)
            t["platform_consent_denied"] += int(e.denied)
            t["platform_matched_orders"] += int(matched)
            t["platform_broken_dedupe"] += int(broken)
    return out


@dataclass
class PipelineRun:
    names: dict[str, str]
    backend: list[Ev]
    platform: list[Ev]
    windows: list[dict[str, Any]]
    metrics: MetricsSnapshot
    produced: dict[str, int]
    flush_ts: float


@pytest.fixture(scope="module")
def handmade_run(broker: EmbeddedBroker, pool: WorkerPool) -> PipelineRun:
    names = unique_names("hand")
    backend, platform = handmade_stream()
    run(create_topics(broker.bootstrap, names))
    # A long idle timeout: the backend side is produced (and consumed) first, so every order is
    # known before its platform events (`platform_matched_orders` is then deterministic), and an
    # idle platform input must not close the windows meanwhile. The flush pair closes them.
    worker = pool.start(names, "hand", idle_s=600)
    t0 = time.monotonic()
    print(f"ready in {worker.wait_ready():.1f} s")
    flush_ts = T0 + 2 * 3600
    produced: Counter[str] = Counter()
    produced.update(run(produce_messages(
        broker.bootstrap,
        [(names["backend"], message_key("backend", e.raw), orjson.dumps(e.raw)) for e in backend],
        partitions=2)))
    worker.wait_metrics(lambda m: m.value("gapwatch_events_consumed_total", topic=names["backend"]) >= len(backend),
                        30, "the backend events to be consumed")
    produced.update(run(produce_messages(
        broker.bootstrap,
        [(names["platform"], message_key("platform", e.raw), orjson.dumps(e.raw)) for e in platform],
        partitions=2)))
    print(f"produced after {time.monotonic() - t0:.1f} s")
    # the stream's own watermark closes the windows through minute 27 ...
    last_start = T0 + (MINUTES - 1) * W
    run(consume(broker.bootstrap, names["windows"], timeout_s=30,
                until=lambda rs: any(orjson.loads(r.value)["window_start"] >= last_start - 2 * W for r in rs)))
    print(f"first windows after {time.monotonic() - t0:.1f} s")
    # ... and a flush pair far later in event time closes minute 29 and the silent windows after it
    produced.update(run(produce_messages(broker.bootstrap, flush_messages(names, flush_ts), partitions=2)))
    # every group's last windows (stage B emits each partials partition's groups at its own
    # pace: one group reaching the end says nothing about the others)
    groups = ("meta|purchase|*|*", "google_ads|purchase|*|*", "meta|lead|*|*", "*|purchase|*|*", "*|lead|*|*")

    def all_groups_done(rs: list[Any]) -> bool:
        done = {v["segment_key"] for v in (orjson.loads(r.value) for r in rs)
                if v["window_start"] >= flush_ts - 2 * W}
        return all(g in done for g in groups)

    records = run(consume(broker.bootstrap, names["windows"], timeout_s=60, until=all_groups_done))
    values = window_values(records)
    print(f"windows after {time.monotonic() - t0:.1f} s")
    assert any(v["window_start"] >= last_start for v in values), (
        f"the windows up to {last_start} did not close; got {len(values)} windows\n{worker.log_tail()}")
    metrics = worker.wait_metrics(
        lambda m: m.value("gapwatch_events_consumed_total") >= sum(produced.values()), 20, "all events consumed")
    assert worker.alive()
    return PipelineRun(names, backend, platform, values, metrics, dict(produced), flush_ts)


def test_handmade_stream_windows_equal_the_reference(handmade_run: PipelineRun) -> None:
    r = handmade_run
    got, conflicts = distinct_windows(v for v in r.windows if v["window_start"] < T0 + MINUTES * W)
    assert not conflicts, conflicts[:3]
    want = reference_windows(r.backend, r.platform)
    assert set(got) == set(want), (
        f"missing: {sorted(set(want) - set(got))[:10]}\nunexpected: {sorted(set(got) - set(want))[:10]}")
    diffs = []
    for key in sorted(want):
        for f, v in want[key].items():
            if got[key].get(f) != v:
                diffs.append(f"{key} {f}: got {got[key].get(f)!r}, want {v!r}")
    assert not diffs, f"{len(diffs)} differences, first: " + "\n".join(diffs[:20])
    # every segment window appears once per window (no re-publish without a crash)
    per_key = Counter((v["segment_key"], v["window_start"]) for v in r.windows if v["window_start"] < T0 + MINUTES * W)
    assert max(per_key.values()) == 1


def test_handmade_stream_hand_checked_numbers(handmade_run: PipelineRun) -> None:
    """A few numbers counted by hand, so the reference itself is checked too."""
    got, _ = distinct_windows(handmade_run.windows)

    def w(key: str, minute: int) -> dict[str, Any]:
        return got[(key, T0 + minute * W)]

    # minute 3: orders o030..o033; meta pixel+capi for j 0,1 (2 pairs), capi only j 2, the
    # pixel of o030 fires twice (duplicate trigger) -> meta counts 3 + 1 duplicate = 4
    meta3 = w("meta|purchase|*|*", 3)
    assert (meta3["backend_count"], meta3["platform_count"], meta3["platform_duplicates"],
            meta3["platform_pair_deduped"], meta3["platform_events"]) == (4, 4, 1, 2, 6)
    assert meta3["platform_channels"] == {"pixel": 3, "capi": 3}
    assert meta3["backend_value"] == 10.5 + 11.5 + 12.5 + 13.5
    # minute 8: o081's capi uses its own event id: broken dedupe, both events count
    meta8 = w("meta|purchase|*|*", 8)
    assert (meta8["platform_count"], meta8["platform_broken_dedupe"], meta8["platform_pair_deduped"]) == (4, 1, 1)
    # google_ads at minute 4 misses o040 (m % 5 == 4); minute 5 (m % 4 == 1) o051 has no value
    # nor currency; minute 9 o092 misses only the currency (m % 10 == 7 is minute 7, not 9)
    assert w("google_ads|purchase|*|*", 4)["platform_count"] == 3
    g5 = w("google_ads|purchase|*|*", 5)
    assert (g5["platform_count"], g5["platform_missing_value"], g5["platform_missing_currency"]) == (4, 1, 1)
    g7 = w("google_ads|purchase|*|*", 7)
    assert (g7["platform_missing_value"], g7["platform_missing_currency"]) == (0, 1)
    # ghost order at minute 2 (edge / apac): counted, not matched
    g2 = w("google_ads|purchase|*|*", 2)
    assert (g2["platform_count"], g2["platform_matched_orders"]) == (5, 4)
    assert w("google_ads|purchase|edge|apac", 2)["platform_count"] == 1
    # consent denied: (m*4 + j) % 7 == 0 -> minute 0: o000 (j 0); minute 7: o070 (28)
    assert w("*|purchase|*|*", 0)["backend_consent_denied"] == 1
    assert w("meta|purchase|*|*", 0)["platform_consent_denied"] == 1  # the o000 pair counts once
    # browser level: safari is j 1 and 3; meta saw only j 1 -> count 1 of backend 2
    s3 = w("meta|purchase|safari|*", 3)
    assert (s3["backend_count"], s3["platform_count"]) == (2, 1)
    # leads: the backend-level window and meta|lead (firefox, FR -> eu)
    assert w("*|lead|*|*", 6)["backend_count"] == 1
    lead = w("meta|lead|firefox|eu", 6)
    assert (lead["backend_count"], lead["platform_count"], lead["level"]) == (1, 1, "leaf")
    # a lead group window exists also in minutes without leads (silence is data)
    silent = w("meta|lead|*|*", 7)
    assert (silent["backend_count"], silent["platform_count"]) == (0, 0)


def test_handmade_stream_silent_windows_until_the_flush(handmade_run: PipelineRun) -> None:
    """Between the end of the stream and the flush every group still gets empty windows."""
    got, _ = distinct_windows(handmade_run.windows)
    for minute in (MINUTES, MINUTES + 10, 100):
        start = T0 + minute * W
        for key in ("meta|purchase|*|*", "google_ads|purchase|*|*", "meta|lead|*|*", "*|purchase|*|*"):
            w = got.get((key, start))
            assert w is not None, f"no window {key} at minute {minute}"
            assert w["platform_count"] == w["backend_count"] == 0


def test_handmade_stream_metrics(handmade_run: PipelineRun) -> None:
    r = handmade_run
    m = r.metrics
    names = r.names
    assert m.value("gapwatch_events_consumed_total", topic=names["backend"]) == r.produced[names["backend"]]
    assert m.value("gapwatch_events_consumed_total", topic=names["platform"]) == r.produced[names["platform"]]
    assert m.value("gapwatch_invalid_events_total") == 0
    assert m.value("gapwatch_redelivered_events_total") == 0
    assert m.value("gapwatch_late_events_total") == 0
    # labelled counters of valid events, with normalised labels
    backend_by = Counter()
    for e in r.backend:
        backend_by[(e.event_name, e.browser, e.region)] += 1
    for (name, browser, region), n in backend_by.items():
        got = m.value("gapwatch_backend_events_total", event_name=name, browser=browser, region=region)
        flush = 2 if (name, browser, region) == ("purchase", "chrome", "eu") else 0
        assert got == n + flush, (name, browser, region)
    assert m.value("gapwatch_platform_events_total", platform="meta", event_name="lead") == 5
    assert m.value("gapwatch_platform_events_total", platform="google_ads", browser="edge", region="apac") == 4
    assert set(m.by_label("gapwatch_platform_events_total", "platform")) == {"meta", "google_ads"}
    assert set(m.by_label("gapwatch_backend_events_total", "browser")) <= {"chrome", "safari", "firefox"}
    # windows were closed at every level, the watermark reached the flush
    closed = m.by_label("gapwatch_windows_closed_total", "level")
    assert {"backend", "platform", "platform_browser", "platform_region", "leaf"} <= set(closed)
    assert all(v > 0 for v in closed.values())
    assert m.value("gapwatch_watermark_seconds") >= r.flush_ts - 60
    assert m.value("gapwatch_build_info") == 1
    assert m.value("gapwatch_segment_ratio", platform="meta", event_name="purchase", browser="*", region="*",
                   metric="count_ratio") >= 0


def test_handmade_stream_duplicates_metric(handmade_run: PipelineRun) -> None:
    """`gapwatch_platform_duplicates_total{platform,event_name}` (docs/architecture.md) counts
    the two duplicate triggers of the stream."""
    m = handmade_run.metrics
    got = m.value("gapwatch_platform_duplicates_total", platform="meta", event_name="purchase")
    assert got == 2, (
        "PRODUCT BUG: gapwatch_platform_duplicates_total is declared in streams/metrics.py but never "
        f"incremented (streams/app.py process_source_batch); got {got}, want 2")


# =============================================================================================
# b. bad input -> DLQ with reason


def bad_inputs(names: dict[str, str]) -> list[tuple[str, str, bytes | None, str]]:
    """(topic, key, value, expected reason)."""
    B, P = names["backend"], names["platform"]
    ts = T0 + 90
    good_b = {"event_id": "e", "type": "order", "order_id": "x", "occurred_at": ts, "value": 5, "currency": "EUR"}
    good_p = {"event_id": "e", "platform": "meta", "channel": "pixel", "event_name": "Purchase", "order_id": "x",
              "occurred_at": ts, "value": 5, "currency": "EUR"}

    def b(**kw: Any) -> bytes:
        d = {**good_b, **kw}
        return orjson.dumps({k: v for k, v in d.items() if v is not ...})

    def p(**kw: Any) -> bytes:
        d = {**good_p, **kw}
        return orjson.dumps({k: v for k, v in d.items() if v is not ...})

    cases: list[tuple[str, bytes | None, str]] = [
        (B, b'{"event_id": "x", "occurred_at": ', "malformed_json"),
        (B, b"\xff\xfe\x00 not utf-8", "malformed_json"),
        (B, b"", "malformed_json"),
        (B, None, "malformed_json"),  # a tombstone
        (B, b"[1, 2, 3]", "not_an_object"),
        (P, b'"just a string"', "not_an_object"),
        (P, b"42", "not_an_object"),
        (P, b"null", "not_an_object"),
        (B, b(event_id=...), "missing_event_id"),
        (B, b(event_id=""), "missing_event_id"),
        (P, p(event_id=None), "missing_event_id"),
        (B, b(event_id=1.5), "invalid_event_id"),
        (P, p(event_id="x" * 300), "invalid_event_id"),
        (B, b(occurred_at=...), "missing_occurred_at"),
        (P, p(occurred_at="yesterday"), "invalid_occurred_at"),
        (B, b(occurred_at=True), "invalid_occurred_at"),
        (B, b(occurred_at=[ts]), "invalid_occurred_at"),
        (B, b(occurred_at="1990-06-01T12:00:00Z"), "implausible_timestamp"),
        (P, p(occurred_at=644_241_600), "implausible_timestamp"),  # 1990 in epoch seconds
        (B, b(occurred_at=ts * 1000), "implausible_timestamp"),  # epoch milliseconds
        (P, p(occurred_at=str(ts * 1000)), "implausible_timestamp"),
        (P, p(platform=...), "missing_platform"),
        (P, p(platform=""), "missing_platform"),
        (P, p(platform=7), "invalid_platform"),
        (P, p(platform="meta!!"), "invalid_platform"),
        (B, b(value=-5), "negative_value"),
        (P, p(value="-0.5"), "negative_value"),
        (B, b(value="abc"), "invalid_value"),
        (P, p(value={"amount": 3}), "invalid_value"),
        (P, p(value="nan"), "invalid_value"),
        (B, b(value="1e400"), "invalid_value"),
        (B, b(currency="EURO"), "invalid_currency"),
        (P, p(currency=978), "invalid_currency"),
        (P, p(click_ids=["gclid"]), "invalid_click_ids"),
        (B, b(order_id={"a": 1}), "invalid_field"),
        (B, b(type=5), "invalid_field"),
        (P, p(channel=3), "invalid_field"),
        (P, p(event_name=["x"]), "invalid_field"),
        (B, b(note="x" * 70_000), "too_large"),
    ]
    return [(topic, f"bad-{i}", value, reason) for i, (topic, value, reason) in enumerate(cases)]


def test_bad_input_goes_to_the_dlq_with_reason(broker: EmbeddedBroker, pool: WorkerPool) -> None:
    names = unique_names("dlq")
    run(create_topics(broker.bootstrap, names))
    worker = pool.start(names, "dlq")
    bad = bad_inputs(names)
    # the expectations are the ingest functions' own verdicts too
    for topic, _, value, reason in bad:
        parse = parse_backend if topic == names["backend"] else parse_platform
        with pytest.raises(InvalidEvent) as info:
            parse(value)
        assert info.value.reason == reason, (value[:80] if value else value, info.value.reason)

    # valid events around the bad ones: 2 orders a minute for 10 minutes (backend + meta capi),
    # the bad ones in between, all in one partition-ordered stream
    messages: list[tuple[str, bytes | None, bytes | None]] = []
    valid_backend: Counter[int] = Counter()
    valid_platform: Counter[int] = Counter()
    bad_iter = iter(bad)
    for m in range(10):
        for j in range(2):
            oid = f"v{m}{j}"
            ts = T0 + 60 * m + 10 + 20 * j
            messages.append((names["backend"], oid.encode(), orjson.dumps(
                {"event_id": f"b-{oid}", "type": "order", "order_id": oid, "occurred_at": ts, "value": 2})))
            valid_backend[T0 + 60 * m] += 1
            for _ in range(2):
                item = next(bad_iter, None)
                if item is not None:
                    messages.append((item[0], item[1].encode(), item[2]))
            if j == 0:
                messages.append((names["platform"], oid.encode(), orjson.dumps(
                    {"event_id": f"p-{oid}", "platform": "meta", "channel": "capi", "order_id": oid,
                     "occurred_at": ts + 1})))
                valid_platform[T0 + 60 * m] += 1
    for item in bad_iter:
        messages.append((item[0], item[1].encode(), item[2]))
    worker.wait_ready()
    sent = run(produce_messages(broker.bootstrap, messages, partitions=2))

    n_bad = len(bad)
    dlq = run(consume(broker.bootstrap, names["dlq"], until=lambda rs: len(rs) >= n_bad, timeout_s=60))
    assert len(dlq) == n_bad, f"{len(dlq)} DLQ records for {n_bad} bad inputs\n{worker.log_tail()}"
    by_key = {r.key.decode(): r for r in dlq}
    assert len(by_key) == n_bad
    for topic, key, value, reason in bad:
        r = by_key[key]
        headers = dict(r.headers)
        assert headers["gapwatch-reason"] == reason.encode(), (key, headers)
        if value:  # the original bytes, untouched
            assert r.value == value, key
        else:  # an empty value or a tombstone stays empty
            assert not r.value, (key, r.value)
        assert headers["gapwatch-source"].decode().startswith(f"{topic}/")
        assert headers.get("gapwatch-detail")

    # the worker keeps going: a later valid pair per partition is processed and closes the windows
    flush_ts = T0 + 3600
    sent_flush = run(produce_messages(broker.bootstrap, flush_messages(names, flush_ts), partitions=2))
    total = sum(sent.values()) + sum(sent_flush.values())
    m = worker.wait_metrics(lambda m: m.value("gapwatch_events_consumed_total") >= total, 30, "every event consumed")
    want = {(k, T0 + 60 * minute) for minute in range(10) for k in ("*|purchase|*|*", "meta|purchase|*|*")}
    windows = run(consume(broker.bootstrap, names["windows"], timeout_s=60, until=lambda rs: want <= {
        (v["segment_key"], v["window_start"]) for v in (orjson.loads(r.value) for r in rs)}))
    got, conflicts = distinct_windows(window_values(windows))
    assert not conflicts
    for minute in range(10):
        start = T0 + 60 * minute
        assert got[("*|purchase|*|*", start)]["backend_count"] == valid_backend[start]
        meta = got[("meta|purchase|*|*", start)]
        assert (meta["backend_count"], meta["platform_count"]) == (valid_backend[start], valid_platform[start])

    expected = Counter((topic, reason) for topic, _, _, reason in bad)
    got_invalid = Counter()
    for labels, v in m.samples.get("gapwatch_invalid_events_total", []):
        got_invalid[(labels["topic"], labels["reason"])] += int(v)
    assert +got_invalid == expected
    assert m.value("gapwatch_events_consumed_total", topic=names["backend"]) == sent[names["backend"]] + 2
    assert m.value("gapwatch_events_consumed_total", topic=names["platform"]) == sent[names["platform"]] + 2
    assert sum(v for _, v in m.samples["gapwatch_backend_events_total"]) == sum(valid_backend.values()) + 2
    assert sum(v for _, v in m.samples["gapwatch_platform_events_total"]) == sum(valid_platform.values()) + 2
    assert worker.alive()
    assert worker.get("/healthz")[0] == 200


# =============================================================================================
# c. hypothesis: nothing crashes the worker, every message is counted or dead-lettered

FIELDS_BACKEND = ("event_id", "type", "order_id", "occurred_at", "value", "currency", "browser", "region",
                  "consent", "click_ids")
FIELDS_PLATFORM = ("event_id", "platform", "channel", "event_name", "order_id", "occurred_at", "value",
                   "currency", "browser", "region", "consent", "click_ids")

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
# Plausible timestamps stay inside one day of event time: a valid timestamp years away makes the
# assembler materialise every empty window in between (see tests/unit/test_windows.py).
band_ts = st.integers(T0, T0 + 86_400)
occurred_at = st.one_of(
    band_ts, band_ts.map(float), band_ts.map(iso), band_ts.map(str),
    st.integers(-(2**63), int(MIN_TS) - 1), st.integers(int(MAX_TS), 2**63 - 1),
    band_ts.map(lambda t: t * 1000), st.booleans(), st.none(), st.text(max_size=12),
    st.just("1990-01-01T00:00:00Z"),
)
mutated_field_values = {
    "event_id": st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1), st.none(), st.floats(),
                          st.text(min_size=257, max_size=260)),
    "occurred_at": occurred_at,
    "value": st.one_of(st.floats(allow_nan=False), st.integers(-100, 10**6), st.text(max_size=6), st.none(),
                       st.sampled_from(["nan", "inf", "-1", "12.5"])),
    "currency": st.one_of(st.sampled_from(["EUR", "usd", "GBP", "XXX", "", "euro"]), json_scalars),
    "platform": st.one_of(st.sampled_from(["meta", "Google Ads", "tik-tok", "ga4", "", "x" * 41, "méta"]), json_scalars),
    # names: anything but "|", the segment key separator (see test_event_name_with_the_key_separator)
    "type": st.one_of(st.text(max_size=12).filter(lambda t: "|" not in t), st.integers(-1000, 1000), st.none()),
    "event_name": st.one_of(st.text(max_size=12).filter(lambda t: "|" not in t), st.integers(-1000, 1000), st.none()),
    "click_ids": st.one_of(st.dictionaries(st.sampled_from(["gclid", "fbclid"]), st.text(max_size=4)), json_values),
}


@st.composite
def mutated_event(draw: Any, role: str) -> dict[str, Any]:
    ts = draw(band_ts)
    oid = f"h{draw(st.integers(0, 50))}"
    if role == "backend":
        d: dict[str, Any] = {"event_id": f"b-{oid}-{draw(st.integers(0, 3))}", "type": draw(st.sampled_from(["order", "lead", "refund", "Subscription"])),
                             "order_id": oid, "occurred_at": ts, "value": 20, "currency": "EUR",
                             "browser": draw(st.sampled_from(["Safari", "Chrome/120", "opera", None])),
                             "region": draw(st.sampled_from(["DE", "us-ca", "mars", None]))}
        fields = FIELDS_BACKEND
    else:
        d = {"event_id": f"p-{oid}-{draw(st.integers(0, 3))}", "platform": draw(st.sampled_from(["meta", "google_ads"])),
             "channel": draw(st.sampled_from(["pixel", "capi", "server", ""])),
             "event_name": draw(st.sampled_from(["Purchase", "CompletePayment", "lead", "Add To Cart"])),
             "order_id": oid, "occurred_at": ts, "value": 20, "currency": "EUR"}
        fields = FIELDS_PLATFORM
    for name in draw(st.lists(st.sampled_from(fields), max_size=3, unique=True)):
        action = draw(st.sampled_from(["drop", "replace"]))
        if action == "drop":
            d.pop(name, None)
        else:
            d[name] = draw(mutated_field_values.get(name, json_scalars))
    return d


def message(role: str) -> st.SearchStrategy[bytes | None]:
    return st.one_of(
        st.binary(max_size=64),
        json_values.map(orjson.dumps),
        mutated_event(role).map(orjson.dumps),
        mutated_event(role).map(orjson.dumps),
        st.just(None),
    )


def test_hypothesis_every_message_is_counted_or_dead_lettered(broker: EmbeddedBroker, pool: WorkerPool) -> None:
    names = unique_names("hyp")
    run(create_topics(broker.bootstrap, names))
    worker = pool.start(names, "hyp")
    worker.wait_ready()
    totals = {"produced": Counter(), "valid": Counter(), "invalid": Counter(), "examples": 0}

    @settings(max_examples=4, deadline=None, database=None,
              phases=(Phase.explicit, Phase.generate),  # no shrinking: each example costs a round trip
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(st.tuples(st.sampled_from(["backend", "platform"]),
                                    st.text("abcdef0123", min_size=1, max_size=4)), min_size=60, max_size=60)
           .flatmap(lambda roles: st.tuples(st.just(roles), st.tuples(*[message(r) for r, _ in roles]))))
    def check(batch: Any) -> None:
        roles, values = batch
        batch_no = totals["examples"]
        totals["examples"] += 1
        msgs = []
        for (role, key), value in zip(roles * 1, values, strict=True):
            msgs.append((names[role], f"{batch_no}-{key}".encode(), value))
        # 4 copies with different keys: ~240 messages per example, still cheap to generate
        msgs = [(t, k + suffix, v) for suffix in (b"", b"-a", b"-b", b"-c") for t, k, v in msgs]
        for topic, _, value in msgs:
            role = "backend" if topic == names["backend"] else "platform"
            parse = parse_backend if role == "backend" else parse_platform
            totals["produced"][topic] += 1
            try:
                parse(value)
                totals["valid"][role] += 1
            except InvalidEvent as exc:
                totals["invalid"][(topic, exc.reason)] += 1
        run(produce_messages(broker.bootstrap, msgs, partitions=2))
        want_total = sum(totals["produced"].values())
        m = worker.wait_metrics(lambda m: m.value("gapwatch_events_consumed_total") >= want_total, 30,
                                f"example {batch_no}: {want_total} messages consumed")
        for topic, n in totals["produced"].items():
            assert m.value("gapwatch_events_consumed_total", topic=topic) == n
        got_valid_b = sum(v for _, v in m.samples.get("gapwatch_backend_events_total", []))
        got_valid_p = sum(v for _, v in m.samples.get("gapwatch_platform_events_total", []))
        assert (got_valid_b, got_valid_p) == (totals["valid"]["backend"], totals["valid"]["platform"])
        got_invalid = Counter()
        for labels, v in m.samples.get("gapwatch_invalid_events_total", []):
            got_invalid[(labels["topic"], labels["reason"])] += int(v)
        assert +got_invalid == totals["invalid"]
        assert got_valid_b + got_valid_p + sum(got_invalid.values()) == want_total
        assert worker.get("/healthz")[0] == 200

    check()
    n_invalid = sum(totals["invalid"].values())
    dlq = run(consume(broker.bootstrap, names["dlq"], until=lambda rs: len(rs) >= n_invalid, timeout_s=30))
    assert len(dlq) == n_invalid
    reasons = Counter((dict(r.headers)["gapwatch-source"].decode().split("/")[0],
                       dict(r.headers)["gapwatch-reason"].decode()) for r in dlq)
    assert reasons == totals["invalid"]
    assert totals["valid"]["backend"] > 0 and totals["valid"]["platform"] > 0 and n_invalid > 0
    # still alive and still processing after all that: a valid flush pair is consumed
    before = worker.metrics().value("gapwatch_events_consumed_total")
    run(produce_messages(broker.bootstrap, flush_messages(names, T0 + 2 * 86_400), partitions=2))
    worker.wait_metrics(lambda m: m.value("gapwatch_events_consumed_total") >= before + 4, 20, "the flush")
    assert worker.alive(), worker.log_tail()
    print(json.dumps({"examples": totals["examples"], "produced": sum(totals["produced"].values()),
                      "valid": dict(totals["valid"]), "invalid": n_invalid}))


# =============================================================================================
# d. a valid event whose name contains the segment-key separator "|"


def test_event_name_with_the_key_separator_does_not_break_the_worker(broker: EmbeddedBroker, pool: WorkerPool) -> None:
    """`event_name` / `type` are free text (folded by `canonical_event_name`); "|" separates the
    parts of a segment key. Such an event must be rejected or sanitised, never stop the worker
    from closing windows."""
    names = unique_names("pipe")
    run(create_topics(broker.bootstrap, names))
    worker = pool.start(names, "pipe")
    messages: list[tuple[str, bytes | None, bytes | None]] = []
    for m in range(5):
        oid = f"p{m}"
        ts = T0 + 60 * m + 10
        messages.append((names["backend"], oid.encode(), orjson.dumps(
            {"event_id": f"b-{oid}", "type": "order", "order_id": oid, "occurred_at": ts})))
        messages.append((names["platform"], oid.encode(), orjson.dumps(
            {"event_id": f"p-{oid}", "platform": "meta", "order_id": oid, "occurred_at": ts + 1})))
    messages.append((names["platform"], b"p2", orjson.dumps(
        {"event_id": "evil", "platform": "meta", "event_name": "Purchase|gift", "order_id": "p2",
         "occurred_at": T0 + 150})))
    messages.append((names["backend"], b"p3", orjson.dumps(
        {"event_id": "evil-b", "type": "order|gift", "order_id": "p3", "occurred_at": T0 + 190})))
    worker.wait_ready()
    run(produce_messages(broker.bootstrap, messages + flush_messages(names, T0 + 3600), partitions=2))
    def first_five_closed(rs: list[Any]) -> bool:
        starts = {v["window_start"] for v in window_values(rs) if v["segment_key"] == "meta|purchase|*|*"}
        return all(T0 + 60 * m in starts for m in range(5))

    # wait for what the test is about (the flush closes windows up to T0 + 3600 - lateness)
    records = run(consume(broker.bootstrap, names["windows"], timeout_s=120, until=first_five_closed))
    got, _ = distinct_windows(window_values(records))
    closed = sorted({start - T0 for key, start in got if key == "meta|purchase|*|*" and start < T0 + 300})
    log = worker.log_tail(200)
    assert closed == [0, 60, 120, 180, 240], (
        "PRODUCT BUG: a valid event whose event_name/type contains '|' (the segment-key separator) "
        "breaks stage B: detectors/windows.py WindowAssembler._build unpacks leaf.split('|') "
        "(ValueError: too many values to unpack); detectors/events.py canonical_event_name keeps '|'. "
        f"Closed meta|purchase windows (s after T0): {closed}; worker alive: {worker.alive()}\n"
        + "\n".join(line for line in log.splitlines() if "Error" in line or "error" in line)[-2000:])

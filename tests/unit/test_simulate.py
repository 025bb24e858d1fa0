"""The simulator: deterministic, well-formed, and every scenario's truth visible in the raw data."""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from datetime import datetime
from functools import cache
from pathlib import Path

import numpy as np
import orjson
import pytest

from streams.simulate import (
    BROWSERS,
    REGIONS,
    SCENARIOS,
    Simulation,
    generate,
    message_key,
    register,
    write_jsonl,
)

PLATFORMS = {"meta", "google_ads", "tiktok", "ga4"}
CHANNELS = {"pixel", "capi", "server", "import"}
TRUTH_KEYS = {
    "scenario", "description", "seed", "start", "end", "change_at", "segment", "segment_key",
    "direction", "verdict", "top_cause", "metric", "change_id", "also_moving", "unchanged", "counts",
    "noise", "orders_per_day", "import_batch_s", "business_events",
}
BUSINESS_EVENTS = {"promotion", "holiday"}


@cache
def sim(scenario: str) -> Simulation:
    # 3 days: 2.25 days of baseline, 0.75 day after change_at; enough for every ratio below
    return generate(scenario, seed=1, days=3.0)


@cache
def _iso_ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def ts(value: str | float) -> float:
    """occurred_at / at as epoch s: the simulator writes backend and change times as ISO-8601."""
    return _iso_ts(value) if isinstance(value, str) else float(value)


def split(events: list[dict], change_at: float) -> tuple[list[dict], list[dict]]:
    before = [e for e in events if ts(e["occurred_at"]) < change_at]
    after = [e for e in events if ts(e["occurred_at"]) >= change_at]
    return before, after


def orders(s: Simulation, **where: str) -> list[dict]:
    return [e for e in s.backend if e["type"] == "order" and all(e[k] == v for k, v in where.items())]


def platform(s: Simulation, name: str, event_name: str = "purchase", **where: str) -> list[dict]:
    return [
        e for e in s.platform
        if e["platform"] == name and e["event_name"] == event_name and all(e[k] == v for k, v in where.items())
    ]


def seen_ratio_change(s: Simulation, name: str, **where: str) -> float:
    """(platform orders seen / backend orders) after change_at, over the same before it."""
    change_at = s.truth["change_at"] or s.truth["start"] + 0.75 * (s.truth["end"] - s.truth["start"])
    b_before, b_after = split(orders(s, **where), change_at)
    p_before, p_after = split(platform(s, name, **where), change_at)
    ratio_before = len({e["order_id"] for e in p_before}) / len(b_before)
    ratio_after = len({e["order_id"] for e in p_after}) / len(b_after)
    return ratio_after / ratio_before


def jsonl_bytes(s: Simulation, tmp: Path) -> dict[str, bytes]:
    write_jsonl(s, tmp)
    return {p.name: p.read_bytes() for p in sorted(tmp.iterdir())}


# --- determinism -------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    a = jsonl_bytes(generate("safari_drop", seed=3, days=1.0), tmp_path / "a")
    b = jsonl_bytes(generate("safari_drop", seed=3, days=1.0), tmp_path / "b")
    c = jsonl_bytes(generate("safari_drop", seed=4, days=1.0), tmp_path / "c")
    assert a == b
    assert set(a) == {"backend.jsonl", "platform.jsonl", "changes.jsonl", "truth.json"}
    assert a["backend.jsonl"] != c["backend.jsonl"]
    assert a["platform.jsonl"] != c["platform.jsonl"]


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "steady"])
def test_before_change_at_every_scenario_is_steady(scenario: str) -> None:
    s, steady = sim(scenario), sim("steady")
    change_at = s.truth["change_at"]

    def before(events: list[dict]) -> list[dict]:
        return [e for e in events if ts(e["occurred_at"]) < change_at - 1]

    assert before(s.backend) == before(steady.backend)
    assert before(s.platform) == before(steady.platform)


# --- well-formed events --------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_events_follow_the_design_fields(scenario: str) -> None:
    s = sim(scenario)
    lo, hi = s.truth["start"], s.truth["end"]
    assert 946684800 < lo < hi < 4102444800  # 2000..2100
    for e in s.backend:
        assert {"event_id", "type", "order_id", "occurred_at"} <= e.keys()
        assert e["type"] in {"order", "lead"}
        assert lo <= ts(e["occurred_at"]) < hi
        assert e["value"] >= 0 and e["currency"] in {"USD", "EUR", "GBP"}
        assert e["browser"] in BROWSERS and e["region"] in REGIONS
        assert e["consent"] in {"granted", "denied", "unknown"}
        assert isinstance(e["click_ids"], dict)
    for e in s.platform:
        assert {"event_id", "platform", "channel", "event_name", "order_id", "occurred_at"} <= e.keys()
        assert e["platform"] in PLATFORMS and e["channel"] in CHANNELS
        assert e["event_name"] in {"purchase", "lead", "order_complete"}  # the last: a rename
        assert lo <= ts(e["occurred_at"]) < hi
        assert e.get("value", 0) >= 0
        assert ("value" in e) == ("currency" in e)
        assert e["browser"] in BROWSERS and e["region"] in REGIONS
    for c in s.changes:
        assert {"change_id", "kind", "at", "summary", "service", "author", "url"} <= c.keys()
        assert c["kind"] in {"deploy", "tag_publish", "consent_update", "pixel_change", "crm_change",
                             "attribution_setting", "conversion_action", "other"}
        assert lo <= ts(c["at"]) < hi
    assert len({e["event_id"] for e in s.backend}) == len(s.backend)
    assert len({c["change_id"] for c in s.changes}) == len(s.changes)


@pytest.mark.parametrize("scenario", ["steady", "duplicate_purchase", "import_failure", "promotion"])
def test_arrival_order_and_platform_after_backend(scenario: str) -> None:
    s = sim(scenario)
    for arrivals, values in ((s.backend_arrivals, s.backend), (s.platform_arrivals, s.platform),
                             (s.change_arrivals, s.changes)):
        assert len(arrivals) == len(values)
        assert arrivals == sorted(arrivals)
    backend_arrival = {e["order_id"]: t for t, e in zip(s.backend_arrivals, s.backend, strict=True)}
    for t, e in zip(s.platform_arrivals, s.platform, strict=True):
        assert t > backend_arrival[e["order_id"]]
        assert t > ts(e["occurred_at"])
        assert t - ts(e["occurred_at"]) < 1200  # seconds to minutes, never hours
    for e in s.backend:
        assert 0 <= backend_arrival[e["order_id"]] - ts(e["occurred_at"]) <= 30
    merged = [t for t, _, _ in s.timeline()]
    assert merged == sorted(merged) and len(merged) == len(s)


def test_steady_traffic_looks_like_a_shop() -> None:
    s = sim("steady")
    n = len(orders(s))
    assert 3000 * 3 * 0.8 < n < 3000 * 3 * 1.2
    assert 0.1 < sum(e["type"] == "lead" for e in s.backend) / n < 0.3
    share = {name: len({e["order_id"] for e in platform(s, name)}) / n for name in PLATFORMS}
    assert 0.72 < share["meta"] < 0.88
    assert 0.52 < share["google_ads"] < 0.68
    assert 0.18 < share["tiktok"] < 0.32
    assert 0.82 < share["ga4"] < 0.96
    browsers = Counter(e["browser"] for e in orders(s))
    assert 0.50 < browsers["chrome"] / n < 0.60 and 0.24 < browsers["safari"] / n < 0.32
    denied = {r: sum(e["consent"] == "denied" for e in orders(s, region=r)) / len(orders(s, region=r))
              for r in ("eu", "na")}
    assert denied["eu"] > 2 * denied["na"]
    # daily cycle: the busiest UTC hour has well over twice the orders of the quietest
    by_hour = Counter(int(ts(e["occurred_at"]) // 3600 % 24) for e in orders(s))
    assert max(by_hour.values()) > 2 * min(by_hour.values())
    # meta pixel and capi share event_ids (platform dedupe works); a few natural duplicates
    meta = platform(s, "meta")
    channels_per_id = defaultdict(set)
    for e in meta:
        channels_per_id[e["event_id"]].add(e["channel"])
    assert sum(len(c) == 2 for c in channels_per_id.values()) / len(channels_per_id) > 0.4
    per_channel = Counter((e["platform"], e["event_id"], e["channel"]) for e in s.platform)
    assert 0 < sum(v - 1 for v in per_channel.values()) / len(s.platform) < 0.005
    # pixel loses more on safari than on chrome
    pixel = {b: len(platform(s, "meta", browser=b, channel="pixel")) / len(orders(s, browser=b))
             for b in ("chrome", "safari")}
    assert pixel["safari"] < 0.85 * pixel["chrome"]
    # platform values equal the backend's almost always
    value = {e["order_id"]: e["value"] for e in orders(s)}
    ga4 = platform(s, "ga4")
    assert sum(e["value"] == value[e["order_id"]] for e in ga4) / len(ga4) > 0.97
    assert 0.8 < seen_ratio_change(s, "meta") < 1.2


# --- every truth is in the data ----------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_truth_is_complete_and_names_the_causal_change(scenario: str) -> None:
    s = sim(scenario)
    t = s.truth
    assert t.keys() == TRUTH_KEYS and t["scenario"] == scenario
    if scenario == "steady":
        assert t["change_at"] is None and t["direction"] is None and t["verdict"] is None
        return
    if scenario in BUSINESS_EVENTS:  # real business moves: no segment breaks, no verdict owed
        assert t["segment"] is None and t["verdict"] is None and t["metric"] == "backend_count"
        (event,) = t["business_events"]
        assert event["start"] == t["change_at"] and event["end"] > event["start"]
        causal = next(c for c in s.changes if c["change_id"] == t["change_id"])
        assert 0 < t["change_at"] - ts(causal["at"]) <= 3600
        return
    seg = t["segment"]
    assert t["segment_key"] == "|".join(seg[k] for k in ("platform", "event_name", "browser", "region"))
    assert t["direction"] in {"drop", "inflation"} and t["verdict"] in {"tracking_gap", "business_change"}
    by_id = {c["change_id"]: c for c in s.changes}
    causal = by_id[t["change_id"]]
    lead = t["change_at"] - ts(causal["at"])
    assert 0 < lead <= 3600
    # the causal change is the nearest change before change_at
    assert all(ts(c["at"]) < ts(causal["at"]) or ts(c["at"]) > t["change_at"]
               for c in s.changes if c is not causal)
    if t["verdict"] == "tracking_gap" and seg["platform"] != "*":
        assert causal.get("scope", {}).get("platform", seg["platform"]) == seg["platform"]


def test_safari_drop() -> None:
    s = sim("safari_drop")
    assert 0.3 < seen_ratio_change(s, "meta", browser="safari") < 0.5
    assert 0.9 < seen_ratio_change(s, "meta", browser="chrome") < 1.1
    assert 0.9 < seen_ratio_change(s, "google_ads", browser="safari") < 1.1
    causal = next(c for c in s.changes if c["change_id"] == s.truth["change_id"])
    assert causal["kind"] == "deploy" and causal["service"] == "checkout-web"
    assert causal["scope"] == {"platform": "meta"}
    assert 17 * 60 <= s.truth["change_at"] - ts(causal["at"]) <= 23 * 60
    assert len(s.changes) >= 3


def duplicate_rate(events: list[dict]) -> float:
    per = Counter((e["event_id"], e["channel"]) for e in events)
    return sum(v - 1 for v in per.values()) / len(per)


def test_duplicate_purchase() -> None:
    s = sim("duplicate_purchase")
    before, after = split(platform(s, "meta", channel="pixel"), s.truth["change_at"])
    assert duplicate_rate(before) < 0.01
    assert 0.33 < duplicate_rate(after) < 0.47
    assert 0.9 < seen_ratio_change(s, "meta") < 1.1  # same orders, counted more often


def test_consent_eu() -> None:
    s = sim("consent_eu")
    before, after = split(orders(s, region="eu"), s.truth["change_at"])
    denied_share = [sum(e["consent"] == "denied" for e in x) / len(x) for x in (before, after)]
    assert 0.1 < denied_share[0] < 0.2 and 0.5 < denied_share[1] < 0.6
    for name in PLATFORMS:
        assert seen_ratio_change(s, name, region="eu") < 0.8, name
    assert 0.9 < seen_ratio_change(s, "meta", region="na") < 1.1


def value_and_count(s: Simulation, name: str) -> tuple[float, float]:
    change_at = s.truth["change_at"]
    result = []
    for side in (0, 1):
        b = split(orders(s), change_at)[side]
        p = split(platform(s, name), change_at)[side]
        count_ratio = len(p) / len(b)
        value_ratio = sum(e.get("value", 0.0) for e in p) / sum(e["value"] for e in b)
        result.append((count_ratio, value_ratio))
    (c0, v0), (c1, v1) = result
    return c1 / c0, v1 / v0


def test_value_missing() -> None:
    s = sim("value_missing")
    count_change, value_change = value_and_count(s, "google_ads")
    assert 0.9 < count_change < 1.1 and 0.22 < value_change < 0.4
    _, after = split(platform(s, "google_ads"), s.truth["change_at"])
    assert 0.64 < sum("value" not in e and "currency" not in e for e in after) / len(after) < 0.76
    assert 0.9 < value_and_count(s, "meta")[1] < 1.1


def test_business_drop() -> None:
    s, steady = sim("business_drop"), sim("steady")
    change_at = s.truth["change_at"]
    kept = len(split(orders(s), change_at)[1]) / len(split(orders(steady), change_at)[1])
    assert 0.55 < kept < 0.65
    for name in PLATFORMS:
        assert 0.9 < seen_ratio_change(s, name) < 1.1, name
        after = len(split(platform(s, name), change_at)[1])
        after_steady = len(split(platform(steady, name), change_at)[1])
        assert 0.55 < after / after_steady < 0.65
    assert s.truth["verdict"] == "business_change"


def test_click_ids_missing() -> None:
    s = sim("click_ids_missing")
    before, after = split(platform(s, "google_ads"), s.truth["change_at"])
    rate = [sum(bool(e["click_ids"]) for e in x) / len(x) for x in (before, after)]
    assert rate[0] > 0.4 and rate[1] < 0.1 * rate[0]
    assert 0.9 < seen_ratio_change(s, "google_ads") < 1.1


def test_import_failure() -> None:
    s = sim("import_failure")
    change_at = s.truth["change_at"]
    leads = [e for e in s.backend if e["type"] == "lead"]
    imports = platform(s, "google_ads", "lead", channel="import")
    ratio = [len(p) / len(b) for p, b in zip(split(imports, change_at), split(leads, change_at), strict=True)]
    assert ratio[0] > 0.2 and ratio[1] < 0.1 * ratio[0]
    assert 0.9 < seen_ratio_change(s, "google_ads") < 1.1  # purchases untouched


def test_broken_dedupe() -> None:
    s = sim("broken_dedupe")
    change_at = s.truth["change_at"]

    def counted_per_order(events: list[dict]) -> float:
        ids: dict[str, set[str]] = defaultdict(set)
        for e in events:
            ids[e["order_id"]].add(e["event_id"])
        return sum(len(v) for v in ids.values()) / len(ids)

    before, after = split(platform(s, "meta"), change_at)
    assert counted_per_order(before) == pytest.approx(1.0)
    assert counted_per_order(after) > 1.5
    # meta now counts (distinct event_ids) far more conversions than there are orders it saw
    b_before, b_after = split(orders(s), change_at)
    inflation = (len({e["event_id"] for e in after}) / len(b_after)) / (
        len({e["event_id"] for e in before}) / len(b_before))
    assert inflation > 1.4


# --- wiring ------------------------------------------------------------------------------


def test_message_keys_co_locate_an_order() -> None:
    s = generate("steady", days=0.1)
    e = s.platform[0]
    backend = next(b for b in s.backend if b["order_id"] == e["order_id"])
    assert message_key("platform", e) == message_key("backend", backend) == e["order_id"].encode()
    assert message_key("changes", s.changes[0]) == s.changes[0]["change_id"].encode()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gapwatch")
    register(parser.add_subparsers(dest="verb"))
    return parser.parse_args(argv)


def test_cli_unknown_scenario_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["simulate", "--scenario", "nope", "--out-dir", "x"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "safari_drop" in err and "business_drop" in err
    args = parse(["simulate", "--list"])
    assert args.func(args) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in SCENARIOS)
    args = parse(["simulate", "--scenario", "steady"])
    assert args.func(args) == 2  # neither --broker nor --out-dir


def test_cli_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["simulate", "--scenario", "value_missing", "--days", "0.5", "--seed", "5",
                  "--out-dir", str(tmp_path), "--broker", ""])
    assert args.func(args) == 0
    truth = orjson.loads((tmp_path / "truth.json").read_bytes())
    assert truth["top_cause"] == "missing_value" and truth["seed"] == 5
    assert orjson.loads(capsys.readouterr().out) == truth
    lines = (tmp_path / "platform.jsonl").read_bytes().splitlines()
    assert len(lines) == truth["counts"]["platform"]
    assert [orjson.loads(line) for line in lines] == generate("value_missing", seed=5, days=0.5).platform


# --- realistic traffic: noise, business events, batch channels ----------------------------


def hourly_log_residuals(seed: int, noise: str = "realistic", days: float = 6.0) -> np.ndarray:
    """log(orders per hour / the same hours of a calm run): the realistic noise, seeded.

    20,000 orders a day, so Poisson noise (var 1/count ~ 0.001) is small next to the rate
    noise; the calm run shares the daily and weekly shape and adds its own ~8 % day noise."""
    from streams.simulate import DEFAULT_START, backend_conversions

    occ = backend_conversions("steady", seed=seed, days=days, orders_per_day=20000, noise=noise).occurred_at("order")
    calm = backend_conversions("steady", seed=seed, days=days, orders_per_day=20000, noise="calm")
    hours = int(days * 24)
    counts = np.bincount(((occ - DEFAULT_START) // 3600).astype(int), minlength=hours)[:hours]
    base = np.bincount(((calm.occurred_at("order") - DEFAULT_START) // 3600).astype(int), minlength=hours)[:hours]
    return np.log(counts / base)


def test_realistic_noise_is_autocorrelated_over_hours_with_the_stated_sd() -> None:
    sds, lag1, lag6 = [], [], []
    for seed in range(4):
        r = hourly_log_residuals(seed)
        r = r - r.mean()
        sds.append(r.std())
        lag1.append(np.corrcoef(r[:-1], r[1:])[0, 1])
        lag6.append(np.corrcoef(r[:-6], r[6:])[0, 1])
    # hourly sd 0.15 + daily 0.08 + regions (~0.02 after mixing): ~0.17; calm day noise adds a little
    assert 0.11 < np.mean(sds) < 0.24, sds
    # correlated over hours (exp(-1/2) ~ 0.6 for the hourly part alone, more with the daily one)
    assert np.mean(lag1) > 0.6, lag1
    assert 0.1 < np.mean(lag6) < np.mean(lag1), lag6


def test_calm_noise_is_independent_from_hour_to_hour() -> None:
    from streams.simulate import DEFAULT_START, backend_conversions

    occ = backend_conversions("steady", seed=5, days=6.0, orders_per_day=20000, noise="calm").occurred_at("order")
    counts = np.bincount(((occ - DEFAULT_START) // 3600).astype(int))[: 6 * 24].astype(float)
    # hour-to-hour differences beyond the daily shape are Poisson: var(diff) ~ 2 x mean
    d = np.diff(counts)
    second = d[1:] - d[:-1]  # removes the smooth daily shape
    assert np.var(second) < 1.5 * 6 * counts.mean()


def test_noise_is_shared_by_backend_and_platforms() -> None:
    s = generate("steady", seed=2, days=2.0, orders_per_day=6000)
    hours = 48
    b = np.bincount([int((ts(e["occurred_at"]) - s.truth["start"]) // 3600) for e in orders(s)], minlength=hours)
    p = np.bincount([int((ts(e["occurred_at"]) - s.truth["start"]) // 3600) for e in platform(s, "ga4")],
                    minlength=hours)
    lb, lp = np.diff(np.log(b[:hours])), np.diff(np.log(p[:hours]))
    assert np.corrcoef(lb, lp)[0, 1] > 0.9  # platforms follow the backend hour by hour
    ratio = p[:hours] / b[:hours]
    assert ratio.std() / ratio.mean() < 0.06  # and the ratio cancels the rate noise


def test_promotion_multiplies_orders_for_its_duration_only() -> None:
    promo, steady = sim("promotion"), sim("steady")
    (event,) = promo.truth["business_events"]
    assert event["multiplier"] == 2.5 and event["end"] - event["start"] == 5400

    def n(s: Simulation, lo: float, hi: float, name: str | None = None) -> int:
        events = orders(s) if name is None else platform(s, name)
        return sum(lo <= ts(e["occurred_at"]) < hi for e in events)

    during = n(promo, event["start"], event["end"]) / n(steady, event["start"], event["end"])
    assert 2.2 < during < 2.8
    assert 2.1 < n(promo, event["start"], event["end"], "meta") / n(steady, event["start"], event["end"], "meta") < 2.9
    after = (event["end"], event["end"] + 6 * 3600)
    assert n(promo, *after) == n(steady, *after)  # the same orders once it is over
    ids = [e["event_id"] for e in promo.backend]
    assert len(set(ids)) == len(ids)


def test_holiday_thins_orders_and_platforms_alike() -> None:
    hol, steady = sim("holiday"), sim("steady")
    (event,) = hol.truth["business_events"]
    lo, hi = event["start"], event["end"]
    kept = len(split(orders(hol), lo)[1]) / len(split(orders(steady), lo)[1])
    assert 0.55 < kept < 0.65 and hi - lo == 0.75 * 86400  # the run ends before the day does
    for name in PLATFORMS:
        assert 0.9 < seen_ratio_change(hol, name) < 1.1, name


def test_import_batches_arrive_in_bursts_every_period() -> None:
    s = generate("steady", seed=3, days=1.0, import_batch_s=1800.0, arrival_field=True)
    imports, seen = [], set()
    for t, e in zip(s.platform_arrivals, s.platform, strict=True):
        if e["channel"] == "import" and e["event_id"] not in seen:  # natural retries come later
            seen.add(e["event_id"])
            imports.append((t, e))
    assert len(imports) > 50
    for t, e in imports:
        assert e["arrived_at"] == t
        assert 10 <= t % 1800 <= 40  # lands 10-40 s after a batch boundary
        assert 30 <= t - e["occurred_at"] <= 1800 + 30 + 40  # taken once 30 s old
    others = [t - e["occurred_at"] for t, e in zip(s.platform_arrivals, s.platform, strict=True)
              if e["channel"] == "pixel"]
    assert np.median(others) < 15  # pixels: seconds


def test_import_nightly_moves_the_channel_to_a_daily_batch() -> None:
    s = generate("import_nightly", seed=4, days=2.0, orders_per_day=1500, arrival_field=True)
    change_at = s.truth["change_at"]
    arrivals: dict[str, float] = {}
    for t, e in zip(s.platform_arrivals, s.platform, strict=True):
        if e["channel"] == "import":
            arrivals.setdefault(e["event_id"], t)  # the first delivery, not a natural retry
    before = [t - ts(e["occurred_at"]) for e in platform(s, "google_ads", "lead") if ts(e["occurred_at"]) < change_at
              for t in [arrivals[e["event_id"]]]]
    after = [(t, e) for e in platform(s, "google_ads", "lead") if ts(e["occurred_at"]) >= change_at
             for t in [arrivals[e["event_id"]]]]
    assert max(before) < 200
    assert after and all(7200 + 10 <= t % 86400 <= 7200 + 40 for t, _ in after)  # 02:00 UTC
    # none lost: the same leads as steady, only later
    steady = generate("steady", seed=4, days=2.0, orders_per_day=1500)
    assert len(platform(s, "google_ads", "lead")) == len(platform(steady, "google_ads", "lead"))
    # arrival order in the output = arrival time
    assert s.platform_arrivals == sorted(s.platform_arrivals)
    assert [e["arrived_at"] for e in s.platform] == s.platform_arrivals


@pytest.mark.parametrize("orders_per_day", [300.0, 50000.0])
def test_shop_sizes_from_300_to_50000_a_day(orders_per_day: float) -> None:
    from streams.simulate import backend_conversions

    convs = backend_conversions("business_drop", seed=6, days=2.0, orders_per_day=orders_per_day)
    n = convs.occurred_at("order").size
    # business_drop keeps 60 % of the last half day: 1.5 + 0.5 x 0.6 = 1.8 days of orders
    assert 0.8 * 1.8 * orders_per_day < n < 1.2 * 1.8 * orders_per_day


def test_cli_noise_batch_and_arrival_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["simulate", "--scenario", "steady", "--days", "0.2", "--noise", "calm",
                  "--import-batch-minutes", "30", "--arrival-field", "--out-dir", str(tmp_path), "--broker", ""])
    assert args.func(args) == 0
    truth = orjson.loads(capsys.readouterr().out)
    assert truth["noise"] == "calm" and truth["import_batch_s"] == 1800.0
    first = orjson.loads((tmp_path / "platform.jsonl").read_bytes().splitlines()[0])
    assert first["arrived_at"] > first["occurred_at"]

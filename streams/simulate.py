"""`gapwatch simulate`: realistic synthetic backend and platform traffic with a known answer.

`generate()` is pure and deterministic (same arguments, byte-identical JSON); `write_jsonl()`
and `produce()` are the two ways out (files for `gapwatch backtest`, topics for the worker).

Arrival times are kept out of the JSON values: a `Simulation` holds parallel lists
(`backend[i]` arrives at `backend_arrivals[i]`), and `Simulation.timeline()` merges the three
topics into one `(arrival_ts, role, value)` stream in arrival order.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streams.config import Settings

__all__ = [
    "SCENARIOS",
    "DEFAULT_START",
    "DEFAULT_TOPICS",
    "Simulation",
    "generate",
    "write_jsonl",
    "produce",
    "message_key",
    "register",
    "run",
]

DEFAULT_START = 1767571200.0  # 2026-01-05T00:00:00Z, a Monday
DEFAULT_TOPICS = {"backend": "backend-events", "platform": "platform-events", "changes": "changes"}
DAY_S = 86400.0
BIN_S = 60.0  # arrivals are drawn per minute bin (Poisson), uniform inside the bin
IMPORT_BATCH_S = 60.0  # offline-conversion uploads (google_ads "import" channel) every minute
NIGHTLY_BATCH_AT_S = 2 * 3600.0  # a daily batch job runs at 02:00 UTC
MAX_DELAY_S = 900.0  # no live event arrives later than 15 min after it happened

# ---------------------------------------------------------------------------------------------
# The world: closed label sets (docs/architecture.md) and their mixes.

BROWSERS = ("chrome", "safari", "firefox", "edge", "samsung", "other")
BROWSER_MIX = (0.55, 0.28, 0.05, 0.06, 0.04, 0.02)
REGIONS = ("na", "eu", "uk", "latam", "apac")
REGION_MIX = (0.40, 0.25, 0.12, 0.10, 0.13)
REGION_UTC_OFFSET_H = (-5.0, 1.0, 0.0, -3.0, 8.0)  # where the region's evening peak falls
REGION_CURRENCY = ("USD", "EUR", "GBP", "USD", "USD")
REGION_DENIED = (0.04, 0.15, 0.12, 0.05, 0.07)  # share of users who deny consent
CONSENT_UNKNOWN = 0.01
CONSENTS = ("granted", "denied", "unknown")

# Where a converting user clicked last: its click id, and how likely each platform claims it.
SOURCES = ("google", "meta", "tiktok", "none")
SOURCE_MIX = (0.35, 0.22, 0.07, 0.36)
CLICK_ID_KEPT = 0.9  # share of clicks whose id survives to the order
SOURCE_OF_PLATFORM = {"google_ads": 0, "meta": 1, "tiktok": 2, "ga4": 0}

ORDER_VALUE_MEDIAN = {"USD": 72.0, "EUR": 64.0, "GBP": 55.0}
ORDER_VALUE_SIGMA = 0.55
LEAD_VALUE = 30.0  # the nominal value the business gives a lead
LEADS_PER_ORDER = 0.2
NATURAL_DUPLICATE = 0.002
VALUE_MISMATCH = 0.01  # platform value differs from backend (shipping excluded, say)


@dataclass(frozen=True)
class Channel:
    """One delivery path of a platform (pixel in the browser, capi/server, offline import)."""

    name: str
    reliability: float
    browser_factor: dict[str, float] = field(default_factory=dict)
    denied_factor: float = 1.0
    delay_median_s: float = 5.0  # lognormal arrival delay after the order (batched for import)
    delay_sigma: float = 1.0


@dataclass(frozen=True)
class PlatformSpec:
    """How a platform sees one conversion type: who it claims (attribution) and through what."""

    attr_own_click: float  # P(claims the conversion) when the user clicked one of its ads
    attr_other: float  # ... otherwise (view-through, modelled conversions)
    channels: tuple[Channel, ...]


_META_CHANNELS = (
    Channel("pixel", 0.90, {"safari": 0.72, "firefox": 0.85}, 0.08, 4.0),
    Channel("capi", 0.78, {}, 0.5, 20.0, 0.8),
)
_TIKTOK_CHANNELS = (
    Channel("pixel", 0.82, {"safari": 0.70, "firefox": 0.85}, 0.08, 5.0),
    Channel("server", 0.70, {}, 0.5, 15.0, 0.8),
)
PLATFORMS: dict[str, dict[str, PlatformSpec]] = {
    "meta": {
        "purchase": PlatformSpec(0.97, 0.82, _META_CHANNELS),
        "lead": PlatformSpec(0.95, 0.75, _META_CHANNELS),
    },
    "google_ads": {
        "purchase": PlatformSpec(
            0.97, 0.53, (Channel("pixel", 0.95, {"safari": 0.88, "firefox": 0.9}, 0.15, 6.0),)
        ),
        # Offline conversions uploaded from the CRM: they only match with a google click id.
        "lead": PlatformSpec(0.97, 0.0, (Channel("import", 0.98, {}, 1.0, 0.0, 0.0),)),
    },
    "tiktok": {
        "purchase": PlatformSpec(0.95, 0.22, _TIKTOK_CHANNELS),
        "lead": PlatformSpec(0.90, 0.15, _TIKTOK_CHANNELS),
    },
    "ga4": {
        "purchase": PlatformSpec(
            1.0, 1.0, (Channel("pixel", 0.96, {"safari": 0.93, "firefox": 0.88}, 0.05, 3.0),)
        ),
        "lead": PlatformSpec(
            1.0, 1.0, (Channel("pixel", 0.96, {"safari": 0.93, "firefox": 0.88}, 0.05, 3.0),)
        ),
    },
}
CLICK_KEYS = {"meta": ("fbclid",), "google_ads": ("gclid", "gbraid"), "tiktok": ("ttclid",), "ga4": ("gclid", "gbraid")}


# ---------------------------------------------------------------------------------------------
# Scenarios: what breaks at change_at, the change events around it, and the known answer.


@dataclass(frozen=True)
class Effect:
    """One injected fault, applied to events whose occurred_at >= change_at.

    kind: drop (the platform loses the conversion on every channel), duplicate (the channel
    fires twice, same event_id), no_value (value and currency missing), no_click_ids,
    new_event_id (the channel uses its own event_id: broken pixel/server dedupe),
    consent (denied share of `region` becomes `prob`), thin_orders (backend orders vanish).
    Business events, every platform following (real, never a tracking gap): surge (orders
    and leads x `prob` for `duration_s`: an email blast), lull (x `prob` < 1 for
    `duration_s`: a holiday). batch: the channel uploads once every `duration_s` (at
    ``NIGHTLY_BATCH_AT_S`` into the UTC day for daily batches) instead of live. delay: the
    channel's events arrive `duration_s` (up to a sixth more) after they happened: queued, none lost.
    early_trigger (wrong trigger: the platform also fires for `prob` x as many checkouts that
    never become an order, with an order_id the backend never sees and no click id),
    value_scale (the channel sends value x `prob` in `region`: a wrong currency or unit),
    rename (the platform's event is sent as `new_name`: event definition drift).
    """

    kind: str
    prob: float
    platform: str | None = None
    event_name: str | None = None
    channel: str | None = None
    browser: str | None = None
    region: str | None = None
    duration_s: float | None = None
    new_name: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    effects: tuple[Effect, ...] = ()
    segment: tuple[str, str, str, str] | None = None  # platform, event_name, browser, region
    direction: str | None = None
    verdict: str | None = None
    top_cause: str | None = None
    metric: str | None = None
    # the causal change: kind, minutes before change_at, service, summary, scope
    change: tuple[str, float, str, str, dict[str, str]] | None = None
    also_moving: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "steady",
            "no fault; a harmless GTM publish and routine deploys happen anyway",
            unchanged=("meta|purchase|*|*", "google_ads|purchase|*|*", "tiktok|purchase|*|*",
                       "ga4|purchase|*|*"),
        ),
        Scenario(
            "safari_drop",
            "meta (pixel and capi) stops seeing 60 % of Safari purchases after a checkout deploy",
            (Effect("drop", 0.6, "meta", "purchase", browser="safari"),),
            ("meta", "purchase", "safari", "*"), "drop", "tracking_gap", "browser_restriction",
            "count_ratio",
            ("deploy", 20, "checkout-web",
             "checkout-web: purchase confirmation moved to the payments.example.com domain",
             {"platform": "meta"}),
            also_moving=("meta|purchase|*|*",),
            unchanged=("meta|purchase|chrome|*", "google_ads|purchase|safari|*",
                       "ga4|purchase|safari|*"),
        ),
        Scenario(
            "duplicate_purchase",
            "meta pixel fires purchase twice (same event_id, same channel) for 40 % of orders",
            (Effect("duplicate", 0.4, "meta", "purchase", "pixel"),),
            ("meta", "purchase", "*", "*"), "inflation", "tracking_gap", "duplicate_trigger",
            "duplicate_rate",
            ("tag_publish", 10, "gtm",
             "GTM container v42: purchase trigger also on history change", {"platform": "meta"}),
            also_moving=("meta|purchase|chrome|*", "meta|purchase|*|na"),
            unchanged=("google_ads|purchase|*|*", "ga4|purchase|*|*"),
        ),
        Scenario(
            "consent_eu",
            "EU consent-denied share rises from 15 % to 55 %: every pixel sees far fewer EU purchases",
            (Effect("consent", 0.55, region="eu"),),
            ("meta", "purchase", "*", "eu"), "drop", "tracking_gap", "consent", "count_ratio",
            ("consent_update", 10, "cmp", "Cookie banner v3: 'reject all' on the first layer (EU)",
             {"region": "eu"}),
            also_moving=("google_ads|purchase|*|eu", "tiktok|purchase|*|eu", "ga4|purchase|*|eu",
                         "meta|lead|*|eu"),
            unchanged=("meta|purchase|*|na", "ga4|purchase|*|uk"),
        ),
        Scenario(
            "value_missing",
            "google_ads purchase events lose value and currency for 70 % of events; counts hold",
            (Effect("no_value", 0.7, "google_ads", "purchase"),),
            ("google_ads", "purchase", "*", "*"), "drop", "tracking_gap", "missing_value",
            "value_ratio",
            ("tag_publish", 15, "gtm",
             "GTM container v43: new checkout data layer, Google Ads conversion tag migrated",
             {"platform": "google_ads"}),
            unchanged=("meta|purchase|*|*", "ga4|purchase|*|*"),
        ),
        Scenario(
            "business_drop",
            "orders fall 40 % after a price increase; every platform falls with them (not a gap)",
            (Effect("thin_orders", 0.4),),
            ("*", "purchase", "*", "*"), "drop", "business_change", "business_change",
            "backend_count",
            ("other", 30, "pricing", "Catalogue price increase +15 %", {}),
            unchanged=("meta|purchase|*|*", "google_ads|purchase|*|*", "tiktok|purchase|*|*",
                       "ga4|purchase|*|*"),
        ),
        Scenario(
            "click_ids_missing",
            "google_ads purchase events lose their click ids (gclid/gbraid); counts hold",
            (Effect("no_click_ids", 0.95, "google_ads", "purchase"),),
            ("google_ads", "purchase", "*", "*"), "drop", "tracking_gap", "missing_click_ids",
            "click_id_coverage",
            ("deploy", 20, "landing-web", "landing-web: redirects strip URL query parameters",
             {"platform": "google_ads"}),
            unchanged=("meta|purchase|*|*", "ga4|purchase|*|*"),
        ),
        Scenario(
            "import_failure",
            "google_ads offline lead import stops after a CRM field rename",
            (Effect("drop", 0.97, "google_ads", "lead", "import"),),
            ("google_ads", "lead", "*", "*"), "drop", "tracking_gap", "crm_import", "count_ratio",
            ("crm_change", 30, "crm-sync", "CRM export: field gclid renamed to google_click_id",
             {"platform": "google_ads"}),
            unchanged=("google_ads|purchase|*|*", "meta|lead|*|*"),
        ),
        Scenario(
            "promotion",
            "an email blast: orders and leads x2.5 for 90 minutes, every platform following "
            "(a real business change, never a tracking gap)",
            (Effect("surge", 2.5, duration_s=5400.0),),
            None, "inflation", None, None, "backend_count",
            ("other", 5, "email", "Email blast: winter sale, 20 % off (120k subscribers)", {}),
            unchanged=("meta|purchase|*|*", "google_ads|purchase|*|*", "ga4|purchase|*|*",
                       "google_ads|lead|*|*"),
        ),
        Scenario(
            "holiday",
            "a public holiday: orders and leads x0.6 for a day, every platform following "
            "(a real business change, never a tracking gap)",
            (Effect("lull", 0.6, duration_s=DAY_S),),
            None, "drop", None, None, "backend_count",
            ("other", 60, "calendar", "Public holiday in the main markets", {}),
            unchanged=("meta|purchase|*|*", "google_ads|purchase|*|*", "ga4|purchase|*|*",
                       "google_ads|lead|*|*"),
        ),
        Scenario(
            "import_nightly",
            "the google_ads offline lead import moves to a nightly batch (02:00 UTC): leads arrive "
            "up to a day late, none is lost",
            (Effect("batch", 1.0, "google_ads", "lead", "import", duration_s=DAY_S),),
            ("google_ads", "lead", "*", "*"), "drop", "tracking_gap", "delayed_events",
            "count_ratio",
            ("crm_change", 30, "crm-sync", "CRM export moved to the nightly batch job (02:00 UTC)",
             {"platform": "google_ads"}),
            unchanged=("google_ads|purchase|*|*", "meta|lead|*|*"),
        ),
        Scenario(
            "delayed_events",
            "meta Conversions API events go through a retry queue after a gateway release: they "
            "arrive 3 h late (none is lost); the pixel keeps firing",
            (Effect("delay", 1.0, "meta", "purchase", "capi", duration_s=3 * 3600.0),),
            ("meta", "purchase", "*", "*"), "drop", "tracking_gap", "delayed_events",
            "channel_ratio:capi",
            ("deploy", 20, "capi-gateway", "capi-gateway: server events sent through the retry queue",
             {"platform": "meta"}),
            unchanged=("google_ads|purchase|*|*", "ga4|purchase|*|*", "tiktok|purchase|*|*"),
        ),
        Scenario(
            "broken_dedupe",
            "meta capi sends its own event_id, no longer the pixel's: meta counts orders twice",
            (Effect("new_event_id", 1.0, "meta", "purchase", "capi"),),
            ("meta", "purchase", "*", "*"), "inflation", "tracking_gap", "broken_dedupe",
            "duplicate_rate",
            ("deploy", 20, "capi-gateway", "capi-gateway: new event_id scheme for server events",
             {"platform": "meta"}),
            also_moving=("meta|purchase|chrome|*", "meta|purchase|safari|*"),
            unchanged=("google_ads|purchase|*|*", "tiktok|purchase|*|*"),
        ),
        Scenario(
            "missing_tag",
            "a GTM publish removes the tiktok pixel and a server release the events API call: tiktok "
            "goes silent on purchases",
            (Effect("drop", 1.0, "tiktok", "purchase"),),
            ("tiktok", "purchase", "*", "*"), "drop", "tracking_gap", "missing_tag", "count_ratio",
            ("tag_publish", 15, "gtm", "GTM container v44: tag clean-up (TikTok pixel removed)",
             {"platform": "tiktok"}),
            unchanged=("meta|purchase|*|*", "google_ads|purchase|*|*", "ga4|purchase|*|*"),
        ),
        Scenario(
            "wrong_trigger",
            "the meta purchase tag moves to the checkout step: +60 % purchases with no order behind "
            "them (abandoned checkouts, no click id)",
            (Effect("early_trigger", 0.6, "meta", "purchase"),),
            ("meta", "purchase", "*", "*"), "inflation", "tracking_gap", "wrong_trigger", "count_ratio",
            ("tag_publish", 20, "gtm", "GTM container v45: purchase trigger on the payment step",
             {"platform": "meta"}),
            also_moving=("meta|purchase|chrome|*", "meta|purchase|safari|*", "meta|purchase|*|na"),
            unchanged=("google_ads|purchase|*|*", "ga4|purchase|*|*"),
        ),
        Scenario(
            "wrong_currency",
            "google_ads receives EU order values in the display currency (SEK, x11) while the "
            "currency field still says EUR, after a checkout release; counts hold",
            (Effect("value_scale", 11.0, "google_ads", "purchase", region="eu"),),
            ("google_ads", "purchase", "*", "eu"), "inflation", "tracking_gap", "wrong_currency",
            "value_ratio",
            ("deploy", 25, "checkout-web", "checkout-web: conversion value in the shopper's display currency",
             {"platform": "google_ads"}),
            also_moving=("google_ads|purchase|*|*",),
            unchanged=("meta|purchase|*|*", "ga4|purchase|*|*", "google_ads|purchase|*|na"),
        ),
        Scenario(
            "server_event_failure",
            "meta Conversions API stops after a gateway credential rotation; the pixel keeps firing",
            (Effect("drop", 1.0, "meta", "purchase", "capi"),),
            ("meta", "purchase", "*", "*"), "drop", "tracking_gap", "server_event_failure", "count_ratio",
            ("deploy", 20, "capi-gateway", "capi-gateway: access token rotation",
             {"platform": "meta"}),
            also_moving=("meta|purchase|safari|*",),
            unchanged=("google_ads|purchase|*|*", "ga4|purchase|*|*", "tiktok|purchase|*|*"),
        ),
        Scenario(
            "event_definition_drift",
            "a checkout release renames meta's purchase event to order_complete (pixel and capi): "
            "purchase vanishes while order_complete appears with the same orders",
            (Effect("rename", 1.0, "meta", "purchase", new_name="order_complete"),),
            ("meta", "purchase", "*", "*"), "drop", "tracking_gap", "event_definition_drift",
            "count_ratio",
            ("deploy", 15, "checkout-web", "checkout-web: new analytics event schema (order_complete)",
             {"platform": "meta"}),
            unchanged=("google_ads|purchase|*|*", "ga4|purchase|*|*", "tiktok|purchase|*|*"),
        ),
        Scenario(
            "attribution_setting",
            "google_ads attribution window shortened from 30-day to 7-day click: -35 % conversions "
            "on every browser and region",
            (Effect("drop", 0.35, "google_ads", "purchase"),),
            ("google_ads", "purchase", "*", "*"), "drop", "tracking_gap", "attribution_change",
            "count_ratio",
            ("attribution_setting", 30, "google-ads-ui",
             "Google Ads: purchase conversion action click-through window 30 -> 7 days",
             {"platform": "google_ads"}),
            unchanged=("meta|purchase|*|*", "ga4|purchase|*|*", "tiktok|purchase|*|*"),
        ),
    )
}


@dataclass
class Simulation:
    """Generated traffic. Each list is in arrival order; `*_arrivals[i]` is when item i arrives."""

    scenario: str
    backend: list[dict[str, Any]]
    platform: list[dict[str, Any]]
    changes: list[dict[str, Any]]
    truth: dict[str, Any]
    backend_arrivals: list[float]
    platform_arrivals: list[float]
    change_arrivals: list[float]

    def timeline(self) -> Iterator[tuple[float, str, dict[str, Any]]]:
        """All three topics merged: (arrival_ts, role, value), role in backend/platform/changes."""
        streams = (
            ((t, 0, i, "changes", v) for i, (t, v) in enumerate(zip(self.change_arrivals, self.changes, strict=True))),
            ((t, 1, i, "backend", v) for i, (t, v) in enumerate(zip(self.backend_arrivals, self.backend, strict=True))),
            ((t, 2, i, "platform", v) for i, (t, v) in enumerate(zip(self.platform_arrivals, self.platform, strict=True))),
        )
        for t, _, _, role, value in heapq.merge(*streams, key=lambda e: (e[0], e[1], e[2])):
            yield t, role, value

    def __len__(self) -> int:
        return len(self.backend) + len(self.platform) + len(self.changes)


# ---------------------------------------------------------------------------------------------
# Generation


def _iso(ts: float) -> str:
    """Epoch seconds -> '2026-01-05T18:23:11.123Z' (millisecond precision, always UTC)."""
    ms = int(round(ts * 1000.0))
    sec, milli = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{milli:03d}Z"


def _daily_shape(local_hour: np.ndarray) -> np.ndarray:
    # evening peak (~20:00 local), trough in the early morning
    return np.exp(0.85 * np.cos(2.0 * np.pi * (local_hour - 20.0) / 24.0))


#: Realistic traffic noise on the log of the order rate (per minute, shared by backend and
#: every platform): what moves a real shop's orders for hours (weather, campaigns, TV, an
#: outage elsewhere). (sd, correlation time in minutes) of each AR(1) component.
NOISE_HOURLY = (0.15, 120.0)  # shared by every region: a busy or slow afternoon
NOISE_DAILY = (0.08, 36 * 60.0)  # shared, slow: a good or a bad day (or two)
NOISE_REGION = (0.05, 12 * 60.0)  # each region on its own
NOISE_MODES = ("realistic", "calm")


@dataclass(frozen=True)
class TrafficNoise:
    """Multiplicative rate noise per minute bin: ``log_shared[bin]`` + ``log_region[r, bin]``.

    ``realistic``: sums of AR(1) processes (lognormal, mean-corrected so the expected rate is
    unchanged), autocorrelated over hours and days, on top of the Poisson arrivals.
    ``calm``: the old test bed, independent day-level gamma noise only (windows independent).
    """

    log_shared: np.ndarray
    log_region: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator, n_bins: int, mode: str = "realistic") -> TrafficNoise:
        if mode not in NOISE_MODES:
            raise ValueError(f"unknown noise {mode!r}; valid: {', '.join(NOISE_MODES)}")
        if mode == "calm":
            n_days = n_bins // int(DAY_S / BIN_S) + 2
            day_idx = np.arange(n_bins) // int(DAY_S / BIN_S)
            day = np.log(rng.gamma(150.0, 1.0 / 150.0, n_days))[day_idx]
            region = np.log(rng.gamma(200.0, 1.0 / 200.0, (len(REGIONS), n_days)))[:, day_idx]
            return TrafficNoise(day, region)
        shared = _ar1(rng, n_bins, *NOISE_HOURLY) + _ar1(rng, n_bins, *NOISE_DAILY)
        shared -= 0.5 * (NOISE_HOURLY[0] ** 2 + NOISE_DAILY[0] ** 2)
        region = np.stack([_ar1(rng, n_bins, *NOISE_REGION) for _ in REGIONS]) - 0.5 * NOISE_REGION[0] ** 2
        return TrafficNoise(shared, region)


def _ar1(rng: np.random.Generator, n: int, sd: float, tau_bins: float) -> np.ndarray:
    """A stationary Gaussian AR(1) path: sd ``sd``, lag-k correlation ``exp(-k / tau_bins)``."""
    from scipy.signal import lfilter

    a = math.exp(-1.0 / tau_bins)
    shocks = rng.normal(0.0, sd * math.sqrt(1.0 - a * a), n)
    shocks[0] = rng.normal(0.0, sd)  # start in the stationary distribution
    return np.asarray(lfilter([1.0], [1.0, -a], shocks))


def _rates(
    start: float, days: float, per_day: float, weekend_factor: float, noise: TrafficNoise
) -> tuple[np.ndarray, np.ndarray]:
    """Expected conversions per minute bin and region: (bin_start, lam[region, bin])."""
    n_bins = noise.log_shared.size
    bin_start = start + BIN_S * np.arange(n_bins)
    week_h = np.arange(0, 7 * 24, 1.0 / 60.0)
    lam = np.empty((len(REGIONS), n_bins))
    shared = np.exp(noise.log_shared)
    for r, (share, offset) in enumerate(zip(REGION_MIX, REGION_UTC_OFFSET_H, strict=True)):
        # normalise the shape so a full week averages `per_day`
        local_h_week = (week_h + offset) % (7 * 24)
        norm = np.mean(_daily_shape(local_h_week % 24) * np.where((local_h_week // 24) % 7 >= 5, weekend_factor, 1.0))
        local = (bin_start - start) / 3600.0 + offset + _weekday_hours(start)
        shape = _daily_shape(local % 24) * np.where((local // 24) % 7 >= 5, weekend_factor, 1.0)
        lam[r] = per_day * share * BIN_S / DAY_S * shape / norm * shared * np.exp(noise.log_region[r])
    return bin_start, lam


def _arrival_times(
    rng: np.random.Generator, bin_start: np.ndarray, lam: np.ndarray, end: float
) -> tuple[np.ndarray, np.ndarray]:
    """Non-homogeneous Poisson arrivals per region: (occurred_at, region index), sorted by time."""
    times, regions = [], []
    for r in range(lam.shape[0]):
        counts = rng.poisson(lam[r])
        t = np.repeat(bin_start, counts) + rng.random(int(counts.sum())) * BIN_S
        times.append(t)
        regions.append(np.full(t.size, r, dtype=np.int64))
    occ = np.concatenate(times)
    reg = np.concatenate(regions)
    keep = occ < end
    occ, reg = occ[keep], reg[keep]
    order = np.argsort(occ, kind="stable")
    return occ[order], reg[order]


def _weekday_hours(start: float) -> float:
    """Hours since the Monday 00:00 UTC before `start` (so weekends fall on Sat/Sun)."""
    # 1970-01-01 was a Thursday: day 0 -> weekday 3 (Mon=0)
    days_since_epoch = start / DAY_S
    return ((days_since_epoch + 3.0) % 7.0) * 24.0


@dataclass
class _Conversions:
    """Backend conversions of one type (orders or leads) as columns."""

    type: str
    event_name: str
    ids: list[str]
    occ: np.ndarray
    region: np.ndarray
    browser: np.ndarray
    consent: np.ndarray
    source: np.ndarray
    has_click: np.ndarray
    click_key: np.ndarray  # index into ("gclid", "gbraid", "fbclid", "ttclid")
    click_token: np.ndarray
    value: np.ndarray
    arrival: np.ndarray
    alive: np.ndarray  # False: the order never happened in this scenario (thin_orders)


_CLICK_NAMES = ("gclid", "gbraid", "fbclid", "ttclid")


def _business_multiplier(scenario: Scenario, change_at: float | None, t: np.ndarray) -> np.ndarray:
    """The scenario's business events (surge x m, lull x m) as a rate multiplier at times t."""
    m = np.ones(t.size)
    if change_at is None:
        return m
    for eff in scenario.effects:
        if eff.kind in ("surge", "lull"):
            during = (t >= change_at) & (t < change_at + (eff.duration_s or 0.0))
            m = np.where(during, m * eff.prob, m)
    return m


def _conversions(
    rng: np.random.Generator,
    kind: str,
    seed: int,
    occ: np.ndarray,
    region: np.ndarray,
    scenario: Scenario,
    change_at: float | None,
    id_prefix: str = "",
) -> _Conversions:
    n = occ.size
    # Every draw below happens in every scenario, so a scenario's events before change_at are
    # exactly those of `steady` with the same seed.
    browser = rng.choice(len(BROWSERS), size=n, p=BROWSER_MIX)
    u_consent = rng.random(n)
    source = rng.choice(len(SOURCES), size=n, p=SOURCE_MIX)
    has_click = (rng.random(n) < CLICK_ID_KEPT) & (source < 3)
    u_gbraid = rng.random(n)
    click_token = rng.integers(0, 2**62, size=n, dtype=np.int64)
    currency_median = np.array([ORDER_VALUE_MEDIAN[c] for c in REGION_CURRENCY])[region]
    value = np.round(currency_median * np.exp(rng.normal(0.0, ORDER_VALUE_SIGMA, n)), 2)
    if kind == "lead":
        value = np.full(n, LEAD_VALUE)
    delay = np.minimum(rng.lognormal(math.log(0.3), 0.8, n), 30.0)
    u_thin = rng.random(n)

    after = occ >= change_at if change_at is not None else np.zeros(n, dtype=bool)
    denied_p = np.array(REGION_DENIED)[region]
    alive = np.ones(n, dtype=bool)
    for eff in scenario.effects:
        if eff.kind == "consent":
            in_region = region == REGIONS.index(eff.region) if eff.region else np.ones(n, dtype=bool)
            denied_p = np.where(after & in_region, eff.prob, denied_p)
        elif eff.kind == "thin_orders" and kind == "order":
            alive &= ~(after & (u_thin < eff.prob))
    lull = np.minimum(_business_multiplier(scenario, change_at, occ), 1.0)
    alive &= u_thin >= 1.0 - lull
    consent = np.where(u_consent < denied_p, 1, np.where(u_consent > 1.0 - CONSENT_UNKNOWN, 2, 0))
    # Google clicks from iOS Safari often carry gbraid instead of gclid.
    click_key = np.select(
        [source == 0, source == 1, source == 2], [np.where((browser == 1) & (u_gbraid < 0.3), 1, 0), 2, 3], 0
    )
    prefix = "ORD" if kind == "order" else "LEAD"
    ids = [f"{prefix}-{seed}-{id_prefix}{i:06d}" for i in range(n)]
    return _Conversions(
        kind, "purchase" if kind == "order" else "lead", ids, occ, region, browser, consent, source,
        has_click, click_key, click_token, value, occ + delay, alive,
    )


def _click_ids(conv: _Conversions, i: int) -> dict[str, str]:
    if not conv.has_click[i]:
        return {}
    key = _CLICK_NAMES[conv.click_key[i]]
    token = int(conv.click_token[i])
    if key in ("gclid", "gbraid"):
        return {key: f"Cj0KCQiA{token:016x}"}
    if key == "fbclid":
        return {key: f"IwAR{token:016x}"}
    return {key: f"E.C.P.{token:016x}"}


def _backend_events(conv: _Conversions) -> list[tuple[float, dict[str, Any]]]:
    out = []
    occ = conv.occ.tolist()
    arrival = conv.arrival.tolist()
    value = conv.value.tolist()
    for i in np.flatnonzero(conv.alive).tolist():
        region = conv.region[i]
        oid = conv.ids[i]
        out.append((arrival[i], {
            "event_id": f"be-{oid}",
            "type": conv.type,
            "order_id": oid,
            "occurred_at": _iso(occ[i]),
            "value": value[i],
            "currency": REGION_CURRENCY[region],
            "browser": BROWSERS[conv.browser[i]],
            "region": REGIONS[region],
            "consent": CONSENTS[conv.consent[i]],
            "click_ids": _click_ids(conv, i),
        }))
    return out


def _matches(eff: Effect, platform: str, event_name: str, channel: str | None) -> bool:
    return (
        (eff.platform is None or eff.platform == platform)
        and (eff.event_name is None or eff.event_name == event_name)
        and (eff.channel is None or channel is None or eff.channel == channel)
    )


def _filter_mask(eff: Effect, conv: _Conversions) -> np.ndarray:
    mask = np.ones(conv.occ.size, dtype=bool)
    if eff.browser is not None:
        mask &= conv.browser == BROWSERS.index(eff.browser)
    if eff.region is not None:
        mask &= conv.region == REGIONS.index(eff.region)
    return mask


def _batch_arrival(rng: np.random.Generator, occ: np.ndarray, period_s: float, offset_s: float = 0.0) -> np.ndarray:
    """Arrival of batch uploads: each batch (at ``offset_s + k x period_s``) takes the
    conversions at least 30 s old and lands 10-40 s later."""
    batch_at = np.ceil((occ + 30.0 - offset_s) / period_s) * period_s + offset_s
    return batch_at + 10.0 + 30.0 * rng.random(occ.size)


def _platform_events(
    rng: np.random.Generator, conv: _Conversions, scenario: Scenario, change_at: float | None,
    import_batch_s: float = IMPORT_BATCH_S, aux_rng: np.random.Generator | None = None,
) -> list[tuple[float, dict[str, Any]]]:
    """Every platform's events for these conversions: (arrival time, value).

    ``aux_rng`` draws what only some scenarios need (batch upload times), so the main stream
    of draws, and with it every event before ``change_at``, is the same in every scenario."""
    aux_rng = aux_rng or np.random.default_rng(0)
    n = conv.occ.size
    after = conv.occ >= change_at if change_at is not None else np.zeros(n, dtype=bool)
    occ = np.round(conv.occ, 3).tolist()
    value = conv.value.tolist()
    backend_arrival = conv.arrival
    out: list[tuple[float, dict[str, Any]]] = []
    for platform, specs in PLATFORMS.items():
        spec = specs[conv.event_name]
        own = conv.source == SOURCE_OF_PLATFORM[platform]
        if platform == "ga4":
            own = np.ones(n, dtype=bool)  # analytics does not attribute: it sees what it can
        p_attr = np.where(own & conv.has_click, spec.attr_own_click, spec.attr_other)
        claimed = (rng.random(n) < p_attr) & conv.alive
        u_drop = rng.random(n)
        for eff in scenario.effects:
            if eff.kind == "drop" and _matches(eff, platform, conv.event_name, None) and eff.channel is None:
                claimed &= ~(after & _filter_mask(eff, conv) & (u_drop < eff.prob))
        click_keys = CLICK_KEYS[platform]
        # wrong trigger: checkouts that never become an order fire the purchase too (drawn from
        # aux_rng, so no other scenario's events change)
        early = [e for e in scenario.effects if e.kind == "early_trigger" and _matches(e, platform, conv.event_name, None)]
        spawn = np.zeros(n, dtype=bool)
        spawn_lead = np.zeros(n)
        if early:
            spawn = after & conv.alive & (aux_rng.random(n) < early[0].prob)
            spawn_lead = 120.0 + 1080.0 * aux_rng.random(n)
        for ch in spec.channels:
            p_fire = np.full(n, ch.reliability)
            for b, factor in ch.browser_factor.items():
                p_fire = np.where(conv.browser == BROWSERS.index(b), p_fire * factor, p_fire)
            p_fire = np.where(conv.consent == 1, p_fire * ch.denied_factor, p_fire)
            fires = claimed & (rng.random(n) < p_fire)
            if ch.name == "import":
                arrival = _batch_arrival(rng, conv.occ, import_batch_s)
            else:
                delay = np.minimum(rng.lognormal(math.log(ch.delay_median_s), ch.delay_sigma, n), MAX_DELAY_S)
                arrival = np.maximum(conv.occ + 0.5 + delay, backend_arrival + 0.001)
            for eff in scenario.effects:
                if eff.kind == "batch" and _matches(eff, platform, conv.event_name, ch.name):
                    period = eff.duration_s or DAY_S
                    batched = _batch_arrival(aux_rng, conv.occ, period, NIGHTLY_BATCH_AT_S if period >= DAY_S else 0.0)
                    arrival = np.where(after, np.maximum(arrival, batched), arrival)
                elif eff.kind == "delay" and _matches(eff, platform, conv.event_name, ch.name):
                    # queued: every event arrives `duration_s` (+ up to a sixth more) late
                    late_by = (eff.duration_s or 3600.0) * (1.0 + aux_rng.random(n) / 6.0)
                    arrival = np.where(after, np.maximum(arrival, conv.occ + late_by), arrival)
            u_effect = rng.random(n)
            natural_dup = rng.random(n) < NATURAL_DUPLICATE
            retry_delay = rng.lognormal(math.log(30.0), 1.0, n)
            value_off = rng.random(n) < VALUE_MISMATCH
            dup = natural_dup.copy()
            dup_delay = retry_delay.copy()
            no_value = np.zeros(n, dtype=bool)
            no_click = np.zeros(n, dtype=bool)
            new_id = np.zeros(n, dtype=bool)
            value_scale = np.ones(n)
            renamed = np.zeros(n, dtype=bool)
            new_name = conv.event_name
            for eff in scenario.effects:
                if not _matches(eff, platform, conv.event_name, ch.name):
                    continue
                hit = after & _filter_mask(eff, conv) & (u_effect < eff.prob)
                if eff.kind == "drop" and eff.channel is not None:
                    fires &= ~hit
                elif eff.kind == "duplicate":
                    dup_delay = np.where(hit & ~dup, 0.5 + 4.5 * u_effect, dup_delay)
                    dup |= hit
                elif eff.kind == "no_value":
                    no_value |= hit
                elif eff.kind == "no_click_ids":
                    no_click |= hit
                elif eff.kind == "new_event_id":
                    new_id |= hit
                elif eff.kind == "value_scale":
                    value_scale = np.where(hit, eff.prob, value_scale)
                elif eff.kind == "rename":
                    renamed |= hit
                    new_name = eff.new_name or new_name
            arrival_l = arrival.tolist()
            dup_delay_l = dup_delay.tolist()
            scale_l = value_scale.tolist()
            for i in np.flatnonzero(fires).tolist():
                oid = conv.ids[i]
                region = conv.region[i]
                event_id = f"{oid}-{conv.event_name}"
                if new_id[i]:
                    event_id = f"srv-{int(conv.click_token[i]) ^ 0x5DEECE66D:016x}"
                ev: dict[str, Any] = {
                    "event_id": event_id,
                    "platform": platform,
                    "channel": ch.name,
                    "event_name": new_name if renamed[i] else conv.event_name,
                    "order_id": oid,
                    "occurred_at": occ[i],
                }
                if not no_value[i]:
                    v = value[i]
                    if value_off[i] and conv.type == "order":
                        v = round(max(v - 4.95, 0.0), 2)
                    if scale_l[i] != 1.0:
                        v = round(v * scale_l[i], 2)
                    ev["value"] = v
                    ev["currency"] = REGION_CURRENCY[region]
                ev["browser"] = BROWSERS[conv.browser[i]]
                ev["region"] = REGIONS[region]
                ev["consent"] = CONSENTS[conv.consent[i]]
                clicks = {} if no_click[i] else _click_ids(conv, i)
                ev["click_ids"] = {k: v for k, v in clicks.items() if k in click_keys}
                out.append((arrival_l[i], ev))
                if dup[i]:
                    out.append((arrival_l[i] + dup_delay_l[i], dict(ev)))
            if early:
                fires_x = spawn & (aux_rng.random(n) < p_fire)
                for i in np.flatnonzero(fires_x).tolist():
                    at = float(conv.occ[i]) - float(spawn_lead[i])
                    if change_at is None or at < change_at:
                        continue
                    checkout = f"CHK-{conv.ids[i]}"
                    region = conv.region[i]
                    out.append((at + 0.5 + ch.delay_median_s, {
                        "event_id": f"{checkout}-{conv.event_name}", "platform": platform,
                        "channel": ch.name, "event_name": conv.event_name, "order_id": checkout,
                        "occurred_at": round(at, 3), "value": value[i], "currency": REGION_CURRENCY[region],
                        "browser": BROWSERS[conv.browser[i]], "region": REGIONS[region],
                        "consent": CONSENTS[conv.consent[i]], "click_ids": {},
                    }))
    return out


def _changes(scenario: Scenario, seed: int, start: float, end: float, change_at: float) -> list[dict[str, Any]]:
    """The causal change (if any) plus unrelated ones: a CRM change days before, routine deploys."""
    lo, hi = start + 60.0, end - 60.0

    def clamp(t: float) -> float:
        return float(min(max(t, lo), hi))

    items: list[tuple[float, str, str, str, str, dict[str, str]]] = [
        (clamp(start + 0.25 * (end - start)), "crm_change", "crm",
         "CRM: new lifecycle stage 'MQL' between lead and opportunity", "maria.k", {}),
        (clamp(change_at - 5 * 3600.0), "deploy", "search-api", "search-api: faster autocomplete",
         "ci-bot", {}),
        (clamp(change_at + 3 * 3600.0), "deploy", "email-service",
         "email-service: new order confirmation template", "ci-bot", {}),
    ]
    if scenario.change is not None:
        kind, minutes, service, summary, scope = scenario.change
        items.append((clamp(change_at - 60.0 * minutes), kind, service, summary, "ci-bot", dict(scope)))
    else:
        items.append((clamp(change_at - 15 * 60.0), "tag_publish", "gtm",
                      "GTM container v41: scroll-depth trigger on blog pages", "jonas.w", {}))
    items.sort(key=lambda c: c[0])
    out = []
    for n, (at, kind, service, summary, author, scope) in enumerate(items):
        at = round(at, 3)
        change: dict[str, Any] = {
            "change_id": f"chg-{seed}-{n:02d}-{kind}-{service}",
            "kind": kind,
            "at": _iso(at),
            "summary": summary,
            "service": service,
            "author": author,
            "url": f"https://git.example.com/{service}/-/merge_requests/{1000 + n + seed % 1000}",
        }
        if scope:
            change["scope"] = scope
        out.append(change)
    return out


def _sorted(
    items: list[tuple[float, dict[str, Any]]], arrival_field: bool = False
) -> tuple[list[float], list[dict[str, Any]]]:
    """Arrival order (the order of the output files and topics)."""
    if not items:
        return [], []
    order = np.argsort(np.array([t for t, _ in items]), kind="stable").tolist()
    arrivals = [round(items[i][0], 3) for i in order]
    values = [items[i][1] for i in order]
    if arrival_field:
        for t, value in zip(arrivals, values, strict=True):
            value["arrived_at"] = t
    return arrivals, values


@dataclass
class BackendConversions:
    """The backend side of a simulation, before any event is built (cheap: numpy only).

    ``main`` holds orders then leads, ``extra`` the additional ones of a surge (drawn from their
    own generator so nothing before ``change_at`` depends on the scenario). ``alive`` in each
    marks the conversions that happen (lulls and business drops remove some)."""

    main: list[_Conversions]
    extra: list[_Conversions]
    rngs: tuple[np.random.Generator, np.random.Generator, np.random.Generator]

    @property
    def all(self) -> list[_Conversions]:
        return self.main + self.extra

    def occurred_at(self, kind: str) -> np.ndarray:
        """Sorted occurred_at of the conversions of one kind (order or lead) that happen."""
        times = [c.occ[c.alive] for c in self.all if c.type == kind]
        return np.sort(np.concatenate(times)) if times else np.empty(0)


def backend_conversions(
    scenario: str,
    seed: int = 1,
    days: float = 4.0,
    start: float | None = None,
    orders_per_day: float = 3000.0,
    change_at_fraction: float = 0.75,
    noise: str = "realistic",
) -> BackendConversions:
    """The backend conversions `generate` would emit (same arguments, same draws), without
    building events: for calibrating backend detectors over months of traffic in seconds.

    >>> convs = backend_conversions("steady", seed=3, days=1.0, orders_per_day=4000)
    >>> 3000 < convs.occurred_at("order").size < 5000
    True
    """
    spec = SCENARIOS[scenario]
    start = DEFAULT_START if start is None else float(start)
    end = start + days * DAY_S
    change_at = round(start + change_at_fraction * (end - start))
    effect_at = None if spec.name == "steady" else float(change_at)
    rng = np.random.default_rng(seed)
    n_bins = max(1, int(math.ceil(days * DAY_S / BIN_S)))
    traffic = TrafficNoise.draw(np.random.default_rng([seed, 1]), n_bins, noise)
    surge_rng = np.random.default_rng([seed, 2])
    main, extra = [], []
    for kind, per_day, weekend in (("order", orders_per_day, 1.12),
                                   ("lead", orders_per_day * LEADS_PER_ORDER, 0.55)):
        bins, lam = _rates(start, days, per_day, weekend, traffic)
        occ, region = _arrival_times(rng, bins, lam, end)
        main.append(_conversions(rng, kind, seed, occ, region, spec, effect_at))
        surge = _business_multiplier(spec, effect_at, bins) - 1.0
        if effect_at is not None and (surge > 0).any():
            occ_x, reg_x = _arrival_times(surge_rng, bins, lam * np.maximum(surge, 0.0), end)
            keep = occ_x >= effect_at
            extra.append(_conversions(surge_rng, kind, seed, occ_x[keep], reg_x[keep], spec, effect_at, "x"))
    return BackendConversions(main, extra, (rng, surge_rng, np.random.default_rng([seed, 3])))


def generate(
    scenario: str,
    seed: int = 1,
    days: float = 4.0,
    start: float | None = None,
    orders_per_day: float = 3000.0,
    change_at_fraction: float = 0.75,
    noise: str = "realistic",
    import_batch_s: float = IMPORT_BATCH_S,
    arrival_field: bool = False,
) -> Simulation:
    """Generate a scenario's traffic: deterministic in all arguments, no wall clock involved.

    ``noise``: ``realistic`` (default: hour- and day-level autocorrelated rate noise shared by
    every source) or ``calm`` (independent day-level noise only). ``import_batch_s``: period
    of the offline lead uploads. ``arrival_field``: every backend and platform value also
    carries ``arrived_at`` (epoch s), the time it reaches the topic.

    >>> sim = generate("safari_drop", seed=7, days=0.5, orders_per_day=2000)
    >>> sim.truth["segment_key"], sim.truth["direction"], sim.truth["top_cause"]
    ('meta|purchase|safari|*', 'drop', 'browser_restriction')
    >>> sim.backend_arrivals == sorted(sim.backend_arrivals)
    True
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; valid: {', '.join(SCENARIOS)}")
    if days <= 0 or orders_per_day < 0:
        raise ValueError("days must be > 0 and orders_per_day >= 0")
    if import_batch_s <= 0:
        raise ValueError("import_batch_s must be > 0")
    spec = SCENARIOS[scenario]
    start = DEFAULT_START if start is None else float(start)
    end = start + days * DAY_S
    change_at = round(start + change_at_fraction * (end - start))
    effect_at = None if spec.name == "steady" else float(change_at)

    convs = backend_conversions(scenario, seed, days, start, orders_per_day, change_at_fraction, noise)
    main_rng, surge_rng, aux_rng = convs.rngs
    backend_arrivals, backend = _sorted(
        [ev for conv in convs.all for ev in _backend_events(conv)], arrival_field
    )
    platform_items = [
        item
        for conv in convs.main
        for item in _platform_events(main_rng, conv, spec, effect_at, import_batch_s, aux_rng)
    ]
    platform_items += [
        item
        for conv in convs.extra
        for item in _platform_events(surge_rng, conv, spec, effect_at, import_batch_s, aux_rng)
    ]
    platform_arrivals, platform = _sorted(platform_items, arrival_field)
    changes = _changes(spec, seed, start, end, float(change_at))
    change_arrivals = [_parse_iso(c["at"]) for c in changes]

    causal = None
    if spec.change is not None:
        causal = next(c["change_id"] for c in changes if c["service"] == spec.change[2])
    segment = None
    if spec.segment is not None:
        segment = dict(zip(("platform", "event_name", "browser", "region"), spec.segment, strict=True))
    truth = {
        "scenario": spec.name,
        "description": spec.description,
        "seed": seed,
        "start": start,
        "end": end,
        "change_at": effect_at,
        "segment": segment,
        "segment_key": "|".join(spec.segment) if spec.segment else None,
        "direction": spec.direction,
        "verdict": spec.verdict,
        "top_cause": spec.top_cause,
        "metric": spec.metric,
        "change_id": causal,
        "also_moving": list(spec.also_moving),
        "unchanged": list(spec.unchanged),
        "counts": {"backend": len(backend), "platform": len(platform), "changes": len(changes)},
        "noise": noise,
        "orders_per_day": orders_per_day,
        "import_batch_s": import_batch_s,
        "business_events": [
            {"kind": "promotion" if eff.kind == "surge" else "holiday", "start": effect_at,
             "end": min(end, effect_at + (eff.duration_s or 0.0)), "multiplier": eff.prob}
            for eff in spec.effects if eff.kind in ("surge", "lull") and effect_at is not None
        ],
    }
    return Simulation(spec.name, backend, platform, changes, truth, backend_arrivals, platform_arrivals,
                      change_arrivals)


def _parse_iso(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------------------------
# Output: files and topics


def write_jsonl(sim: Simulation, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write backend.jsonl, platform.jsonl, changes.jsonl (arrival order) and truth.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, values in (("backend", sim.backend), ("platform", sim.platform), ("changes", sim.changes)):
        path = out / f"{name}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(v) + b"\n" for v in values))
        paths[name] = path
    paths["truth"] = out / "truth.json"
    paths["truth"].write_bytes(orjson.dumps(sim.truth, option=orjson.OPT_INDENT_2) + b"\n")
    return paths


def message_key(role: str, value: dict[str, Any]) -> bytes:
    """Kafka key: order_id for events (pixel, capi and backend of one order share a partition,
    which dedupe needs), change_id for changes."""
    if role == "changes":
        return str(value["change_id"]).encode()
    return str(value.get("order_id") or value["event_id"]).encode()


def _raise_failed(futures: list[asyncio.Future[Any]]) -> None:
    """Raise the first delivery error among flushed sends (cheaper than gathering them)."""
    for fut in futures:
        if fut.done() and not fut.cancelled() and fut.exception() is not None:
            raise fut.exception()  # type: ignore[misc]
    futures.clear()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _PartitionBatcher:
    """Fills one aiokafka batch per topic-partition and hands full ones to the producer.

    Same partitions as aiokafka's default partitioner (murmur2 of the key, like the Java
    client), but ~3x less Python per message than `producer.send()`, and per-partition order
    is kept because batches of a partition enter the accumulator in order.
    """

    def __init__(self, producer: Any, partitions: dict[str, list[int]]):
        from aiokafka.partitioner import murmur2

        self._producer = producer
        self._partitions = partitions
        self._murmur2 = murmur2
        self._partition_of: dict[tuple[str, bytes], int] = {}
        self._batches: dict[tuple[str, int], Any] = {}
        self.futures: list[asyncio.Future[Any]] = []

    async def add(self, topic: str, key: bytes, value: bytes) -> None:
        part = self._partition_of.get((topic, key))
        if part is None:
            parts = self._partitions[topic]
            part = parts[(self._murmur2(key) & 0x7FFFFFFF) % len(parts)]
            if len(self._partition_of) > 1_000_000:
                self._partition_of.clear()
            self._partition_of[(topic, key)] = part
        batch = self._batches.get((topic, part))
        if batch is None:
            batch = self._batches[(topic, part)] = self._producer.create_batch()
        if batch.append(timestamp=None, key=key, value=value) is None:  # full: send, start anew
            await self._send(topic, part)
            batch = self._batches[(topic, part)] = self._producer.create_batch()
            if batch.append(timestamp=None, key=key, value=value) is None:
                raise ValueError(f"a {len(value)}-byte message does not fit in one batch")

    async def _send(self, topic: str, part: int) -> None:
        batch = self._batches.pop((topic, part))
        if batch.record_count():
            self.futures.append(await self._producer.send_batch(batch, topic, partition=part))

    async def send_all(self) -> None:
        for topic, part in list(self._batches):
            await self._send(topic, part)


async def produce(
    sim: Simulation,
    target: str | Settings,
    topics: dict[str, str] | None = None,
    speedup: float | None = None,
    progress: Callable[[str], None] | None = _stderr,
    partitions: int | None = None,
    progress_every_s: float = 3.0,
    **producer_kwargs: Any,
) -> dict[str, int]:
    """Produce the simulation to Kafka in arrival order; returns messages sent per role.

    target: the Kafka settings (bootstrap and security), or a bare HOST:PORT.
    speedup: event-time seconds per wall second (10000 plays 4 days in ~35 s); None: as fast
    as the broker takes it. partitions: create missing topics with this many partitions first
    (otherwise the broker's auto-creation decides). producer_kwargs go to AIOKafkaProducer.
    """
    from streams import kafka
    from streams.config import kafka_security_options

    settings_ = target if isinstance(target, Settings) else Settings(broker=target)
    topics = {**DEFAULT_TOPICS, **(topics or {})}
    if partitions:
        from streams.broker import ensure_topics

        await ensure_topics(settings_.broker, {topics[r]: partitions for r in ("backend", "platform", "changes")},
                            **kafka_security_options(settings_))
    settings: dict[str, Any] = {
        "linger_ms": 20,
        "max_batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "acks": 1,
    }
    settings.update(producer_kwargs)
    producer = kafka.producer(settings_, **settings)
    with kafka.quiet_connection_errors():
        await producer.start()
    sent = {"backend": 0, "platform": 0, "changes": 0}
    total = 0
    wall0 = time.monotonic()
    last_report = last_handoff = wall0
    sim0: float | None = None
    sim_now = 0.0
    dumps = orjson.dumps

    def report(final: bool = False) -> None:
        if progress is None:
            return
        elapsed = max(time.monotonic() - wall0, 1e-9)
        word = "done:" if final else "sent"
        progress(f"simulate: {word} {total:,} events ({total / elapsed:,.0f}/s), "
                 f"simulated time {_iso(sim_now)[:19]}Z")

    try:
        partition_lists = {}
        for topic in topics.values():
            parts = await producer.partitions_for(topic)  # waits for (auto-created) metadata
            partition_lists[topic] = sorted(parts)
        batcher = _PartitionBatcher(producer, partition_lists)
        for arrival, role, value in sim.timeline():
            if sim0 is None:
                sim0 = arrival
            sim_now = arrival
            if speedup:
                now = time.monotonic()
                delay = wall0 + (arrival - sim0) / speedup - now
                if delay > 0.002 or now - last_handoff > 0.05:
                    # what is due is queued: hand it to the producer (linger_ms), then wait
                    await batcher.send_all()
                    last_handoff = now
                if delay > 0.002:
                    await asyncio.sleep(delay)
            await batcher.add(topics[role], message_key(role, value), dumps(value))
            sent[role] += 1
            total += 1
            if total % 1024 == 0 or speedup:
                if len(batcher.futures) > 5000:
                    await producer.flush()
                    _raise_failed(batcher.futures)  # delivery errors surface, memory stays bounded
                now = time.monotonic()
                if now - last_report >= progress_every_s:
                    last_report = now
                    report()
        await batcher.send_all()
        await producer.flush()
        _raise_failed(batcher.futures)
    finally:
        await producer.stop()
    report(final=True)
    return sent


# ---------------------------------------------------------------------------------------------
# CLI


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `simulate` verb to the gapwatch CLI."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="produce realistic synthetic traffic for a named scenario",
        description="Generate backend, platform and change events for a scenario with a known "
        "answer, and produce them to Kafka (--broker) and/or write JSONL files (--out-dir).",
    )
    p.add_argument("--scenario", help=f"one of: {', '.join(SCENARIOS)}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--days", type=float, default=4.0, help="simulated days (default 4)")
    p.add_argument("--orders-per-day", type=float, default=3000.0)
    p.add_argument("--start", help="simulated start, ISO-8601 or epoch s (default 2026-01-05T00:00Z)")
    p.add_argument("--change-at-fraction", type=float, default=0.75,
                   help="where in the run the fault starts (default 0.75)")
    p.add_argument("--noise", choices=NOISE_MODES, default="realistic",
                   help="realistic (default): hour- and day-level autocorrelated rate noise shared by "
                   "every source; calm: independent day-level noise only")
    p.add_argument("--import-batch-minutes", type=float, default=IMPORT_BATCH_S / 60.0,
                   help="period of the offline lead uploads (google_ads import channel; default 1)")
    p.add_argument("--arrival-field", action="store_true",
                   help="add arrived_at (epoch s, when the event reaches the topic) to every event")
    p.add_argument("--out-dir", help="write backend.jsonl, platform.jsonl, changes.jsonl, truth.json")
    p.add_argument("--speedup", type=float, default=None,
                   help="event-time seconds per wall second (e.g. 10000); default: as fast as possible")
    from streams.kafka import add_kafka_arguments

    # --broker, security, --partitions and topic names: the worker's settings (flag, env, TOML)
    add_kafka_arguments(p, "partitions", "backend_topic", "platform_topic", "changes_topic")
    p.add_argument("--list", action="store_true", help="list the scenarios and their truths, then exit")
    p.set_defaults(func=run)
    return p


def _parse_start(text: str | None) -> float | None:
    """--start: epoch seconds or ISO-8601 (a time without zone is UTC)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        from datetime import UTC, datetime

        parsed = datetime.fromisoformat(text)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def run(args: argparse.Namespace) -> int:
    if getattr(args, "list", False):
        for s in SCENARIOS.values():
            key = "|".join(s.segment) if s.segment else "-"
            print(f"{s.name:<20} {key:<26} {s.direction or '-':<10} {s.top_cause or '-':<20} {s.description}")
        return 0
    if not args.scenario or args.scenario not in SCENARIOS:
        what = f"unknown scenario {args.scenario!r}" if args.scenario else "--scenario is required"
        print(f"gapwatch simulate: {what}; valid: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    from streams.config import load_settings

    settings = load_settings(args)  # a ConfigError is reported by the CLI
    to_kafka = "broker" in settings.given
    if not to_kafka and not args.out_dir:
        print("gapwatch simulate: give --broker HOST:PORT and/or --out-dir DIR", file=sys.stderr)
        return 2
    try:
        start = _parse_start(args.start)
    except ValueError:
        print(f"gapwatch simulate: cannot parse --start {args.start!r}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        sim = generate(args.scenario, seed=args.seed, days=args.days, start=start,
                       orders_per_day=args.orders_per_day, change_at_fraction=args.change_at_fraction,
                       noise=getattr(args, "noise", "realistic"),
                       import_batch_s=60.0 * getattr(args, "import_batch_minutes", IMPORT_BATCH_S / 60.0),
                       arrival_field=getattr(args, "arrival_field", False))
    except ValueError as exc:
        print(f"gapwatch simulate: {exc}", file=sys.stderr)
        return 2
    _stderr(f"simulate: {args.scenario}: {len(sim.backend):,} backend, {len(sim.platform):,} platform, "
            f"{len(sim.changes)} change events generated in {time.monotonic() - t0:.2f} s")
    if args.out_dir:
        paths = write_jsonl(sim, args.out_dir)
        _stderr(f"simulate: wrote {', '.join(str(p) for p in paths.values())}")
    if to_kafka:
        topics = {"backend": settings.backend_topic, "platform": settings.platform_topic,
                  "changes": settings.changes_topic}
        try:
            asyncio.run(produce(sim, settings, topics=topics, speedup=args.speedup,
                                partitions=settings.partitions))
        except KeyboardInterrupt:
            _stderr("simulate: interrupted")
            return 130
        except Exception as exc:  # broker unreachable and the like: one clear line, no trace
            print(f"gapwatch simulate: producing to {settings.broker} failed: {exc!r}", file=sys.stderr)
            return 1
    print(orjson.dumps(sim.truth).decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gapwatch")
    register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Pooled evidence across platforms (detectors/pooled.py) through GroupMonitor: one cause on
every platform is found on their sum, sooner, as one incident; a break of one platform stays
that platform's. Synthetic closed windows, no pipeline."""

from __future__ import annotations

import numpy as np

from detectors.monitor import GroupMonitor, MonitorConfig
from detectors.windows import ClosedWindow

WINDOW_S = 3600
REGIONS = {"na": 0.5, "eu": 0.3, "uk": 0.2}
PLATFORMS = ("meta", "tiktok", "ga4")


def _windows(rng: np.random.Generator, start: int, backend: int,
             pixel: dict[str, dict[str, float]]) -> list[ClosedWindow]:
    """Parent and region windows of each platform, whose conversions are its pixel events:
    `pixel[p][region]` = pixel events / backend conversions (one draw of orders per region,
    shared by every platform, as the backend is)."""
    orders = {region: int(rng.poisson(backend * share)) for region, share in REGIONS.items()}
    out = []
    for platform in PLATFORMS:
        parent = ClosedWindow(platform, "purchase", "*", "*", "platform", start, start + WINDOW_S)
        for region, b in orders.items():
            rate = pixel[platform].get(region, pixel[platform].get("*", 0.8))
            p = int(rng.binomial(b, rate))
            out.append(ClosedWindow(platform, "purchase", "*", region, "platform_region", start, start + WINDOW_S,
                                    backend_count=b, backend_value=50.0 * b, platform_count=p,
                                    platform_value=50.0 * p, platform_matched_orders=p,
                                    platform_channels={"pixel": p}))
            parent.backend_count += b
            parent.backend_value += 50.0 * b
            parent.platform_count += p
            parent.platform_value += 50.0 * p
            parent.platform_matched_orders += p
            parent.platform_channels["pixel"] = parent.platform_channels.get("pixel", 0) + p
        out.append(parent)
    return out


def _run(after: dict[str, dict[str, float]], pooled: bool, seed: int, n_before: int = 24 * 6, n_after: int = 36,
         restore_at: int | None = None) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    config = MonitorConfig(window_s=WINDOW_S, pooled=pooled)
    mon = GroupMonitor(config)
    steady = {p: {"*": 0.8} for p in PLATFORMS}
    alerts = []
    stored: dict[str, object] = {}  # the state table, as the pipeline writes it after every window
    for i in range(n_before + n_after):
        if i == restore_at:  # a restart: the monitor continues from its stored state alone
            mon = GroupMonitor(config)
            mon.restore(stored, "0:")
        ws = _windows(rng, i * WINDOW_S, 60, after if i >= n_before else steady)
        alerts += [a.to_dict() for a in mon.on_windows(ws)]
        stored.update(mon.take_changes("0:"))
    return [a for a in alerts if a["status"] == "firing"]


def test_one_region_on_every_platform_is_found_sooner_pooled_as_one_incident() -> None:
    broken = {p: {"*": 0.8, "eu": 0.56} for p in PLATFORMS}  # -30 % on every pixel in the EU
    for seed in range(3):
        alone = _run(broken, pooled=False, seed=seed)
        pooled = _run(broken, pooled=True, seed=seed)
        assert len({a["alert_id"] for a in pooled}) == 1, [(a["segment"], a.get("affected")) for a in pooled]
        first = pooled[0]
        assert first["segment"]["region"] == "eu" and first["direction"] == "drop"
        assert "*|purchase|*|eu" in first["localisation"]["alarming"]
        assert len(first["affected"]) >= 2  # the platforms whose own windows agree, at once
        start = 24 * 6 * WINDOW_S
        assert start - 2 * WINDOW_S <= first["change_at"] <= start + 2 * WINDOW_S
        # the sum carries every platform's evidence (measured: 2-5 h against 10-19 h alone)
        assert alone and first["detected_at"] <= alone[0]["detected_at"] - 3 * WINDOW_S


def test_a_break_of_one_platform_stays_that_platforms_own() -> None:
    broken = {"meta": {"*": 0.8, "eu": 0.4}, "tiktok": {"*": 0.8}, "ga4": {"*": 0.8}}
    for seed in range(3):
        firing = _run(broken, pooled=True, seed=seed)
        assert firing, "meta's own detector finds its break"
        assert {a["segment"]["platform"] for a in firing} == {"meta"}
        assert all(not any(k.startswith("*|") for k in a["localisation"]["alarming"]) for a in firing)
        assert all(a.get("affected") in (None, ["meta|purchase|*|eu"]) for a in firing)


def test_pooled_state_survives_a_restart() -> None:
    broken = {p: {"*": 0.8, "eu": 0.56} for p in PLATFORMS}
    straight = _run(broken, pooled=True, seed=1)
    restarted = _run(broken, pooled=True, seed=1, restore_at=24 * 6 + 2)
    assert straight and restarted == straight

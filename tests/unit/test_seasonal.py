"""BackendDetector: business level changes net of daily and weekly cycles."""

from __future__ import annotations

import json
import math

import numpy as np

from detectors.seasonal import BackendDetector, BackendDetectorConfig

START = 1767225600  # Thursday 2026-01-01 00:00 UTC
RARE = BackendDetectorConfig(window_seconds=3600, false_alarms_per_segment_per_30_days=0.1)


def traffic(seed: int, days: int, level_at, weekend: float = 0.6):
    rng = np.random.default_rng(seed)
    for i in range(24 * days):
        t = START + 3600 * i
        daily = 1.0 + 0.8 * math.sin(2 * math.pi * (i % 24) / 24)
        day_of_week = (t // 86400 + 3) % 7
        weekly = weekend if day_of_week >= 5 else 1.0
        yield t, int(rng.poisson(level_at(i) * daily * weekly))


def test_cycles_alone_raise_nothing_and_are_learnt() -> None:
    det = BackendDetector(RARE)
    alarms = [cp for t, c in traffic(1, 42, lambda i: 40.0) if (cp := det.update(t, c, 3600))]
    assert alarms == []
    hod = det.hour_of_day_profile
    assert max(hod) > 1.5 and min(hod) < 0.4  # daily cycle +-80 %
    dow = det.day_of_week_profile
    assert dow[5] < 0.8 * dow[2] and dow[6] < 0.8 * dow[2]  # weekends


def test_business_drop_found() -> None:
    det = BackendDetector(RARE)
    found = [
        (cp.direction, cp.change_index)
        for t, c in traffic(2, 35, lambda i: 40.0 if i < 24 * 28 else 24.0)
        if (cp := det.update(t, c, 3600))
    ]
    assert found == [("drop", 671)]  # true change at 672


def test_state_round_trip() -> None:
    data = list(traffic(3, 30, lambda i: 30.0 if i < 24 * 25 else 60.0))
    whole, split = BackendDetector(RARE), BackendDetector(RARE)
    out_whole = [whole.update(t, c, 3600) for t, c in data]
    out_split = [split.update(t, c, 3600) for t, c in data[:500]]
    restored = BackendDetector.from_dict(json.loads(json.dumps(split.to_dict())))
    out_split += [restored.update(t, c, 3600) for t, c in data[500:]]
    assert out_split == out_whole and any(out_whole)
    assert restored.to_dict() == whole.to_dict()

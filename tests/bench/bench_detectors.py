"""Benchmark: gapwatch's RatioDetector against online peers and references, same streams.

Not a test: prints tables (and with ``--write`` replaces the ``## Detection`` section of
BENCHMARKS.md). Synthetic segment streams with known answers: backend ~ Poisson(volume x daily
cycle of +-60 % x hour-level noise), platform ~ NegBin(rho x backend, alpha); the hour-level noise
(lognormal, sd 0 or 0.3 per window) moves both sides together, as real traffic does. Volumes
1..1000 backend events per window, dispersion 0 or 0.05: 16 classes; ratio changes of 5..50 %
both ways. Every peer is calibrated on separate stable calibration streams of its class to the
false-alarm rate the RatioDetector is configured for:

* oracle: one-sided NB CUSUM that knows rho0, rho1 and alpha (threshold calibrated per class
  and change by simulation); two-sided oracle: knows the size, not the direction;
* river PageHinkley on the per-window ratio, threshold calibrated per class (more tuning than
  the RatioDetector gets).

Ours counts as detecting a change at the first window at or after it where it raises an alarm
in the right direction, or confirms a pending alarm of the right direction (an alarm raised
shortly before the change whose claimed level the changed data then confirm). A withdrawal or a
``resolves`` is not an alarm.

Run: nice -n 10 .venv/bin/python tests/bench/bench_detectors.py [--seeds 12] [--write]
"""

# ruff: noqa: B023  (closures over loop variables are called within the same iteration)
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from river import drift

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from detectors.ratio import RatioDetector, RatioDetectorConfig  # noqa: E402

RHO0 = 0.7
VOLUMES = (1, 10, 100, 1000)
DISPERSIONS = (0.0, 0.05)
HOUR_NOISE = (0.0, 0.3)
CHANGES = (-0.5, -0.2, -0.1, -0.05, 0.05, 0.1, 0.2, 0.5)
#: cells where a change is worth finding and findable: >= 10 events a window, >= 10 % change
DETECTABLE_VOLUME = 10
DETECTABLE_CHANGE = 0.1


def make_stream(
    rng: np.random.Generator,
    n: int,
    volume: float,
    alpha: float,
    window_s: float,
    change_at: int | None = None,
    factor: float = 1.0,
    drift_per_week: float = 0.0,
    hour_noise: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n)
    hours = t * window_s / 3600.0
    rate = volume * (1.0 + 0.6 * np.sin(2 * np.pi * hours / 24.0))
    if hour_noise > 0:
        rate = rate * np.exp(rng.normal(-0.5 * hour_noise**2, hour_noise, size=n))
    backend = rng.poisson(rate).astype(float)
    rho = RHO0 * (1.0 + drift_per_week * hours / (24 * 7))
    if change_at is not None:
        rho = np.where(t >= change_at, rho * factor, rho)
    mean = rho * backend
    if alpha > 0:
        mean = rng.gamma(1.0 / alpha, alpha * np.maximum(mean, 1e-12))
    platform = rng.poisson(mean).astype(float)
    return backend, platform


# ---------------------------------------------------------------- detectors under test
@dataclass
class OursRun:
    """What the RatioDetector did on one stream."""

    #: (window, direction, change_index) of every new alarm or confirmation of a pending alarm
    alarms: list[tuple[int, str, int]] = field(default_factory=list)
    #: new alarms only (not confirmations): the false-alarm count on stable streams
    raised: int = 0
    withdrawn: int = 0
    resolved: int = 0
    in_alarm_windows: int = 0


def run_ours(backend: np.ndarray, platform: np.ndarray, cfg: RatioDetectorConfig) -> OursRun:
    det = RatioDetector(cfg)
    out = OursRun()
    for i, (b, p) in enumerate(zip(backend.tolist(), platform.tolist(), strict=True)):
        before = getattr(det, "alarm_state", "confirmed" if det.in_alarm else "none")
        cp = det.update(b, p)
        state = getattr(det, "alarm_state", "confirmed" if det.in_alarm else "none")
        if cp is not None:
            if cp.resolves:
                if before == "pending" and state == "none":
                    out.withdrawn += 1
                else:
                    out.resolved += 1
            else:
                out.raised += 1
                out.alarms.append((i, cp.direction, cp.change_index))
        elif before == "pending" and state == "confirmed":
            out.alarms.append((i, str(getattr(det, "alarm_direction", "")), i))
        out.in_alarm_windows += det.in_alarm
    return out


def run_river(backend: np.ndarray, platform: np.ndarray, make: Callable[[], object]) -> list[int]:
    det = make()
    alarms = []
    for i, (b, p) in enumerate(zip(backend.tolist(), platform.tolist(), strict=True)):
        if b <= 0:
            continue
        det.update(p / b)  # type: ignore[attr-defined]
        if det.drift_detected:  # type: ignore[attr-defined]
            alarms.append(i)
    return alarms


def nb_llr(backend: np.ndarray, platform: np.ndarray, factor: float, alpha: float) -> np.ndarray:
    mu0 = RHO0 * backend
    if alpha <= 0:
        return platform * math.log(factor) - mu0 * (factor - 1.0)
    shrink = np.log1p(alpha * mu0 * (factor - 1.0) / (1.0 + alpha * mu0))
    return platform * math.log(factor) - (platform + 1.0 / alpha) * shrink


def cusum_alarm_counts(llr: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Alarms (with restart) of a CUSUM per threshold, summed over streams: llr (streams, n)."""
    stat = np.zeros((thresholds.size, llr.shape[0]))
    counts = np.zeros(thresholds.size)
    h = thresholds[:, None]
    for t in range(llr.shape[1]):
        stat = np.maximum(0.0, stat + llr[None, :, t])
        fired = stat >= h
        counts += fired.sum(axis=1)
        stat[fired] = 0.0
    return counts


def calibrated_h(counts: np.ndarray, grid: np.ndarray, target: float) -> float:
    """Threshold whose false-alarm rate is the target (log-linear interpolation in the grid)."""
    idx = np.flatnonzero((counts > 0) & (counts <= target))
    if idx.size and idx[0] > 0:
        i = idx[0]
        r0, r1 = math.log(counts[i - 1]), math.log(counts[i])
        w = (r0 - math.log(target)) / (r0 - r1)
        return float(grid[i - 1] + w * (grid[i] - grid[i - 1]))
    return float(grid[idx[0]] if idx.size else grid[-1])


def pair_alarm_counts(up: np.ndarray, down: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Alarms of a pair of CUSUMs (either crossing alarms, both restart), summed over streams."""
    s_up = np.zeros((thresholds.size, up.shape[0]))
    s_down = np.zeros_like(s_up)
    counts = np.zeros(thresholds.size)
    h = thresholds[:, None]
    for t in range(up.shape[1]):
        s_up = np.maximum(0.0, s_up + up[None, :, t])
        s_down = np.maximum(0.0, s_down + down[None, :, t])
        fired = (s_up >= h) | (s_down >= h)
        counts += fired.sum(axis=1)
        s_up[fired] = 0.0
        s_down[fired] = 0.0
    return counts


def run_pair(up: np.ndarray, down: np.ndarray, h: float) -> list[int]:
    s_up = s_down = 0.0
    alarms = []
    for t, (x, y) in enumerate(zip(up.tolist(), down.tolist(), strict=True)):
        s_up, s_down = max(0.0, s_up + x), max(0.0, s_down + y)
        if s_up >= h or s_down >= h:
            alarms.append(t)
            s_up = s_down = 0.0
    return alarms


def run_oracle(llr: np.ndarray, h: float) -> list[int]:
    stat, alarms = 0.0, []
    for t, x in enumerate(llr.tolist()):
        stat = max(0.0, stat + x)
        if stat >= h:
            alarms.append(t)
            stat = 0.0
    return alarms


# ---------------------------------------------------------------- calibration of peers
def bisect_log(rate_of: Callable[[float], float], target: float, lo: float, hi: float, iters: int, increasing: bool) -> float:
    """Parameter (searched on a log scale) whose false-alarm rate is closest to target."""
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        rate = rate_of(mid)
        too_many = rate > target
        if too_many == increasing:
            hi = mid
        else:
            lo = mid
    return math.sqrt(lo * hi)


Key = tuple[int, float, float, float]  # volume, alpha, hour noise, change
#: per detector and change stream: (found, delay in windows or the horizon when missed)
Outcome = tuple[bool, float]

PEERS = ("ours", "oracle CUSUM", "two-sided oracle", "PageHinkley")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12, help="change streams per scenario")
    parser.add_argument("--stable-seeds", type=int, default=8, help="stable streams per class")
    parser.add_argument("--stable-windows", type=int, default=3000)
    parser.add_argument("--window-seconds", type=float, default=3600.0)
    parser.add_argument("--pre-change", type=int, default=336, help="windows before the change")
    parser.add_argument("--horizon", type=int, default=336, help="windows after the change")
    parser.add_argument("--json", type=Path, help="also dump the raw outcomes here")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a RatioDetectorConfig field (experiments)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    started = time.time()
    window_s = args.window_seconds
    overrides = {k: float(v) for k, v in (item.split("=", 1) for item in args.set)}
    cfg = RatioDetectorConfig.from_dict({**RatioDetectorConfig(window_seconds=window_s).to_dict(), **overrides})
    target = 1000.0 / cfg.arl0
    n_stable = args.stable_windows
    n_change = args.pre_change + args.horizon
    tau = args.pre_change

    stable_stats: dict[str, list[float]] = defaultdict(list)  # name -> [alarms, windows, in-alarm windows, withdrawn]
    results: dict[Key, dict[str, list[Outcome]]] = {}
    wrong_direction = [0, 0]  # ours: first alarm after the change points the wrong way / alarms

    def add_stable(name: str, alarms: float, windows: float, in_alarm: float = 0.0, withdrawn: float = 0.0) -> None:
        acc = stable_stats.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        for i, x in enumerate((alarms, windows, in_alarm, withdrawn)):
            acc[i] += x

    for volume in VOLUMES:
        for alpha in DISPERSIONS:
            for noise in HOUR_NOISE:
                cls_seed = int(volume * 1000 + alpha * 100 + noise * 10)
                calib = [make_stream(np.random.default_rng([cls_seed, 1, s]), n_stable, volume, alpha, window_s, hour_noise=noise) for s in range(args.stable_seeds)]
                stable = [make_stream(np.random.default_rng([cls_seed, 2, s]), n_stable, volume, alpha, window_s, hour_noise=noise) for s in range(args.stable_seeds)]
                cal_windows = n_stable * len(calib)

                def ph_rate(thr: float) -> float:
                    return 1000.0 * sum(len(run_river(b, p, lambda: drift.PageHinkley(threshold=thr))) for b, p in calib) / cal_windows

                ph_thr = bisect_log(ph_rate, target, 1e-3, 1e4, 18, increasing=False)
                for b, p in stable:
                    r = run_ours(b, p, cfg)
                    add_stable("ours", r.raised, n_stable, r.in_alarm_windows, r.withdrawn)
                    add_stable("PageHinkley", len(run_river(b, p, lambda: drift.PageHinkley(threshold=ph_thr))), n_stable)

                for change in CHANGES:
                    factor = 1.0 + change
                    grid = np.geomspace(0.3, 40.0, 80)
                    cal_llr = np.stack([nb_llr(b, p, factor, alpha) for b, p in calib])
                    oracle_h = calibrated_h(cusum_alarm_counts(cal_llr, grid) * 1000.0 / cal_windows, grid, target)
                    mirror = 1.0 - change
                    cal_mirror = np.stack([nb_llr(b, p, mirror, alpha) for b, p in calib])
                    pair_h = calibrated_h(pair_alarm_counts(cal_llr, cal_mirror, grid) * 1000.0 / cal_windows, grid, target)
                    for b, p in stable:
                        add_stable("oracle CUSUM", len(run_oracle(nb_llr(b, p, factor, alpha), oracle_h)), n_stable)
                    scenario: dict[str, list[Outcome]] = defaultdict(list)
                    want = "drop" if change < 0 else "inflation"
                    for s in range(args.seeds):
                        b, p = make_stream(np.random.default_rng([cls_seed, 3, int(change * 100) + 100, s]), n_change, volume, alpha, window_s, tau, factor, hour_noise=noise)
                        ours = run_ours(b, p, cfg)
                        after = [(i, d) for i, d, _c in ours.alarms if i >= tau]
                        if after:
                            wrong_direction[1] += 1
                            wrong_direction[0] += after[0][1] != want
                        right = [i for i, d in after if d == want]
                        firsts = {
                            "ours": right[0] if right else None,
                            "oracle CUSUM": next((i for i in run_oracle(nb_llr(b, p, factor, alpha), oracle_h) if i >= tau), None),
                            "two-sided oracle": next((i for i in run_pair(nb_llr(b, p, factor, alpha), nb_llr(b, p, mirror, alpha), pair_h) if i >= tau), None),
                            "PageHinkley": next((i for i in run_river(b, p, lambda: drift.PageHinkley(threshold=ph_thr)) if i >= tau), None),
                        }
                        for name, first in firsts.items():
                            scenario[name].append((True, first - tau + 1.0) if first is not None else (False, float(args.horizon)))
                    results[(volume, alpha, noise, change)] = scenario
                print(f"class volume={volume} alpha={alpha} noise={noise}: ph={ph_thr:.3g} ({time.time() - started:.0f}s)", file=sys.stderr, flush=True)

    # slow drift, 10 % per 30 days, on busy overdispersed segments: the baseline must follow it
    drift_stats = [0.0, 0.0]
    for volume in (100, 1000):
        for s in range(args.stable_seeds):
            b, p = make_stream(np.random.default_rng([7, 4, volume, s]), n_stable, volume, 0.05, window_s, drift_per_week=0.1 * 7 / 30, hour_noise=0.3)
            r = run_ours(b, p, cfg)
            drift_stats[0] += r.raised
            drift_stats[1] += n_stable

    if args.json:
        args.json.write_text(json.dumps({"|".join(map(str, k)): v for k, v in results.items()}))
    lines = report(args, target, stable_stats, results, wrong_direction, drift_stats, time.time() - started)
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text)
    return 0


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else math.nan


def summary(results: dict[Key, dict[str, list[Outcome]]], keys: list[Key], name: str) -> dict[str, float]:
    """Missed share, mean delay with misses at the horizon, mean delay where both it and the oracle found."""
    mine = [o for k in keys for o in results[k][name]]
    oracle = [o for k in keys for o in results[k]["oracle CUSUM"]]
    both = [(a[1], b[1]) for a, b in zip(mine, oracle, strict=True) if a[0] and b[0]]
    return {
        "missed": _mean([not o[0] for o in mine]),
        "delay_h": _mean([o[1] for o in mine]),
        "delay_h_x": _mean([o[1] for o in mine]) / _mean([o[1] for o in oracle]),
        "delay_both": _mean([a for a, _ in both]),
        "delay_both_x": _mean([a for a, _ in both]) / _mean([b for _, b in both]),
    }


def report(args: argparse.Namespace, target: float, stable: dict[str, list[float]], results: dict[Key, dict[str, list[Outcome]]], wrong: list[int], drift_stats: list[float], elapsed: float) -> list[str]:
    out: list[str] = []
    cmd = "nice -n 10 .venv/bin/python tests/bench/bench_detectors.py" + (f" --seeds {args.seeds}" if args.seeds != 12 else "") + " --write"
    horizon = args.horizon
    out.append(f"Command: `{cmd}` ({elapsed:.0f} s on 2 shared cores). Window {args.window_seconds:.0f} s; "
               f"configured rate 1 false alarm / segment / 30 days = **{target:.2f} per 1000 windows**. "
               f"Streams: backend ~ Poisson(volume x daily cycle +-60 % x hour-level lognormal noise of sd {HOUR_NOISE}), "
               f"platform ~ NegBin(0.7 x backend, alpha in {DISPERSIONS}); volumes {VOLUMES}: {len(VOLUMES) * len(DISPERSIONS) * len(HOUR_NOISE)} classes; "
               f"{args.stable_seeds} stable streams of {args.stable_windows} windows per class; changes {', '.join(f'{c:+.0%}' for c in CHANGES)} "
               f"at window {args.pre_change}, {args.seeds} seeds per class and change ({len(results) * args.seeds} change streams), horizon {horizon} windows. "
               "PageHinkley's threshold and the oracles' are calibrated per class (and change) on separate stable streams; ours runs its defaults.")
    out.append("")
    out.append("Stable streams (all classes):")
    out.append("")
    out.append("| detector | false alarms / 1000 windows | x configured | windows in alarm | false alarms withdrawn |")
    out.append("|---|---:|---:|---:|---:|")
    for name in ("ours", "oracle CUSUM", "PageHinkley"):
        a, w, ia, wd = stable[name]
        rate = 1000.0 * a / w
        extra = f"{ia / w:.1%} | {wd / a:.0%}" if name == "ours" and a else " | "
        out.append(f"| {name} | {rate:.2f} | {rate / target:.2f} | {extra} |")
    d_rate = 1000.0 * drift_stats[0] / drift_stats[1]
    out.append(f"| ours, slow drift 10 %/30 days (volumes 100 and 1000, alpha 0.05, hour noise 0.3) | {d_rate:.2f} | {d_rate / target:.2f} | | |")
    out.append("")
    chance = 1.0 - math.exp(-horizon * target / 1000.0)
    out.append(f"Chance level: at the configured rate, a detector that ignores the data raises a false alarm inside a {horizon}-window horizon "
               f"with probability {chance:.0%}; \"found\" below is partly that for the smallest changes on the thinnest segments.")
    out.append("")
    all_keys = list(results)
    det_keys = [k for k in all_keys if k[0] >= DETECTABLE_VOLUME and abs(k[3]) >= DETECTABLE_CHANGE]
    out.append(f"Summary. missed = no alarm in the right direction within {horizon} windows; delay in windows of changed data; "
               f"\"with misses\" counts a miss as the horizon; x = relative to the oracle CUSUM on the same streams; "
               f"detectable = volume >= {DETECTABLE_VOLUME} backend events a window and |change| >= {DETECTABLE_CHANGE:.0%} ({len(det_keys) * args.seeds} streams):")
    out.append("")
    out.append("| detector | missed, all | missed, detectable | delay with misses, all (x oracle) | delay with misses, detectable (x oracle) | delay where it and the oracle found (x oracle) |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for name in PEERS:
        a, d = summary(results, all_keys, name), summary(results, det_keys, name)
        out.append(f"| {name} | {a['missed']:.1%} | {d['missed']:.1%} | {a['delay_h']:.1f} ({a['delay_h_x']:.2f}x) | "
                   f"{d['delay_h']:.1f} ({d['delay_h_x']:.2f}x) | {a['delay_both']:.1f} ({a['delay_both_x']:.2f}x) |")
    out.append("")
    out.append(f"Ours: {wrong[0]} of {wrong[1]} first alarms after a change point the wrong way ({wrong[0] / max(wrong[1], 1):.1%}).")
    out.append("")
    out.append("By stream kind (detectable cells; missed / delay with misses x oracle):")
    out.append("")
    out.append("| stream kind | " + " | ".join(PEERS) + " |")
    out.append("|---|" + "---|" * len(PEERS))
    for alpha in DISPERSIONS:
        for noise in HOUR_NOISE:
            keys = [k for k in det_keys if k[1] == alpha and k[2] == noise]
            cells = []
            for name in PEERS:
                s = summary(results, keys, name)
                cells.append(f"{s['missed']:.1%} / {s['delay_h_x']:.2f}x")
            out.append(f"| alpha {alpha}, hour noise {noise} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("By change size (all volumes and stream kinds pooled; missed / delay with misses in windows):")
    out.append("")
    out.append("| change | " + " | ".join(PEERS) + " |")
    out.append("|---|" + "---|" * len(PEERS))
    for change in CHANGES:
        keys = [k for k in all_keys if k[3] == change]
        cells = []
        for name in PEERS:
            s = summary(results, keys, name)
            cells.append(f"{s['missed']:.0%} / {s['delay_h']:.1f}")
        out.append(f"| {change:+.0%} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Expected delay of ours by volume and change size (windows of changed data until the alarm, median over "
               "all streams of the cell with misses at the horizon; in brackets the share missed). Drops and rises of the same size pooled:")
    out.append("")
    sizes = sorted({abs(c) for c in CHANGES})
    out.append("| backend events / window | " + " | ".join(f"{s:.0%} change" for s in sizes) + " |")
    out.append("|---|" + "---:|" * len(sizes))
    for v in VOLUMES:
        cells = []
        for size in sizes:
            outs = [o for k in all_keys if k[0] == v and abs(k[3]) == size for o in results[k]["ours"]]
            med = float(np.median([o[1] for o in outs]))
            miss = _mean([not o[0] for o in outs])
            cells.append(f"{med:.0f} ({miss:.0%})" if med < horizon else f">{horizon} ({miss:.0%})")
        out.append(f"| {v} | " + " | ".join(cells) + " |")
    return out


def write_section(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    section = "## Detection\n\n" + text + "\n"
    start = existing.find("## Detection")
    if start < 0:
        new = existing.rstrip("\n") + "\n\n" + section
    else:
        end = existing.find("\n## ", start + 1)
        new = existing[:start] + section + ("" if end < 0 else existing[end + 1 :])
    path.write_text(new)


if __name__ == "__main__":
    raise SystemExit(main())

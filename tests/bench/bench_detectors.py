"""Benchmark: gapwatch's RatioDetector against online peers and references, same streams.

Not a test: prints tables (and with ``--write`` replaces the ``## Detection`` section of
BENCHMARKS.md). Synthetic segment streams with known answers: backend ~ Poisson(volume x
daily cycle of +-60 %), platform ~ NegBin(rho x backend, alpha); volumes 1..1000 backend events
per window; ratio changes of 5..50 % both ways. Every peer is calibrated on separate stable
calibration streams to the same false-alarm rate the RatioDetector is configured for:

* oracle: one-sided NB CUSUM that knows rho0, rho1 and alpha (threshold calibrated per class
  and change by simulation),
* river PageHinkley and ADWIN on the per-window ratio (threshold / delta calibrated per
  volume and dispersion class: more tuning than the RatioDetector gets),
* ruptures PELT (KernelCPD, linear kernel = L2 cost) offline, penalty calibrated per class:
  the hindsight reference for detection and change-time error (no delay).

Run: /work/venv/bin/python tests/bench/bench_detectors.py [--seeds 8] [--write]
"""

# ruff: noqa: B023  (closures over loop variables are called within the same iteration)
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ruptures as rpt
from river import drift

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from detectors.ratio import RatioDetector, RatioDetectorConfig  # noqa: E402

RHO0 = 0.7
VOLUMES = (1, 10, 100, 1000)
DISPERSIONS = (0.0, 0.05)
CHANGES = (-0.5, -0.2, -0.1, -0.05, 0.05, 0.1, 0.2, 0.5)


def make_stream(
    rng: np.random.Generator,
    n: int,
    volume: float,
    alpha: float,
    window_s: float,
    change_at: int | None = None,
    factor: float = 1.0,
    drift_per_week: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n)
    hours = t * window_s / 3600.0
    rate = volume * (1.0 + 0.6 * np.sin(2 * np.pi * hours / 24.0))
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
def run_ours(backend: np.ndarray, platform: np.ndarray, cfg: RatioDetectorConfig) -> list[tuple[int, int]]:
    det = RatioDetector(cfg)
    alarms = []
    for b, p in zip(backend.tolist(), platform.tolist(), strict=True):
        cp = det.update(b, p)
        if cp is not None:
            alarms.append((cp.detected_index, cp.change_index))
    return alarms


def run_river(backend: np.ndarray, platform: np.ndarray, make: Callable[[], object]) -> list[tuple[int, int]]:
    det = make()
    alarms = []
    for i, (b, p) in enumerate(zip(backend.tolist(), platform.tolist(), strict=True)):
        if b <= 0:
            continue
        det.update(p / b)  # type: ignore[attr-defined]
        if det.drift_detected:  # type: ignore[attr-defined]
            alarms.append((i, i))
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


def run_pair(up: np.ndarray, down: np.ndarray, h: float) -> list[tuple[int, int]]:
    s_up = s_down = 0.0
    alarms = []
    for t, (x, y) in enumerate(zip(up.tolist(), down.tolist(), strict=True)):
        s_up, s_down = max(0.0, s_up + x), max(0.0, s_down + y)
        if s_up >= h or s_down >= h:
            alarms.append((t, t))
            s_up = s_down = 0.0
    return alarms


class KnownBaseline(RatioDetector):
    """Ablation: the RatioDetector told the true baseline ratio and dispersion."""

    def __init__(self, cfg: RatioDetectorConfig, alpha: float) -> None:
        super().__init__(cfg)
        self._true_alpha = alpha

    @property
    def baseline_ratio(self) -> float:
        return RHO0

    @property
    def dispersion(self) -> float:
        return self._true_alpha

    def _baseline_rel_var(self) -> float:
        return 0.0

    def _learn(self, backend: float, platform: float, freeze_baseline: bool) -> None:
        self._base_p += platform
        self._base_b += backend


def run_known(backend: np.ndarray, platform: np.ndarray, cfg: RatioDetectorConfig, alpha: float) -> list[tuple[int, int]]:
    det = KnownBaseline(cfg, alpha)
    return [(cp.detected_index, cp.change_index) for b, p in zip(backend.tolist(), platform.tolist(), strict=True) if (cp := det.update(b, p)) is not None]


def run_oracle(llr: np.ndarray, h: float) -> list[tuple[int, int]]:
    stat, start, alarms = 0.0, 0, []
    for t, x in enumerate(llr.tolist()):
        if stat <= 0.0:
            start = t
        stat = max(0.0, stat + x)
        if stat >= h:
            alarms.append((t, start))
            stat = 0.0
    return alarms


def run_pelt(backend: np.ndarray, platform: np.ndarray, pen: float) -> list[tuple[int, int]]:
    keep = np.flatnonzero(backend > 0)
    if keep.size < 4:
        return []
    ratio = (platform[keep] / backend[keep]).reshape(-1, 1)
    bkps = rpt.KernelCPD(kernel="linear", min_size=2).fit(ratio).predict(pen=pen)[:-1]
    return [(int(keep[k]), int(keep[k])) for k in bkps]


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


def fa_rate(alarm_lists: list[list[tuple[int, int]]], windows: int) -> float:
    return 1000.0 * sum(len(a) for a in alarm_lists) / windows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="change streams per scenario")
    parser.add_argument("--stable-seeds", type=int, default=10, help="stable streams per class")
    parser.add_argument("--stable-windows", type=int, default=3000)
    parser.add_argument("--window-seconds", type=float, default=3600.0)
    parser.add_argument("--pre-change", type=int, default=336, help="windows before the change")
    parser.add_argument("--horizon", type=int, default=336, help="windows after the change")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    started = time.time()
    window_s = args.window_seconds
    cfg = RatioDetectorConfig(window_seconds=window_s)
    target = 1000.0 / cfg.arl0
    n_stable = args.stable_windows
    n_change = args.pre_change + args.horizon
    tau = args.pre_change

    fa_windows: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    # per scenario results: detector -> list of (detected, delay, change_error)
    results: dict[tuple[int, float, float], dict[str, list[tuple[bool, float, float]]]] = {}
    pelt_found: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    drift_alarms = 0
    drift_windows = 0

    for volume in VOLUMES:
        for alpha in DISPERSIONS:
            cls_seed = int(volume * 1000 + alpha * 100)
            calib = [make_stream(np.random.default_rng([cls_seed, 1, s]), n_stable, volume, alpha, window_s) for s in range(args.stable_seeds)]
            stable = [make_stream(np.random.default_rng([cls_seed, 2, s]), n_stable, volume, alpha, window_s) for s in range(args.stable_seeds)]
            cal_windows = n_stable * len(calib)

            def ph_rate(thr: float, streams: list[tuple[np.ndarray, np.ndarray]] = calib) -> float:
                return fa_rate([run_river(b, p, lambda: drift.PageHinkley(threshold=thr)) for b, p in streams], cal_windows)

            def adwin_rate(delta: float, streams: list[tuple[np.ndarray, np.ndarray]] = calib) -> float:
                return fa_rate([run_river(b, p, lambda: drift.ADWIN(delta=delta, clock=1)) for b, p in streams], cal_windows)

            def pelt_rate(pen: float, streams: list[tuple[np.ndarray, np.ndarray]] = calib) -> float:
                return fa_rate([run_pelt(b, p, pen) for b, p in streams], cal_windows)

            ph_thr = bisect_log(ph_rate, target, 1e-3, 1e4, 22, increasing=False)
            adwin_delta = bisect_log(adwin_rate, target, 1e-30, 0.5, 22, increasing=True)
            pelt_pen = bisect_log(pelt_rate, target, 1e-4, 1e4, 22, increasing=False)

            # measured false alarms on separate stable streams
            fa_windows["ours"][volume].append(fa_rate([run_ours(b, p, cfg) for b, p in stable], cal_windows))
            fa_windows["ours, rho0 known"][volume].append(fa_rate([run_known(b, p, cfg, alpha) for b, p in stable], cal_windows))
            fa_windows["PageHinkley"][volume].append(fa_rate([run_river(b, p, lambda: drift.PageHinkley(threshold=ph_thr)) for b, p in stable], cal_windows))
            fa_windows["ADWIN"][volume].append(fa_rate([run_river(b, p, lambda: drift.ADWIN(delta=adwin_delta, clock=1)) for b, p in stable], cal_windows))
            fa_windows["PELT (offline)"][volume].append(fa_rate([run_pelt(b, p, pelt_pen) for b, p in stable], cal_windows))

            for change in CHANGES:
                factor = 1.0 + change
                cal_llr = np.stack([nb_llr(b, p, factor, alpha) for b, p in calib])
                grid = np.geomspace(0.3, 40.0, 80)
                counts = cusum_alarm_counts(cal_llr, grid) * 1000.0 / cal_windows
                # log-linear interpolation of the rate in h, rate decreasing
                oracle_h = calibrated_h(counts, grid, target)
                # two-sided oracle: knows the size of the change, not its direction
                mirror = 1.0 - change
                cal_mirror = np.stack([nb_llr(b, p, mirror, alpha) for b, p in calib])
                pair_h = calibrated_h(pair_alarm_counts(cal_llr, cal_mirror, grid) * 1000.0 / cal_windows, grid, target)
                stable_llr = np.stack([nb_llr(b, p, factor, alpha) for b, p in stable])
                fa_windows["oracle CUSUM"][volume].append(fa_rate([run_oracle(x, oracle_h) for x in stable_llr], cal_windows))
                fa_windows["two-sided oracle"][volume].append(fa_rate([run_pair(x, nb_llr(b, p, mirror, alpha), pair_h) for x, (b, p) in zip(stable_llr, stable, strict=True)], cal_windows))

                scenario: dict[str, list[tuple[bool, float, float]]] = defaultdict(list)
                for s in range(args.seeds):
                    b, p = make_stream(np.random.default_rng([cls_seed, 3, int(change * 100) + 100, s]), n_change, volume, alpha, window_s, tau, factor)
                    runs = {
                        "ours": run_ours(b, p, cfg),
                        "oracle CUSUM": run_oracle(nb_llr(b, p, factor, alpha), oracle_h),
                        "PageHinkley": run_river(b, p, lambda: drift.PageHinkley(threshold=ph_thr)),
                        "ADWIN": run_river(b, p, lambda: drift.ADWIN(delta=adwin_delta, clock=1)),
                        "two-sided oracle": run_pair(nb_llr(b, p, factor, alpha), nb_llr(b, p, mirror, alpha), pair_h),
                        "ours, rho0 known": run_known(b, p, cfg, alpha),
                    }
                    for name, alarms in runs.items():
                        after = [(d, c) for d, c in alarms if d >= tau]
                        if after:
                            d, c = after[0]
                            scenario[name].append((True, d - tau + 1.0, abs(c - tau)))
                        else:
                            scenario[name].append((False, float(args.horizon), math.nan))
                    cps = [c for c, _ in run_pelt(b, p, pelt_pen)]
                    near = [c for c in cps if tau - 24 <= c < n_change]
                    if near:
                        pelt_found[f"{volume}"].append((True, float(min(abs(c - tau) for c in near))))
                    else:
                        pelt_found[f"{volume}"].append((False, math.nan))
                results[(volume, alpha, change)] = scenario
            print(f"class volume={volume} alpha={alpha}: ph={ph_thr:.3g} adwin={adwin_delta:.3g} pelt={pelt_pen:.3g} ({time.time() - started:.0f}s)", file=sys.stderr, flush=True)

    # slow drift: 5 %/week on a busy overdispersed segment must not alarm more than stable
    for s in range(args.stable_seeds):
        b, p = make_stream(np.random.default_rng([7, 4, s]), n_stable, 100, 0.05, window_s, drift_per_week=0.1 * 7 / 30)
        drift_alarms += len(run_ours(b, p, cfg))
        drift_windows += n_stable

    lines = report(args, target, fa_windows, results, pelt_found, drift_alarms, drift_windows, time.time() - started)
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text)
    return 0


DETECTORS = ("ours", "oracle CUSUM", "PageHinkley", "ADWIN")


def report(args: argparse.Namespace, target: float, fa: dict[str, dict[int, list[float]]], results: dict[tuple[int, float, float], dict[str, list[tuple[bool, float, float]]]], pelt_found: dict[str, list[tuple[bool, float]]], drift_alarms: int, drift_windows: int, elapsed: float) -> list[str]:
    out: list[str] = []
    cmd = "/work/venv/bin/python tests/bench/bench_detectors.py" + (f" --seeds {args.seeds}" if args.seeds != 8 else "") + " --write"
    out.append(f"Command: `{cmd}` ({elapsed:.0f} s on 2 cores). Window {args.window_seconds:.0f} s; "
               f"configured rate 1 false alarm / segment / 30 days = **{target:.2f} per 1000 windows**. "
               f"Streams: backend ~ Poisson(volume x daily cycle +-60 %), platform ~ NegBin(0.7 x backend, alpha in {DISPERSIONS}); "
               f"{args.stable_seeds} stable streams of {args.stable_windows} windows per class; changes {', '.join(f'{c:+.0%}' for c in CHANGES)} "
               f"at window {args.pre_change}, {args.seeds} seeds each, horizon {args.horizon} windows.")
    out.append("")
    out.append("False alarms per 1000 windows on stable streams (peers calibrated per class on separate streams; ours uses its defaults):")
    out.append("")
    out.append("| detector | " + " | ".join(f"volume {v}" for v in VOLUMES) + " | all |")
    out.append("|---|" + "---|" * (len(VOLUMES) + 1))
    for name in ("ours", "oracle CUSUM", "PageHinkley", "ADWIN", "PELT (offline)", "two-sided oracle", "ours, rho0 known"):
        per = [float(np.mean(fa[name][v])) for v in VOLUMES]
        out.append(f"| {name} | " + " | ".join(f"{x:.2f}" for x in per) + f" | {np.mean(per):.2f} |")
    out.append(f"| slow drift 10 %/30 days (ours, volume 100, alpha 0.05) | | | {1000.0 * drift_alarms / drift_windows:.2f} | | |")
    out.append("")
    out.append("Detection by change size (all volumes and dispersions pooled). delay = windows of changed data until the alarm; "
               f"mean over changes every online detector found; missed = no alarm within {args.horizon} windows:")
    out.append("")
    out.append("| change | " + " | ".join(f"{n} delay / missed" for n in DETECTORS) + " | ours / oracle |")
    out.append("|---|" + "---|" * (len(DETECTORS) + 1))
    all_common: dict[str, list[float]] = defaultdict(list)
    ratios: list[float] = []
    for change in CHANGES:
        common: dict[str, list[float]] = defaultdict(list)
        missed: dict[str, int] = defaultdict(int)
        total = 0
        for (_v, _a, c), scen in results.items():
            if c != change:
                continue
            for i in range(len(scen["ours"])):
                total += 1
                for n in DETECTORS:
                    missed[n] += not scen[n][i][0]
                if all(scen[n][i][0] for n in DETECTORS):
                    for n in DETECTORS:
                        common[n].append(scen[n][i][1])
                        all_common[n].append(scen[n][i][1])
        cells = []
        for n in DETECTORS:
            mean = np.mean(common[n]) if common[n] else math.nan
            cells.append(f"{mean:.1f} / {missed[n] / max(total, 1):.0%}")
        ratio = np.mean(common["ours"]) / np.mean(common["oracle CUSUM"]) if common["ours"] else math.nan
        ratios.append(float(ratio))
        out.append(f"| {change:+.0%} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    cells = []
    for n in DETECTORS:
        miss = np.mean([not r[0] for scen in results.values() for r in scen[n]])
        cells.append(f"{np.mean(all_common[n]):.1f} / {miss:.0%}")
    overall = np.mean(all_common["ours"]) / np.mean(all_common["oracle CUSUM"])
    out.append("| **all** | " + " | ".join(cells) + f" | **{overall:.2f}** |")
    out.append("")
    errs = [r[2] for scen in results.values() for r in scen["ours"] if r[0]]
    pelt_err = [e for v in pelt_found.values() for ok, e in v if ok]
    pelt_hit = np.mean([ok for v in pelt_found.values() for ok, _ in v])
    out.append(f"Estimated change time (ours, |change_index - true|, windows): median {np.median(errs):.0f}, mean {np.mean(errs):.1f}, "
               f"90th percentile {np.percentile(errs, 90):.0f}. PELT offline (hindsight, same false-alarm rate): found {pelt_hit:.0%} of the changes, "
               f"location error median {np.median(pelt_err):.0f}, mean {np.mean(pelt_err):.1f}.")
    out.append("")
    by_volume = []
    for v in VOLUMES:
        o = [r[1] for (vv, _a, _c), scen in results.items() if vv == v for r, q in zip(scen["ours"], scen["oracle CUSUM"], strict=True) if r[0] and q[0]]
        q = [q[1] for (vv, _a, _c), scen in results.items() if vv == v for r, q in zip(scen["ours"], scen["oracle CUSUM"], strict=True) if r[0] and q[0]]
        by_volume.append(f"volume {v}: {np.mean(o) / np.mean(q):.2f}" if o else f"volume {v}: n/a")
    out.append("Ours / oracle mean delay by volume (changes both found): " + ", ".join(by_volume) + ".")
    out.append("")
    out.append("What each piece of knowledge is worth (references run on the same streams, calibrated to the same rate; "
               "mean delay over the changes both it and the oracle found, relative to the oracle):")
    out.append("")
    out.append("| detector | knows | delay / oracle | missed |")
    out.append("|---|---|---:|---:|")
    knows = {
        "oracle CUSUM": "baseline, dispersion, size and direction of the change",
        "two-sided oracle": "baseline, dispersion and size, not the direction",
        "ours, rho0 known": "baseline and dispersion, not the size or direction",
        "ours": "nothing (estimates baseline and dispersion online)",
    }
    worth: dict[str, float] = {}
    for name, what in knows.items():
        pairs = [(r[1], q[1]) for scen in results.values() for r, q in zip(scen[name], scen["oracle CUSUM"], strict=True) if r[0] and q[0]]
        miss = np.mean([not r[0] for scen in results.values() for r in scen[name]])
        rel = np.mean([a for a, _ in pairs]) / np.mean([b for _, b in pairs])
        out.append(f"| {name} | {what} | {rel:.2f} | {miss:.0%} |")
        worth[name] = rel
    out.append("")
    out.append(f"Not knowing the direction of the change alone costs {worth['two-sided oracle']:.2f}x the oracle's delay at this "
               "false-alarm rate; not knowing its size (a bank of tuned CUSUMs sharing the budget) brings it to "
               f"{worth['ours, rho0 known']:.2f}x; estimating the baseline online to {worth['ours']:.2f}x, and most of what "
               "that adds is missed small changes rather than delay.")
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

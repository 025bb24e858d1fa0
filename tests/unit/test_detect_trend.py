"""`gapwatch detect` default model: straight-line segments, AR(1) noise, outliers, edge cases."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from detectors.gaussian import change_points
from detectors.pelt import pelt
from detectors.trend_segments import (
    LinearTrendCost,
    consensus_change_points,
    majority_changes,
    outlier_mask,
    trend_change_points,
)
from streams import cli_detect


def ar1(rng: np.random.Generator, n: int, phi: float, sd: float = 1.0) -> np.ndarray:
    """AR(1) noise with marginal standard deviation ``sd``."""
    e = rng.normal(0.0, sd * math.sqrt(1.0 - phi * phi), n)
    out = np.empty(n)
    prev = rng.normal(0.0, sd)
    for i in range(n):
        prev = phi * prev + e[i]
        out[i] = prev
    return out


def piecewise(n: int, segments: list[tuple[int, float, float]]) -> np.ndarray:
    """Signal from (start, level, slope) segments."""
    t = np.arange(n, dtype=float)
    out = np.empty(n)
    bounds = [s for s, _, _ in segments] + [n]
    for (start, level, slope), end in zip(segments, bounds[1:], strict=False):
        out[start:end] = level + slope * (t[start:end] - start)
    return out


def near(found: list[int], truth: list[int], tolerance: int = 2) -> bool:
    return len(found) == len(truth) and all(
        abs(f - t) <= tolerance for f, t in zip(found, truth, strict=True)
    )


def test_level_and_trend_changes_in_ar1_noise_with_outliers() -> None:
    # a false alarm is rare, not impossible (seed 1 adds one at 567): 9 of 10 seeds exact
    signal = piecewise(600, [(0, 0.0, 0.0), (200, 5.0, 0.02), (400, 2.0, 0.0)])
    exact = []
    for seed in range(10):
        x = signal + ar1(np.random.default_rng(seed), 600, 0.5)
        x[[50, 120, 310, 311, 500]] += 9.0  # isolated spikes, one of them two points wide
        exact.append(near(change_points(x), [200, 400]))
    assert sum(exact) >= 9, exact


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.8])
def test_no_change_in_autocorrelated_noise_around_a_trend(phi: float) -> None:
    rng = np.random.default_rng(11)
    for _ in range(3):
        x = 3.0 + 0.01 * np.arange(500) + ar1(rng, 500, phi)
        assert change_points(x) == []


def test_first_differences_would_split_ar_noise_but_the_default_does_not() -> None:
    # the reason for the long-run variance: the old mean model (noise scale from first
    # differences) cuts AR(0.8) noise into pieces
    x = ar1(np.random.default_rng(4), 800, 0.8)
    assert len(change_points(x, model="mean")) > 3
    assert change_points(x) == []


def test_kink_without_jump_is_placed_where_the_lines_meet() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(400.0)
    signal = np.where(t < 250, 0.04 * t, 10.0 - 0.06 * (t - 250))
    assert near(change_points(signal + rng.normal(0, 0.5, 400)), [250])


def test_spike_is_no_segment_but_a_v_turn_is_no_spike() -> None:
    x = np.tile([0.0, 0.1, -0.1, 0.05, -0.05], 8)
    x[17] = 12.0
    assert np.flatnonzero(outlier_mask(x)).tolist() == [17]
    v = np.abs(np.arange(-20.0, 21.0)) + np.tile([0.0, 0.1, -0.1], 14)[:41]
    assert not outlier_mask(v).any()
    assert near(change_points(v), [20], tolerance=1)


def test_missing_values_keep_indices_and_gaps_in_time() -> None:
    rng = np.random.default_rng(6)
    x = piecewise(300, [(0, 0.0, 0.0), (150, 4.0, 0.0)]) + rng.normal(0, 1, 300)
    x[[10, 11, 12, 149, 150, 151, 152]] = np.nan
    found = change_points(x)
    assert len(found) == 1 and 150 <= found[0] <= 155
    assert change_points([math.nan] * 50) == []


@pytest.mark.parametrize(
    "values",
    [
        [],
        [1.0],
        [1.0, 5.0, 1.0, 5.0, 1.0, 5.0, 1.0, 5.0, 1.0],  # 9 points: too short to tell
        [4.2] * 200,  # constant
        [4.2] * 100 + [math.nan] * 5 + [4.2] * 100,
    ],
)
def test_short_empty_and_constant_series_have_no_change(values: list[float]) -> None:
    assert change_points(values) == []


def test_noiseless_steps_and_lines_are_exact() -> None:
    assert change_points([0.0] * 30 + [10.0] * 30) == [30]
    line = list(np.arange(40.0)) + list(40.0 - 2.0 * np.arange(40.0))
    assert change_points(line) == [40]
    assert change_points(list(np.linspace(0.0, 1e6, 5000))) == []


def test_long_series_is_fast_and_finds_its_changes() -> None:
    rng = np.random.default_rng(7)
    n = 100_000
    x = piecewise(n, [(0, 0.0, 0.0), (30_000, 3.0, 0.0), (70_000, 1.0, 0.0)]) + ar1(rng, n, 0.5)
    # (its runtime is measured in tests/bench/bench_detect.py, not asserted here)
    assert near(change_points(x), [30_000, 70_000], tolerance=5)


def test_grid_search_agrees_with_exact_search() -> None:
    rng = np.random.default_rng(8)
    n = 3000
    x = piecewise(n, [(0, 0.0, 0.0), (900, 2.5, 0.0), (2100, 0.5, 0.001)]) + rng.normal(0, 1, n)
    t = np.arange(n, dtype=float)
    cost = LinearTrendCost(t, x, 1.0, math.log(n))
    args = (cost, n, 3 * math.log(n), 5)
    exact = pelt(*args, exact_limit=n, slack=math.log(n))
    assert pelt(*args, slack=math.log(n)) == exact


def test_linear_cost_matches_least_squares() -> None:
    rng = np.random.default_rng(9)
    t = np.sort(rng.choice(10_000, 300, replace=False)).astype(float)
    x = 1e6 + 0.3 * t + rng.normal(0, 2.0, 300)
    cost = LinearTrendCost(t, x, 1.0)
    for a, b in [(0, 300), (17, 40), (290, 300)]:
        coef = np.polyfit(t[a:b], x[a:b], 1)
        rss = float(np.sum((x[a:b] - np.polyval(coef, t[a:b])) ** 2))
        got = float(cost.rss(np.array([a]), np.array([b]))[0]) * cost.value_scale**2
        assert got == pytest.approx(rss, rel=1e-6)


def _run(path: str, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    cli_detect.register(parser.add_subparsers())
    args = parser.parse_args(["detect", path, *extra])
    return int(args.func(args))


def test_cli_default_model_and_model_choice(tmp_path, capsys) -> None:
    rng = np.random.default_rng(10)
    x = piecewise(200, [(0, 0.0, 0.05), (100, 0.0, 0.0)]) + rng.normal(0, 0.3, 200)
    f = tmp_path / "series.txt"
    f.write_text("\n".join(f"{v:.4f}" for v in x) + "\nnan\n")
    assert _run(str(f)) == 0
    assert near(json.loads(capsys.readouterr().out), [100])
    assert _run(str(f), "--model", "mean") == 0
    assert len(json.loads(capsys.readouterr().out)) > 1  # a trend is many mean shifts
    short = tmp_path / "short.txt"
    short.write_text("1\n2\n3\n")
    assert _run(str(short)) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_a_seasonal_cycle_is_no_change_but_a_shift_within_it_is() -> None:
    rng = np.random.default_rng(12)
    t = np.arange(360.0)
    season = 3.0 * np.sin(2 * np.pi * t / 12.0)
    calm = season + 0.01 * t + ar1(rng, 360, 0.3)
    assert change_points(calm) == []
    shifted = calm + np.where((t >= 150) & (t < 250), 3.0, 0.0)
    assert near(change_points(shifted), [150, 250])


def test_smooth_growth_is_no_change_but_a_jump_or_turn_on_it_is() -> None:
    # a slowly accelerating growth (a parabola) in mildly correlated noise: straight pieces
    # fit it better than one line, but one curve over the whole series explains it (the
    # default's last model-selection step); a jump or a turn on the same curve is kept
    rng = np.random.default_rng(13)
    t = np.arange(600.0)
    for _ in range(3):
        x = 300.0 + 0.05 * t + 1.5e-4 * t * t + ar1(rng, 600, 0.3, 0.3)
        assert len(trend_change_points(t, x, smooth_null=False)) >= 2  # lines without it
        assert trend_change_points(t, x) == []
        assert trend_change_points(t, x, curves=True) == []
        jump = x + np.where(t >= 400, 3.0, 0.0)
        assert 400 in trend_change_points(t, jump)
        # rises, then falls back: the peak is kept (the curve on either side may be cut into
        # lines)
        turn = x[np.where(t < 300, t, 599 - t).astype(int)]
        assert any(abs(c - 300) <= 2 for c in trend_change_points(t, turn))


def test_effective_n_option_keeps_autocorrelated_noise_unsplit_and_finds_steps() -> None:
    # log n_eff per parameter (off by default): a lower charge on correlated noise, still no
    # change in long AR(0.8) noise around a trend, and both steps found within 2 (the third
    # seed's noise has a wander at 403 that the default takes for a change too)
    rng = np.random.default_rng(14)
    t = np.arange(500.0)
    extra = 0
    for _ in range(3):
        calm = 0.01 * t + ar1(rng, 500, 0.8)
        assert trend_change_points(t, calm, effective_n=True) == []
        steps = calm + np.where(t >= 150, 4.0, 0.0) - np.where(t >= 350, 4.0, 0.0)
        found = trend_change_points(t, steps, effective_n=True)
        assert all(any(abs(f - c) <= 2 for f in found) for c in (150, 350)), found
        extra += len(found) - 2
    assert extra <= 1


def test_curves_option_smooth_curvature_is_no_change_but_a_sharp_turn_is() -> None:
    rng = np.random.default_rng(13)
    t = np.arange(600.0)
    v = np.where(t < 300, 0.05 * t, 15.0 - 0.05 * (t - 300)) + rng.normal(0, 0.5, 600)
    assert near(trend_change_points(t, v, curves=True), [300])


def test_heavy_tailed_noise_does_not_open_segments() -> None:
    # Student t(3) noise: the Huber-clipped pseudo-observations keep its tails from paying
    # for segments; the steps are still found
    signal = piecewise(500, [(0, 0.0, 0.0), (200, 4.0, 0.0), (350, 1.0, 0.0)])
    exact = []
    for seed in range(10):
        x = signal + np.random.default_rng(100 + seed).standard_t(3, 500)
        exact.append(near(change_points(x), [200, 350]))
    assert sum(exact) >= 8, exact


def test_differenced_option_takes_a_random_walk_as_noise_and_keeps_a_trend_break() -> None:
    # a random walk with drift: the levels model can only follow it with segments (phi is
    # capped at 2/3); the random-walk alternative (free AR(1), variance profiled) wins and
    # its drift has no change. A clear break of trend in AR(0.5) noise keeps the levels model
    rng = np.random.default_rng(21)
    t = np.arange(600.0)
    pieces_default, pieces_differenced = 0, 0
    for _ in range(5):
        walk = np.cumsum(rng.normal(0.05, 1.0, 600))
        pieces_default += len(trend_change_points(t, walk))
        pieces_differenced += len(trend_change_points(t, walk, differenced=True))
    assert pieces_differenced <= 1 < pieces_default, (pieces_differenced, pieces_default)
    bend = np.where(t < 300, 0.05 * t, 15.0 - 0.05 * (t - 300)) + ar1(rng, 600, 0.5, 0.5)
    assert near(trend_change_points(t, bend, differenced=True), [300])


@pytest.mark.parametrize(
    "options",
    [{"noise_cap": True}, {"select": True}, {"min_fraction": 0.02}, {"per_change": 2.0},
     {"penalty_scale": 0.7}],
)
def test_fourth_round_options_still_find_clear_steps(options: dict[str, object]) -> None:
    # each option (off by default) keeps two clear steps in AR(0.5) noise, within 2
    rng = np.random.default_rng(22)
    t = np.arange(400.0)
    found_all = []
    for _ in range(3):
        x = np.where(t >= 150, 3.0, 0.0) - np.where(t >= 280, 3.0, 0.0) + ar1(rng, 400, 0.5)
        found_all.append(trend_change_points(t, x, **options))  # type: ignore[arg-type]
    assert sum(near(f, [150, 280]) for f in found_all) >= 2, found_all


def test_select_option_never_adds_changes_and_min_fraction_bounds_segments() -> None:
    rng = np.random.default_rng(23)
    t = np.arange(500.0)
    for _ in range(3):
        x = np.cumsum(rng.normal(0.0, 1.0, 500))
        assert set(trend_change_points(t, x, select=True)) <= set(trend_change_points(t, x))
        bounds = [0, *trend_change_points(t, x, min_fraction=0.04), 500]
        assert min(np.diff(bounds)) >= 20


def test_penalty_scale_larger_means_fewer_changes_on_steps() -> None:
    rng = np.random.default_rng(24)
    t = np.arange(300.0)
    x = np.repeat([0.0, 1.0, 0.0, 1.0], 75) + rng.normal(0, 0.4, 300)
    counts = [len(trend_change_points(t, x, penalty_scale=s)) for s in (0.25, 1.0, 20.0)]
    assert counts[0] >= counts[1] >= counts[2] and counts[2] < 3, counts


def test_majority_keeps_what_two_runs_agree_on_within_the_margin() -> None:
    # a change two of three runs place within 5 points stays, at the first run's place when
    # that run is among them, else at the median; a change one run alone finds goes
    assert majority_changes([[40], [43], []]) == [40]
    assert majority_changes([[], [43], [47]]) == [45]
    assert majority_changes([[40], [46], []]) == []  # 6 points apart: no agreement
    assert majority_changes([[40, 90], [90], [150]]) == [90]
    # two runs' changes in one group count once per run
    assert majority_changes([[40, 44], [], []]) == []
    # a kept change closer than min_size to the one before it is dropped
    assert majority_changes([[20, 26], [20, 26], []], min_size=10) == [20]


def test_consensus_default_finds_steps_and_keeps_correlated_noise_whole() -> None:
    rng = np.random.default_rng(31)
    t = np.arange(400.0)
    exact, false = 0, 0
    for _ in range(6):
        x = np.where(t >= 150, 3.0, 0.0) - np.where(t >= 280, 3.0, 0.0) + ar1(rng, 400, 0.5)
        exact += near(consensus_change_points(t, x), [150, 280])
        false += len(consensus_change_points(t[:200], ar1(rng, 200, 0.5) + 0.01 * t[:200]))
    assert exact >= 5, exact
    assert false <= 1, false
    # the CLI's default is the consensus; an explicit penalty is one run
    x = np.where(t >= 150, 3.0, 0.0) + ar1(rng, 400, 0.5)
    assert change_points(x) == consensus_change_points(t, x)
    assert change_points(x, penalty=30.0) == trend_change_points(t, x, 30.0)


def test_seasonal_repeat_option_removes_a_cycle_of_any_shape() -> None:
    # a yearly profile with a summer plateau and a December spike: its autocorrelation at
    # half the period is not negative, so the default's test does not take it for a season
    # and the step at 100 drowns in it; the looser test removes it and finds the step
    shape = 3.0 * np.array([0, 0, 1, 1, 0, 2, 4, 4, 1, 0, -1, 2.0])
    t = np.arange(240.0)
    rng = np.random.default_rng(41)
    found, calm_found = [], 0
    for _ in range(5):
        x = np.tile(shape, 20) + np.where(t >= 100, 3.0, 0.0) + rng.normal(0, 0.3, 240)
        found.append(trend_change_points(t, x, seasonal_repeat=True))
        calm = np.tile(shape, 20) + 0.01 * t + rng.normal(0, 0.3, 240)
        calm_found += len(trend_change_points(t, calm, seasonal_repeat=True))
    assert sum(near(f, [100]) for f in found) >= 4, found
    assert calm_found == 0

"""Offline change points (`gapwatch detect`): the mean / mean-and-variance / poisson models."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from detectors.gaussian import change_points
from streams import cli_detect


def test_mean_and_variance_changes() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 150), rng.normal(2, 1, 100), rng.normal(2, 5, 150)])
    assert change_points(x, model="normal") == [149, 252]


@pytest.mark.parametrize("model", ["normal", "mean"])
def test_no_change_in_noise(model: str) -> None:
    rng = np.random.default_rng(1)
    assert change_points(rng.normal(5, 2, 500), model=model) == []


def test_heavy_tails_do_not_split_everything() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_t(3, 400)
    assert len(change_points(x, model="normal")) <= 2


def test_nan_skipped_but_indices_kept() -> None:
    x = [1.0, 1.1, 0.9, 1.0, 1.2] * 8 + [math.nan] * 3 + [6.0, 6.1, 5.9, 6.2, 6.0] * 8
    assert change_points(x, model="normal") == [43]


def test_poisson_model() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.poisson(3, 120), rng.poisson(8, 80)])
    assert change_points(x, model="poisson") == [120]


def test_penalty_and_min_size() -> None:
    x = [0.0] * 20 + [1.0] * 3 + [0.0] * 20
    assert change_points(x, model="mean", min_size=2) == [20, 23]
    wide = change_points(x, model="mean", min_size=5)
    bounds = [0, *wide, len(x)]
    assert all(b - a >= 5 for a, b in zip(bounds, bounds[1:], strict=False)) and wide
    assert change_points(x, model="mean", penalty=1e9) == []


def _run(path: str, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    cli_detect.register(parser.add_subparsers())
    args = parser.parse_args(["detect", path, *extra])
    return int(args.func(args))


def test_cli_prints_json(tmp_path, capsys) -> None:
    f = tmp_path / "series.txt"
    f.write_text("\n".join(["1.0"] * 30 + ["nan", ""] + ["9"] * 30) + "\n")
    assert _run(str(f), "--model", "mean") == 0
    assert json.loads(capsys.readouterr().out) == [32]


def test_cli_errors(tmp_path, capsys) -> None:
    assert _run(str(tmp_path / "missing.txt")) == 2
    assert "cannot read" in capsys.readouterr().err
    f = tmp_path / "bad.txt"
    f.write_text("1\n2\nthree\n")
    assert _run(str(f)) == 2
    assert "line 3" in capsys.readouterr().err

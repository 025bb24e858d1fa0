"""`gapwatch detect FILE`: change points of a plain numeric series, printed as a JSON list."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from detectors.gaussian import MODELS, change_points


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "detect",
        help="change points of a numeric series (one number a line): prints a JSON list",
        description=(
            "Offline change points (PELT) of FILE, one number a line ('nan' or an empty line "
            "for a missing point). Prints a JSON list of 0-based indices, each the first "
            "point of a new segment. Default model: straight-line segments (breaks in level "
            "and trend) in autocorrelated noise, isolated spikes ignored; fewer than "
            "2 x min-size points or a constant series give []. See docs/detect.md."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="input file ('-' for stdin)")
    parser.add_argument(
        "--model", choices=MODELS, default="linear",
        help=(
            "linear: straight-line segments, long-run noise scale, outliers ignored, "
            "heavy tails clipped (default); "
            "normal: mean and variance; mean: mean only; poisson: counts"
        ),
    )
    parser.add_argument(
        "--penalty", type=float, default=None,
        help=(
            "penalty per change point, in units of the model's -2 log-likelihood "
            "(default: (params + 2) * log n with params 1 for linear and mean, 2 for normal, "
            "1 for poisson; linear segments pay log n more for a slope; the linear default is "
            "the changes that two of three runs, at 3 log n, 2 log n and 3 log n_eff, agree "
            "on; an explicit penalty runs once)"
        ),
    )
    parser.add_argument("--min-size", type=int, default=5, help="minimum segment length")
    parser.set_defaults(func=run)
    return parser


def read_series(lines: list[str]) -> list[float]:
    values: list[float] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if text == "" or text.lower() in ("nan", "na", "null"):
            values.append(math.nan)
            continue
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"line {number}: not a number: {text[:40]!r}") from None
        if math.isinf(value):
            raise ValueError(f"line {number}: infinite value")
        values.append(value)
    return values


def run(args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(args.file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"gapwatch detect: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        series = read_series(lines)
        result = change_points(
            series, model=args.model, penalty=args.penalty, min_size=args.min_size
        )
    except ValueError as exc:
        print(f"gapwatch detect: {args.file}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0

"""`gapwatch reconcile` from files: the table's counts are the raw events' counts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from detectors.events import parse_backend, parse_platform
from streams import reconcile
from streams.simulate import generate, write_jsonl


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    reconcile.register(sub)
    args = parser.parse_args(["reconcile", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def test_reconcile_from_files_counts_match_the_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = generate("duplicate_purchase", seed=5, days=1.0, orders_per_day=1500, change_at_fraction=0.5)
    paths = write_jsonl(sim, tmp_path)
    code, out = _run(["--backend", str(paths["backend"]), "--platform", str(paths["platform"]),
                      "--window-seconds", "3600", "--json"], capsys)
    assert code == 0
    rows = {r["source"]: r for r in json.loads(out)}
    backend = [parse_backend(json.dumps(e)) for e in sim.backend]
    assert rows["Backend purchase"]["count"] == sum(e.event_name == "purchase" for e in backend)
    # meta: pixel+capi pairs count once, duplicate triggers count (the platform counts them)
    meta = [parse_platform(json.dumps(e)) for e in sim.platform]
    meta = [e for e in meta if e.platform == "meta" and e.event_name == "purchase"]
    seen: dict[str, set[str]] = {}
    expected = 0
    dups = 0
    for e in meta:
        channels = seen.setdefault(e.event_id, set())
        if not channels or e.channel in channels:
            expected += 1
            dups += bool(channels)
        channels.add(e.channel)
    assert rows["meta purchase"]["count"] == expected
    assert f"{dups} duplicate triggers counted" in rows["meta purchase"]["note"]
    assert dups > 0


def test_reconcile_needs_a_source(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    reconcile.register(sub)
    args = parser.parse_args(["reconcile"])
    args.broker = None
    assert args.func(args) == 2
    assert "give --backend and --platform" in capsys.readouterr().err

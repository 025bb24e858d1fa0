"""Alert lifecycle on the embedded broker: what people say back changes what the worker does.

One simulated incident (meta stops seeing most Safari purchases), three workers side by side on
the same event topics, each with its own app id, outputs and feedback topic. After the alert,
the incident is acknowledged (`gapwatch alert ack`, the CLI), marked expected (`POST
/alerts/{id}/expected`, bearer token) or reported as a false alarm (CLI); every worker is then
killed (SIGKILL) and restarted, the rest of the data arrives, and each must have done what the
feedback says, exactly as `gapwatch backtest --feedback` does on the same input.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from detectors.pipeline import Backtest, PipelineConfig
from streams.simulate import generate
from tests.integration.worker_harness import (
    ROOT,
    WorkerPool,
    consume,
    create_topics,
    flush_messages,
    produce_messages,
    unique_names,
)

WINDOW_S = 3600
LATENESS_S = 120.0
TOKEN = "s3cret-token"


def _events(sim: Any, names: dict[str, str], lo: float, hi: float) -> list[tuple[str, bytes, bytes]]:
    """The events that arrive in [lo, hi), in arrival order per topic."""
    out = []
    for role, events, arrivals in (("backend", sim.backend, sim.backend_arrivals),
                                   ("platform", sim.platform, sim.platform_arrivals)):
        for e, t in zip(events, arrivals, strict=True):
            if lo <= t < hi:
                out.append((names[role], str(e.get("order_id") or e["event_id"]).encode(), orjson.dumps(e)))
    if lo == 0:
        out += [(names["changes"], str(c["change_id"]).encode(), orjson.dumps(c)) for c in sim.changes]
    return out


def _backtest(sim: Any, feedback: list[dict[str, Any]]) -> list[tuple[str, str, Any, bool]]:
    bt = Backtest(PipelineConfig(window_s=WINDOW_S, allowed_lateness_s=LATENESS_S))
    for c in sim.changes:
        bt.add_change(c)
    for f in feedback:
        bt.add_feedback(f)
    bt.run((orjson.dumps(e) for e in sim.backend), (orjson.dumps(e) for e in sim.platform))
    return [(a.alert_id, a.status, a.resolution, a.acknowledged) for a in bt.alerts
            if a.detected_at < sim.truth["end"] - WINDOW_S]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60, check=False)


def _post(url: str, body: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=orjson.dumps(body), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"{}")


async def _alerts(bootstrap: str, topic: str, until: Any, timeout_s: float = 120) -> list[dict[str, Any]]:
    records = await consume(bootstrap, topic, until=lambda rs: until([orjson.loads(r.value) for r in rs]),
                            timeout_s=timeout_s)
    return [orjson.loads(r.value) for r in records]


def test_ack_expected_false_change_what_the_worker_does_next(broker: Any, pool: WorkerPool, tmp_path: Path) -> None:
    sim = generate("safari_drop", days=2.0)
    base = unique_names("lifecycle")
    asyncio.run(create_topics(broker.bootstrap, base))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    runs: dict[str, dict[str, str]] = {}
    for action in ("ack", "expected", "false"):
        names = dict(base)
        for role in ("windows", "alerts", "dlq", "partials"):
            names[role] = f"{base[role]}-{action}"
        names["app_id"] = f"{base['app_id']}-{action}"
        names["feedback"] = f"t-feedback-{base['app_id']}-{action}"
        runs[action] = names
    extra = {a: ["--feedback-topic", n["feedback"], "--api-token-file", str(token_file), "--tick-seconds", "0.5"]
             for a, n in runs.items()}
    workers = {a: pool.start(n, label=a, window_s=WINDOW_S, lateness_s=LATENESS_S, extra=extra[a])
               for a, n in runs.items()}
    for w in workers.values():
        w.wait_ready()

    # phase 1: the incident, until a few windows after its detection
    first = [a for a in _backtest(sim, []) if a[1] == "firing"]
    assert len(first) == 1
    cut = sim.truth["change_at"] + 4 * WINDOW_S
    asyncio.run(produce_messages(broker.bootstrap, _events(sim, base, 0, cut), partitions=2))
    alert_id = first[0][0]
    for action, names in runs.items():
        seen = asyncio.run(_alerts(broker.bootstrap, names["alerts"], lambda docs: any(d["alert_id"] == alert_id for d in docs)))
        assert [d["alert_id"] for d in seen if d["status"] == "firing"] == [alert_id], (action, seen)

    # people say something back; it applies at the first window ending after `at`
    at = cut + WINDOW_S
    feedback = {a: {"alert_id": alert_id, "action": a, "at": at, "note": f"{a} by the test"} for a in runs}
    done = _cli("alert", "ack", alert_id, "--note", feedback["ack"]["note"], "--at", str(at),
                "--broker", broker.bootstrap, "--feedback-topic", runs["ack"]["feedback"])
    assert done.returncode == 0, done.stderr
    url = workers["expected"].url + f"/alerts/{alert_id}/expected"
    assert _post(url, {"at": at, "note": feedback["expected"]["note"]}, None)[0] == 401
    assert _post(url, {"at": at, "note": feedback["expected"]["note"]}, "wrong")[0] == 401
    status, body = _post(url, {"at": at, "note": feedback["expected"]["note"]}, TOKEN)
    assert status == 202 and body["accepted"]["action"] == "expected", body
    assert _post(workers["expected"].url + f"/alerts/{alert_id}/snooze", {"at": at}, TOKEN)[0] == 404
    done = _cli("alert", "false", alert_id, "--note", feedback["false"]["note"], "--at", str(at),
                "--broker", broker.bootstrap, "--feedback-topic", runs["false"]["feedback"])
    assert done.returncode == 0, done.stderr
    for action, w in workers.items():
        w.wait_metrics(lambda m, a=action: m.value("gapwatch_alert_feedback_total", action=a) >= 1, 60, f"{action} feedback")

    # every worker crashes and restarts: the feedback must survive (topic + global table)
    for action, w in workers.items():
        w.kill9()
        workers[action] = pool.start(runs[action], label=f"{action}-again", window_s=WINDOW_S,
                                     lateness_s=LATENESS_S, extra=extra[action])
    for w in workers.values():
        w.wait_ready()
    rest = _events(sim, base, cut, float("inf")) + flush_messages(base, sim.truth["end"] + LATENESS_S + 1)
    asyncio.run(produce_messages(broker.bootstrap, rest, partitions=2))
    for w in workers.values():
        w.wait_metrics(lambda m: m.value("gapwatch_windows_closed_total", level="platform") >= 4 * 6, 180,
                       "the last windows")
    time.sleep(2)
    for action, names in runs.items():
        docs = asyncio.run(_alerts(broker.bootstrap, names["alerts"], lambda d: False, timeout_s=8))
        live = [(d["alert_id"], d["status"], d.get("resolution"), bool(d.get("acknowledged")))
                for d in docs if d["detected_at"] < sim.truth["end"] - WINDOW_S]
        offline = _backtest(sim, [feedback[action]])
        # a restart may re-send an alert (same id, same document): compare distinct documents
        assert sorted(set(live)) == sorted(set(offline)), (action, live, offline)
        if action == "ack":  # acknowledged, still open, never posted as a new alert
            assert set(live) == {(alert_id, "firing", None, False), (alert_id, "firing", None, True)}
        elif action == "expected":  # re-baselined at the new level: resolved, nothing after
            assert set(live) == {(alert_id, "firing", None, False), (alert_id, "resolved", "expected", False)}
        else:  # resolved as a false alarm; the old baseline holds, and the real drop alarms again
            assert (alert_id, "resolved", "false_alarm", False) in live
            refire = [d for d in docs if d["status"] == "firing" and d["alert_id"] != alert_id]
            first_doc = next(d for d in docs if d["alert_id"] == alert_id)
            assert refire and abs(refire[0]["baseline"] - first_doc["baseline"]) < 0.1
            assert refire[0]["incident_key"] == first_doc["incident_key"]


def _offline(sim: Any, extra_changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bt = Backtest(PipelineConfig(window_s=WINDOW_S, allowed_lateness_s=LATENESS_S))
    for c in [*sim.changes, *extra_changes]:
        bt.add_change(c)
    bt.run((orjson.dumps(e) for e in sim.backend), (orjson.dumps(e) for e in sim.platform))
    return [a.to_dict() for a in bt.alerts if a.detected_at < sim.truth["end"] - WINDOW_S]


def test_planned_changes_and_a_declared_holiday_live(broker: Any, pool: WorkerPool) -> None:
    """A plan that matches: a notice, no gap alert; one that does not: a gap alert naming the
    plan; a declared holiday: no business alert. Each on its own worker, each equal to backtest."""
    safari = generate("safari_drop", days=2.0)
    business = generate("business_drop")
    plan = {"change_id": "plan-1", "kind": "conversion_action", "at": safari.truth["change_at"] - 600,
            "summary": "meta purchase: 1-day click window on Safari",
            "expected": {"metric": "count_ratio", "size": "", "scope": {"platform": "meta", "browser": "safari"}}}
    cases = {
        "match": (safari, [{**plan, "expected": {**plan["expected"], "size": "-70 %"}}]),
        "mismatch": (safari, [{**plan, "expected": {**plan["expected"], "size": "-25 %"}}]),
        "holiday": (business, [{"change_id": "hol-1", "kind": "holiday", "at": business.truth["change_at"] - 1800,
                                "duration": "3d", "summary": "declared holiday"}]),
    }
    offline = {name: _offline(sim, extra) for name, (sim, extra) in cases.items()}
    # the known answers, offline first (the same pipeline the worker runs)
    assert [(a["verdict"], a["status"]) for a in offline["match"]] == [("expected_change", "firing")], offline["match"]
    gaps = [a for a in offline["mismatch"] if a["verdict"] == "tracking_gap" and a["status"] == "firing"]
    assert gaps and gaps[0]["plan"].startswith("expected -25 %, observed -")
    assert not [a for a in offline["holiday"] if a["verdict"] == "business_change"]

    workers = {}
    names_of = {}
    for name, (sim, extra) in cases.items():
        names = unique_names(f"plan-{name}")
        asyncio.run(create_topics(broker.bootstrap, names))
        changes = [(names["changes"], str(c["change_id"]).encode(), orjson.dumps(c)) for c in [*sim.changes, *extra]]
        asyncio.run(produce_messages(broker.bootstrap, changes))
        workers[name] = pool.start(names, label=name, window_s=WINDOW_S, lateness_s=LATENESS_S,
                                   extra=["--tick-seconds", "0.5", "--feedback-topic", f"t-feedback-{names['app_id']}"])
        names_of[name] = names
    for w in workers.values():
        w.wait_ready()
    for name, (sim, _extra) in cases.items():
        names = names_of[name]
        events = [m for m in _events(sim, names, 0, float("inf")) if m[0] != names["changes"]]
        asyncio.run(produce_messages(broker.bootstrap, events + flush_messages(names, sim.truth["end"] + LATENESS_S + 1),
                                     partitions=2))
    for name, w in workers.items():
        hours = 24 * (2 if name != "holiday" else 4)
        w.wait_metrics(lambda m, h=hours: m.value("gapwatch_windows_closed_total", level="platform") >= 4 * (h - 2),
                       240, f"{name}: the last windows")
    time.sleep(2)
    for name, (sim, _extra) in cases.items():
        docs = asyncio.run(_alerts(broker.bootstrap, names_of[name]["alerts"], lambda d: False, timeout_s=8))
        live = {(d["alert_id"], d["status"], d["verdict"], d.get("plan", ""))
                for d in docs if d["detected_at"] < sim.truth["end"] - WINDOW_S}
        assert live == {(a["alert_id"], a["status"], a["verdict"], a.get("plan", "")) for a in offline[name]}, name

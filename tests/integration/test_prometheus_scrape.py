"""End to end observability: a real worker fed by the simulator, scraped by a real Prometheus
server (Debian's binary) that loads the repository's rules; then every Grafana panel query,
every dashboard variable and every recording rule must return data, and every rule must
evaluate without error.

The dashboard read is the committed deploy/grafana/dashboards/gapwatch.json, which Grafana
loads; tests/integration/test_deploy.py checks it is what deploy/grafana/gapwatch_dashboard.py
builds. Grafana itself is not installable here, so its queries are run against Prometheus with the
template variables filled in the way Grafana would (`.*` for "All", a concrete value for
single-value variables).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # noqa: E402  (pyyaml is a dev dependency)

from streams.broker import EmbeddedBroker, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "gapwatch.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "gapwatch.json"

# Template variables as a user would leave them: every platform / browser / region, the
# purchase conversion, the count ratio.
VARIABLES = {
    "platform": ".*",
    "event_name": "purchase",
    "metric": "count_ratio",
    "browser": ".*",
    "region": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
}
# Targets that legitimately stay empty in this run, with the reason. Their panels must still
# show data through their other targets.
MAY_BE_EMPTY = {
    "gapwatch_redelivered_events_total": "only a worker restart redelivers messages",
}
SIM_START = "2026-01-05T00:00:00Z"
SIM_START_EPOCH = 1767571200
SETTLE_TIMEOUT_S = 300.0


def _require(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/install-system.sh (scripts/test does)")
    return path


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for key in [k for k in env if k.startswith("GAPWATCH_")]:
        del env[key]  # settings come from the flags below only
    return env


def _gapwatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", *args]


def _require_cli() -> None:
    for verb in ("worker", "simulate"):
        proc = subprocess.run(
            _gapwatch(verb, "--help"), capture_output=True, text=True, env=_cli_env(), cwd=ROOT, timeout=60,
        )
        if proc.returncode != 0:
            message = f"`gapwatch {verb}` is not available: {proc.stderr.strip()[-400:]}"
            pytest.fail(message)


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with code {proc.returncode}:\n{_tail(log)}")
        try:
            status, body = _get(url, 2.0)
            if status == 200:
                return
            last = f"HTTP {status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    pytest.fail(f"{what}: {url} not OK within {timeout_s:.0f} s ({last}):\n{_tail(log)}")


# ------------------------------------------------------------------------------------------
# Fixtures: worker, traffic, Prometheus. Every subprocess is stopped in its finalizer.
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    """Topic names and app id of this module alone: the session broker is shared."""
    tag = uuid.uuid4().hex[:8]
    return {
        "app_id": f"gapwatch-scrape-{tag}",
        "backend": f"scrape-{tag}-backend-events",
        "platform": f"scrape-{tag}-platform-events",
        "changes": f"scrape-{tag}-changes",
        "windows": f"scrape-{tag}-windows",
        "alerts": f"scrape-{tag}-gap-alerts",
        "dlq": f"scrape-{tag}-dlq",
        "partials": f"scrape-{tag}-partials",
    }


@pytest.fixture(scope="module")
def worker(broker: EmbeddedBroker, names: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`gapwatch worker` on a free port; yields its metrics address HOST:PORT."""
    _require_cli()
    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    cmd = _gapwatch(
        "worker", "--broker", broker.bootstrap, "--metrics-port", str(port), "--web-host", "127.0.0.1",
        "--window-seconds", "3600", "--partitions", "2", "--app-id", names["app_id"],
        "--backend-topic", names["backend"], "--platform-topic", names["platform"],
        "--changes-topic", names["changes"], "--windows-topic", names["windows"],
        "--alerts-topic", names["alerts"], "--dlq-topic", names["dlq"], "--partials-topic", names["partials"],
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_cli_env(), cwd=ROOT)
    try:
        address = f"127.0.0.1:{port}"
        _wait_http(f"http://{address}/healthz", proc, log, "gapwatch worker", 120)
        _wait_http(f"http://{address}/readyz", proc, log, "gapwatch worker (ready)", 120)
        yield address
        assert proc.poll() is None, f"the worker died during the test:\n{_tail(log)}"
    finally:
        _stop(proc)


async def _produce(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def traffic(broker: EmbeddedBroker, worker: str, names: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Four simulated days (hour windows: past the detectors' one-day warm-up) played over ~30 s, so
    the counters rise across many scrapes as in a live stream, with a Safari drop, plus the odd events a real stream carries:
    undecodable messages (DLQ), a duplicate trigger, a late event and a deploy."""
    log = tmp_path_factory.mktemp("simulate") / "simulate.log"
    cmd = _gapwatch(
        "simulate", "--scenario", "safari_drop", "--days", "4", "--speedup", "12000", "--start", SIM_START, "--broker", broker.bootstrap,
        "--partitions", "2", "--backend-topic", names["backend"], "--platform-topic", names["platform"],
        "--changes-topic", names["changes"],
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_cli_env(), cwd=ROOT)
    try:
        rc = proc.wait(600)
    finally:
        _stop(proc)
    assert rc == 0, f"gapwatch simulate failed ({rc}):\n{_tail(log)}"

    late_at = SIM_START_EPOCH - 86400  # a day before anything else: later than any lateness
    duplicate = {
        "event_id": "scrape-dup-1", "platform": "meta", "channel": "pixel", "event_name": "purchase",
        "order_id": "scrape-order-1", "occurred_at": SIM_START_EPOCH + 86000, "value": 10.0, "currency": "EUR",
        "browser": "chrome", "region": "eu",
    }
    late = {
        "event_id": "scrape-late-1", "type": "order", "order_id": "scrape-order-2", "occurred_at": late_at,
        "value": 10.0, "currency": "EUR", "browser": "chrome", "region": "eu",
    }
    change = {
        "change_id": "scrape-deploy-1", "kind": "deploy", "at": SIM_START_EPOCH + 86100,
        "summary": "scrape test deploy", "service": "checkout", "author": "ci",
    }
    messages = [
        (names["backend"], b"junk-1", b"{not json"),
        (names["backend"], b"junk-2", b'{"event_id": "x"}'),
        (names["platform"], b"junk-3", b"\xff\xfe"),
        (names["platform"], b"scrape-order-1", json.dumps(duplicate).encode()),
        (names["platform"], b"scrape-order-1", json.dumps(duplicate).encode()),
        (names["backend"], b"scrape-order-2", json.dumps(late).encode()),
        (names["changes"], b"scrape-deploy-1", json.dumps(change).encode()),
    ]
    asyncio.run(_produce(broker.bootstrap, messages))


@pytest.fixture(scope="module")
def prometheus(worker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the worker every second with the repository's rules."""
    binary = _require("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "gapwatch-worker", "static_configs": [{"targets": [worker]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "prometheus.log"
    cmd = [
        binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/-/ready", proc, log, "prometheus", 60)
        yield url
    finally:
        _stop(proc)


# ------------------------------------------------------------------------------------------
# Queries
# ------------------------------------------------------------------------------------------


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = _get(url, 10.0)
    payload = json.loads(body)
    assert status == 200 and payload["status"] == "success", f"{expr}: {payload.get('error', body[:300])}"
    result = payload["data"]["result"]
    return result if isinstance(result, list) else [result]


def substitute(expr: str) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in VARIABLES, f"no test value for ${name}"
        return VARIABLES[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)", value, expr)


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def dashboard_checks() -> tuple[dict[str, list[tuple[str, str]]], dict[str, tuple[str, str]], dict[str, str]]:
    """(panel title -> [(refId, PromQL)], variable -> (PromQL, label), annotation -> PromQL)."""
    dash = json.loads(DASHBOARD.read_text())
    panels: dict[str, list[tuple[str, str]]] = {}
    for panel in _all_panels(dash["panels"]):
        if panel.get("targets"):
            panels[panel["title"]] = [(t["refId"], substitute(t["expr"])) for t in panel["targets"]]
    variables = {}
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)", query.strip(), re.S)
        assert m, f"variable {var['name']}: unsupported query {query}"
        variables[var["name"]] = (substitute(m.group(1)), m.group(2))
    annotations = {a["name"]: substitute(a["expr"]) for a in dash["annotations"]["list"] if a.get("expr") and a.get("enable")}
    return panels, variables, annotations


def recording_rule_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return sorted({r["record"] for g in groups for r in g["rules"] if "record" in r})


# Series that exist only once the detectors have raised an alert: checked in their own test,
# so a pipeline fault and a detector that stayed silent fail differently.
DETECTION_OUTPUTS = ("gapwatch_alerts_total",)


def _is_detection(expr: str) -> bool:
    return any(name in expr for name in DETECTION_OUTPUTS)


def _missing(prom: str, detection: bool) -> list[str]:
    """Everything of one part (pipeline or detection) without data yet; empty: all good."""
    panels, variables, annotations = dashboard_checks()
    missing = []
    for title, targets in panels.items():
        targets = [(ref, expr) for ref, expr in targets if _is_detection(expr) == detection]
        if not targets:
            continue
        panel_has_data = False
        for ref, expr in targets:
            if _query(prom, expr):
                panel_has_data = True
            elif not any(name in expr for name in MAY_BE_EMPTY):
                missing.append(f"panel {title!r} {ref}: {expr}")
        if not panel_has_data:
            missing.append(f"panel {title!r}: no target returns data")
    for name, (expr, label) in variables.items():
        if _is_detection(expr) != detection:
            continue
        values = {s["metric"].get(label) for s in _query(prom, expr)} - {None}
        if not values:
            missing.append(f"variable {name}: label_values({expr}, {label}) is empty")
    for name, expr in annotations.items():
        if _is_detection(expr) == detection and not _query(prom, expr):
            missing.append(f"annotation {name!r}: {expr}")
    if not detection:
        for record in recording_rule_names():
            if not _query(prom, record):
                missing.append(f"recording rule {record}")
    return missing


def _settled(prom: str, detection: bool) -> list[str]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    missing = _missing(prom, detection)
    while missing and time.monotonic() < deadline:
        time.sleep(3)
        missing = _missing(prom, detection)
    return missing


def test_every_dashboard_query_and_recording_rule_returns_data(prometheus: str, traffic: None, worker: str) -> None:
    missing = _settled(prometheus, detection=False)
    assert not missing, "no data for:\n" + "\n".join(missing)

    # The worker's own view agrees: it is scraped and it counted what we sent.
    assert _query(prometheus, 'up{job="gapwatch-worker"} == 1')
    assert _query(prometheus, "sum(gapwatch_invalid_events_total) >= 3")
    assert _query(prometheus, 'gapwatch_change_event_timestamp_seconds{kind="deploy", service="checkout"}')
    # The variables offer the Safari segment the scenario breaks.
    _, variables, _ = dashboard_checks()
    browsers = {s["metric"]["browser"] for s in _query(prometheus, variables["browser"][0])}
    assert "safari" in browsers


def test_alert_panels_show_the_simulated_gap(prometheus: str, traffic: None) -> None:
    missing = _settled(prometheus, detection=True)
    assert not missing, (
        "the worker raised no alert for the safari_drop day (meta loses 60 % of Safari purchases), "
        "so these alert queries stay empty:\n" + "\n".join(missing)
    )


def test_every_rule_evaluates_without_error(prometheus: str, traffic: None) -> None:
    # Two evaluation rounds after the data is in.
    time.sleep(3)
    status, body = _get(f"{prometheus}/api/v1/rules", 10.0)
    assert status == 200
    rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not broken, "rules failing on real data:\n" + "\n".join(broken)
    # A gap the worker reports active is an alert in Prometheus too.
    if _query(prometheus, "max(gapwatch_active_gaps) > 0"):
        assert _query(prometheus, 'ALERTS{alertname="GapwatchTrackingGapActive"}')
    # And with a healthy worker, GapwatchWorkerDown stays silent.
    assert not _query(prometheus, 'ALERTS{alertname="GapwatchWorkerDown"}')

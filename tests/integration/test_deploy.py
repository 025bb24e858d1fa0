"""Deployment artefacts checked with the real tools: promtool (config, rules, rule unit tests),
docker-compose (parses the compose file without an engine), plus structural checks of the
Grafana dashboard, the Kubernetes manifests and the Docker image recipe against the metric
contract in docs/architecture.md and the worker's settings.

promtool and docker-compose come from .ci/install-system.sh (scripts/test runs it). Without them these tests fail
on a developer machine and fail in CI (CI=true), so a missing install step cannot hide.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # noqa: E402  (pyyaml is a dev dependency)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
RULES = PROM / "rules" / "gapwatch.rules.yml"
RULE_TESTS = PROM / "tests" / "gapwatch.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gapwatch.json"
K8S = DEPLOY / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

REQUIRED_ALERTS = {
    "GapwatchWorkerDown",
    "GapwatchConsumerLagGrowing",
    "GapwatchHighInvalidRate",
    "GapwatchPlatformSilent",
    "GapwatchTrackingGapActive",
}
# Series Prometheus makes itself; the dashboard may use them besides gapwatch's own.
PROMETHEUS_BUILTINS = {"up": {"job", "instance"}, "ALERTS": {"alertname", "alertstate", "severity"}}
TARGET_LABELS = {"job", "instance"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/install-system.sh (scripts/test does)")
    return path


def run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


# ------------------------------------------------------------------------------------------
# The metric contract
# ------------------------------------------------------------------------------------------


def contract_metrics() -> dict[str, set[str]]:
    """Metric name -> label names, from the metrics table of docs/architecture.md."""
    metrics: dict[str, set[str]] = {}
    previous_labels: set[str] = set()
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`gapwatch_"):
            continue
        names = re.findall(r"`([A-Za-z_:][\w:]*)`", cells[0])
        label_text = cells[2].split(":", 1)[0]
        if label_text.startswith("same"):
            labels = set(previous_labels)
        elif label_text.startswith("(none)"):
            labels = set()
        else:
            labels = {x.strip() for x in label_text.split(",") if x.strip()}
        base = names[0]
        for name in names:
            # "`gapwatch_segment_baseline_low` / `_high`": a suffix replaces the last word.
            full = base.rsplit("_", 1)[0] + name if name.startswith("_") else name
            metrics[full] = labels
        previous_labels = labels
    return metrics


def recording_rules() -> dict[str, set[str]]:
    """Recorded metric name -> the labels its rules produce (grouping labels + static labels)."""
    out: dict[str, set[str]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" not in rule:
                continue
            labels = set(rule.get("labels", {}))
            for grouping in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]):
                labels |= {x.strip() for x in grouping.split(",") if x.strip()}
            out.setdefault(rule["record"], set()).update(labels)
    return out


def alert_rules() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def known_series() -> dict[str, set[str]]:
    known = {**PROMETHEUS_BUILTINS, **contract_metrics(), **recording_rules()}
    return {name: labels | TARGET_LABELS for name, labels in known.items()}


# ------------------------------------------------------------------------------------------
# PromQL identifiers (a regex reading, enough for the queries we write)
# ------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'" r"|`[^`]*`")
_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2", "start", "end",
}
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:.$])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def grafana_query_expr(query: str) -> str:
    """The PromQL inside a Grafana variable query (label_values(expr, label), query_result(expr))."""
    q = query.strip()
    m = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", q, re.S)
    if m:
        return m.group(1)
    if re.fullmatch(r"label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", q) or q.startswith(("label_names(", "metrics(")):
        return ""
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    return m.group(1) if m else q


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and labels left out)."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?", "1", s)  # Grafana variables
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in _IDENT.finditer(s):
        rest = s[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def selector_labels(expr: str) -> Iterator[tuple[str, str]]:
    """(metric, label) for every label matcher written on a metric name."""
    for m in _SELECTOR.finditer(expr):
        for label in _MATCHER.findall(m.group(2)):
            yield m.group(1), label


def test_promql_reader_finds_names_and_rejects_unknown_ones() -> None:
    expr = (
        'sum by (platform) (rate(gapwatch_platform_events_total{platform=~"$platform", region!="*"}'
        "[$__rate_interval])) / on (platform) group_left () max(gapwatch:platform_backend_ratio:1h offset 5m)"
        ' or vector(0) and bogus_metric_total > bool 1e3'
    )
    assert metric_names(expr) == {"gapwatch_platform_events_total", "gapwatch:platform_backend_ratio:1h", "bogus_metric_total"}
    assert set(selector_labels(expr)) == {("gapwatch_platform_events_total", "platform"), ("gapwatch_platform_events_total", "region")}
    problems = query_problems({"q": expr}, known_series())
    assert any("bogus_metric_total" in p for p in problems)
    assert grafana_query_expr('label_values(gapwatch_segment_ratio{platform=~"$platform"}, browser)') == (
        'gapwatch_segment_ratio{platform=~"$platform"}'
    )
    # A label the contract does not give the metric is caught too.
    assert query_problems({"q": 'gapwatch_active_gaps{browser="safari"}'}, known_series())


def test_metric_contract_table_is_read() -> None:
    metrics = contract_metrics()
    assert len(metrics) >= 20
    assert metrics["gapwatch_segment_baseline_high"] == metrics["gapwatch_segment_ratio"]
    assert metrics["gapwatch_segment_ratio"] == {"platform", "event_name", "browser", "region", "metric"}
    assert metrics["gapwatch_watermark_seconds"] == set()
    assert metrics["gapwatch_change_event_timestamp_seconds"] == {"kind", "service"}


def query_problems(queries: dict[str, str], known: dict[str, set[str]]) -> list[str]:
    problems = []
    for where, expr in queries.items():
        if not metric_names(expr):
            problems.append(f"{where}: selects no metric: {expr}")
        for name in sorted(metric_names(expr)):
            if name not in known:
                problems.append(f"{where}: {name} is neither in docs/architecture.md nor a recording rule")
        for name, label in selector_labels(expr):
            if name in known and label not in known[name]:
                problems.append(f"{where}: {name} has no label {label!r}")
    return problems


# ------------------------------------------------------------------------------------------
# Prometheus
# ------------------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    out = run([tool("promtool"), "check", "config", str(PROM / "prometheus.yml")])
    assert "SUCCESS" in out.stdout + out.stderr
    assert "rules found" in out.stdout + out.stderr  # the rule_files glob matched the rules


def test_promtool_check_rules() -> None:
    run([tool("promtool"), "check", "rules", str(RULES)])


def test_promtool_rule_unit_tests() -> None:
    out = run([tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert "SUCCESS" in out.stdout + out.stderr


def test_required_alerts_exist_and_each_has_a_firing_and_a_quiet_test() -> None:
    alerts = alert_rules()
    assert REQUIRED_ALERTS <= set(alerts)
    fired: set[str] = set()
    quiet: set[str] = set()
    checked_records: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
        for check in case.get("promql_expr_test", []):
            checked_records |= {n for n in metric_names(check["expr"]) if ":" in n}
    assert set(alerts) <= fired, f"alerts without a firing test: {set(alerts) - fired}"
    assert set(alerts) <= quiet, f"alerts without a not-firing test: {set(alerts) - quiet}"
    assert set(recording_rules()) <= checked_records, (
        f"recording rules without a value check: {set(recording_rules()) - checked_records}"
    )
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), name


def test_rules_only_use_contract_metrics() -> None:
    known = known_series()
    queries = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for i, rule in enumerate(group["rules"]):
            queries[f"{group['name']}[{i}] {rule.get('record') or rule.get('alert')}"] = rule["expr"]
    assert query_problems(queries, known) == []


def test_prometheus_config_scrapes_workers_and_forwarder_on_the_compose_port() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"gapwatch-worker", "gapwatch-slack"} <= set(jobs)
    # The alert rules select these job names.
    assert 'job="gapwatch-worker"' in alert_rules()["GapwatchWorkerDown"]["expr"]
    services = compose_services()
    for job, service in (("gapwatch-worker", "worker"), ("gapwatch-slack", "slack")):
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service]
        assert str(sd["port"]) in service_metrics_ports(services[service]), (job, service)


# ------------------------------------------------------------------------------------------
# docker-compose
# ------------------------------------------------------------------------------------------


def compose_services() -> dict[str, Any]:
    out = run([tool("docker-compose"), "-f", str(COMPOSE), "--profile", "simulate", "config"])
    return yaml.safe_load(out.stdout)["services"]


def service_metrics_ports(service: dict[str, Any]) -> set[str]:
    cmd = [str(x) for x in service.get("command") or []]
    ports = {cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == "--metrics-port"}
    return ports or {str(service.get("environment", {}).get("GAPWATCH_METRICS_PORT"))}


def test_compose_file_parses_with_the_expected_services() -> None:
    services = compose_services()
    assert {"kafka", "kafka-init", "worker", "slack", "prometheus", "grafana", "simulate"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["simulate"]["profiles"] == ["simulate"]
    assert services["kafka-init"]["restart"] == "no"
    for name in ("worker", "slack", "simulate"):
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
        if name not in ("kafka-init", "simulate"):
            assert service.get("healthcheck", {}).get("test", ["NONE"]) != ["NONE"], f"{name} has no healthcheck"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]


def test_compose_creates_every_topic_and_copartitions_the_event_topics() -> None:
    script = "\n".join(compose_services()["kafka-init"]["command"])
    created = dict(re.findall(r"^topic\s+(\S+)\s+(\S+)", script, re.M))
    assert {
        "backend-events", "platform-events", "changes", "gap-alerts",
        "gapwatch-windows", "gapwatch-dlq", "gapwatch-partials",
    } <= set(created)
    assert created["backend-events"] == created["platform-events"]


def test_compose_keeps_the_slack_webhook_out_of_the_file() -> None:
    text = COMPOSE.read_text()
    assert "hooks.slack.com" not in text
    services = compose_services()
    slack = services["slack"]
    assert [s["source"] for s in slack["secrets"]] == ["slack_webhook_url"]
    assert "/run/secrets/slack_webhook_url" in slack["command"]
    for service in services.values():
        assert "GAPWATCH_SLACK_WEBHOOK_URL" not in (service.get("environment") or {})
    ignore = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore  # the real secret file can never be committed


def test_compose_mounts_the_repo_prometheus_and_grafana_config() -> None:
    services = compose_services()
    prom_mounts = " ".join(services["prometheus"]["volumes"])
    assert str(PROM) + ":/etc/prometheus" in prom_mounts
    graf_mounts = " ".join(services["grafana"]["volumes"])
    assert str(DEPLOY / "grafana" / "provisioning") + ":/etc/grafana/provisioning" in graf_mounts
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/gapwatch.yml").read_text())
    dash_path = provider["providers"][0]["options"]["path"]
    assert f"{DEPLOY / 'grafana' / 'dashboards'}:{dash_path}" in graf_mounts
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (ds,) = datasource["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"


# ------------------------------------------------------------------------------------------
# Grafana dashboard
# ------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(dash: dict[str, Any]) -> dict[str, str]:
    """Every PromQL expression of the dashboard: panel targets, variables, annotations."""
    queries: dict[str, str] = {}
    for panel in all_panels(dash["panels"]):
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            queries[f"variable {var['name']}"] = grafana_query_expr(query)
    for ann in dash["annotations"]["list"]:
        if "expr" in ann:
            queries[f"annotation {ann['name']!r}"] = ann["expr"]
    return queries


def test_dashboard_queries_use_only_contract_metrics_and_labels() -> None:
    queries = dashboard_queries(dashboard())
    assert len(queries) >= 25
    assert query_problems(queries, known_series()) == []


def test_dashboard_has_the_required_views() -> None:
    dash = dashboard()
    queries = " ".join(dashboard_queries(dash).values())
    for needed in (
        "gapwatch_segment_ratio", "gapwatch_segment_baseline_low", "gapwatch_segment_baseline_high",
        "gapwatch_active_gaps", "increase(gapwatch_alerts_total", "gapwatch_invalid_events_total",
        "rate(gapwatch_events_consumed_total", "gapwatch_consumer_lag_messages",
        "gapwatch_watermark_lag_seconds",
    ):
        assert needed in queries, needed
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"platform", "event_name", "browser", "region"} <= set(variables)
    for name in ("platform", "event_name", "browser", "region"):
        assert variables[name]["query"]["query"].startswith("label_values(")
    (changes,) = [a for a in dash["annotations"]["list"] if "gapwatch_change_event_timestamp_seconds" in a.get("expr", "")]
    assert changes["enable"] and changes["titleFormat"] == "{{kind}} {{service}}"
    if changes.get("useValueForTime"):
        assert "* 1000" in changes["expr"]  # Grafana reads the value as epoch milliseconds


def test_dashboard_is_well_formed() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    panels = list(all_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    defined = {v["name"] for v in dash["templating"]["list"]}
    builtins = {"__rate_interval", "__interval", "__range", "__range_s", "__all"}
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", target["expr"]))
            assert used <= defined | builtins, (panel["title"], used - defined)
        if panel.get("repeat"):
            assert panel["repeat"] in defined


# ------------------------------------------------------------------------------------------
# Kubernetes
# ------------------------------------------------------------------------------------------


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["_file"] = path.name
                docs.append(doc)
    return docs


def k8s(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def worker_settings_from_configmap(tmp_path: Path) -> Any:
    """The ConfigMap's TOML read by the worker's own settings loader (unknown keys fail)."""
    from streams.config import load_settings

    config = k8s("ConfigMap", "gapwatch-config")["data"]["config.toml"]
    tomllib.loads(config)
    path = tmp_path / "config.toml"
    path.write_text(config)
    return load_settings(None, env={"GAPWATCH_CONFIG": str(path)})


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(match)


def test_k8s_manifests_parse_and_are_namespace_agnostic() -> None:
    docs = k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("ConfigMap", "gapwatch-config"), ("Deployment", "gapwatch-worker"), ("Deployment", "gapwatch-slack"),
        ("Service", "gapwatch-worker"), ("ServiceMonitor", "gapwatch"),
    } <= kinds
    for doc in docs:
        assert "namespace" not in doc["metadata"], (doc["_file"], doc["metadata"]["name"])
    assert not [d for d in docs if d["kind"] == "Secret"], "ship a Secret reference, never a Secret"
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["_file"] == "servicemonitor.yaml"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "servicemonitor.yaml" not in kustomization["resources"]  # optional CRD
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file()


def test_k8s_worker_probes_and_ports_match_the_worker_settings(tmp_path: Path) -> None:
    settings = worker_settings_from_configmap(tmp_path)
    assert settings.web_host == "0.0.0.0"  # reachable by the kubelet and Prometheus
    deployment = k8s("Deployment", "gapwatch-worker")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"][0] == "worker"
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["GAPWATCH_CONFIG"] == mounts["config"] + "/config.toml"
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert named_port(container, probe["port"]) == settings.metrics_port
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port
    service = k8s("Service", "gapwatch-worker")
    (port,) = service["spec"]["ports"]
    assert named_port(container, port["targetPort"]) == settings.metrics_port
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert int(service["metadata"]["annotations"]["prometheus.io/port"]) == settings.metrics_port
    monitor = k8s("ServiceMonitor", "gapwatch")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]


def test_k8s_forwarder_reads_the_webhook_from_a_secret_and_the_broker_from_the_configmap(tmp_path: Path) -> None:
    settings = worker_settings_from_configmap(tmp_path)
    config = k8s("ConfigMap", "gapwatch-config")["data"]
    assert config["broker"] == settings.broker
    deployment = k8s("Deployment", "gapwatch-slack")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "slack"
    webhook_file = Path(args[args.index("--webhook-url-file") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert webhook_file.parent == Path(mounts["webhook"])
    assert volumes["webhook"]["secret"]["items"][0]["path"] == webhook_file.name
    assert all("WEBHOOK" not in e["name"] for e in container.get("env", []))
    metrics_port = int(args[args.index("--metrics-port") + 1])
    for kind in ("livenessProbe", "readinessProbe"):
        assert named_port(container, container[kind]["httpGet"]["port"]) == metrics_port


@pytest.mark.parametrize("name", ["gapwatch-worker", "gapwatch-slack"])
def test_k8s_pods_run_locked_down_with_resources(name: str) -> None:
    pod = k8s("Deployment", name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind])
        # a writable /tmp is the only writable path (Faust's data dir defaults under it)
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


# ------------------------------------------------------------------------------------------
# Docker image
# ------------------------------------------------------------------------------------------


def test_dockerfile_is_slim_non_root_pinned_with_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), base
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    assert re.search(r'^ENTRYPOINT \["gapwatch"\]$', text, re.M)
    assert "requirements.lock" in text and "--no-deps" in text


def test_requirements_lock_pins_the_whole_runtime_closure() -> None:
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock: dict[str, str] = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version.strip()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for spec in pyproject["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in lock, f"{name} is a dependency but not in deploy/requirements.lock"
        assert req.specifier.contains(lock[name], prereleases=True), f"lock pins {name}=={lock[name]}, pyproject wants {req}"
    # Transitive runtime deps, as the installed environment resolves them.
    env = {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}", "extra": ""}
    todo, seen = [Requirement(s).name for s in pyproject["project"]["dependencies"]], set()
    while todo:
        name = todo.pop()
        if canonicalize_name(name) in seen:
            continue
        seen.add(canonicalize_name(name))
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    missing = seen - set(lock)
    assert not missing, f"runtime dependencies missing from deploy/requirements.lock: {sorted(missing)} (python deploy/make-lock.py)"


def test_install_system_script_is_valid_bash() -> None:
    run(["bash", "-n", str(ROOT / ".ci" / "install-system.sh")])

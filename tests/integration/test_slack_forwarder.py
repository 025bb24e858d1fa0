"""SlackForwarder against the real embedded broker and a local HTTP server that behaves like
Slack's incoming webhook (200, 429 + Retry-After, 4xx, 5xx, or not listening at all)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from streams.broker import EmbeddedBroker, ensure_topics, free_port
from streams.slack import ForwarderSetupError, SlackForwarder, posted_key

pytestmark = pytest.mark.slow

SECRET = "T0GAPW4TCH/B0TEST/xoxSeCrEtW3bh00kT0k3n"
BOT_TOKEN = "xoxb-b0tS3cReT-t0k3n"
GROUP_TIMEOUTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
ROOT = Path(__file__).resolve().parents[2]


class FakeSlack:
    """An incoming-webhook stand-in: answers from a script (then `default_status`), records
    every attempt and every accepted payload; `stop()` closes the port to mimic an outage.

    A replica can tag its webhook URL with `?replica=NAME` (Slack ignores the query; we count
    posts per replica). `hold_next()` parks the next request until the test releases it with a
    status; `delay_s` makes every answer take that long, like Slack's own latency."""

    def __init__(self) -> None:
        self.port = free_port()
        self.script: deque[int] = deque()
        self.default_status = 200
        self.delay_s = 0.0
        self.attempts: list[tuple[float, int, str]] = []  # (monotonic time, status, alert_id)
        self.posts: list[dict[str, Any]] = []
        self.posted_by: list[str] = []  # replica of each accepted post
        self._held: asyncio.Future[tuple[str, str, asyncio.Future[int]]] | None = None
        self._runner: web.AppRunner | None = None
        self.api_posts: list[dict[str, Any]] = []  # chat.postMessage calls (Web API stand-in)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    async def _api(self, request: web.Request) -> web.Response:
        """`chat.postMessage` like Slack's Web API: bot token in the header, 200 + ok/ts."""
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        payload = await request.json()
        if not payload.get("channel"):
            return web.json_response({"ok": False, "error": "channel_not_found"})
        ts = f"{1767225600 + len(self.api_posts)}.000100"
        self.api_posts.append({**payload, "ts": ts})
        return web.json_response({"ok": True, "channel": payload["channel"], "ts": ts})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/{SECRET}"

    def hold_next(self) -> asyncio.Future[tuple[str, str, asyncio.Future[int]]]:
        """The next request waits; the future gives (replica, alert_id, release) and the
        request is answered with the status the test sets on `release`."""
        self._held = asyncio.get_running_loop().create_future()
        return self._held

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path == "/api/chat.postMessage":
            return await self._api(request)
        if request.path != f"/services/{SECRET}":
            return web.Response(status=404, text="no_service")
        payload = await request.json()
        replica = request.query.get("replica", "")
        if self._held is not None and not self._held.done():
            release: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._held.set_result((replica, alert_id_of(payload), release))
            status = await release
        else:
            status = self.script.popleft() if self.script else self.default_status
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.attempts.append((time.monotonic(), status, alert_id_of(payload)))
        if status == 200:
            self.posts.append(payload)
            self.posted_by.append(replica)
            return web.Response(text="ok")
        if status == 429:
            return web.Response(status=429, text="rate_limited", headers={"Retry-After": "1"})
        if status == 400:
            if "blocks" in payload:
                return web.Response(status=400, text="invalid_blocks")
            self.posts.append(payload)
            self.posted_by.append(replica)
            return web.Response(text="ok")
        return web.Response(status=status, text="no_service" if status == 404 else "internal_error")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def posted_ids(self) -> list[tuple[str, str]]:
        return [(alert_id_of(p), status_of(p)) for p in self.posts]


def alert_id_of(payload: dict[str, Any]) -> str:
    """The alert id from the context block (or, for a text-only post, from the fallback)."""
    for block in payload.get("blocks", []):
        if block["type"] == "context":
            return block["elements"][0]["text"].split("`")[1]
    return payload["text"].rsplit("alert ", 1)[-1]


def status_of(payload: dict[str, Any]) -> str:
    header = payload.get("blocks", [{}])[0].get("text", {}).get("text", payload.get("text", ""))
    return "resolved" if "Resolved" in header else "firing"


def make_alert(alert_id: str, status: str = "firing", browser: str = "safari") -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "status": status,
        "segment": {"platform": "meta", "event_name": "purchase", "browser": browser, "region": "*"},
        "metric": "count_ratio",
        "direction": "drop",
        "baseline": 0.97,
        "current": 0.6,
        "change_at": 1767225600,
        "detected_at": 1767227400,
        "verdict": "tracking_gap",
        "likely_causes": [{"cause": "consent_banner_change", "score": 0.8, "evidence": "denied 8% -> 31%"}],
        "nearby_changes": [
            {"change_id": "c1", "kind": "deploy", "summary": "new consent banner", "service": "web",
             "url": "https://git.example/pr/9", "at": 1767224520, "score": 0.9}
        ],
        "reconciliation": [{"source": "backend", "count": 120, "value": 11850.0, "note": ""}],
    }


async def produce(bootstrap: str, topic: str, alerts: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for alert in alerts:
            await producer.send_and_wait(topic, key=alert["alert_id"].encode(), value=orjson.dumps(alert))
    finally:
        await producer.stop()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def committed(bootstrap: str, topic: str, group: str) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


class Harness:
    """One test's topics, group, fake Slack and forwarders (each forwarder runs as a task)."""

    def __init__(self, bootstrap: str, slack: FakeSlack) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.slack = slack
        self.topic = f"gap-alerts-{suffix}"
        self.dlq = f"gapwatch-dlq-{suffix}"
        self.posted = f"gapwatch-slack-posted-{suffix}"
        self.group = f"gapwatch-slack-{suffix}"
        self.running: list[tuple[SlackForwarder, asyncio.Task[None]]] = []

    async def start_forwarder(self, **overrides: Any) -> SlackForwarder:
        options: dict[str, Any] = {
            "topic": self.topic, "dlq_topic": self.dlq, "posted_topic": self.posted, "group_id": self.group,
            "registry": CollectorRegistry(), "initial_backoff_s": 0.05, "max_backoff_s": 0.4,
            "request_timeout_s": 2.0, "consumer_options": GROUP_TIMEOUTS,
            "grafana_url_template": "https://grafana.example/d/gaps?var-browser={browser}&from={from_ms}&to={to_ms}",
        }
        options.update(overrides)
        forwarder = SlackForwarder(self.bootstrap, self.slack.url, **options)
        await forwarder.start()
        self.running.append((forwarder, asyncio.create_task(forwarder.run())))
        return forwarder

    async def stop_forwarder(self, forwarder: SlackForwarder, timeout_s: float = 5.0) -> None:
        task = next(t for f, t in self.running if f is forwarder)
        forwarder.stop()
        await asyncio.wait_for(task, timeout_s)
        self.running = [(f, t) for f, t in self.running if f is not forwarder]

    async def close(self) -> None:
        for forwarder, task in self.running:
            forwarder.stop()
            try:
                await asyncio.wait_for(task, 10)
            except Exception:
                task.cancel()
        self.running = []

    def produce(self, alerts: list[dict[str, Any]]) -> Any:
        return produce(self.bootstrap, self.topic, alerts)


@pytest.fixture(autouse=True)
def webhook_never_logged(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Every scenario below (200s, 429s, 5xx, refused connections, 4xx) runs with all loggers at
    DEBUG; none of them may print or log the webhook URL or its secret path."""
    caplog.set_level(logging.DEBUG)
    yield
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err):
        assert SECRET not in text
        assert BOT_TOKEN not in text and "b0tS3cReT" not in text
        assert "/services/" not in text
        assert "xoxSeCrEt" not in text


@pytest.fixture
async def harness(broker: EmbeddedBroker) -> AsyncIterator[Harness]:
    slack = FakeSlack()
    await slack.start()
    h = Harness(broker.bootstrap, slack)
    await ensure_topics(broker.bootstrap, {h.topic: 1, h.dlq: 1})
    try:
        yield h
    finally:
        await h.close()
        await slack.stop()


def posts_total(forwarder: SlackForwarder, outcome: str) -> float:
    value = forwarder.metrics.registry.get_sample_value("gapwatch_slack_posts_total", {"outcome": outcome})
    return value or 0.0


async def test_delivers_each_alert_once_with_content(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    alerts = [make_alert(f"a{i}", browser=b) for i, b in enumerate(["safari", "chrome", "firefox"])]
    await harness.produce(alerts)
    forwarder = await harness.start_forwarder()
    await wait_for(lambda: len(harness.slack.posts) == 3, what="3 posts")
    await asyncio.sleep(0.5)  # nothing more arrives
    assert harness.slack.posted_ids() == [("a0", "firing"), ("a1", "firing"), ("a2", "firing")]
    first = harness.slack.posts[0]
    assert first["blocks"][0]["text"]["text"] == ":rotating_light: Tracking gap: meta purchase, Safari — 38% drop"
    assert "Chrome" in harness.slack.posts[1]["blocks"][0]["text"]["text"]
    texts = orjson.dumps(first).decode()
    assert "consent banner change" in texts and "<https://git.example/pr/9|new consent banner>" in texts
    assert "var-browser=safari" in texts
    await wait_for(lambda: posts_total(forwarder, "delivered") == 3, what="metrics")
    registry = forwarder.metrics.registry
    assert registry.get_sample_value("gapwatch_slack_delivery_seconds_count") == 3
    await harness.stop_forwarder(forwarder)
    assert await committed(harness.bootstrap, harness.topic, harness.group) == 3
    assert "webhook configured: yes" in caplog.text


async def test_429_retry_after_is_honoured(harness: Harness) -> None:
    harness.slack.script.extend([429, 200])
    await harness.produce([make_alert("rl1")])
    forwarder = await harness.start_forwarder()
    await wait_for(lambda: len(harness.slack.posts) == 1, what="the post after the 429")
    (t_limited, s1, _), (t_retry, s2, _) = harness.slack.attempts
    assert (s1, s2) == (429, 200)
    assert t_retry - t_limited >= 1.0  # Retry-After: 1
    assert posts_total(forwarder, "rate_limited") == 1
    assert posts_total(forwarder, "delivered") == 1
    assert harness.slack.posted_ids() == [("rl1", "firing")]


async def test_outage_loses_nothing_and_keeps_order(harness: Harness) -> None:
    slack = harness.slack
    await slack.stop()  # port closed: connection refused
    forwarder = await harness.start_forwarder()
    alerts = [make_alert(f"o{i}") for i in range(5)]
    await harness.produce(alerts)
    await wait_for(lambda: posts_total(forwarder, "retried") >= 3, what="retries while the port is closed")
    slack.default_status = 503  # back up, but failing
    await slack.start()
    await wait_for(lambda: len(slack.attempts) >= 3, what="503 attempts")
    await asyncio.sleep(0.5)
    assert not slack.posts
    # blocked on the first alert: nothing after it was tried
    assert {alert_id for _, _, alert_id in slack.attempts} == {"o0"}
    assert await committed(harness.bootstrap, harness.topic, harness.group) is None
    slack.default_status = 200  # recovered
    await wait_for(lambda: len(slack.posts) == 5, what="all 5 posts")
    await asyncio.sleep(0.5)
    assert slack.posted_ids() == [(f"o{i}", "firing") for i in range(5)]
    assert posts_total(forwarder, "delivered") == 5
    assert posts_total(forwarder, "failed_permanent") == 0
    await harness.stop_forwarder(forwarder)
    assert await committed(harness.bootstrap, harness.topic, harness.group) == 5


async def test_duplicates_on_the_topic_are_posted_once(harness: Harness) -> None:
    await harness.produce(
        [make_alert("d1"), make_alert("d1"), make_alert("d1", "resolved"), make_alert("d2"),
         make_alert("d1"), make_alert("d1", "resolved")]
    )
    forwarder = await harness.start_forwarder()
    await wait_for(
        lambda: forwarder.metrics.registry.get_sample_value("gapwatch_slack_skipped_total", {"reason": "duplicate"})
        == 3, what="3 duplicates skipped",
    )
    await asyncio.sleep(0.3)
    assert harness.slack.posted_ids() == [("d1", "firing"), ("d1", "resolved"), ("d2", "firing")]
    await harness.stop_forwarder(forwarder)
    assert await committed(harness.bootstrap, harness.topic, harness.group) == 6


async def test_restart_does_not_repost_committed_alerts(harness: Harness) -> None:
    await harness.produce([make_alert("r1"), make_alert("r2")])
    first = await harness.start_forwarder()
    await wait_for(lambda: len(harness.slack.posts) == 2, what="2 posts")
    await harness.stop_forwarder(first)
    await harness.produce([make_alert("r3")])
    second = await harness.start_forwarder()
    await wait_for(lambda: len(harness.slack.posts) == 3, what="the new post")
    await asyncio.sleep(0.5)
    assert harness.slack.posted_ids() == [("r1", "firing"), ("r2", "firing"), ("r3", "firing")]
    assert posts_total(second, "delivered") == 1


async def test_stop_while_retrying_leaves_the_alert_for_the_next_run(harness: Harness) -> None:
    harness.slack.default_status = 500
    await harness.produce([make_alert("s1")])
    first = await harness.start_forwarder()
    await wait_for(lambda: len(harness.slack.attempts) >= 2, what="failing attempts")
    started = time.monotonic()
    await harness.stop_forwarder(first)
    assert time.monotonic() - started < 3.0  # a stop does not wait for Slack to come back
    assert await committed(harness.bootstrap, harness.topic, harness.group) is None
    harness.slack.default_status = 200
    await harness.start_forwarder()
    await wait_for(lambda: len(harness.slack.posts) == 1, what="the post after restart")
    assert harness.slack.posted_ids() == [("s1", "firing")]


async def test_permanent_rejection_goes_to_the_dlq(harness: Harness) -> None:
    # 404 for p1: permanent, parked on the DLQ. 400 (invalid_blocks) for p2: re-sent as text.
    harness.slack.script.extend([404, 400])
    alerts = [make_alert("p1"), make_alert("p2"), make_alert("p3")]
    await harness.produce(alerts)
    producer = AIOKafkaProducer(bootstrap_servers=harness.bootstrap)
    await producer.start()
    await producer.send_and_wait(harness.topic, key=b"junk", value=b"{not json")
    await producer.stop()
    forwarder = await harness.start_forwarder()
    await wait_for(lambda: len(harness.slack.posts) == 2, what="p2 and p3")
    assert harness.slack.posted_ids() == [("p2", "firing"), ("p3", "firing")]
    assert "blocks" not in harness.slack.posts[0]  # the text-only fallback
    await wait_for(lambda: posts_total(forwarder, "failed_permanent") == 2, what="p1 + junk counted")
    await harness.stop_forwarder(forwarder)
    assert await committed(harness.bootstrap, harness.topic, harness.group) == 4

    consumer = AIOKafkaConsumer(
        harness.dlq, bootstrap_servers=harness.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        records = []
        deadline = time.monotonic() + 10
        while len(records) < 2 and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    assert [r.key for r in records] == [b"p1", b"junk"]
    assert orjson.loads(records[0].value) == alerts[0]  # original bytes, nothing lost
    assert records[1].value == b"{not json"
    headers = [dict(r.headers) for r in records]
    assert headers[0]["gapwatch-reason"] == b"slack_http_404: no_service"
    assert headers[1]["gapwatch-reason"] == b"invalid_alert_json"
    assert headers[0]["gapwatch-source"].startswith(harness.topic.encode())


async def test_cli_runs_until_sigterm_without_printing_the_webhook(harness: Harness, tmp_path: Path) -> None:
    await harness.produce([make_alert("cli1")])
    script = (
        "import argparse, sys\n"
        "from streams import slack\n"
        "parser = argparse.ArgumentParser()\n"
        "slack.register(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    env = dict(os.environ, GAPWATCH_SLACK_WEBHOOK_URL=harness.slack.url, GAPWATCH_BROKER=harness.bootstrap)
    metrics_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "slack", "--topic", harness.topic, "--group-id", harness.group,
         "--dlq-topic", harness.dlq, "--posted-topic", harness.posted, "--session-timeout-ms", "6000", "--metrics-port", str(metrics_port),
         "--metrics-host", "127.0.0.1", "--max-backoff-seconds", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        await wait_for(lambda: len(harness.slack.posts) == 1, timeout_s=25, what="the CLI's post")
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                metrics = await response.text()
        assert 'gapwatch_slack_posts_total{outcome="delivered"} 1.0' in metrics
        assert SECRET not in metrics
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(proc.communicate, timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output.decode()
    assert proc.returncode == 0, text
    assert "webhook configured: yes" in text
    assert SECRET not in text and "/services/" not in text
    assert harness.slack.posted_ids() == [("cli1", "firing")]


# ------------------------------------------------------------------------------------------
# Several replicas, crashes, restarts and rebalances (forwarders as real processes)
# ------------------------------------------------------------------------------------------

# `gapwatch slack` as a process. GAPWATCH_TEST_KILL=before_record:ID / after_record:ID makes
# it SIGKILL itself right before / right after the posted record of alert ID is acknowledged:
# a crash at a chosen point, without any hook in the forwarder itself.
FORWARDER_SCRIPT = """
import argparse, os, signal, sys
from streams import slack

kill = os.environ.get("GAPWATCH_TEST_KILL")
if kill:
    when, target = kill.split(":", 1)
    original = slack.SlackForwarder._record_posted

    async def record_posted(self, tp, identity, record, *args, **kwargs):
        if identity[0] == target and when == "before_record":
            os.kill(os.getpid(), signal.SIGKILL)
        recorded = await original(self, tp, identity, record, *args, **kwargs)
        if identity[0] == target and when == "after_record":
            os.kill(os.getpid(), signal.SIGKILL)
        return recorded

    slack.SlackForwarder._record_posted = record_posted
parser = argparse.ArgumentParser()
slack.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


class ForwarderProcess:
    """One `gapwatch slack` replica: its own /metrics port, log file and replica tag."""

    def __init__(self, harness: Harness, name: str, log_dir: Path, kill: str | None = None) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.log_path = log_dir / f"forwarder-{name}.log"
        env = dict(
            os.environ,
            GAPWATCH_SLACK_WEBHOOK_URL=f"{harness.slack.url}?replica={name}",
            GAPWATCH_BROKER=harness.bootstrap,
        )
        env.pop("GAPWATCH_TEST_KILL", None)
        if kill:
            env["GAPWATCH_TEST_KILL"] = kill
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", FORWARDER_SCRIPT, "slack", "--topic", harness.topic, "--group-id", harness.group,
                 "--dlq-topic", harness.dlq, "--posted-topic", harness.posted, "--session-timeout-ms", "6000",
                 "--metrics-port", str(self.metrics_port), "--metrics-host", "127.0.0.1",
                 "--max-backoff-seconds", "0.5"],
                cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            )

    async def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample from the replica's /metrics (None while it is not serving)."""
        import aiohttp
        from prometheus_client.parser import text_string_to_metric_families

        if self.proc.poll() is not None:
            return None
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
                    text = await response.text()
        except aiohttp.ClientError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and (labels or {}).items() <= sample.labels.items():
                    return float(sample.value)
        return None

    async def partitions(self) -> int:
        return int(await self.metric("gapwatch_slack_partitions") or 0)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def owns(proc: ForwarderProcess, n: int) -> bool:
    return await proc.partitions() == n


async def wait_until(
    condition: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition"
) -> None:
    """Poll an async (or plain) condition until it holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def committed_all(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def all_committed(harness: Harness, partitions: int) -> bool:
    """Every message on the alerts topic handled by some replica (its offset committed)."""
    ends = await end_offsets(harness.bootstrap, harness.topic, partitions)
    done = await committed_all(harness.bootstrap, harness.topic, harness.group, partitions)
    return all((done[p] or 0) >= ends[p] for p in range(partitions))


def alerts_batch(prefix: str, n: int) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
    """n firing alerts, every 4th also resolved, every 5th re-sent (the worker's re-sends)."""
    alerts: list[dict[str, Any]] = []
    for i in range(n):
        alerts.append(make_alert(f"{prefix}{i}"))
        if i % 5 == 0:
            alerts.append(make_alert(f"{prefix}{i}"))
        if i % 4 == 0:
            alerts.append(make_alert(f"{prefix}{i}", "resolved"))
    return alerts, {(a["alert_id"], a["status"]) for a in alerts}


def assert_no_secret_in(*procs: ForwarderProcess) -> None:
    for proc in procs:
        text = proc.log()
        assert SECRET not in text and "/services/" not in text, proc.name


async def record_window(*procs: ForwarderProcess) -> tuple[float, float, float]:
    """(posts, mean seconds, seconds under which all fell) of gapwatch_slack_record_seconds:
    Slack's 200 to Kafka's ack of the posted record, summed over the live replicas."""
    count = total = 0.0
    bound = 0.0
    buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
    for proc in procs:
        n = await proc.metric("gapwatch_slack_record_seconds_count") or 0.0
        count += n
        total += await proc.metric("gapwatch_slack_record_seconds_sum") or 0.0
        for le in buckets:
            if n and (await proc.metric("gapwatch_slack_record_seconds_bucket", {"le": str(float(le))}) or 0) >= n:
                bound = max(bound, le)
                break
    return count, (total / count if count else 0.0), bound


@pytest.fixture
async def group_harness(broker: EmbeddedBroker) -> AsyncIterator[Harness]:
    """Like `harness`, with a 4-partition alerts topic and no in-process forwarder."""
    slack = FakeSlack()
    await slack.start()
    h = Harness(broker.bootstrap, slack)
    await ensure_topics(broker.bootstrap, {h.topic: 4, h.dlq: 1})
    try:
        yield h
    finally:
        await slack.stop()


async def test_two_forwarders_post_every_alert_once_across_kills_restarts_and_rebalances(
    group_harness: Harness, tmp_path: Path
) -> None:
    """Two replicas in one group, 4 partitions, five batches of alerts (with re-sends and
    resolved messages, and Slack answering 5xx and 429 now and then). Each fault is timed on
    a post held open at the Slack stand-in, so it is certain to hit a replica mid-post:
    a SIGKILL, a rebalance (a replica joins) and a graceful stop (SIGTERM), each followed by
    a restart. Every (alert_id, status) reaches Slack exactly once."""
    h, slack = group_harness, group_harness.slack
    partitions = 4
    slack.delay_s = 0.02  # Slack's own latency: other posts are in flight too
    # 5xx and 429 (Retry-After: 1) scattered over the run: retried, never lost or doubled
    slack.script.extend([200, 200, 503, 200, 200, 200, 429, 200, 500, 200, 200, 200, 502])
    procs: dict[str, ForwarderProcess] = {}

    def replica(name: str) -> ForwarderProcess:
        procs[name] = ForwarderProcess(h, name, tmp_path)
        return procs[name]

    async def split_between(*group: ForwarderProcess) -> bool:
        owned = [await p.partitions() for p in group]
        return all(owned) and sum(owned) == partitions

    def logged(proc: ForwarderProcess, text: str) -> Callable[[], bool]:
        return lambda: text in proc.log()

    expected: set[tuple[str, str]] = set()

    async def produce(prefix: str, n: int = 30) -> None:
        alerts, identities = alerts_batch(prefix, n)
        expected.update(identities)
        await h.produce(alerts)

    async def held_post(prefix: str) -> tuple[ForwarderProcess, str, asyncio.Future[int]]:
        """Produce a batch; the first post of it is held open at Slack."""
        held = slack.hold_next()
        await produce(prefix)
        name, alert_id, release = await asyncio.wait_for(held, 30)
        return procs[name], alert_id, release

    try:
        a, b = replica("a"), replica("b")
        await wait_until(lambda: split_between(a, b), what="a and b share the 4 partitions")
        await produce("one-")
        await wait_until(lambda: set(slack.posted_ids()) >= expected, what="batch one posted")

        # 1. SIGKILL mid-post (Slack has not answered): the survivor takes over and posts it.
        victim, killed_alert, release = await held_post("two-")
        survivor = b if victim is a else a
        victim.kill()
        release.set_result(503)  # the request died with its sender: Slack never showed it
        await wait_until(lambda: owns(survivor, partitions), what="the survivor takes every partition")

        # 2. Restart it while the survivor has a post open: the rebalance waits for that post
        # (its 200, its record, its commit) before the partition can move.
        holder, rebalance_alert, release = await held_post("three-")
        assert holder is survivor
        restarted = replica(victim.name + "2")
        await wait_until(logged(survivor, f"while alert {rebalance_alert} is in hand"), what="the revocation")
        # The group cannot re-form while that post is open: the joining replica gets nothing
        # (a negative check, so it needs a duration: 3 s, well over a join on this broker and
        # under the request timeout, after which the post's outcome would be unknown).
        with pytest.raises(AssertionError, match="timed out"):
            await wait_until(restarted.partitions, timeout_s=3, what="no partition before the post ends")
        release.set_result(200)
        await wait_until(lambda: split_between(survivor, restarted), what="the restarted replica rejoins")

        # 3. SIGTERM a replica mid-post: it finishes the post (200, record, commit) and exits 0.
        stopping, stop_alert, release = await held_post("four-")
        other = restarted if stopping is survivor else survivor
        stopping.proc.send_signal(signal.SIGTERM)
        await wait_until(logged(stopping, f"stop requested while alert {stop_alert} is in hand"), what="the stop")
        release.set_result(200)
        assert await asyncio.to_thread(stopping.proc.wait, 30) == 0
        await wait_until(lambda: owns(other, partitions), what="one replica left")
        replacement = replica(stopping.name + "2")
        await produce("five-")
        await wait_until(lambda: split_between(other, replacement), what="two replicas again")

        await wait_until(lambda: set(slack.posted_ids()) >= expected, timeout_s=120, what="every alert posted")
        await wait_until(lambda: all_committed(h, partitions), timeout_s=60, what="every offset committed")
        count, mean, bound = await record_window(other, replacement)
    finally:
        for proc in procs.values():
            if proc.proc.poll() is None:
                proc.kill()

    posted = Counter(slack.posted_ids())
    twice = {identity: n for identity, n in posted.items() if n > 1}
    assert not twice, f"posted more than once: {twice}"
    assert set(posted) == expected
    assert {s for _, s, _ in slack.attempts} >= {200, 429, 500, 502, 503}
    print(
        f"\n{len(expected)} identities, {sum(posted.values())} posts, by replica {dict(Counter(slack.posted_by))}; "
        f"SIGKILL during {killed_alert}, rebalance during {rebalance_alert}, SIGTERM during {stop_alert}; "
        f"record window (Slack 200 -> posted record acked) on the last two replicas: {count:.0f} posts, "
        f"mean {mean * 1000:.1f} ms, all <= {bound * 1000:.1f} ms"
    )
    assert_no_secret_in(*procs.values())


@pytest.mark.parametrize("when", ["after_record", "before_record"])
async def test_crash_around_the_posted_record(group_harness: Harness, tmp_path: Path, when: str) -> None:
    """A crash after the posted record was acknowledged but before the offset commit posts
    nothing twice. A crash between Slack's 200 and that acknowledgement (the one window no
    incoming webhook lets us close: it has no idempotency key) posts that one alert twice."""
    h, slack = group_harness, group_harness.slack
    alerts = [make_alert(f"k{i}") for i in range(12)]
    target = "k5"
    await h.produce(alerts)
    crashing = ForwarderProcess(h, "crashing", tmp_path, kill=f"{when}:{target}")
    procs = [crashing]
    try:
        await wait_until(lambda: crashing.proc.poll() is not None, what="the crash at k5")
        assert crashing.proc.returncode == -signal.SIGKILL
        assert (target, "firing") in slack.posted_ids()  # Slack had accepted it
        restarted = ForwarderProcess(h, "restarted", tmp_path)
        procs.append(restarted)
        await wait_until(lambda: set(slack.posted_ids()) >= {(f"k{i}", "firing") for i in range(12)}, what="all posted")
        await wait_until(lambda: all_committed(h, 4), what="every offset committed")
        skipped = await restarted.metric("gapwatch_slack_skipped_total", {"reason": "duplicate"})
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.kill()
    posted = Counter(slack.posted_ids())
    twice = {alert_id for (alert_id, _), n in posted.items() if n > 1}
    if when == "after_record":
        assert twice == set()
        assert skipped == 1  # k5 was read again (uncommitted) and found on the posted topic
    else:
        assert twice == {target}  # the residual window: exactly the alert in it, once more
    assert len(posted) == 12
    assert_no_secret_in(*procs)


async def describe(bootstrap: str, topic: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        await admin.close()


async def test_posted_topic_is_created_like_the_alerts_topic_and_checked(harness: Harness, broker: EmbeddedBroker) -> None:
    await ensure_topics(broker.bootstrap, {harness.topic + "-3": 3, harness.topic + "-5": 5})
    first = await harness.start_forwarder(topic=harness.topic + "-3")
    assert await describe(broker.bootstrap, harness.posted) == 3
    await harness.stop_forwarder(first)
    with pytest.raises(ForwarderSetupError, match="needs at least as many"):
        await harness.start_forwarder(topic=harness.topic + "-5")


async def test_posts_older_than_the_retention_are_forgotten_and_tombstoned(harness: Harness) -> None:
    """The posted record stays bounded: what is older than the retention is dropped from memory
    and a tombstone is written for it (compaction then removes it, also on a compact-only
    topic); a re-send of such an old alert is posted again, a recent one is not."""
    now = time.time()
    await ensure_topics(harness.bootstrap, {harness.posted: 1})
    producer = AIOKafkaProducer(bootstrap_servers=harness.bootstrap)
    await producer.start()
    try:
        for alert_id, age_days in (("old1", 100), ("new1", 1)):
            value = {"alert_id": alert_id, "status": "firing", "posted_at": now - age_days * 86_400}
            await producer.send_and_wait(harness.posted, key=posted_key(alert_id, "firing"), value=orjson.dumps(value))
    finally:
        await producer.stop()
    await harness.produce([make_alert("old1"), make_alert("new1"), make_alert("x1")])
    forwarder = await harness.start_forwarder(posted_retention_s=90 * 86_400)
    await wait_for(lambda: len(harness.slack.posts) == 2, what="old1 and x1")
    await wait_for(
        lambda: forwarder.metrics.registry.get_sample_value("gapwatch_slack_skipped_total", {"reason": "duplicate"})
        == 1, what="new1 skipped",
    )
    await harness.stop_forwarder(forwarder)
    assert await committed(harness.bootstrap, harness.topic, harness.group) == 3
    assert harness.slack.posted_ids() == [("old1", "firing"), ("x1", "firing")]

    consumer = AIOKafkaConsumer(
        harness.posted, bootstrap_servers=harness.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        records: list[Any] = []
        await wait_for_records(consumer, records, 5)
    finally:
        await consumer.stop()
    keys = [(orjson.loads(r.key)[0], r.value is None) for r in records]
    # old1 and new1 as written, the tombstone of old1, then the two new posts
    assert keys == [("old1", False), ("new1", False), ("old1", True), ("old1", False), ("x1", False)]
    assert orjson.loads(records[3].value)["source"] == f"{harness.topic}/0/0"


async def wait_for_records(consumer: AIOKafkaConsumer, records: list[Any], n: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while len(records) < n and time.monotonic() < deadline:
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)


# ---- quiet rules (docs/slack.md): one incident, one message / one thread ----------------------


def incident_alert(alert_id: str, status: str = "firing", detected_at: float = 1767227400, **extra: Any) -> dict[str, Any]:
    return {**make_alert(alert_id, status), "incident_key": "inc-1", "detected_at": detected_at, **extra}


async def test_refires_of_one_incident_post_nothing_new_with_the_webhook(harness: Harness) -> None:
    await harness.produce([
        incident_alert("a1"), incident_alert("a1", acknowledged=True),  # the ack: an update, not a post
        incident_alert("a1", "resolved", 1767231000),
        incident_alert("a2", detected_at=1767234600),                 # a re-fire 2 h later: quiet
        incident_alert("a3", detected_at=1767227400 + 7 * 3600),      # past the 6 h cooldown: posted
        {**incident_alert("b1"), "incident_key": "inc-2", "acknowledged": True},  # acked re-fire: quiet
    ])
    forwarder = await harness.start_forwarder()
    await wait_for(lambda: forwarder.metrics.registry.get_sample_value(
        "gapwatch_slack_skipped_total", {"reason": "acknowledged"}) == 1, what="the acked re-fire")
    await asyncio.sleep(0.5)
    assert harness.slack.posted_ids() == [("a1", "firing"), ("a1", "resolved"), ("a3", "firing")]
    assert forwarder.metrics.registry.get_sample_value("gapwatch_slack_skipped_total", {"reason": "cooldown"}) == 1
    await harness.stop_forwarder(forwarder)
    # a restart (or another replica) reads the same rules back from the posted topic
    await harness.produce([incident_alert("a4", detected_at=1767227400 + 8 * 3600)])
    forwarder = await harness.start_forwarder()
    await wait_for(lambda: forwarder.metrics.registry.get_sample_value(
        "gapwatch_slack_skipped_total", {"reason": "cooldown"}) == 1, what="the re-fire after a restart")
    assert len(harness.slack.posts) == 3
    assert await committed(harness.bootstrap, harness.topic, harness.group) == 7


async def test_with_a_bot_token_one_incident_is_one_thread(harness: Harness) -> None:
    await harness.produce([
        incident_alert("a1"), incident_alert("a1", "resolved", 1767231000),
        incident_alert("a2", detected_at=1767234600), incident_alert("a2", "resolved", 1767238200),
        incident_alert("a3", detected_at=1767241800),
    ])
    forwarder = await harness.start_forwarder(bot_token=BOT_TOKEN, channel="C0GAPS", api_base_url=harness.slack.api_base)
    await wait_for(lambda: len(harness.slack.api_posts) == 5, what="5 Web API posts")
    await asyncio.sleep(0.3)
    assert harness.slack.posts == []  # nothing through the webhook
    first, *replies = harness.slack.api_posts
    assert "thread_ts" not in first and first["channel"] == "C0GAPS"
    assert [r["thread_ts"] for r in replies] == [first["ts"]] * 4
    await harness.stop_forwarder(forwarder)
    # restarted: the thread is found on the posted topic
    await harness.produce([incident_alert("a4", detected_at=1767245400)])
    forwarder = await harness.start_forwarder(bot_token=BOT_TOKEN, channel="C0GAPS", api_base_url=harness.slack.api_base)
    await wait_for(lambda: len(harness.slack.api_posts) == 6, what="the reply after a restart")
    assert harness.slack.api_posts[-1]["thread_ts"] == first["ts"]
    assert repr(forwarder).count("xoxb") == 0


async def test_notices_wait_for_the_digest(harness: Harness) -> None:
    notices = [{**make_alert(f"n{i}"), "verdict": "expected_change", "plan": f"expected -25 %, observed -2{i} %"}
               for i in range(3)]
    await harness.produce([*notices, make_alert("g1")])
    forwarder = await harness.start_forwarder(digest_s=1.0)
    await wait_for(lambda: len(harness.slack.posts) == 2, what="the alert and one digest")
    ids = [p.get("text", "") for p in harness.slack.posts]
    digest = next(p for p in harness.slack.posts if "digest" in p.get("text", ""))
    body = orjson.dumps(digest).decode()
    assert all(f"n{i}" in body for i in range(3)) and "expected -25 %" in body, ids
    await harness.stop_forwarder(forwarder)
    assert await committed(harness.bootstrap, harness.topic, harness.group) == 4


async def test_an_alert_acknowledged_on_the_feedback_topic_is_not_posted(harness: Harness) -> None:
    feedback = f"gapwatch-feedback-{uuid.uuid4().hex[:8]}"
    await ensure_topics(harness.bootstrap, {feedback: 1})
    producer = AIOKafkaProducer(bootstrap_servers=harness.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(feedback, key=b"k1", value=orjson.dumps(
            {"alert_id": "k1", "action": "ack", "at": 1767227400, "note": "on it", "by": "me"}))
    finally:
        await producer.stop()
    forwarder = await harness.start_forwarder(feedback_topic=feedback)
    await wait_for(lambda: "k1" in forwarder._acked, what="the ack read")
    await harness.produce([make_alert("k1"), make_alert("k2"), make_alert("k1", "resolved")])
    await wait_for(lambda: len(harness.slack.posts) == 2, what="2 posts")
    await asyncio.sleep(0.3)
    assert harness.slack.posted_ids() == [("k2", "firing"), ("k1", "resolved")]

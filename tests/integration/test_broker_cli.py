"""`gapwatch broker`: first line `bootstrap: HOST:PORT`, a working broker, a clean stop, no orphan."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streams.broker import _metadata_ok, free_port

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _start(port: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_first_line_serves_and_sigterm_stops_everything() -> None:
    port = free_port()
    proc = _start(port)
    try:
        first = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert first == f"bootstrap: 127.0.0.1:{port}"
        asyncio.run(_metadata_ok(first.split(": ", 1)[1]))  # it answers Kafka metadata requests
        tansu = _children(proc.pid)
        assert tansu, "the broker binary should run as a child"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in tansu) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in tansu), "orphaned broker process"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_no_orphan_even_when_the_launcher_is_killed() -> None:
    proc = _start(free_port())
    try:
        proc.stdout.readline()  # type: ignore[union-attr]
        tansu = _children(proc.pid)
        assert tansu
        proc.kill()  # SIGKILL: no chance to clean up; the kernel's parent-death signal must
        proc.wait(5)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in tansu) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in tansu), "the broker outlived a SIGKILLed launcher"
    finally:
        if proc.poll() is None:
            proc.kill()

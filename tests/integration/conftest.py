"""Fixtures shared by the integration tests (the session broker is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from tests.integration.worker_harness import WorkerPool


@pytest.fixture()
def pool(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[WorkerPool]:
    """Workers of one test, stopped after it (modules that share workers define their own)."""
    p = WorkerPool(broker.bootstrap, tmp_path)
    try:
        yield p
    finally:
        p.stop_all()

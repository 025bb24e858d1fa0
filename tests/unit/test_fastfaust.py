"""The worker's table recovery gives way to a newer rebalance instead of crashing.

A rebalance during a recovery replaced the standby partitions with new ones that had no offset
yet; the running recovery then sought them to None, aiokafka raised, and the recovery service
died: the worker kept its partitions and never processed them (BENCHMARKS.md, "Throughput,
fourth round"). Real Faust app and recovery service; no broker.
"""

from __future__ import annotations

import asyncio
import tempfile

import pytest
from faust.tables.recovery import RebalanceAgain
from faust.types import TP

from streams.app import GapwatchWorker
from streams.config import Settings
from streams.fastfaust import GapwatchRecovery


def test_a_seek_to_offsets_a_newer_rebalance_has_not_built_gives_way_to_it() -> None:
    worker = GapwatchWorker(Settings(data_dir=tempfile.mkdtemp(prefix="gw-test-")), 2)
    recovery = worker.app.tables.recovery
    assert isinstance(recovery, GapwatchRecovery)
    tp = TP("gw-assemble-state-changelog", 1)
    offsets = {tp: None}  # what `Recovery._add` leaves for a partition the new rebalance added
    recovery.signal_recovery_start.set()  # the newer rebalance
    with pytest.raises(RebalanceAgain):  # Faust's loop starts the newer recovery on this
        asyncio.run(recovery._seek_offsets(worker.app.consumer, {tp}, offsets, "standby"))  # type: ignore[arg-type]

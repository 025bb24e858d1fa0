"""The worker's table recovery gives way to a newer rebalance instead of crashing, and ends
without dropping a stream record it has fetched (no queue clear after the stream is resumed).

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
from mode.utils.queues import FlowControlQueue

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


class _Fetcher:
    async def maybe_start(self) -> None:
        return None


def test_no_stream_record_delivered_during_the_seek_is_cleared_at_the_end_of_recovery(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The end of a recovery seeks the stream partitions to their committed offsets, then
    resumes flow control, which clears every stream queue. Flow is already active then (the
    recovery resumed it to read the changelogs): had the stream partition been resumed before
    the seek, the fetcher would deliver its records during the seek, and the clear would drop
    them after the consumer had moved past (test_group_faults: 32 partials lost, ~40 min of one
    partition's counts). Here a stand-in fetcher delivers, during the seek, every record of a
    partition that is being fetched; nothing it delivers may be cleared."""
    worker = GapwatchWorker(Settings(data_dir=tempfile.mkdtemp(prefix="gw-test-")), 2)
    app = worker.app
    recovery = app.tables.recovery
    consumer = app.consumer
    tp = TP(worker.settings.partials_topic, 0)
    consumer._set_active_tps({tp})  # type: ignore[attr-defined]
    consumer.pause_partitions({tp})  # type: ignore[attr-defined]  # as the assignment does
    app.flow_control.resume()  # the recovery reads the changelogs with flow resumed
    queue: FlowControlQueue[int] = FlowControlQueue(maxsize=32, flow_control=app.flow_control,
                                                    clear_on_resume=True)
    delivered: list[int] = []

    async def perform_seek() -> None:  # the round trip to the coordinator, fetcher running
        for offset in range(893, 925):
            await asyncio.sleep(0)
            if tp in consumer._get_active_partitions():  # type: ignore[attr-defined]
                queue.put_nowait(offset)
                delivered.append(offset)

    monkeypatch.setattr(consumer, "perform_seek", perform_seek)
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    monkeypatch.setitem(app.__dict__, "_fetcher", _Fetcher())
    monkeypatch.setattr(recovery, "_wait", lambda coro, timeout=None: coro)  # the service is not started
    asyncio.run(recovery.on_recovery_completed(app.consumer_generation_id))
    assert recovery.completed.is_set()
    assert tp in consumer._get_active_partitions()  # type: ignore[attr-defined]  # fetched from now on
    kept = [queue.get_nowait() for _ in range(queue.qsize())]
    assert kept == delivered, f"delivered {delivered}, left in the queue {kept}"


# ---- on_buffer_drop: a partition paused for recovery stays paused ---------------------------
# Faust's stream queue keeps its high-pressure callback pending when a rebalance clears the
# queue; the agent's next read of the empty queue fires it, and Faust's `on_buffer_drop` put the
# partition back into the fetched set even when the assignment had paused it for the recovery.

def _consumer_and_queue() -> tuple[object, TP, FlowControlQueue[int]]:
    worker = GapwatchWorker(Settings(data_dir=tempfile.mkdtemp(prefix="gw-test-")), 2)
    consumer = worker.app.consumer
    tp = TP(worker.settings.partials_topic, 0)
    consumer._set_active_tps({tp})  # type: ignore[attr-defined]
    # a stream queue wired to the consumer as Faust's conductor wires it
    queue: FlowControlQueue[int] = FlowControlQueue(maxsize=32, flow_control=worker.app.flow_control)
    return consumer, tp, queue


def _fill(consumer: object, tp: TP, queue: FlowControlQueue[int]) -> None:
    for i in range(40):  # past the high-pressure mark (32 / 1.25)
        queue.put_nowait_enhanced(i, on_pressure_high=lambda: consumer.on_buffer_full(tp),  # type: ignore[attr-defined]
                                  on_pressure_drop=lambda: consumer.on_buffer_drop(tp))  # type: ignore[attr-defined]


def test_a_partition_paused_for_recovery_stays_paused_when_its_cleared_buffer_is_read() -> None:
    consumer, tp, queue = _consumer_and_queue()
    _fill(consumer, tp, queue)
    assert tp not in consumer._get_active_partitions()  # type: ignore[attr-defined]  # high pressure
    # the rebalance: Faust clears the stream queues, the assignment pauses every partition
    queue.clear()
    consumer.pause_partitions({tp})  # type: ignore[attr-defined]
    # the agent reads the empty queue during the recovery: the pending callback fires
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    assert tp not in consumer._get_active_partitions()  # type: ignore[attr-defined]
    # the end of the recovery resumes it
    consumer.resume_partitions({tp})  # type: ignore[attr-defined]
    assert tp in consumer._get_active_partitions()  # type: ignore[attr-defined]


def test_a_drained_buffer_is_fetched_again_outside_a_rebalance() -> None:
    consumer, tp, queue = _consumer_and_queue()
    _fill(consumer, tp, queue)
    assert tp not in consumer._get_active_partitions()  # type: ignore[attr-defined]
    while not queue.empty():
        queue.get_nowait()
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    assert tp in consumer._get_active_partitions()  # type: ignore[attr-defined]

"""Faust customisations for high-throughput batch consumption (faust-streaming 0.15.3, pinned).

Measured here (tests/bench, /BENCHMARKS.md): stock Faust delivers ~6k events/s to an agent
because every message costs several asyncio tasks (``wait_first`` per message in the fetch
loop), a lock, flow control, an Event and a queue hop. Handing the agent one message per
(partition, fetched chunk) removes those per-event costs; the agent stays the consumer and
Faust's own ack/commit machinery still commits exactly the processed offsets.

Nothing here monkey-patches Faust: everything is a subclass wired in through supported hooks
(``App(Monitor=...)`` setting, ``Transport.Consumer`` class attribute, ``App._new_transport``).

* NoopMonitor          -- Monitor that records nothing per message/event.
* FastDrainConsumer    -- same message flow as Faust, but the fetch loop wraps each *fetched
                          batch* (not each message) in ``wait_first(..., suspend_flow.wait())``.
                          Stock Faust creates 4 asyncio tasks + an ``asyncio.wait`` per message.
* GapwatchTableManager -- TableManager whose recovery gives way to a newer rebalance instead
                          of crashing on the offsets that rebalance has not built yet, and
                          resumes the stream partitions only after seeking them (no record
                          delivered during the seek is cleared from a stream queue).
* BatchMessageConsumer -- FastDrainConsumer that hands the stream ONE Faust message per
                          (partition, fetched chunk); ``event.value`` is a ``RecordBatch`` with the
                          topic, partition, offsets, keys and value bytes of the chunk.  Acking that
                          one message acks every offset in it, so commits stay exact. Its
                          ``on_buffer_drop`` never re-fetches a partition paused for recovery.
"""
from __future__ import annotations

# ruff: noqa
# mypy: ignore-errors

import asyncio
from typing import Any, List, Optional

import faust
from faust.sensors import Monitor
from faust.transport.drivers import aiokafka as _aiokafka_driver
from faust.types import TP, ConsumerMessage
from faust.tables.manager import TableManager
from faust.tables.recovery import RebalanceAgain, Recovery
from faust.types.tuples import ack_lock
from mode.utils.futures import notify


class NoopMonitor(Monitor):
    """Monitor that keeps no per-message / per-event statistics."""

    def on_message_in(self, tp, offset, message):
        pass

    def on_stream_event_in(self, tp, offset, stream, event):
        return None

    def on_stream_event_out(self, tp, offset, stream, event, state=None):
        pass

    def on_message_out(self, tp, offset, message):
        pass

    def track_tp_end_offset(self, tp, offset):
        pass

    def on_topic_buffer_full(self, tp):
        pass


class FastDrainConsumer(_aiokafka_driver.Consumer):
    """Faust aiokafka Consumer whose fetch loop is cancellable per batch, not per message."""

    #: give the event loop (the streams) a turn every this many delivered messages
    yield_every = 1000

    async def _drain_messages(self, fetcher) -> None:  # pragma: no cover
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = _aiokafka_driver.CONSUMER_FETCHING if hasattr(
            _aiokafka_driver, "CONSUMER_FETCHING") else "CONSUMER_FETCHING"
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every = self.yield_every
        sleep = asyncio.sleep
        suspend_flow = self.suspend_flow
        track_gaps = self._track_gaps

        async def deliver(ait) -> bool:
            """Deliver messages; return True if we stopped early because a commit is due."""
            n = 0
            async for tp, message in ait:
                n += 1
                if n >= yield_every:
                    await sleep(0)
                    n = 0
                offset = message.offset
                r_offset = get_read_offset(tp)
                if r_offset is None or offset >= r_offset:
                    gap = offset - (r_offset or 0)
                    if track_gaps and gap > 1 and r_offset:
                        if acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                    await callback(message)
                    set_read_offset(tp, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        return True  # commit outside the cancellable section, then continue
            return False

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                while not self.should_stop:
                    coro = deliver(ait)
                    res = await self.wait_first(coro, suspend_flow.wait())
                    if res.stopped or suspend_flow.is_set():
                        break
                    commit_due = any(w is coro and r for w, r in zip(res.done, res.results))
                    if not commit_due:
                        break
                    self._n_acked = 0
                    await self.commit()
                unset_flag(flag_consumer_fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

    _track_gaps = True


class RecordBatch:
    """What the agent receives per event with BatchMessageConsumer."""

    __slots__ = ("topic", "partition", "offsets", "keys", "values", "timestamps")

    def __init__(self, topic, partition, offsets, keys, values, timestamps):
        self.topic = topic
        self.partition = partition
        self.offsets = offsets
        self.keys = keys
        self.values = values
        self.timestamps = timestamps

    def __len__(self) -> int:
        return len(self.offsets)

    def __repr__(self) -> str:
        return f"<RecordBatch {self.topic}[{self.partition}] {self.offsets[0]}..{self.offsets[-1]} n={len(self)}>"


class BatchMessageConsumer(FastDrainConsumer):
    """Delivers one Faust message per (partition, chunk of fetched records).

    The message's offset is the chunk's LAST offset (so Faust's read-offset bookkeeping and
    ``event.message.offset`` stay meaningful) and ``ack()`` of it acks every offset in the chunk.
    """

    #: max records per batch message (a fetch for one partition is split into chunks of this)
    chunk_size = 5000
    #: topics delivered as RecordBatch; ``None`` = every topic.  Anything else (table changelogs,
    #: other agents' topics) keeps Faust's normal one-message-per-record path.
    batch_topics = None
    _track_gaps = False  # the chunk covers its own offsets; gaps inside it are not gaps

    async def getmany(self, timeout: float):
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as ex:
                self.log.warning(f"exception performing seek when flow not active {ex}")
            return
        chunk = self.chunk_size
        batch_topics = self.batch_topics
        to_message = self._to_message
        track_end = self.app.monitor.track_tp_end_offset
        for tp, recs in records.items():
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                break
            if not (active_partitions is None or tp in active_partitions
                    or tp in self._buffered_partitions):
                continue
            track_end(tp, self.highwater(tp))
            if batch_topics is not None and tp.topic not in batch_topics:
                for rec in recs:
                    yield tp, to_message(tp, rec)
                continue
            for i in range(0, len(recs), chunk):
                part = recs[i:i + chunk]
                yield tp, self._batch_message(tp, part, generation_id)

    def _batch_message(self, tp: TP, recs: List[Any], generation_id: int) -> ConsumerMessage:
        last = recs[-1]
        batch = RecordBatch(tp.topic, tp.partition, [r.offset for r in recs],
                            [r.key for r in recs], [r.value for r in recs],
                            [r.timestamp for r in recs])
        ts = last.timestamp / 1000.0 if last.timestamp is not None else None
        return ConsumerMessage(
            tp.topic, tp.partition, last.offset, ts, last.timestamp_type, [],
            None, batch, None, 0, sum(r.serialized_value_size for r in recs), tp,
            generation_id=generation_id,
        )

    #: aiokafka client options for checking end offsets (None: trust the broker's answer)
    verify_end_offsets = None
    #: how long `highwaters` waits for every partition's fetch answer (Faust's own wait for
    #: the end offsets is broker_request_timeout, at least 40 s in streams/app.py)
    verify_end_offsets_timeout = 30.0

    async def highwaters(self, *partitions):
        """End offsets, checked by fetching past them.

        Faust recovers a table by reading its changelog up to these offsets. The embedded
        Tansu broker answers ListOffsets(latest) with the base offset of the last record batch
        (measured: 19991 for 20000 records), which would silently drop the last batch of state
        writes from every recovery. A fetch reports the true high-water mark; on a broker that
        answers correctly it only confirms the answer.
        """
        reported = await super().highwaters(*partitions)
        if not self.verify_end_offsets or not reported:
            return reported
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        probe = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100,
                                 **self.verify_end_offsets)
        await probe.start()
        try:
            tps = {tp: TopicPartition(tp.topic, tp.partition) for tp in reported}
            probe.assign(list(tps.values()))
            for tp, ktp in tps.items():
                probe.seek(ktp, max(0, reported[tp] - 1) if reported[tp] else 0)
            # Until every partition has answered a fetch. One getmany(timeout_ms=1000) used to
            # be all: on a busy machine (the probe connects, fetches metadata, then fetches)
            # it can return before any answer, and the reported offsets were used, so the new
            # owner's recovery stopped short of the dead owner's newest state writes (measured
            # on test_group_faults seed 11: the reported end was behind the fetched one in 40
            # of 47 recoveries, by 1 to 707 records; the fetch took up to 0.63 s at load 1.7).
            # The likely cause of issue 13's windows lost after a SIGKILL under load.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.verify_end_offsets_timeout
            while True:
                missing = [tp for tp, ktp in tps.items() if probe.highwater(ktp) is None]
                if not missing:
                    break
                if loop.time() >= deadline:
                    raise RuntimeError(
                        f"gapwatch: no fetch answer for the end offsets of {sorted(map(str, missing))} "
                        f"within {self.verify_end_offsets_timeout:.0f} s; recovering without them could "
                        "miss the newest state writes, so the recovery stops here")
                await probe.getmany(*(tps[tp] for tp in missing), timeout_ms=500, max_records=1)
            out = dict(reported)
            for tp, ktp in tps.items():
                hw = probe.highwater(ktp)
                if hw > out[tp]:
                    out[tp] = hw
            return out
        finally:
            await probe.stop()

    async def pause_fetching(self, tps) -> None:
        """Back-pressure: stop fetching `tps` until `resume_fetching`.

        Uses aiokafka's own pause, not Faust's ``pause_partitions``: Faust's only takes the
        partition out of the set it passes to ``getmany``, and records of it already fetched
        in that round are then skipped, never delivered, while the fetch position has moved
        past them (lost, unless something seeks back). aiokafka drops the buffered records of
        a paused partition without moving its position, so they are fetched again on resume.
        """
        await self._call_aiokafka("pause", tps)

    async def resume_fetching(self, tps) -> None:
        await self._call_aiokafka("resume", tps)

    async def _call_aiokafka(self, method: str, tps) -> None:
        from aiokafka.structs import TopicPartition

        thread = self._thread
        parts = [TopicPartition(tp.topic, tp.partition) for tp in tps]

        async def call() -> None:  # in the consumer's thread, where aiokafka runs
            consumer = thread._ensure_consumer()
            assigned = consumer.assignment()
            owned = [tp for tp in parts if tp in assigned]
            if owned:
                getattr(consumer, method)(*owned)

        await thread.call_thread(call)

    def on_buffer_drop(self, tp: TP) -> None:
        """A stream buffer drained: fetch its partition again, unless a rebalance paused it.

        Faust's own version puts the partition back into the fetched set unconditionally. Its
        high-pressure callback stays pending on the stream queue when the rebalance clears that
        queue, and fires at the agent's next read of the empty queue; if that read comes after
        the assignment paused every partition for the table recovery, the partition would be
        fetched while the tables are still recovering and before the seek to the committed
        offsets (flow control is resumed during recovery, and the message carries the new
        generation, so an agent would handle it against a half-recovered table). A paused
        partition comes back with `resume_partitions`, after the seek (`GapwatchRecovery`).
        """
        buffered = self._buffered_partitions
        if tp in buffered:
            buffered.discard(tp)
            if tp not in self._paused_partitions:
                self._get_active_partitions().add(tp)

    def ack(self, message) -> bool:
        app = self.app
        if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
            # Not acked: a message the stream skipped during or after a rebalance (flow
            # suspended from the revoke to the end of recovery, or fetched in an older
            # generation), or dropped as stale by the worker (streams/app.py `_stale`). Faust's
            # stream iterator acks the messages it skips "so the lag does not grow", but they
            # were never processed; and from the revoke to the seek after recovery the consumer
            # has forgotten its committed offsets, so `_new_offset` cannot see the gap before
            # them: the commit timer commits past them and the seek skips them (events lost,
            # issue 13). Left unacked they are fetched again from the committed offset (by this
            # worker or the new owner); one processed just before the revoke is then recognised
            # as redelivered (stage A offsets, stage B `seen`).
            return False
        batch = message.value
        if not isinstance(batch, RecordBatch):
            return super().ack(message)
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            tp = message.tp
            try:
                if not self.app.topics.acks_enabled_for(message.topic):
                    return False
                committed = self._committed_offset[tp]
                acked_index = self._acked_index[tp]
                new = [o for o in batch.offsets
                       if (committed is None or o >= committed) and o not in acked_index]
                self._unacked_messages.discard(message)
                if not new:
                    return False
                acked_index.update(new)
                self._acked[tp].extend(new)
                self._n_acked += len(new)
                return True
            finally:
                notify(self._waiting_for_ack)


class GapwatchRecovery(Recovery):
    """Faust's table recovery, minus a crash that leaves the worker holding partitions it never
    processes.

    A rebalance that arrives while a recovery is reading the changelogs replaces the standby
    partitions (`on_rebalance` clears them and adds the new ones with no offset yet), and the
    running recovery goes on to "Starting standby partitions": it seeks them to an offset of
    None, aiokafka raises ``ValueError('Offset must be a positive integer')``, and the recovery
    service is dead for the rest of the process. The worker stays in the group (its consumer
    still heartbeats) and keeps its partitions, but no recovery completes again, so they are
    never processed and every window, which needs every source partition, stops: a stall with one
    ERROR line (seen on main and on the per-segment branch, test_group_faults seed 12;
    BENCHMARKS.md, "Throughput, fourth round"). Here a seek to an offset not built yet gives way
    to the newer rebalance's recovery (`RebalanceAgain`, which Faust's loop handles by starting
    over); without a newer rebalance such a partition is read from its start.
    """

    async def _seek_offsets(self, consumer, tps, offsets, title: str) -> None:
        if any(offsets.get(tp) is None for tp in tps):
            if self.signal_recovery_start.is_set():
                raise RebalanceAgain()
            offsets = {tp: -1 if offsets.get(tp) is None else offsets[tp] for tp in tps}
        await super()._seek_offsets(consumer, tps, offsets, title)

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Faust 0.15.3's end of recovery, with the stream partitions resumed only AFTER the
        seek to the committed offsets, and nothing awaited from there to the resumed flow.

        Faust resumes the stream partitions, then awaits the seek (a round trip to the group
        coordinator), then resumes the app's flow control, which CLEARS every stream queue.
        But flow control is already active here (the recovery resumed it to read the
        changelogs), so during the seek the fetcher delivers the stream partitions' first
        records from the committed offset, the agents take a few, and the clear then drops
        the rest of a queue (up to `stream_buffer_maxsize` messages) whose offsets the
        consumer has already moved past: never processed, never fetched again while this
        worker runs. Measured on tests/integration/test_group_faults.py (4 failing seed runs
        in 19, diagnostic dumps of the partials topic and the changelogs): in each, stage B
        took partials offsets 893-896 during the seek and lost exactly 897-928, 32 messages
        (the queue's size), a stretch of one source partition's platform partials: ~40 min
        of that partition's counts missing from every group. Stage A's chunks were at the
        same risk (a lost chunk followed by a processed one would be skipped for good as
        "already applied"). Here the stream partitions stay paused through the seek, so the
        clear finds nothing of theirs, and the fetcher starts from the committed offsets.
        """
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callback_coros = [
            asyncio.ensure_future(table.on_recovery_completed(
                self.actives_for_table[table], self.standbys_for_table[table]))
            for table in self.tables.values()
        ]
        if callback_coros:
            await asyncio.wait(callback_coros)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(f"Recovery rebalancing again app id {self.app.consumer_generation_id} "
                             f"param {generation_id}")
            return
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
            if self.app.consumer_generation_id != generation_id:
                return  # a newer rebalance: its recovery seeks and resumes
        # From here to resume_flow nothing is awaited: no stream record is delivered between
        # resuming its partition and the clear of the queues.
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


class GapwatchTableManager(TableManager):
    """TableManager whose recovery is `GapwatchRecovery` (the ``TableManager`` App setting)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = GapwatchRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class BatchStream(faust.Stream):
    """Stream that always uses Faust's pure-Python iterator.

    The Cython StreamIterator inlines ``Consumer.ack`` (it appends ``message.offset`` to the
    consumer's acked list itself), which would bypass ``BatchMessageConsumer.ack`` and only mark
    a chunk's last offset as done.  The Python iterator acks through ``Message.ack`` ->
    ``Consumer.ack``.  With one event per chunk the iterator's speed does not matter.
    """

    def __aiter__(self):
        it = self._py_aiter()
        self._active_agens.add(it)
        return it


def transport_class(consumer_cls):
    return type("FastTransport", (_aiokafka_driver.Transport,), {"Consumer": consumer_cls})


def app_class(consumer_cls: type) -> type:
    """A faust.App whose Kafka transport uses ``consumer_cls``.

    For BatchMessageConsumer also pass ``Stream=BatchStream`` to the App.
    """
    transport_cls = transport_class(consumer_cls)

    class FastApp(faust.App):
        def _new_transport(self):
            return transport_cls(self.conf.broker_consumer, self)

    return FastApp

"""`produce()` against the real embedded broker: everything arrives, keyed, in arrival order."""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict, deque

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from streams.broker import EmbeddedBroker
from streams.simulate import generate, message_key, produce


async def consume_all(bootstrap: str, topics: list[str], expected: int, timeout_s: float = 20.0) -> list:
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10000)
            for rs in batch.values():
                records.extend(rs)
    finally:
        await consumer.stop()
    return records


def topic_names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"backend": f"sim-backend-{suffix}", "platform": f"sim-platform-{suffix}",
            "changes": f"sim-changes-{suffix}"}


async def test_produce_and_consume_back(broker: EmbeddedBroker) -> None:
    sim = generate("safari_drop", seed=2, days=0.2)
    topics = topic_names()
    sent = await produce(sim, broker.bootstrap, topics=topics, partitions=3, progress=None)
    assert sent == {"backend": len(sim.backend), "platform": len(sim.platform), "changes": len(sim.changes)}

    records = await consume_all(broker.bootstrap, list(topics.values()), len(sim))
    role_of = {name: role for role, name in topics.items()}
    got = Counter(role_of[r.topic] for r in records)
    assert got == Counter(sent)

    by_partition: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        value = orjson.loads(r.value)
        assert r.key == message_key(role_of[r.topic], value)
        # the same partition any Kafka client's default partitioner picks for that key
        assert r.partition == DefaultPartitioner()(r.key, [0, 1, 2], [0, 1, 2])
        by_partition[(r.topic, r.partition)].append(value)
    # one order's backend and platform events share a partition number (co-partitioned topics)
    partition_of_order = {}
    for (topic, partition), values in by_partition.items():
        if role_of[topic] == "backend":
            partition_of_order.update({v["order_id"]: partition for v in values})
    for (topic, partition), values in by_partition.items():
        if role_of[topic] == "platform":
            assert all(partition_of_order[v["order_id"]] == partition for v in values)
    # within a partition, messages are in the simulation's arrival order
    # (a natural duplicate is byte-identical to its original: take positions first come first)
    positions: dict[bytes, deque[int]] = defaultdict(deque)
    for i, v in enumerate(sim.platform):
        positions[orjson.dumps(v)].append(i)
    for (topic, _), values in by_partition.items():
        if role_of[topic] == "platform":
            idx = [positions[orjson.dumps(v)].popleft() for v in values]
            assert idx == sorted(idx)


async def test_speedup_paces_on_the_accelerated_clock(broker: EmbeddedBroker) -> None:
    sim = generate("steady", seed=3, days=0.02)  # 1728 s of event time
    span = max(sim.platform_arrivals[-1], sim.backend_arrivals[-1]) - min(sim.backend_arrivals[0], sim.change_arrivals[0])
    lines: list[str] = []
    t0 = time.monotonic()
    await produce(sim, broker.bootstrap, topics=topic_names(), speedup=span / 1.5, progress=lines.append,
                  progress_every_s=0.5)
    elapsed = time.monotonic() - t0
    assert 1.3 < elapsed < 6.0
    assert len(lines) >= 2 and lines[-1].startswith("simulate: done:")

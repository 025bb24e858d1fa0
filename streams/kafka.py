"""Kafka clients for every verb, from one `Settings`: bootstrap servers and security options.

The worker, `simulate`, `change publish`, `reconcile`, `slack` and the demo all build their
clients here, so a SASL_SSL cluster configured once (flags, `GAPWATCH_*` variables or TOML)
is reached by every verb the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from streams.config import SECURITY_SETTINGS, Settings, add_arguments, kafka_security_options

__all__ = [
    "KAFKA_SETTINGS",
    "add_kafka_arguments",
    "client_options",
    "producer",
    "consumer",
    "admin",
    "wait_for_broker",
    "quiet_connection_errors",
]

#: the settings every verb that talks to Kafka takes
KAFKA_SETTINGS = ("broker", *SECURITY_SETTINGS)


def add_kafka_arguments(parser: argparse.ArgumentParser, *extra: str) -> None:
    """`--broker`, the security flags and `extra` settings (e.g. topic names), each with its
    `GAPWATCH_*` variable and TOML key, exactly as the worker takes them."""
    add_arguments(parser, only=(*KAFKA_SETTINGS, *extra))


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments every aiokafka client of gapwatch starts from."""
    return {"bootstrap_servers": settings.broker, **kafka_security_options(settings)}


def producer(settings: Settings, **options: Any) -> Any:
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**{**client_options(settings), **options})


def consumer(settings: Settings, *topics: str, **options: Any) -> Any:
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(*topics, **{**client_options(settings), **options})


def admin(settings: Settings, **options: Any) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    return AIOKafkaAdminClient(**{**client_options(settings), **options})


@contextlib.contextmanager
def quiet_connection_errors() -> Iterator[None]:
    """aiokafka logs every refused connection as an error; while we wait for a broker that is
    still starting, those lines are noise, not news."""
    logger = logging.getLogger("aiokafka")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


async def wait_for_broker(settings: Settings, timeout_s: float = 30.0) -> None:
    """Return once the cluster answers a metadata request; raise TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    with quiet_connection_errors():
        while time.monotonic() < deadline:
            client = admin(settings, request_timeout_ms=2000)
            try:
                await client.start()
                await client.list_topics()
                return
            except Exception as exc:  # refused, not ready, metadata timeout: try again
                last = exc
            finally:
                with contextlib.suppress(Exception):
                    await client.close()
            await asyncio.sleep(0.2)
    raise TimeoutError(f"no Kafka broker answered at {settings.broker} within {timeout_s:.0f} s: {last!r}")

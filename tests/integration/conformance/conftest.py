"""Fixtures of the conformance suite: the broker services (see ``../brokers/broker_services.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integration.brokers.broker_services import (
    Tansu,
    kafka_url,
    nats_url,
    rabbitmq_url,
    require_service,
)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``SEAMLINE_KAFKA`` when set, else a Tansu broker started for the session (memory storage)."""
    url = kafka_url()
    if url is not None:
        require_service("Kafka", url, 9092)
        yield url
        return
    broker = Tansu()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.close()


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    url = rabbitmq_url()
    require_service("RabbitMQ", url, 5672)
    return url


@pytest.fixture(scope="session")
def nats_server() -> str:
    url = nats_url()
    require_service("NATS", url, 4222)
    return url

"""pytest fixtures for the broker services; conftest files import them (see ``broker_services``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from tests.integration.brokers.broker_services import (
    Tansu,
    kafka_url,
    nats_url,
    rabbitmq_url,
    require_service,
)

__all__ = ["kafka_bootstrap", "nats_server", "postgres_url", "rabbitmq"]


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
    """``SEAMLINE_RABBITMQ`` (default ``amqp://guest:guest@127.0.0.1:5672/``)."""
    url = rabbitmq_url()
    require_service("RabbitMQ", url, 5672)
    return url


@pytest.fixture(scope="session")
def nats_server() -> str:
    """``SEAMLINE_NATS`` (default ``nats://127.0.0.1:4222``), with JetStream."""
    url = nats_url()
    require_service("NATS", url, 4222)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """``SEAMLINE_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``)."""
    url = os.environ.get("SEAMLINE_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    require_service("PostgreSQL", url, 5432)
    return url

"""Fixtures of the conformance suite: the broker services (see ``../brokers/broker_services.py``)."""

from tests.integration.brokers.fixtures import kafka_bootstrap, nats_server, postgres_url, rabbitmq

__all__ = ["kafka_bootstrap", "nats_server", "postgres_url", "rabbitmq"]

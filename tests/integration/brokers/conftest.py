"""Fixtures of the broker tests (service URLs, a Tansu broker for Kafka)."""

from tests.integration.brokers.fixtures import kafka_bootstrap, nats_server, postgres_url, rabbitmq

__all__ = ["kafka_bootstrap", "nats_server", "postgres_url", "rabbitmq"]

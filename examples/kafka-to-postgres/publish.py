"""Publish the sample order events to Kafka, keyed by order id (what the shop would do).

    KAFKA_BOOTSTRAP=localhost:9092 python publish.py [events.ndjson]

Creates the topic ``shop.order-events`` (3 partitions) when it is missing.
Each event gets a ``message-id`` header (topic-independent, so a replay of
the same event is recognisable) and the order id as ``correlation-id``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = "shop.order-events"


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092")
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("events.ndjson")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1)])[TOPIC].result(30)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    failed: list[str] = []
    sent = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        order_id = event["order"]["id"]
        event_id = hashlib.sha256(line.encode()).hexdigest()[:24]
        producer.produce(
            TOPIC,
            value=line.encode(),
            key=order_id.encode(),
            headers=[("message-id", event_id.encode()), ("correlation-id", order_id.encode())],
            on_delivery=lambda err, _msg: failed.append(str(err)) if err else None,
        )
        sent += 1
    if producer.flush(30) or failed:
        print(f"not every event was confirmed: {failed[:3]}", file=sys.stderr)
        return 1
    print(f"published {sent} events to {TOPIC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Real brokers (scripts/kafka-broker) for the Kafka transport's tests."""

from tests.kafka_broker import kafka_broker, kafka_cluster, kafka_prefix

__all__ = ["kafka_broker", "kafka_cluster", "kafka_prefix"]

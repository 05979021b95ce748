"""Development-only local stack: real Kafka, PostgreSQL and OpenSearch on loopback."""

"""clickstream: real-time clickstream analytics on Kafka, PostgreSQL and OpenSearch."""

__version__ = "0.1.0"
__all__ = ["__version__"]

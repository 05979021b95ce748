"""The read side on PostgreSQL: the same data set and hand-computed expectations as on SQLite.

See :mod:`tests.analytics_cases`. The database is migrated by the Alembic scripts and filled
through the real SQL sink.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, text

from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from tests.analytics_cases import AnalyticsCases, load


@pytest.fixture
def conn(database_url: str) -> Iterator[Connection]:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        load(engine)
        with engine.connect() as connection:
            # A session time zone far from UTC: buckets must still be UTC minutes and hours.
            connection.execute(text("SET TIME ZONE 'Asia/Kathmandu'"))
            yield connection
    finally:
        engine.dispose()


@pytest.fixture
def empty_engine(migrated_engine: Engine) -> Engine:
    return migrated_engine


class TestAnalyticsOnPostgres(AnalyticsCases):
    """Every case of :class:`AnalyticsCases`, on PostgreSQL."""

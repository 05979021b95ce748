"""The read side on SQLite, migrated by the same Alembic scripts as production.

The data set and the hand-computed expectations live in :mod:`tests.analytics_cases`; the same
cases run on PostgreSQL in ``tests/integration/test_analytics_pg.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine

from clickstream.analytics import Bucket, TimeRange, choose_bucket
from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from tests.analytics_cases import AnalyticsCases, sqlite_database


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(sqlite_database(tmp_path_factory.mktemp("analytics")))
    yield engine
    engine.dispose()


@pytest.fixture
def conn(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        yield connection


@pytest.fixture
def empty_engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


class TestAnalyticsOnSqlite(AnalyticsCases):
    """Every case of :class:`AnalyticsCases`, on SQLite."""


def test_time_ranges_refuse_naive_and_empty_intervals() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        TimeRange(datetime(2024, 6, 1), datetime(2024, 6, 2, tzinfo=UTC))
    moment = datetime(2024, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="before"):
        TimeRange(moment, moment)


def test_time_ranges_are_converted_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    r = TimeRange(
        datetime(2024, 6, 1, 14, 0, tzinfo=plus_two), datetime(2024, 6, 1, 15, tzinfo=plus_two)
    )
    assert r.start == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    assert r.start.tzinfo is UTC


def test_last_minutes_is_minute_aligned_and_includes_the_current_minute() -> None:
    now = datetime(2024, 6, 1, 12, 34, 56, 789, tzinfo=UTC)
    r = TimeRange.last_minutes(60, now=now)
    assert r.end == datetime(2024, 6, 1, 12, 35, tzinfo=UTC)
    assert r.start == datetime(2024, 6, 1, 11, 35, tzinfo=UTC)
    with pytest.raises(ValueError, match="at least 1"):
        TimeRange.last_minutes(0, now=now)


def test_bucket_choice_keeps_the_chart_small() -> None:
    now = datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert choose_bucket(TimeRange.last_minutes(180, now=now)) is Bucket.MINUTE
    assert choose_bucket(TimeRange.last_minutes(181, now=now)) is Bucket.HOUR

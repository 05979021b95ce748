"""The storage schema matches the data contract; engine factory behaviour (SQLite, no network)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, StatementError

from clickstream.db import SQLITE_BUSY_TIMEOUT_MS, make_engine, normalize_url
from clickstream.db.migrate import MIGRATIONS_DIR
from clickstream.db.models import (
    Base,
    events_table,
    sessions_table,
    traffic_minute_table,
)
from clickstream.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]

# The contract, written out by hand from the domain documentation (sections 1-3).
EVENT_COLUMNS = [
    "event_id",
    "event_type",
    "occurred_at",
    "user_id",
    "session_id",
    "page_url",
    "page_type",
    "referrer_url",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "device_type",
    "os",
    "browser",
    "country",
    "city",
    "latitude",
    "longitude",
    "product_id",
    "search_query",
    "order_id",
    "revenue",
    "currency",
]
EVENT_REQUIRED = {
    "event_id",
    "event_type",
    "occurred_at",
    "user_id",
    "page_url",
    "page_type",
    "device_type",
}
SESSION_COLUMNS = [
    "session_id",
    "user_id",
    "started_at",
    "ended_at",
    "duration_seconds",
    "event_count",
    "page_views",
    "purchases",
    "revenue",
    "converted",
    "bounced",
    "entry_page",
    "exit_page",
    "conversion_path",
    "traffic_source",
    "device_type",
    "os",
    "browser",
    "country",
    "city",
]
SESSION_NULLABLE = {"conversion_path", "os", "browser", "country", "city"}
TRAFFIC_COLUMNS = [
    "minute",
    "device_type",
    "country",
    "events",
    "page_views",
    "add_to_carts",
    "purchases",
    "revenue",
]

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_the_three_contract_tables_and_the_search_outbox():
    assert set(Base.metadata.tables) == {
        "events",
        "sessions",
        "traffic_minute",
        "search_outbox",
        "search_sync_state",  # the outbox drains' version high-water mark
    }


def test_events_has_a_column_for_every_contract_field_plus_ingestion():
    names = [column.name for column in events_table.columns]
    assert names[: len(EVENT_COLUMNS)] == EVENT_COLUMNS
    assert set(names) - set(EVENT_COLUMNS) == {"ingested_at", "kafka_partition", "kafka_offset"}
    assert [column.name for column in events_table.primary_key] == ["event_id"]
    for name in EVENT_COLUMNS:
        assert events_table.c[name].nullable is (name not in EVENT_REQUIRED), name
    ingested = events_table.c.ingested_at
    assert not ingested.nullable
    assert ingested.server_default is not None


def _postgres_types(table: Any) -> dict[str, str]:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return {column.name: column.type.compile(dialect=dialect) for column in table.columns}


def test_events_column_types_on_postgresql():
    assert _postgres_types(events_table) == {
        "event_id": "UUID",
        "event_type": "VARCHAR(16)",
        "occurred_at": "TIMESTAMP WITH TIME ZONE",
        "user_id": "VARCHAR(128)",
        "session_id": "TEXT",
        "page_url": "VARCHAR(2048)",
        "page_type": "VARCHAR(16)",
        "referrer_url": "TEXT",
        "utm_source": "TEXT",
        "utm_medium": "TEXT",
        "utm_campaign": "TEXT",
        "device_type": "VARCHAR(8)",
        "os": "TEXT",
        "browser": "TEXT",
        "country": "VARCHAR(2)",
        "city": "TEXT",
        "latitude": "DOUBLE PRECISION",
        "longitude": "DOUBLE PRECISION",
        "product_id": "TEXT",
        "search_query": "TEXT",
        "order_id": "TEXT",
        "revenue": "NUMERIC(12, 2)",
        "currency": "VARCHAR(3)",
        "ingested_at": "TIMESTAMP WITH TIME ZONE",
        "kafka_partition": "INTEGER",
        "kafka_offset": "BIGINT",
    }


def test_event_id_is_char32_on_sqlite():
    assert events_table.c.event_id.type.compile(dialect=sqlite.dialect()) == "CHAR(32)"


def test_sessions_columns_and_types():
    names = [column.name for column in sessions_table.columns]
    assert names[: len(SESSION_COLUMNS)] == SESSION_COLUMNS
    assert set(names) - set(SESSION_COLUMNS) == {"funnel_step", "updated_at"}
    assert [column.name for column in sessions_table.primary_key] == ["session_id"]
    for name in SESSION_COLUMNS:
        assert sessions_table.c[name].nullable is (name in SESSION_NULLABLE), name
    assert _postgres_types(sessions_table) == {
        "session_id": "TEXT",
        "user_id": "VARCHAR(128)",
        "started_at": "TIMESTAMP WITH TIME ZONE",
        "ended_at": "TIMESTAMP WITH TIME ZONE",
        "duration_seconds": "DOUBLE PRECISION",
        "event_count": "INTEGER",
        "page_views": "INTEGER",
        "purchases": "INTEGER",
        "revenue": "NUMERIC(18, 2)",
        "converted": "BOOLEAN",
        "bounced": "BOOLEAN",
        "entry_page": "VARCHAR(2048)",
        "exit_page": "VARCHAR(2048)",
        "conversion_path": "TEXT",
        "traffic_source": "TEXT",
        "device_type": "VARCHAR(8)",
        "os": "TEXT",
        "browser": "TEXT",
        "country": "VARCHAR(2)",
        "city": "TEXT",
        "funnel_step": "SMALLINT",
        "updated_at": "TIMESTAMP WITH TIME ZONE",
    }
    assert sessions_table.c.revenue.server_default is not None


def test_traffic_minute_columns_and_key():
    assert [column.name for column in traffic_minute_table.columns] == TRAFFIC_COLUMNS
    assert [column.name for column in traffic_minute_table.primary_key] == [
        "minute",
        "device_type",
        "country",
    ]
    assert _postgres_types(traffic_minute_table) == {
        "minute": "TIMESTAMP WITH TIME ZONE",
        "device_type": "VARCHAR(8)",
        "country": "VARCHAR(2)",
        "events": "BIGINT",
        "page_views": "BIGINT",
        "add_to_carts": "BIGINT",
        "purchases": "BIGINT",
        "revenue": "NUMERIC(20, 2)",
    }
    assert not any(column.nullable for column in traffic_minute_table.columns)


def test_indexes_serve_the_known_queries():
    def indexes(table: Any) -> dict[str, list[str]]:
        return {index.name: [col.name for col in index.columns] for index in table.indexes}

    assert indexes(events_table) == {
        "ix_events_user_id_occurred_at": ["user_id", "occurred_at"],
        "ix_events_occurred_at": ["occurred_at"],
    }
    assert indexes(sessions_table) == {
        "ix_sessions_started_at": ["started_at"],
        "ix_sessions_user_id_started_at": ["user_id", "started_at"],
    }
    assert indexes(traffic_minute_table) == {}


def test_pyproject_alembic_section_points_at_the_migrations_folder():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["alembic"]
    location = config["script_location"].replace("%(here)s", str(REPO_ROOT))
    assert Path(location).resolve() == MIGRATIONS_DIR
    assert (MIGRATIONS_DIR / "env.py").is_file()


# --- against a real SQLite file ---------------------------------------------------------------


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'models.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _event(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": "0b6f3c1e-8a57-4b36-9c7e-2f1d0e5a4b3c",
        "event_type": "page_view",
        "occurred_at": T0,
        "user_id": "u-1",
        "page_url": "https://shop.example/",
        "page_type": "home",
        "device_type": "desktop",
    }
    row.update(changes)
    return row


def _session(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "session_id": "s-1",
        "user_id": "u-1",
        "started_at": T0,
        "ended_at": T0,
        "duration_seconds": 0.0,
        "event_count": 1,
        "page_views": 1,
        "purchases": 0,
        "converted": False,
        "bounced": True,
        "entry_page": "https://shop.example/",
        "exit_page": "https://shop.example/",
        "traffic_source": "direct",
        "device_type": "desktop",
    }
    row.update(changes)
    return row


def test_timestamps_are_stored_in_utc_and_read_back_aware(sqlite_engine: Engine):
    plus_two = timezone(timedelta(hours=2))
    with sqlite_engine.begin() as conn:
        conn.execute(
            insert(events_table),
            [_event(occurred_at=datetime(2024, 5, 1, 14, 30, 15, 250000, tzinfo=plus_two))],
        )
    with sqlite_engine.connect() as conn:
        row = conn.execute(select(events_table)).one()
        raw = conn.execute(text("SELECT occurred_at FROM events")).scalar_one()
    assert row.occurred_at == datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=UTC)
    assert row.occurred_at.tzinfo is UTC
    assert raw == "2024-05-01 12:30:15.250000"
    # The server default filled ingested_at, and it reads back aware, in UTC.
    assert row.ingested_at.tzinfo is UTC
    assert row.event_id == "0b6f3c1e-8a57-4b36-9c7e-2f1d0e5a4b3c"


def test_naive_timestamps_are_refused(sqlite_engine: Engine):
    with pytest.raises(StatementError, match="naive datetime"), sqlite_engine.begin() as conn:
        conn.execute(insert(events_table), [_event(occurred_at=datetime(2024, 5, 1, 12))])


def test_revenue_keeps_two_decimals(sqlite_engine: Engine):
    with sqlite_engine.begin() as conn:
        conn.execute(
            insert(events_table),
            [
                _event(
                    event_type="purchase", order_id="o-1", revenue=Decimal("19.99"), currency="EUR"
                )
            ],
        )
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(events_table.c.revenue)).scalar_one() == Decimal("19.99")


def test_duplicate_event_id_is_rejected(sqlite_engine: Engine):
    with sqlite_engine.begin() as conn:
        conn.execute(insert(events_table), [_event()])
    with pytest.raises(IntegrityError), sqlite_engine.begin() as conn:
        conn.execute(insert(events_table), [_event(user_id="someone-else")])


@pytest.mark.parametrize(
    "changes",
    [
        {"event_type": "click"},
        {"page_type": "landing"},
        {"device_type": "tv"},
        {"latitude": 10.0},
        {"latitude": 91.0, "longitude": 0.0},
        {"latitude": 0.0, "longitude": -180.5},
        {"event_type": "purchase", "order_id": "o-1", "currency": "EUR"},
        {"event_type": "purchase", "order_id": "o-1", "revenue": Decimal(-1), "currency": "EUR"},
    ],
    ids=[
        "event_type",
        "page_type",
        "device_type",
        "latitude_without_longitude",
        "latitude_range",
        "longitude_range",
        "purchase_without_revenue",
        "negative_revenue",
    ],
)
def test_event_check_constraints(sqlite_engine: Engine, changes: dict[str, Any]):
    with pytest.raises(IntegrityError), sqlite_engine.begin() as conn:
        conn.execute(insert(events_table), [_event(**changes)])


@pytest.mark.parametrize(
    "changes",
    [
        {"converted": True},
        {"bounced": False},
        {"ended_at": T0 - timedelta(seconds=1)},
        {"purchases": 1, "converted": True},
        {"conversion_path": "home"},
        {"event_count": 0},
    ],
    ids=[
        "converted_without_purchase",
        "single_event_not_bounced",
        "ends_before_start",
        "converted_without_path",
        "path_when_not_converted",
        "no_events",
    ],
)
def test_session_check_constraints(sqlite_engine: Engine, changes: dict[str, Any]):
    with sqlite_engine.begin() as conn:
        conn.execute(insert(sessions_table), [_session()])  # the baseline is valid
    with pytest.raises(IntegrityError), sqlite_engine.begin() as conn:
        conn.execute(insert(sessions_table), [_session(session_id="s-2", **changes)])


def test_a_converted_session_row_is_accepted(sqlite_engine: Engine):
    row = _session(
        ended_at=T0 + timedelta(seconds=90.5),
        duration_seconds=90.5,
        event_count=3,
        page_views=2,
        purchases=1,
        revenue=Decimal("25.00"),
        converted=True,
        bounced=False,
        conversion_path="home > product > confirmation",
    )
    with sqlite_engine.begin() as conn:
        conn.execute(insert(sessions_table), [row])
    with sqlite_engine.connect() as conn:
        stored = conn.execute(select(sessions_table)).one()
    assert stored.duration_seconds == 90.5
    assert stored.converted is True
    assert stored.revenue == Decimal("25.00")
    assert stored.updated_at.tzinfo is UTC


def test_traffic_minute_defaults(sqlite_engine: Engine):
    with sqlite_engine.begin() as conn:
        conn.execute(insert(traffic_minute_table), [{"minute": T0, "device_type": "mobile"}])
    with sqlite_engine.connect() as conn:
        stored = conn.execute(select(traffic_minute_table)).one()
    assert stored._asdict() == {
        "minute": T0,
        "device_type": "mobile",
        "country": "",
        "events": 0,
        "page_views": 0,
        "add_to_carts": 0,
        "purchases": 0,
        "revenue": Decimal("0.00"),
    }


# --- engine factory ---------------------------------------------------------------------------


def test_sqlite_engine_sets_pragmas(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 10_000
    finally:
        engine.dispose()
    assert SQLITE_BUSY_TIMEOUT_MS == 10_000


@pytest.mark.parametrize(
    ("url", "drivername"),
    [
        ("postgres://u:p@db.example:5432/app", "postgresql+psycopg"),
        ("postgresql://u:p@db.example:5432/app?sslmode=require", "postgresql+psycopg"),
        ("postgresql+psycopg://u:p@db.example/app", "postgresql+psycopg"),
        ("sqlite:///clickstream.db", "sqlite"),
        ("sqlite://", "sqlite"),
    ],
)
def test_urls_are_normalised(url: str, drivername: str):
    assert normalize_url(url).drivername == drivername
    engine = make_engine(url)  # creating an engine does not connect
    try:
        assert engine.url.drivername == drivername
    finally:
        engine.dispose()


def test_postgres_url_keeps_its_query_and_password():
    parsed = normalize_url("postgres://avn:s%40cret@db.example:12345/defaultdb?sslmode=require")
    assert parsed.password == "s@cret"
    assert parsed.port == 12345
    assert parsed.query == {"sslmode": "require"}


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "not a url"])
def test_unsupported_urls_are_config_errors(url: str):
    with pytest.raises(ConfigError):
        make_engine(url)

"""The Alembic migrations build, remove and match the models, on PostgreSQL and on SQLite.

Every test runs twice: against a fresh PostgreSQL database (marked ``integration``, needs the
local stack) and against a SQLite file in ``tmp_path`` (needs nothing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import make_url

from clickstream.db import make_engine
from clickstream.db.migrate import SchemaDriftError, check, downgrade, upgrade
from clickstream.db.models import events_table

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAD = "e3f1a9c7b5d2"

TABLES = {"events", "sessions", "traffic_minute", "search_outbox", "search_sync_state"}
INDEXES = {
    "events": {"ix_events_occurred_at", "ix_events_user_id_occurred_at"},
    "sessions": {"ix_sessions_started_at", "ix_sessions_user_id_started_at"},
    "traffic_minute": set(),
    "search_outbox": set(),
    "search_sync_state": set(),
}
PRIMARY_KEYS = {
    "events": ("pk_events", ["event_id"]),
    "sessions": ("pk_sessions", ["session_id"]),
    "traffic_minute": ("pk_traffic_minute", ["minute", "device_type", "country"]),
    "search_outbox": ("pk_search_outbox", ["session_id"]),
    "search_sync_state": ("pk_search_sync_state", ["id"]),
}


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("sqlite"),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("database_url"))
    return f"sqlite:///{tmp_path / 'migrations.db'}"


def _schema(url: str) -> dict[str, object]:
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        tables = set(inspector.get_table_names())
        described: dict[str, object] = {"tables": tables}
        for table in tables & TABLES:
            pk = inspector.get_pk_constraint(table)
            described[table] = {
                "indexes": {index["name"] for index in inspector.get_indexes(table)},
                "pk": (pk["name"], pk["constrained_columns"]),
            }
        with engine.connect() as conn:
            described["version"] = (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
                if "alembic_version" in tables
                else None
            )
        return described
    finally:
        engine.dispose()


def _expected_head_schema() -> dict[str, object]:
    expected: dict[str, object] = {"tables": TABLES | {"alembic_version"}, "version": [HEAD]}
    for table in TABLES:
        expected[table] = {"indexes": INDEXES[table], "pk": PRIMARY_KEYS[table]}
    return expected


def test_upgrade_downgrade_upgrade_round_trip(url: str):
    upgrade(url)
    assert _schema(url) == _expected_head_schema()

    downgrade(url)
    # Alembic keeps its (now empty) bookkeeping table; every table of ours is gone.
    assert _schema(url) == {"tables": {"alembic_version"}, "version": []}

    upgrade(url)
    assert _schema(url) == _expected_head_schema()

    # The rebuilt schema works: an event goes in and comes back.
    occurred = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(events_table),
                [
                    {
                        "event_id": "7d0e2f5a-1b3c-4d5e-8f90-a1b2c3d4e5f6",
                        "event_type": "page_view",
                        "occurred_at": occurred,
                        "user_id": "u-1",
                        "page_url": "https://shop.example/",
                        "page_type": "home",
                        "device_type": "mobile",
                    }
                ],
            )
        with engine.connect() as conn:
            row = conn.execute(select(events_table)).one()
    finally:
        engine.dispose()
    assert row.event_id == "7d0e2f5a-1b3c-4d5e-8f90-a1b2c3d4e5f6"
    assert row.occurred_at == occurred
    assert row.ingested_at.tzinfo is UTC


def test_upgrade_is_idempotent(url: str):
    upgrade(url)
    upgrade(url)
    assert _schema(url) == _expected_head_schema()


def test_models_match_migrations(url: str):
    upgrade(url)
    check(url)  # raises SchemaDriftError when a migration is missing


def test_check_detects_drift(url: str):
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_events_occurred_at"))
            conn.execute(text("ALTER TABLE sessions ADD COLUMN stray_column INTEGER"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaDriftError) as caught:
        check(url)
    assert "ix_events_occurred_at" in str(caught.value)
    assert "stray_column" in str(caught.value)


def test_check_refuses_a_database_behind_head(url: str):
    with pytest.raises(SchemaDriftError, match="not up to date"):
        check(url)


def test_alembic_command_line_from_the_repository_root(url: str):
    """``alembic upgrade head`` works with only pyproject.toml, taking the URL from the env."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLICKSTREAM_")}
    env["CLICKSTREAM_DATABASE_URL"] = url
    for args in (["upgrade", "head"], ["check"], ["downgrade", "base"], ["upgrade", "head"]):
        result = subprocess.run(
            [sys.executable, "-m", "alembic", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert _schema(url) == _expected_head_schema()


def _failed_upgrade(**settings: str) -> str:
    """What ``alembic upgrade head`` prints when it fails with these CLICKSTREAM_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLICKSTREAM_")}
    env.update({f"CLICKSTREAM_{name.upper()}": value for name, value in settings.items()})
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output  # one line, not alembic's internals
    return output


def test_alembic_says_in_one_line_which_setting_is_wrong():
    # The migrations read only the database URL (other settings do not stop them).
    output = _failed_upgrade(database_url="nonsense", session_gap_seconds="abc")
    assert "FAILED: invalid settings: CLICKSTREAM_DATABASE_URL: expected a SQLAlchemy URL" in output
    assert "CLICKSTREAM_SESSION_GAP_SECONDS is ignored by alembic (the migrations)" in output


@pytest.mark.integration
def test_alembic_says_in_one_line_that_the_database_refused_the_password(database_url: str):
    wrong = make_url(database_url).set(password="not-the-password")
    output = _failed_upgrade(database_url=wrong.render_as_string(hide_password=False))
    assert "FAILED: cannot connect to the database: the password or user is wrong" in output
    assert "CLICKSTREAM_DATABASE_URL" in output


@pytest.mark.integration
def test_postgres_connections_use_utc(database_url: str):
    engine = make_engine(database_url)
    try:
        # A server whose default is not UTC: new sessions would start in +05:30.
        with engine.connect() as conn:
            name = conn.execute(text("SELECT current_database()")).scalar_one()
            conn.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Kolkata'"))
            conn.commit()
        engine.dispose()
        with engine.connect() as conn:
            assert conn.execute(text("SHOW TIME ZONE")).scalar_one() == "UTC"
            # Server-side bucketing of an instant given with an offset happens in UTC.
            bucket = conn.execute(
                text("SELECT date_trunc('hour', TIMESTAMPTZ '2024-05-01 00:30:00+02:00')::text")
            ).scalar_one()
            conn.rollback()
            assert conn.execute(text("SHOW TIME ZONE")).scalar_one() == "UTC"
    finally:
        engine.dispose()
    assert bucket == "2024-04-30 22:00:00+00"


@pytest.mark.integration
def test_sessions_pages_leave_room_for_in_place_updates(database_url: str):
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            options = conn.execute(
                text("SELECT reloptions FROM pg_class WHERE relname = 'sessions'")
            ).scalar_one()
        downgrade(database_url, "b41c7e2d9a10")
        with engine.connect() as conn:
            reset = conn.execute(
                text("SELECT reloptions FROM pg_class WHERE relname = 'sessions'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert options == ["fillfactor=70"]
    assert reset is None

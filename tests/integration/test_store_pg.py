"""The SQL sink on PostgreSQL, where in-order events extend open sessions in one statement.

The statement (``store._EXTEND_SQL``) is a second implementation of "append events to a
session"; these tests hold it to the session definition: hand-computed rows at each boundary,
and the definition itself over random streams fed in order (where the statement does most of
the work) and shuffled with duplicates (where the general path does).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from clickstream.db.models import sessions_table, traffic_minute_table
from clickstream.events import ClickEvent
from clickstream.store import BatchOutcome, PositionedEvent, SessionRules, write_batch
from tests.support import definition_sessions, random_events, write_in_random_batches

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    return migrated_engine


def _event(n: int, at: datetime, kind: str = "page_view", page: str = "home", **extra: Any) -> Any:
    data: dict[str, Any] = {
        "event_id": f"00000000-0000-4000-8000-{n:012d}",
        "event_type": kind,
        "occurred_at": at.isoformat(),
        "user_id": extra.pop("user_id", "u-1"),
        "page_url": f"https://shop.test/{page}/{n}",
        "page_type": page,
        "device_type": "mobile",
        "referrer_url": "https://www.google.com/",
        "country": "DE",
        **extra,
    }
    if kind == "purchase":
        data |= {"order_id": f"o-{n}", "currency": "EUR", "page_type": "confirmation"}
        data["page_url"] = f"https://shop.test/confirmation/{n}"
    return ClickEvent.model_validate_json(json.dumps(data))


def _write(engine: Engine, events: Sequence[ClickEvent], rules: SessionRules) -> BatchOutcome:
    with engine.begin() as conn:
        return write_batch(
            conn, events=[PositionedEvent(e, 0, i) for i, e in enumerate(events)], rules=rules
        )


def _sessions(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(sessions_table).order_by(sessions_table.c.started_at))
        return [dict(row._mapping) for row in rows]


def test_in_order_batches_extend_the_open_session_in_place(engine: Engine) -> None:
    rules = SessionRules()
    # batch 1: lands on a product page (funnel: page view + product view = 2)
    first = _write(engine, [_event(1, T0, page="product")], rules)
    # batch 2: 30 minutes exactly after, then add to cart 1.5 s later (funnel 3)
    second = _write(
        engine,
        [
            _event(2, T0 + timedelta(minutes=30), page="product"),
            _event(3, T0 + timedelta(minutes=30, seconds=1.5), "add_to_cart", "product"),
        ],
        rules,
    )
    [row] = _sessions(engine)
    assert (first.extended_in_sql, second.extended_in_sql) == (0, 1)
    assert row["started_at"] == T0
    assert row["ended_at"] == T0 + timedelta(minutes=30, seconds=1.5)
    assert row["duration_seconds"] == 1801.5
    assert (row["event_count"], row["page_views"], row["purchases"]) == (3, 2, 0)
    assert (row["funnel_step"], row["converted"], row["bounced"]) == (3, False, False)
    assert row["entry_page"] == "https://shop.test/product/1"
    assert row["exit_page"] == "https://shop.test/product/3"
    assert row["conversion_path"] is None
    assert row["traffic_source"] == "google.com"


def test_one_microsecond_past_the_gap_starts_a_new_session(engine: Engine) -> None:
    rules = SessionRules()
    _write(engine, [_event(1, T0)], rules)
    outcome = _write(engine, [_event(2, T0 + timedelta(minutes=30, microseconds=1))], rules)
    rows = _sessions(engine)
    assert outcome.extended_in_sql == 0
    assert [(r["event_count"], r["bounced"]) for r in rows] == [(1, True), (1, True)]


def test_the_length_cap_holds_on_the_in_place_path(engine: Engine) -> None:
    rules = SessionRules(gap=timedelta(minutes=30), max_length=timedelta(minutes=50))
    _write(engine, [_event(1, T0), _event(2, T0 + timedelta(minutes=25))], rules)
    # exactly 50 minutes after the start: joins
    at_cap = _write(engine, [_event(3, T0 + timedelta(minutes=50))], rules)
    # 50 minutes and 1 µs after the start, 1 µs after the last event: a new session
    past_cap = _write(engine, [_event(4, T0 + timedelta(minutes=50, microseconds=1))], rules)
    rows = _sessions(engine)
    assert (at_cap.extended_in_sql, past_cap.extended_in_sql) == (1, 0)
    assert [(r["started_at"], r["event_count"]) for r in rows] == [
        (T0, 3),
        (T0 + timedelta(minutes=50, microseconds=1), 1),
    ]
    assert rows[0]["duration_seconds"] == 3000.0


def test_purchases_convert_through_the_general_path_and_add_up_in_place(engine: Engine) -> None:
    rules = SessionRules()
    _write(
        engine,
        [_event(1, T0, page="product"), _event(2, T0 + timedelta(minutes=1), page="cart")],
        rules,
    )
    # converting needs the page types (the conversion path): the general path does it
    converting = _write(
        engine, [_event(3, T0 + timedelta(minutes=2), "purchase", revenue=10.25)], rules
    )
    # a second purchase in a converted session: in place, the path stays as it was
    more = _write(
        engine,
        [
            _event(4, T0 + timedelta(minutes=3), page="product"),
            _event(5, T0 + timedelta(minutes=4), "purchase", revenue=4.5),
        ],
        rules,
    )
    [row] = _sessions(engine)
    assert (converting.extended_in_sql, more.extended_in_sql) == (0, 1)
    assert row["conversion_path"] == "product > cart > confirmation"
    assert (row["event_count"], row["page_views"], row["purchases"]) == (5, 3, 2)
    assert Decimal(row["revenue"]) == Decimal("14.75")
    assert row["converted"] is True
    assert row["exit_page"] == "https://shop.test/confirmation/5"
    # product view (2), no add to cart: the purchases cannot advance the funnel
    assert row["funnel_step"] == 2


def test_a_tie_with_the_session_end_and_a_late_event_take_the_general_path(
    engine: Engine,
) -> None:
    rules = SessionRules()
    _write(engine, [_event(1, T0), _event(5, T0 + timedelta(minutes=10))], rules)
    tie = _write(engine, [_event(6, T0 + timedelta(minutes=10))], rules)
    late = _write(engine, [_event(2, T0 + timedelta(minutes=5))], rules)
    [row] = _sessions(engine)
    assert (tie.extended_in_sql, late.extended_in_sql) == (0, 0)
    assert late.slow_path_users == 1
    assert row["event_count"] == 4
    # the exit page is the last event in (time, event id) order: id ...6 after ...5
    assert row["exit_page"] == "https://shop.test/home/6"


def test_only_the_latest_session_matters_to_the_in_place_path(engine: Engine) -> None:
    # A 20-minute cap splits one run of activity: the second session starts 21 minutes after
    # the first, so a new event at +22 min is within `gap` of both. Sessions are a left to
    # right scan, so it can only join the second (the first ended before the second began).
    rules = SessionRules(gap=timedelta(minutes=30), max_length=timedelta(minutes=20))
    _write(engine, [_event(1, T0), _event(2, T0 + timedelta(minutes=21))], rules)
    outcome = _write(engine, [_event(3, T0 + timedelta(minutes=22))], rules)
    rows = _sessions(engine)
    assert outcome.extended_in_sql == 1
    assert [(r["started_at"], r["ended_at"], r["event_count"]) for r in rows] == [
        (T0, T0, 1),
        (T0 + timedelta(minutes=21), T0 + timedelta(minutes=22), 2),
    ]


def test_a_later_stored_session_is_kept_or_bridged(engine: Engine) -> None:
    rules = SessionRules()
    # sessions at 10:00 and 12:00 (events arrived out of order earlier)
    _write(engine, [_event(1, T0), _event(9, T0 + timedelta(hours=2))], rules)
    # 10:20 extends the first in place; 12:00 is more than 30 minutes after it, so it stays
    kept = _write(engine, [_event(2, T0 + timedelta(minutes=20))], rules)
    assert [(r["started_at"], r["ended_at"], r["event_count"]) for r in _sessions(engine)] == [
        (T0, T0 + timedelta(minutes=20), 2),
        (T0 + timedelta(hours=2), T0 + timedelta(hours=2), 1),
    ]
    # 10:45, 11:10 and 11:35 are each within 30 minutes of the one before, and 11:35 within
    # 30 minutes of 12:00: they bridge both into one session (the general path)
    bridged = _write(
        engine,
        [_event(n, T0 + timedelta(minutes=minutes)) for n, minutes in ((3, 45), (4, 70), (5, 95))],
        rules,
    )
    rows = _sessions(engine)
    assert (kept.extended_in_sql, bridged.extended_in_sql) == (1, 0)
    assert bridged.slow_path_users == 1
    assert [(r["started_at"], r["ended_at"], r["event_count"]) for r in rows] == [
        (T0, T0 + timedelta(hours=2), 6),
    ]


def test_a_tie_with_a_later_event_id_keeps_the_stored_exit_page(engine: Engine) -> None:
    rules = SessionRules()
    _write(engine, [_event(1, T0), _event(6, T0 + timedelta(minutes=10))], rules)
    # same time as the stored last event, but its id sorts first: ...5 < ...6
    tie = _write(engine, [_event(5, T0 + timedelta(minutes=10))], rules)
    [row] = _sessions(engine)
    assert tie.extended_in_sql == 0
    assert row["event_count"] == 3
    assert row["exit_page"] == "https://shop.test/home/6"


def test_a_session_that_ended_exactly_gap_before_is_still_read(engine: Engine) -> None:
    # The purchase cannot convert the session in place (the path needs its page types), and
    # the session ended exactly `gap` before it: the general path must read it and join them.
    rules = SessionRules()
    _write(engine, [_event(1, T0, page="cart")], rules)
    outcome = _write(
        engine, [_event(2, T0 + timedelta(minutes=30), "purchase", revenue=20.0)], rules
    )
    [row] = _sessions(engine)
    assert outcome.extended_in_sql == 0
    assert (row["event_count"], row["purchases"], row["converted"]) == (2, 1, True)
    assert row["conversion_path"] == "cart > confirmation"


def test_several_batches_in_one_transaction(engine: Engine) -> None:
    rules = SessionRules()
    with engine.begin() as conn:
        first = [_event(1, T0, user_id="u"), _event(2, T0, user_id="v")]
        second = [
            _event(3, T0 + timedelta(minutes=5), user_id="u"),
            _event(4, T0 + timedelta(minutes=40), user_id="v"),
        ]
        for offset, batch in ((0, first), (2, second)):
            write_batch(
                conn,
                events=[PositionedEvent(e, 0, offset + i) for i, e in enumerate(batch)],
                rules=rules,
            )
    rows = _sessions(engine)
    by_user = sorted((r["user_id"], r["started_at"], r["event_count"]) for r in rows)
    # u: 10:00 and 10:05 in one session; v: 10:00 and 10:40 are 40 minutes apart, two sessions
    assert by_user == [
        ("u", T0, 2),
        ("v", T0, 1),
        ("v", T0 + timedelta(minutes=40), 1),
    ]
    with engine.connect() as conn:
        counted = conn.execute(select(func.sum(traffic_minute_table.c.events))).scalar_one()
    assert counted == 4


RULES = [SessionRules(), SessionRules(max_length=SessionRules().gap * 1.5)]


def _stored(engine: Engine, want: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(sessions_table).order_by(sessions_table.c.session_id))
        return [{k: row._mapping[k] for k in want[0]} for row in rows]


@pytest.mark.parametrize("seed", range(4))
def test_streams_in_order_give_the_definition(engine: Engine, seed: int) -> None:
    rng = random.Random(seed)
    rules = RULES[seed % len(RULES)]
    decoded = [
        ClickEvent.model_validate_json(json.dumps(e))
        for e in random_events(200 + seed, users=15, per_user=30)
    ]
    extended = write_in_random_batches(engine, decoded, rng, rules).extended_in_sql
    want = definition_sessions(decoded, gap=rules.gap, max_length=rules.max_length)
    assert _stored(engine, want) == want
    assert extended > 0  # the in-place statement did part of the work


@pytest.mark.parametrize("seed", range(4))
def test_shuffled_and_duplicated_streams_give_the_definition(engine: Engine, seed: int) -> None:
    rng = random.Random(seed)
    rules = RULES[seed % len(RULES)]
    events = random_events(300 + seed, users=12, per_user=25)
    sent = events + rng.sample(events, len(events) // 4)
    # mostly in order: a quarter of the events arrive late, among duplicates
    late = set(rng.sample(range(len(sent)), len(sent) // 4))
    sent = [e for i, e in enumerate(sent) if i not in late] + [sent[i] for i in sorted(late)]
    decoded = [ClickEvent.model_validate_json(json.dumps(e)) for e in sent]
    write_in_random_batches(engine, decoded, rng, rules)
    want = definition_sessions(decoded, gap=rules.gap, max_length=rules.max_length)
    assert _stored(engine, want) == want

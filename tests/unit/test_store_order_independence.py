"""Property: whatever the arrival order, duplication and batching, the stored tables equal the
session definition applied to the distinct events (SQLite; PostgreSQL in the integration tests).
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from clickstream.db.models import events_table, sessions_table, traffic_minute_table
from clickstream.events import ClickEvent
from clickstream.store import PositionedEvent, SessionRules, write_batch
from tests.support import definition_sessions, random_events, write_in_random_batches

RULES = [
    SessionRules(),
    # a short maximum length makes the cap split runs often
    SessionRules(max_length=SessionRules().gap * 1.5),
]


def _rows(url: str) -> tuple[list[dict], dict[str, int]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        sessions = [
            {k: v for k, v in dict(r._mapping).items() if k != "updated_at"}
            for r in conn.execute(select(sessions_table).order_by(sessions_table.c.session_id))
        ]
        totals = conn.execute(
            select(traffic_minute_table.c.events, traffic_minute_table.c.purchases)
        ).all()
    engine.dispose()
    return sessions, {"events": sum(t[0] for t in totals), "purchases": sum(t[1] for t in totals)}


@pytest.mark.parametrize("seed", range(6))
def test_any_arrival_order_gives_the_definition(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    rules = RULES[seed % len(RULES)]
    events = random_events(100 + seed, users=12, per_user=25)
    sent = events + rng.sample(events, len(events) // 4)
    rng.shuffle(sent)
    url = f"sqlite:///{tmp_path / 'order.db'}"
    upgrade(url)
    engine = make_engine(url)
    decoded = [ClickEvent.model_validate_json(json.dumps(e)) for e in sent]
    write_in_random_batches(engine, decoded, rng, rules)
    engine.dispose()
    sessions, totals = _rows(url)
    want = definition_sessions(decoded, gap=rules.gap, max_length=rules.max_length)
    assert [{k: row[k] for k in want[0]} for row in sessions] == want
    assert totals["events"] == len({e["event_id"] for e in events})


def test_revenue_measures_count_purchases_only(tmp_path: Path) -> None:
    # revenue is allowed on any event and stored with it, but sessions and traffic_minute
    # sum the revenue of purchases: 10.00 here, not 15.00.
    base = {
        "user_id": "u-1",
        "page_url": "https://shop.test/p/1",
        "page_type": "product",
        "device_type": "desktop",
        "country": "DE",
        "currency": "EUR",
    }
    view = {
        **base,
        "event_id": "00000000-0000-4000-8000-000000000001",
        "event_type": "page_view",
        "occurred_at": "2026-05-01T12:00:10Z",
        "revenue": 5.0,
    }
    purchase = {
        **base,
        "event_id": "00000000-0000-4000-8000-000000000002",
        "event_type": "purchase",
        "occurred_at": "2026-05-01T12:00:40Z",
        "order_id": "o-1",
        "revenue": 10.0,
    }
    url = f"sqlite:///{tmp_path / 'revenue.db'}"
    upgrade(url)
    engine = make_engine(url)
    decoded = [ClickEvent.model_validate_json(json.dumps(e)) for e in (view, purchase)]
    with engine.begin() as conn:
        write_batch(
            conn,
            events=[PositionedEvent(e, 0, i) for i, e in enumerate(decoded)],
            rules=SessionRules(),
        )
    with engine.connect() as conn:
        stored = sorted(conn.execute(select(events_table.c.revenue)).scalars())
        minute = conn.execute(select(traffic_minute_table)).one()._mapping
        session = conn.execute(select(sessions_table)).one()._mapping
    engine.dispose()
    assert stored == [Decimal("5.00"), Decimal("10.00")]
    assert (minute["events"], minute["page_views"], minute["purchases"]) == (2, 1, 1)
    assert Decimal(minute["revenue"]) == Decimal("10.00")
    assert (session["event_count"], session["purchases"]) == (2, 1)
    assert Decimal(session["revenue"]) == Decimal("10.00")

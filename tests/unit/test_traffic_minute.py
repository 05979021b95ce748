"""``traffic_minute`` rows (domain.md section 3) for a small hand-written batch, on SQLite.

Per (UTC minute of ``occurred_at``, ``device_type``, ``country`` with ``''`` when unknown):
events, page views, add-to-carts, purchases and the revenue of purchases. Every expected row
below was worked out by hand; a redelivered batch must not change them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from clickstream.db.models import traffic_minute_table
from clickstream.events import ClickEvent
from clickstream.store import PositionedEvent, SessionRules, write_batch


def _event(n: int, at: str, kind: str, device: str, country: str | None, **extra: Any) -> Any:
    data: dict[str, Any] = {
        "event_id": f"00000000-0000-4000-8000-{n:012d}",
        "event_type": kind,
        "occurred_at": at,
        "user_id": f"visitor-{n}",
        "page_url": "https://shop.example/",
        "page_type": "home",
        "device_type": device,
        "country": country,
        **extra,
    }
    return ClickEvent.model_validate_json(json.dumps(data))


EVENTS = [
    # 12:00 UTC, desktop, DE: a view and an add-to-cart (12:00:59.999 is still minute 12:00)
    _event(1, "2024-05-01T12:00:10Z", "page_view", "desktop", "DE"),
    _event(2, "2024-05-01T12:00:59.999Z", "add_to_cart", "desktop", "DE", product_id="p-1"),
    # 12:00 UTC, mobile, no country (the key is ''): a view and a search; 14:00:30+02:00 is
    # 12:00:30 UTC
    _event(3, "2024-05-01T14:00:30+02:00", "page_view", "mobile", None),
    _event(4, "2024-05-01T12:00:20Z", "search", "mobile", None, search_query="shoes"),
    # 12:01 UTC, desktop, DE: a purchase of 9.99 (revenue on a page view does not count)
    _event(5, "2024-05-01T12:01:00Z", "purchase", "desktop", "DE", order_id="o-5",
           revenue=9.99, currency="EUR"),
    _event(6, "2024-05-01T12:01:30Z", "page_view", "desktop", "DE", revenue=5.0, currency="EUR"),
]  # fmt: skip

# (minute, device_type, country, events, page_views, add_to_carts, purchases, revenue)
EXPECTED = [
    (datetime(2024, 5, 1, 12, 0, tzinfo=UTC), "desktop", "DE", 2, 1, 1, 0, Decimal("0.00")),
    (datetime(2024, 5, 1, 12, 0, tzinfo=UTC), "mobile", "", 2, 1, 0, 0, Decimal("0.00")),
    (datetime(2024, 5, 1, 12, 1, tzinfo=UTC), "desktop", "DE", 2, 1, 0, 1, Decimal("9.99")),
]


def _write(engine: Engine, events: list[Any]) -> None:
    with engine.begin() as conn:
        write_batch(
            conn,
            events=[PositionedEvent(e, 0, i) for i, e in enumerate(events)],
            rules=SessionRules(),
        )


def _rows(engine: Engine) -> list[tuple[Any, ...]]:
    t = traffic_minute_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                t.minute, t.device_type, t.country, t.events, t.page_views, t.add_to_carts,
                t.purchases, t.revenue,
            ).order_by(t.minute, t.device_type, t.country)
        ).all()  # fmt: skip
    return [
        (row[0].replace(tzinfo=UTC) if row[0].tzinfo is None else row[0], *row[1:7],
         Decimal(row[7]).quantize(Decimal("0.01")))
        for row in rows
    ]  # fmt: skip


def test_rows_per_minute_device_and_country_with_empty_country(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'traffic.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        _write(engine, list(reversed(EVENTS)))
        assert _rows(engine) == EXPECTED
        # Redelivery of a batch (and of one event within it) adds nothing.
        _write(engine, [EVENTS[0], *EVENTS[:3]])
        assert _rows(engine) == EXPECTED
    finally:
        engine.dispose()

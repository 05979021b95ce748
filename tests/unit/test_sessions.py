"""The session definition, as a pure function, against hand-computed golden cases."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from clickstream.events import ClickEvent
from clickstream.sessions import (
    Session,
    SessionEvent,
    build_sessions,
    extend_session,
    funnel_advance,
    session_id_for,
    traffic_source,
)
from tests.golden import CASES, ExpectedSession, GoldenCase

GAP = timedelta(minutes=30)
MAX = timedelta(hours=24)


def as_session_event(data: dict) -> SessionEvent:
    event = ClickEvent.model_validate_json(json.dumps(data))
    return SessionEvent(
        event_id=event.event_id,
        occurred_at=event.occurred_at,
        event_type=str(event.event_type),
        page_url=event.page_url,
        page_type=str(event.page_type),
        referrer_url=event.referrer_url,
        utm_source=event.utm_source,
        device_type=str(event.device_type),
        os=event.os,
        browser=event.browser,
        country=event.country,
        city=event.city,
        revenue=event.revenue,
    )


def observed(session: Session) -> ExpectedSession:
    return ExpectedSession(
        user_id=session.user_id,
        started_at=session.started_at.isoformat(),
        ended_at=session.ended_at.isoformat(),
        duration_seconds=session.duration_seconds,
        event_count=session.event_count,
        page_views=session.page_views,
        purchases=session.purchases,
        revenue=session.revenue,
        converted=session.converted,
        bounced=session.bounced,
        entry_page=session.entry_page,
        exit_page=session.exit_page,
        conversion_path=session.conversion_path,
        traffic_source=session.traffic_source,
        device_type=session.device_type,
        country=session.country,
    )


def sessions_of(case: GoldenCase) -> list[ExpectedSession]:
    result = []
    for user in sorted({item.event["user_id"] for item in case.events}):
        mine = [as_session_event(i.event) for i in case.events if i.event["user_id"] == user]
        result += [observed(s) for s in build_sessions(user, mine, gap=GAP, max_length=MAX)]
    return result


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_golden_case(case: GoldenCase) -> None:
    expected = sorted(case.sessions, key=lambda s: (s.user_id, s.started_at))
    assert sorted(sessions_of(case), key=lambda s: (s.user_id, s.started_at)) == expected


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_input_order_and_duplicates_do_not_matter(case: GoldenCase) -> None:
    rng = random.Random(case.name)
    for _ in range(5):
        for user in {item.event["user_id"] for item in case.events}:
            mine = [as_session_event(i.event) for i in case.events if i.event["user_id"] == user]
            shuffled = mine + rng.sample(mine, len(mine) // 2 + 1)
            rng.shuffle(shuffled)
            assert build_sessions(user, shuffled, gap=GAP, max_length=MAX) == build_sessions(
                user, mine, gap=GAP, max_length=MAX
            )


def test_session_id_is_deterministic_and_follows_the_first_event() -> None:
    case = next(c for c in CASES if c.name == "late_bridge")
    events = [as_session_event(i.event) for i in case.events]
    (merged,) = build_sessions("bridge", events, gap=GAP, max_length=MAX)
    assert merged.session_id == session_id_for("00000000-0000-4000-8000-00000000000b")
    # ids are case-insensitive: the same event written upper case gives the same session id
    assert session_id_for("00000000-0000-4000-8000-00000000000B") == merged.session_id
    # before the bridging event arrives, the first session already has that id
    first, second = build_sessions("bridge", events[:2], gap=GAP, max_length=MAX)
    assert first.session_id == merged.session_id
    assert second.session_id != merged.session_id


def test_session_id_is_the_uuid5_of_the_first_event_id() -> None:
    namespace = uuid.UUID("5b0a7a52-3f6c-4c1e-9a47-0d3c2f1e8b61")  # the project's namespace
    # The value computed once with the standard library, written down.
    assert (
        session_id_for("00000000-0000-4000-8000-00000000000b")
        == str(uuid.uuid5(namespace, "00000000-0000-4000-8000-00000000000b"))
        == "23f2b57a-e018-544c-9c4d-b13fbac8c732"
    )
    rng = random.Random(5)
    for _ in range(500):
        name = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        assert session_id_for(name) == str(uuid.uuid5(namespace, name))
    # not only UUIDs: any text id, non-ASCII included, hashes as its lower-case UTF-8
    assert session_id_for("Événement-7") == str(uuid.uuid5(namespace, "événement-7"))


@pytest.mark.parametrize(
    ("utm", "referrer", "expected"),
    [
        ("newsletter", "https://www.google.com/", "newsletter"),
        (None, "https://www.google.com/search?q=a", "google.com"),
        (None, "https://WWW.Example.ORG:8443/x", "example.org"),
        (None, "https://wwwx.example.org/", "wwwx.example.org"),
        (None, "android-app://com.google.android.gm/", "com.google.android.gm"),
        (None, "mailto:someone@example.com", "direct"),  # an absolute URL without a host
        ("", "https://bing.com/", "bing.com"),
        (None, None, "direct"),
        ("", None, "direct"),
    ],
)
def test_traffic_source_rules(utm: str | None, referrer: str | None, expected: str) -> None:
    assert traffic_source(utm, referrer) == expected


def _plain(
    n: int, at: datetime, kind: str = "page_view", revenue: str | None = None
) -> SessionEvent:
    return SessionEvent(
        event_id=f"00000000-0000-4000-8000-{n:012x}",
        occurred_at=at,
        event_type=kind,
        page_url=f"https://shop.example/{n}",
        page_type="confirmation" if kind == "purchase" else "home",
        referrer_url=None,
        utm_source=None,
        device_type="mobile",
        os=None,
        browser=None,
        country=None,
        city=None,
        revenue=Decimal(revenue) if revenue else None,
    )


T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_extend_session_matches_a_full_rebuild() -> None:
    rng = random.Random(7)
    for _ in range(200):
        times = sorted(
            T0 + timedelta(minutes=rng.choice([0, 1, 10, 30, 31, 600])) * k for k in range(1, 12)
        )
        events = [_plain(i, t) for i, t in enumerate(times)]
        split = rng.randint(1, len(events) - 1)
        head = build_sessions("u", events[:split], gap=GAP, max_length=MAX)
        later = [e for e in events[split:] if e.occurred_at > head[-1].ended_at]
        if len(later) != len(events) - split:
            continue
        extended = extend_session(head[-1], later, gap=GAP, max_length=MAX)
        assert extended is not None
        assert head[:-1] + extended == build_sessions("u", events, gap=GAP, max_length=MAX)


def test_extend_session_defers_a_first_purchase_to_a_rebuild() -> None:
    (session,) = build_sessions("u", [_plain(1, T0)], gap=GAP, max_length=MAX)
    purchase = _plain(2, T0 + timedelta(minutes=1), "purchase", "1.00")
    assert extend_session(session, [purchase], gap=GAP, max_length=MAX) is None
    # a purchase that starts a new session needs no history
    late = _plain(3, T0 + timedelta(hours=2), "purchase", "2.50")
    head, new = extend_session(session, [late], gap=GAP, max_length=MAX) or []
    assert head == session
    assert (new.purchases, new.revenue, new.conversion_path) == (1, Decimal("2.50"), "confirmation")


def test_single_event_session_is_a_bounce_of_zero_seconds() -> None:
    (session,) = build_sessions("u", [_plain(1, T0)], gap=GAP, max_length=MAX)
    assert (session.bounced, session.duration_seconds, session.event_count) == (True, 0.0, 1)
    assert session.converted is False and session.conversion_path is None


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (event_type, page_type) in order -> funnel step reached, worked out by hand
        ([("page_view", "home")], 1),
        ([("page_view", "product")], 2),  # landing on a product page is a product view
        ([("add_to_cart", "product")], 0),  # no page view yet
        ([("page_view", "home"), ("add_to_cart", "product")], 1),  # no product view yet
        (
            [("page_view", "home"), ("page_view", "product"), ("add_to_cart", "product")],
            3,
        ),
        (
            [
                ("page_view", "product"),
                ("begin_checkout", "checkout"),  # out of order: checkout before the cart
                ("add_to_cart", "product"),
                ("purchase", "confirmation"),  # a purchase without a checkout step
            ],
            3,
        ),
        (
            [
                ("page_view", "category"),
                ("page_view", "product"),
                ("add_to_cart", "product"),
                ("begin_checkout", "checkout"),
                ("purchase", "confirmation"),
            ],
            5,
        ),
    ],
)
def test_funnel_step_is_reached_in_order(steps: list[tuple[str, str]], expected: int) -> None:
    step = 0
    for event_type, page_type in steps:
        step = funnel_advance(step, event_type, page_type)
    assert step == expected


def test_funnel_step_of_the_golden_buyer_is_complete() -> None:
    case = next(c for c in CASES if c.name == "conversion_path")
    events = [as_session_event(i.event) for i in case.events]
    (session,) = build_sessions("buyer", events, gap=GAP, max_length=MAX)
    assert session.funnel_step == 5
    head, *_ = build_sessions("buyer", events[:4], gap=GAP, max_length=MAX)
    assert head.funnel_step == 2  # home, home, category, product page views
    (extended,) = extend_session(head, events[4:5], gap=GAP, max_length=MAX) or []
    assert extended.funnel_step == 3  # + add_to_cart, through the fast path


def test_one_second_past_the_24_hour_cap_starts_a_new_session() -> None:
    # Worked out by hand: page views every 30 minutes (each exactly the gap: joins) from
    # 00:00 to 24:00 make 49 events, the last exactly 24 h after the first (joins). One more
    # at 24:00:01 is 1 s after the previous event but 24 h 1 s after the session's first:
    # the cap starts a second, one-event session.
    start = datetime(2024, 5, 2, tzinfo=UTC)
    events = [_plain(k, start + timedelta(minutes=30 * k)) for k in range(49)]
    events.append(_plain(49, start + timedelta(hours=24, seconds=1)))
    first, second = build_sessions("u", events, gap=GAP, max_length=MAX)
    assert (first.started_at, first.ended_at) == (start, datetime(2024, 5, 3, tzinfo=UTC))
    assert (first.event_count, first.duration_seconds) == (49, 86400.0)
    assert first.exit_page == "https://shop.example/48"
    assert (second.started_at, second.event_count, second.bounced) == (
        datetime(2024, 5, 3, 0, 0, 1, tzinfo=UTC),
        1,
        True,
    )
    assert second.session_id == session_id_for("00000000-0000-4000-8000-000000000031")
    # The same through the in-place path: the open session cannot take the 24:00:01 event.
    (head,) = build_sessions("u", events[:49], gap=GAP, max_length=MAX)
    assert extend_session(head, events[49:], gap=GAP, max_length=MAX) == [first, second]

"""Golden session cases: input events and the sessions they must produce, computed by hand.

Every expectation below was worked out on paper from the definitions in the domain contract
(30-minute inactivity gap and 24-hour maximum length, both inclusive; order by occurred_at then
lower-case event_id; conversion path up to the first purchase with repeats collapsed; traffic
source rules). They are literals on purpose: nothing here calls the code under test.

``wave`` says when an event is sent: wave 2 events arrive after wave 1 was stored (late events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

SHOP = "https://shop.example"


def _id(n: int, *, upper: bool = False) -> str:
    text = f"00000000-0000-4000-8000-{n:012x}"
    return text.upper() if upper else text


@dataclass(frozen=True)
class GoldenEvent:
    event: dict[str, Any]
    wave: int = 1


@dataclass(frozen=True)
class ExpectedSession:
    user_id: str
    started_at: str  # UTC, ISO 8601
    ended_at: str
    duration_seconds: float
    event_count: int
    page_views: int
    purchases: int
    revenue: Decimal
    converted: bool
    bounced: bool
    entry_page: str
    exit_page: str
    conversion_path: str | None
    traffic_source: str
    device_type: str = "desktop"
    country: str | None = "DE"


@dataclass(frozen=True)
class GoldenCase:
    name: str
    events: list[GoldenEvent]
    sessions: list[ExpectedSession]
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def event(
    n: int,
    user: str,
    at: str,
    *,
    kind: str = "page_view",
    page: str = "/",
    page_type: str = "home",
    upper_id: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event_id": _id(n, upper=upper_id),
        "event_type": kind,
        "occurred_at": at,
        "user_id": user,
        "page_url": SHOP + page,
        "page_type": page_type,
        "device_type": "desktop",
        "country": "DE",
        "city": "Berlin",
    }
    data.update(fields)
    return data


def _marathon() -> GoldenCase:
    # One event every 20 minutes from 00:00 to 25:00 (76 events). Gaps never exceed 30 min,
    # so only the 24-hour cap splits: 00:00 .. 24:00 (k=0..72, exactly 24 h joins) is one
    # session of 73 events; 24:20, 24:40, 25:00 start and fill the second.
    events = []
    for k in range(76):
        minutes = 20 * k
        day, rest = divmod(minutes, 24 * 60)
        at = f"2024-05-{2 + day:02d}T{rest // 60:02d}:{rest % 60:02d}:00Z"
        events.append(GoldenEvent(event(1000 + k, "marathon", at, page=f"/p{k}")))
    return GoldenCase(
        "cap_24h",
        events,
        [
            ExpectedSession(
                "marathon",
                "2024-05-02T00:00:00+00:00",
                "2024-05-03T00:00:00+00:00",
                86400.0,
                73,
                73,
                0,
                Decimal("0.00"),
                False,
                False,
                SHOP + "/p0",
                SHOP + "/p72",
                None,
                "direct",
            ),
            ExpectedSession(
                "marathon",
                "2024-05-03T00:20:00+00:00",
                "2024-05-03T01:00:00+00:00",
                2400.0,
                3,
                3,
                0,
                Decimal("0.00"),
                False,
                False,
                SHOP + "/p73",
                SHOP + "/p75",
                None,
                "direct",
            ),
        ],
    )


CASES: list[GoldenCase] = [
    GoldenCase(
        "gap_boundary",
        [
            GoldenEvent(event(1, "gap", "2024-05-01T10:00:00Z", page="/a")),
            # exactly 30 minutes later: joins
            GoldenEvent(event(2, "gap", "2024-05-01T10:30:00Z", page="/b")),
            # 30 minutes and 1 second after the previous event: a new session
            GoldenEvent(event(3, "gap", "2024-05-01T11:00:01Z", page="/c")),
        ],
        [
            ExpectedSession(
                "gap",
                "2024-05-01T10:00:00+00:00",
                "2024-05-01T10:30:00+00:00",
                1800.0,
                2,
                2,
                0,
                Decimal("0.00"),
                False,
                False,
                SHOP + "/a",
                SHOP + "/b",
                None,
                "direct",
            ),
            ExpectedSession(
                "gap",
                "2024-05-01T11:00:01+00:00",
                "2024-05-01T11:00:01+00:00",
                0.0,
                1,
                1,
                0,
                Decimal("0.00"),
                False,
                True,
                SHOP + "/c",
                SHOP + "/c",
                None,
                "direct",
            ),
        ],
    ),
    GoldenCase(
        "late_bridge",
        [
            GoldenEvent(event(11, "bridge", "2024-05-01T09:00:00Z", page="/first")),
            GoldenEvent(event(12, "bridge", "2024-05-01T10:00:00Z", page="/last")),
            # arrives later; 30 minutes after the first and 30 before the last: one session
            GoldenEvent(event(13, "bridge", "2024-05-01T09:30:00Z", page="/middle"), wave=2),
        ],
        [
            ExpectedSession(
                "bridge",
                "2024-05-01T09:00:00+00:00",
                "2024-05-01T10:00:00+00:00",
                3600.0,
                3,
                3,
                0,
                Decimal("0.00"),
                False,
                False,
                SHOP + "/first",
                SHOP + "/last",
                None,
                "direct",
            ),
        ],
        notes="before wave 2 there are two bounced sessions; afterwards one",
    ),
    _marathon(),
    GoldenCase(
        "equal_timestamps",
        [
            # Same instant: order by lower-case event_id, so ...0bb (written upper case) comes
            # after ...0aa although "B" sorts before "a" in raw text.
            GoldenEvent(event(0xBB, "ties", "2024-05-01T12:00:00Z", page="/bee", upper_id=True)),
            GoldenEvent(event(0xAA, "ties", "2024-05-01T12:00:00Z", page="/ay")),
        ],
        [
            ExpectedSession(
                "ties",
                "2024-05-01T12:00:00+00:00",
                "2024-05-01T12:00:00+00:00",
                0.0,
                2,
                2,
                0,
                Decimal("0.00"),
                False,
                False,
                SHOP + "/ay",
                SHOP + "/bee",
                None,
                "direct",
            ),
        ],
    ),
    GoldenCase(
        "conversion_path",
        [
            GoldenEvent(event(21, "buyer", "2024-05-01T08:00:00Z", page="/")),
            GoldenEvent(event(22, "buyer", "2024-05-01T08:01:00Z", page="/")),
            GoldenEvent(
                event(23, "buyer", "2024-05-01T08:02:00Z", page="/shoes", page_type="category")
            ),
            GoldenEvent(
                event(24, "buyer", "2024-05-01T08:03:00Z", page="/shoes/1", page_type="product")
            ),
            GoldenEvent(
                event(
                    25,
                    "buyer",
                    "2024-05-01T08:04:00Z",
                    kind="add_to_cart",
                    page="/shoes/1",
                    page_type="product",
                    product_id="shoe-1",
                )
            ),
            GoldenEvent(event(26, "buyer", "2024-05-01T08:05:00Z", page="/cart", page_type="cart")),
            GoldenEvent(
                event(
                    27,
                    "buyer",
                    "2024-05-01T08:06:00Z",
                    kind="begin_checkout",
                    page="/checkout",
                    page_type="checkout",
                )
            ),
            GoldenEvent(
                event(
                    28,
                    "buyer",
                    "2024-05-01T08:07:00Z",
                    kind="purchase",
                    page="/thanks",
                    page_type="confirmation",
                    order_id="o-1",
                    revenue=59.9,
                    currency="EUR",
                )
            ),
            # after the first purchase: counted, but not part of the conversion path
            GoldenEvent(
                event(29, "buyer", "2024-05-01T08:08:00Z", page="/account", page_type="account")
            ),
            GoldenEvent(
                event(
                    30,
                    "buyer",
                    "2024-05-01T08:09:00Z",
                    kind="purchase",
                    page="/thanks",
                    page_type="confirmation",
                    order_id="o-2",
                    revenue=10.05,
                    currency="EUR",
                )
            ),
        ],
        [
            ExpectedSession(
                "buyer",
                "2024-05-01T08:00:00+00:00",
                "2024-05-01T08:09:00+00:00",
                540.0,
                10,
                6,
                2,
                Decimal("69.95"),
                True,
                False,
                SHOP + "/",
                SHOP + "/thanks",
                "home > category > product > cart > checkout > confirmation",
                "direct",
            ),
        ],
    ),
    GoldenCase(
        "late_purchase_converts",
        [
            GoldenEvent(
                event(31, "late-buyer", "2024-05-01T14:00:00Z", page="/p", page_type="product")
            ),
            GoldenEvent(
                event(32, "late-buyer", "2024-05-01T14:10:00Z", page="/cart", page_type="cart")
            ),
            GoldenEvent(
                event(
                    33,
                    "late-buyer",
                    "2024-05-01T14:05:00Z",
                    kind="purchase",
                    page="/thanks",
                    page_type="confirmation",
                    order_id="o-3",
                    revenue=5,
                    currency="USD",
                ),
                wave=2,
            ),
        ],
        [
            ExpectedSession(
                "late-buyer",
                "2024-05-01T14:00:00+00:00",
                "2024-05-01T14:10:00+00:00",
                600.0,
                3,
                2,
                1,
                Decimal("5.00"),
                True,
                False,
                SHOP + "/p",
                SHOP + "/cart",
                "product > confirmation",
                "direct",
            ),
        ],
    ),
    GoldenCase(
        "traffic_sources",
        [
            GoldenEvent(
                event(
                    41,
                    "src-utm",
                    "2024-05-01T07:00:00Z",
                    utm_source="newsletter",
                    utm_medium="email",
                    referrer_url="https://www.google.com/",
                )
            ),
            # only the first event decides
            GoldenEvent(event(42, "src-utm", "2024-05-01T07:01:00Z", utm_source="other")),
            GoldenEvent(
                event(
                    43,
                    "src-ref",
                    "2024-05-01T07:00:00Z",
                    referrer_url="https://WWW.Google.COM/search?q=x",
                )
            ),
            GoldenEvent(
                event(
                    44,
                    "src-sub",
                    "2024-05-01T07:00:00Z",
                    referrer_url="https://news.ycombinator.com/item",
                )
            ),
            GoldenEvent(event(45, "src-direct", "2024-05-01T07:00:00Z")),
        ],
        [
            ExpectedSession(
                "src-utm",
                "2024-05-01T07:00:00+00:00",
                "2024-05-01T07:01:00+00:00",
                60.0,
                2,
                2,
                0,
                Decimal("0.00"),
                False,
                False,
                SHOP + "/",
                SHOP + "/",
                None,
                "newsletter",
            ),
            ExpectedSession(
                "src-ref",
                "2024-05-01T07:00:00+00:00",
                "2024-05-01T07:00:00+00:00",
                0.0,
                1,
                1,
                0,
                Decimal("0.00"),
                False,
                True,
                SHOP + "/",
                SHOP + "/",
                None,
                "google.com",
            ),
            ExpectedSession(
                "src-sub",
                "2024-05-01T07:00:00+00:00",
                "2024-05-01T07:00:00+00:00",
                0.0,
                1,
                1,
                0,
                Decimal("0.00"),
                False,
                True,
                SHOP + "/",
                SHOP + "/",
                None,
                "news.ycombinator.com",
            ),
            ExpectedSession(
                "src-direct",
                "2024-05-01T07:00:00+00:00",
                "2024-05-01T07:00:00+00:00",
                0.0,
                1,
                1,
                0,
                Decimal("0.00"),
                False,
                True,
                SHOP + "/",
                SHOP + "/",
                None,
                "direct",
            ),
        ],
    ),
    GoldenCase(
        "time_zones",
        [
            # 12:00+02:00 is 10:00Z; 05:20-05:00 is 10:20Z: 20 minutes apart, one session
            GoldenEvent(event(51, "tz", "2024-05-01T12:00:00+02:00", page="/berlin")),
            GoldenEvent(event(52, "tz", "2024-05-01T05:20:00-05:00", page="/chicago")),
            # 10:49:59.5Z written in +05:30: 29m59.5s later, still the same session
            GoldenEvent(event(53, "tz", "2024-05-01T16:19:59.500+05:30", page="/delhi")),
        ],
        [
            ExpectedSession(
                "tz",
                "2024-05-01T10:00:00+00:00",
                "2024-05-01T10:49:59.500000+00:00",
                2999.5,
                3,
                3,
                0,
                Decimal("0.00"),
                False,
                False,
                SHOP + "/berlin",
                SHOP + "/delhi",
                None,
                "direct",
            ),
        ],
    ),
]


def all_events() -> list[dict[str, Any]]:
    return [item.event for case in CASES for item in case.events]


def all_sessions() -> list[ExpectedSession]:
    return [session for case in CASES for session in case.sessions]

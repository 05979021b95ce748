"""Realistic web-shop traffic, simulated: visitors, sessions and click events (pure, no I/O).

A :class:`TrafficSimulator` plays a population of visitors made with Faker. Each visitor has a
stable device (type, operating system and browser that belong together), a stable location (a
real city from :data:`CITIES`, coordinates jittered a few kilometres around it) and an
acquisition channel (direct, organic or paid search, social, e-mail campaign, referral).
Visitors arrive as a Poisson process and walk through the shop along a Markov chain over page
types (home, category, product, search, cart, checkout, confirmation, account, other), with
log-normal dwell times; they add to and remove from the cart, begin checkout and buy. Whether a
session converts is decided when it starts (``conversion_rate``), and a converting session
follows a chain that leads to the confirmation page. Returning visitors come back after more
than 30 minutes of inactivity, so every session the simulator starts is also a session by the
web-analytics definition. Many sessions are active at once and their events interleave.

Everything is deterministic for a seed and a clock: randomness comes from one
:class:`random.Random` and one Faker instance, both seeded per simulator, and time comes from the
injected clock. The simulator yields :class:`SimulatedEvent` records in non-decreasing
``occurred_at`` order (so also per visitor). :meth:`SimulatedEvent.to_json` is a fast serializer
whose bytes are identical to :meth:`ClickEvent.to_json() <clickstream.events.ClickEvent.to_json>`
(a test checks this), and :meth:`SimulatedEvent.to_click_event` builds the validated model.
:meth:`TrafficSimulator.messages` yields the same events as Kafka key, value and time without
the records: the producer's fast path.
"""

from __future__ import annotations

import heapq
import importlib
import importlib.machinery
import math
import os
import random
import time
from bisect import bisect, insort
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from itertools import accumulate, islice
from json.encoder import encode_basestring as _json_string
from pathlib import Path
from statistics import NormalDist
from types import MappingProxyType, ModuleType
from typing import Final, NamedTuple, TypeVar
from urllib.parse import quote_plus, urlsplit

import pydantic_core
from faker import Faker

from clickstream._build_stamp import source_digest
from clickstream.errors import ConfigError
from clickstream.events import ClickEvent, DeviceType, EventType, PageType

__all__ = [
    "CITIES",
    "DEVICE_PROFILES",
    "Campaign",
    "Channel",
    "City",
    "DeviceProfile",
    "EventDetails",
    "PageVisit",
    "SimulatedEvent",
    "SimulatorConfig",
    "TrafficSimulator",
    "Visitor",
    "WireEvent",
    "event_details",
    "page_visit",
    "visitor",
]

_CENT: Final = Decimal("0.01")
_KM_PER_DEGREE: Final = 111.32
_INACTIVITY_GAP_SECONDS: Final = 30 * 60
"""The web-analytics session gap; the simulator keeps within-session pauses below it."""
MIN_EVENTS_PER_SECOND: Final = 1e-9
"""Sparsest timeline: about one event in 30 years (bounds the time buckets' size)."""
MAX_EVENTS_PER_SECOND: Final = 1e7
"""Densest timeline: far above what one process sends, well inside float time arithmetic."""
MAX_SITE_URL_LENGTH: Final = 1024
"""Leaves room for the longest path, query and campaign tags within a 2048-character URL."""

BACKFILL_ALIGN_MAX: Final = 200_000
"""Backfills of at most this many events end within a second of now (see ``backfill``): they
are made twice, which costs about a second at this size; larger ones leave a few percent."""


class Channel(StrEnum):
    """How a visitor found the shop (their acquisition channel)."""

    DIRECT = "direct"
    ORGANIC_SEARCH = "organic_search"
    PAID_SEARCH = "paid_search"
    SOCIAL = "social"
    EMAIL = "email"
    REFERRAL = "referral"


@dataclass(frozen=True, slots=True)
class City:
    """A real city: English name (as GeoIP databases give it), ISO 3166-1 country, centre."""

    name: str
    country: str
    latitude: float
    longitude: float
    weight: float
    """Relative share of the shop's visitors from this city."""


# A shop based in Europe that ships worldwide: most traffic is European.
CITIES: Final[tuple[City, ...]] = (
    City("Berlin", "DE", 52.5200, 13.4050, 6.0),
    City("Hamburg", "DE", 53.5511, 9.9937, 3.0),
    City("Munich", "DE", 48.1351, 11.5820, 2.8),
    City("Cologne", "DE", 50.9375, 6.9603, 1.8),
    City("Frankfurt am Main", "DE", 50.1109, 8.6821, 1.5),
    City("Düsseldorf", "DE", 51.2277, 6.7735, 1.2),
    City("Paris", "FR", 48.8566, 2.3522, 4.5),
    City("Lyon", "FR", 45.7640, 4.8357, 1.2),
    City("Marseille", "FR", 43.2965, 5.3698, 1.0),
    City("London", "GB", 51.5074, -0.1278, 5.5),
    City("Manchester", "GB", 53.4808, -2.2426, 1.3),
    City("Birmingham", "GB", 52.4862, -1.8904, 1.1),
    City("Edinburgh", "GB", 55.9533, -3.1883, 0.6),
    City("Dublin", "IE", 53.3498, -6.2603, 0.9),
    City("Amsterdam", "NL", 52.3676, 4.9041, 2.0),
    City("Rotterdam", "NL", 51.9244, 4.4777, 0.9),
    City("Brussels", "BE", 50.8503, 4.3517, 1.0),
    City("Vienna", "AT", 48.2082, 16.3738, 1.6),
    City("Zurich", "CH", 47.3769, 8.5417, 1.1),
    City("Madrid", "ES", 40.4168, -3.7038, 2.2),
    City("Barcelona", "ES", 41.3874, 2.1686, 1.8),
    City("Lisbon", "PT", 38.7223, -9.1393, 0.9),
    City("Rome", "IT", 41.9028, 12.4964, 1.8),
    City("Milan", "IT", 45.4642, 9.1900, 1.7),
    City("Stockholm", "SE", 59.3293, 18.0686, 1.1),
    City("Malmö", "SE", 55.6050, 13.0038, 0.4),
    City("Copenhagen", "DK", 55.6761, 12.5683, 0.9),
    City("Oslo", "NO", 59.9139, 10.7522, 0.7),
    City("Helsinki", "FI", 60.1699, 24.9384, 0.6),
    City("Warsaw", "PL", 52.2297, 21.0122, 1.4),
    City("Kraków", "PL", 50.0647, 19.9450, 0.6),
    City("Prague", "CZ", 50.0755, 14.4378, 0.9),
    City("Budapest", "HU", 47.4979, 19.0402, 0.7),
    City("Athens", "GR", 37.9838, 23.7275, 0.6),
    City("Istanbul", "TR", 41.0082, 28.9784, 0.8),
    City("Tel Aviv", "IL", 32.0853, 34.7818, 0.3),
    City("Dubai", "AE", 25.2048, 55.2708, 0.4),
    City("Cairo", "EG", 30.0444, 31.2357, 0.3),
    City("Lagos", "NG", 6.5244, 3.3792, 0.2),
    City("Nairobi", "KE", -1.2921, 36.8219, 0.2),
    City("Johannesburg", "ZA", -26.2041, 28.0473, 0.3),
    City("Cape Town", "ZA", -33.9249, 18.4241, 0.3),
    City("New York", "US", 40.7128, -74.0060, 3.0),
    City("Los Angeles", "US", 34.0522, -118.2437, 1.6),
    City("Chicago", "US", 41.8781, -87.6298, 1.1),
    City("Houston", "US", 29.7604, -95.3698, 0.7),
    City("Miami", "US", 25.7617, -80.1918, 0.6),
    City("San Francisco", "US", 37.7749, -122.4194, 0.8),
    City("Seattle", "US", 47.6062, -122.3321, 0.6),
    City("Toronto", "CA", 43.6532, -79.3832, 0.9),
    City("Montreal", "CA", 45.5017, -73.5673, 0.5),
    City("Vancouver", "CA", 49.2827, -123.1207, 0.4),
    City("Mexico City", "MX", 19.4326, -99.1332, 0.6),
    City("Bogotá", "CO", 4.7110, -74.0721, 0.3),
    City("São Paulo", "BR", -23.5505, -46.6333, 0.8),
    City("Rio de Janeiro", "BR", -22.9068, -43.1729, 0.4),
    City("Buenos Aires", "AR", -34.6037, -58.3816, 0.4),
    City("Santiago", "CL", -33.4489, -70.6693, 0.3),
    City("Tokyo", "JP", 35.6762, 139.6503, 1.0),
    City("Osaka", "JP", 34.6937, 135.5023, 0.4),
    City("Seoul", "KR", 37.5665, 126.9780, 0.5),
    City("Singapore", "SG", 1.3521, 103.8198, 0.5),
    City("Mumbai", "IN", 19.0760, 72.8777, 0.5),
    City("Bengaluru", "IN", 12.9716, 77.5946, 0.4),
    City("Sydney", "AU", -33.8688, 151.2093, 0.7),
    City("Melbourne", "AU", -37.8136, 144.9631, 0.6),
    City("Auckland", "NZ", -36.8485, 174.7633, 0.3),
)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """A device type with an operating system and browser that actually ship together."""

    device_type: DeviceType
    os: str
    browser: str
    weight: float
    """Share within its device type."""


DEVICE_PROFILES: Final[tuple[DeviceProfile, ...]] = (
    DeviceProfile(DeviceType.DESKTOP, "Windows", "Chrome", 0.42),
    DeviceProfile(DeviceType.DESKTOP, "Windows", "Edge", 0.14),
    DeviceProfile(DeviceType.DESKTOP, "Windows", "Firefox", 0.06),
    DeviceProfile(DeviceType.DESKTOP, "macOS", "Safari", 0.12),
    DeviceProfile(DeviceType.DESKTOP, "macOS", "Chrome", 0.14),
    DeviceProfile(DeviceType.DESKTOP, "macOS", "Firefox", 0.03),
    DeviceProfile(DeviceType.DESKTOP, "Linux", "Firefox", 0.03),
    DeviceProfile(DeviceType.DESKTOP, "Linux", "Chrome", 0.03),
    DeviceProfile(DeviceType.DESKTOP, "ChromeOS", "Chrome", 0.03),
    DeviceProfile(DeviceType.MOBILE, "iOS", "Safari", 0.38),
    DeviceProfile(DeviceType.MOBILE, "iOS", "Chrome", 0.07),
    DeviceProfile(DeviceType.MOBILE, "Android", "Chrome", 0.42),
    DeviceProfile(DeviceType.MOBILE, "Android", "Samsung Internet", 0.10),
    DeviceProfile(DeviceType.MOBILE, "Android", "Firefox", 0.03),
    DeviceProfile(DeviceType.TABLET, "iOS", "Safari", 0.55),
    DeviceProfile(DeviceType.TABLET, "iOS", "Chrome", 0.10),
    DeviceProfile(DeviceType.TABLET, "Android", "Chrome", 0.25),
    DeviceProfile(DeviceType.TABLET, "Android", "Samsung Internet", 0.10),
)

_SEARCH_ENGINES: Final = (
    ("https://www.google.com/", "google", 0.85),
    ("https://www.bing.com/", "bing", 0.07),
    ("https://duckduckgo.com/", "duckduckgo", 0.04),
    ("https://search.yahoo.com/", "yahoo", 0.02),
    ("https://www.ecosia.org/", "ecosia", 0.02),
)
_SOCIAL_NETWORKS: Final = (
    ("https://l.instagram.com/", "instagram", 0.30),
    ("https://l.facebook.com/", "facebook", 0.25),
    ("https://www.pinterest.com/", "pinterest", 0.15),
    ("https://www.tiktok.com/", "tiktok", 0.12),
    ("https://www.reddit.com/", "reddit", 0.10),
    ("https://t.co/", "twitter", 0.08),
)
_EMAIL_CAMPAIGNS: Final = (
    "weekly_newsletter",
    "new_arrivals",
    "winter_sale",
    "black_friday_2026",
    "cyber_monday_2026",
    "cart_reminder",
)
_PAID_CAMPAIGNS: Final = ("brand_search", "generic_shoes", "generic_jackets", "shopping_feed")
_SOCIAL_CAMPAIGNS: Final = ("influencer_autumn", "retargeting", "new_arrivals")

# Category slug -> (product nouns, median price in the shop's currency).
_CATEGORIES: Final[dict[str, tuple[tuple[str, ...], float]]] = {
    "shoes": (("sneakers", "boots", "loafers", "sandals", "running shoes"), 89.0),
    "jackets": (("parka", "rain jacket", "denim jacket", "puffer jacket", "blazer"), 139.0),
    "t-shirts": (("t-shirt", "polo shirt", "tank top", "long sleeve"), 24.0),
    "trousers": (("jeans", "chinos", "cargo trousers", "joggers"), 59.0),
    "dresses": (("summer dress", "maxi dress", "shirt dress", "knit dress"), 69.0),
    "bags": (("backpack", "tote bag", "crossbody bag", "weekender"), 49.0),
    "accessories": (("beanie", "scarf", "belt", "sunglasses", "watch"), 29.0),
    "sportswear": (("leggings", "training top", "track jacket", "sports bra"), 39.0),
}
_OTHER_PATHS: Final = ("/about", "/help/shipping", "/help/returns", "/contact", "/stores")
_ACCOUNT_PATHS: Final = ("/account", "/account/orders", "/account/login", "/account/wishlist")

_EXIT: Final = "exit"
Transitions = Mapping[PageType, Mapping[PageType | str, float]]
"""From a page type to the weights of the next page type, or ``"exit"`` (session ends)."""

_BROWSE_TRANSITIONS: Final[Transitions] = {
    PageType.HOME: {
        PageType.CATEGORY: 0.45,
        PageType.SEARCH: 0.15,
        PageType.PRODUCT: 0.15,
        PageType.ACCOUNT: 0.04,
        PageType.OTHER: 0.03,
        PageType.CART: 0.03,
        _EXIT: 0.15,
    },
    PageType.CATEGORY: {
        PageType.PRODUCT: 0.55,
        PageType.CATEGORY: 0.12,
        PageType.SEARCH: 0.06,
        PageType.HOME: 0.05,
        PageType.CART: 0.02,
        _EXIT: 0.20,
    },
    PageType.PRODUCT: {
        PageType.PRODUCT: 0.22,
        PageType.CATEGORY: 0.18,
        PageType.CART: 0.10,
        PageType.SEARCH: 0.06,
        PageType.HOME: 0.04,
        _EXIT: 0.40,
    },
    PageType.SEARCH: {
        PageType.PRODUCT: 0.55,
        PageType.SEARCH: 0.10,
        PageType.CATEGORY: 0.10,
        _EXIT: 0.25,
    },
    PageType.CART: {
        PageType.CHECKOUT: 0.35,
        PageType.PRODUCT: 0.15,
        PageType.CATEGORY: 0.15,
        PageType.HOME: 0.05,
        _EXIT: 0.30,
    },
    PageType.CHECKOUT: {PageType.CART: 0.25, PageType.HOME: 0.05, _EXIT: 0.70},
    PageType.CONFIRMATION: {
        PageType.HOME: 0.10,
        PageType.CATEGORY: 0.10,
        PageType.ACCOUNT: 0.10,
        _EXIT: 0.70,
    },
    PageType.ACCOUNT: {
        PageType.HOME: 0.30,
        PageType.CATEGORY: 0.20,
        PageType.OTHER: 0.10,
        _EXIT: 0.40,
    },
    PageType.OTHER: {PageType.HOME: 0.40, PageType.CATEGORY: 0.20, _EXIT: 0.40},
}
"""Sessions that will not convert; they may abandon checkout but never reach confirmation."""

_BUY_TRANSITIONS: Final[Transitions] = {
    PageType.HOME: {PageType.CATEGORY: 0.50, PageType.SEARCH: 0.20, PageType.PRODUCT: 0.30},
    PageType.CATEGORY: {
        PageType.PRODUCT: 0.75,
        PageType.CATEGORY: 0.10,
        PageType.SEARCH: 0.10,
        PageType.CART: 0.05,
    },
    PageType.PRODUCT: {
        PageType.CART: 0.40,
        PageType.PRODUCT: 0.30,
        PageType.CATEGORY: 0.20,
        PageType.SEARCH: 0.10,
    },
    PageType.SEARCH: {PageType.PRODUCT: 0.85, PageType.SEARCH: 0.10, PageType.CATEGORY: 0.05},
    PageType.CART: {PageType.CHECKOUT: 0.80, PageType.PRODUCT: 0.20},
    PageType.CHECKOUT: {PageType.CONFIRMATION: 0.85, PageType.CART: 0.15},
    PageType.ACCOUNT: {PageType.HOME: 0.50, PageType.CATEGORY: 0.50},
    PageType.OTHER: {PageType.HOME: 0.50, PageType.CATEGORY: 0.50},
}
"""Sessions that will convert: no exit before the purchase; after it they browse on."""


@dataclass(frozen=True)
class SimulatorConfig:
    """Every weight and rate of the simulation, in one place (see docs/producer.md).

    Weights are relative (they need not sum to 1); rates are probabilities in ``[0, 1]``.
    """

    site_url: str = "https://shop.example.com"
    """Origin of the simulated shop; page URLs are built on it."""
    events_per_second: float = 100.0
    """Density of the timeline: events per second of event time, on average."""
    conversion_rate: float = 0.03
    """Share of sessions that end in a purchase."""
    returning_share: float = 0.30
    """Share of sessions started by a returning visitor (once there are visitors to return)."""
    return_after_min_seconds: float = 35 * 60
    """A visitor returns no earlier than this after their previous event (> 30 minutes)."""
    returning_direct_share: float = 0.5
    """Share of returning sessions that come direct rather than through their channel again."""
    max_known_visitors: int = 100_000
    """How many past visitors are remembered as candidates to return (bounds memory)."""
    device_weights: Mapping[DeviceType, float] = field(
        default_factory=lambda: {
            DeviceType.MOBILE: 0.56,
            DeviceType.DESKTOP: 0.38,
            DeviceType.TABLET: 0.06,
        }
    )
    channel_weights: Mapping[Channel, float] = field(
        default_factory=lambda: {
            Channel.DIRECT: 0.28,
            Channel.ORGANIC_SEARCH: 0.34,
            Channel.PAID_SEARCH: 0.09,
            Channel.SOCIAL: 0.13,
            Channel.EMAIL: 0.09,
            Channel.REFERRAL: 0.07,
        }
    )
    location_jitter_km: float = 5.0
    """Visitors' coordinates lie within this distance of their city's centre."""
    dwell_median_seconds: Mapping[PageType, float] = field(
        default_factory=lambda: {
            PageType.HOME: 12.0,
            PageType.CATEGORY: 25.0,
            PageType.PRODUCT: 40.0,
            PageType.SEARCH: 20.0,
            PageType.CART: 30.0,
            PageType.CHECKOUT: 90.0,
            PageType.CONFIRMATION: 15.0,
            PageType.ACCOUNT: 30.0,
            PageType.OTHER: 25.0,
        }
    )
    dwell_sigma: float = 0.9
    """Spread of the log-normal dwell time (sigma of its logarithm)."""
    max_dwell_seconds: float = 15 * 60
    """Longest pause between two pages; below the 30-minute gap so sessions stay whole."""
    browse_transitions: Transitions = field(default_factory=lambda: _BROWSE_TRANSITIONS)
    buy_transitions: Transitions = field(default_factory=lambda: _BUY_TRANSITIONS)
    add_to_cart_rate_browse: float = 0.08
    """Chance that a product page view of a non-converting session adds to the cart."""
    add_to_cart_rate_buy: float = 0.55
    """Chance that a product page view of a converting session adds to the cart."""
    remove_from_cart_rate: float = 0.10
    """Chance that a cart page view with items removes one."""
    max_pages_per_session: int = 40
    """A session ends after this many pages; a converting one first heads for checkout."""
    products_per_category: int = 60
    currency: str = "EUR"
    """ISO 4217 code of every price and revenue (one shop, one currency: revenues add up)."""
    emit_session_id: bool = True
    """Send the tracker's own session id (``session_id``), as most trackers do."""

    def __post_init__(self) -> None:
        # Frozen all the way down: the mappings become read-only copies.
        for name in ("device_weights", "channel_weights", "dwell_median_seconds"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        for name in ("browse_transitions", "buy_transitions"):
            chain = {k: MappingProxyType(dict(row)) for k, row in getattr(self, name).items()}
            object.__setattr__(self, name, MappingProxyType(chain))
        problems: list[str] = []
        for name in (
            "conversion_rate",
            "returning_share",
            "returning_direct_share",
            "add_to_cart_rate_browse",
            "add_to_cart_rate_buy",
            "remove_from_cart_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must lie in [0, 1], got {value}")
        if not MIN_EVENTS_PER_SECOND <= self.events_per_second <= MAX_EVENTS_PER_SECOND:
            problems.append(
                f"events_per_second must lie in [{MIN_EVENTS_PER_SECOND:g}, "
                f"{MAX_EVENTS_PER_SECOND:g}], got {self.events_per_second}"
            )
        if self.return_after_min_seconds <= _INACTIVITY_GAP_SECONDS:
            problems.append("return_after_min_seconds must exceed the 30-minute session gap (1800)")
        if not 1.0 <= self.max_dwell_seconds < _INACTIVITY_GAP_SECONDS:
            problems.append("max_dwell_seconds must lie in [1, 1800) so sessions stay whole")
        if self.max_pages_per_session < 4:
            problems.append("max_pages_per_session must be at least 4 (a purchase needs 4)")
        if self.products_per_category < 1 or self.max_known_visitors < 1:
            problems.append("products_per_category and max_known_visitors must be positive")
        if len(self.currency) != 3 or not self.currency.isascii() or not self.currency.isupper():
            problems.append(f"currency must be an ISO 4217 code, got {self.currency!r}")
        problems += _check_site_url(self.site_url)
        for name, weights in (
            ("device_weights", self.device_weights),
            ("channel_weights", self.channel_weights),
        ):
            if any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
                problems.append(f"{name} must be non-negative with a positive sum")
        problems += _check_chain("browse_transitions", self.browse_transitions, buying=False)
        problems += _check_chain("buy_transitions", self.buy_transitions, buying=True)
        if problems:
            raise ConfigError("invalid simulator configuration: " + "; ".join(problems))


def _check_site_url(url: str) -> list[str]:
    """Problems of a site URL: every page URL built on it must pass the event contract."""
    problem = (
        "site_url must be an http(s) origin, optionally with a path, without a trailing "
        f"slash, query or fragment, at most {MAX_SITE_URL_LENGTH} characters; got {url!r}"
    )
    if (
        not url.startswith(("http://", "https://"))
        or url.endswith("/")
        or len(url) > MAX_SITE_URL_LENGTH
        or any(c.isspace() or not c.isprintable() for c in url)
    ):
        return [problem]
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # .port refuses one out of range
    except ValueError:
        return [problem]
    if not host or parts.query or parts.fragment or "?" in url or "#" in url:
        return [problem]
    return []


def _check_chain(name: str, chain: Transitions, *, buying: bool) -> list[str]:
    problems = []
    needed = set(PageType) if not buying else set(PageType) - {PageType.CONFIRMATION}
    if missing := sorted(needed - set(chain)):
        problems.append(f"{name} lacks rows for {', '.join(missing)}")
    for source, row in chain.items():
        if any(w < 0 for w in row.values()) or not sum(row.values()) > 0:
            problems.append(f"{name}[{source}] must be non-negative with a positive sum")
        if unknown := {str(t) for t in row} - {str(p) for p in PageType} - {_EXIT}:
            problems.append(f"{name}[{source}] has unknown targets {sorted(unknown)}")
        if buying and row.get(_EXIT, 0.0) > 0:
            problems.append(f"{name}[{source}]: a converting session cannot exit before buying")
        if not buying and row.get(PageType.CONFIRMATION, 0.0) > 0:
            problems.append(f"{name}[{source}]: a non-converting session cannot buy")
    return problems


@dataclass(frozen=True, slots=True)
class Campaign:
    """UTM tags of a landing page (``utm_source``, ``utm_medium``, ``utm_campaign``)."""

    source: str
    medium: str
    name: str
    query: str = field(init=False, repr=False, compare=False)
    """The tags as a URL query string, as a marketer's link carries them."""
    json: str = field(init=False, repr=False, compare=False)
    """Pre-rendered JSON members ``utm_source``, ``utm_medium``, ``utm_campaign``."""

    def __post_init__(self) -> None:
        query = (
            f"utm_source={quote_plus(self.source)}&utm_medium={quote_plus(self.medium)}"
            f"&utm_campaign={quote_plus(self.name)}"
        )
        object.__setattr__(self, "query", query)
        json = (
            f',"utm_source":{_json_string(self.source)},"utm_medium":{_json_string(self.medium)}'
            f',"utm_campaign":{_json_string(self.name)}'
        )
        object.__setattr__(self, "json", json)


class Visitor(NamedTuple):
    """A visitor with a stable identity, device, location and acquisition channel.

    Make one with :func:`visitor`, which also renders the JSON fragments.
    """

    user_id: str
    device_type: DeviceType
    os: str
    browser: str
    country: str
    city: str
    latitude: float
    longitude: float
    channel: Channel
    key: bytes
    """``user_id`` as the Kafka message key."""
    json_user: str
    """Pre-rendered JSON member ``user_id``."""
    json_device: str
    """Pre-rendered JSON members ``device_type`` through ``longitude``."""


def visitor(
    *,
    user_id: str,
    device_type: DeviceType,
    os: str,
    browser: str,
    country: str,
    city: str,
    latitude: float,
    longitude: float,
    channel: Channel,
) -> Visitor:
    """A :class:`Visitor` with its JSON fragments rendered (escaping as pydantic does)."""
    # pydantic_core renders the floats so that they match ClickEvent.to_json() byte for byte
    # (Python's repr differs, e.g. 1e-05 where pydantic writes 0.00001).
    device = (
        f',"device_type":"{device_type}","os":{_json_string(os)}'
        f',"browser":{_json_string(browser)},"country":"{country}"'
        f',"city":{_json_string(city)}'
        f',"latitude":{pydantic_core.to_json(latitude).decode()}'
        f',"longitude":{pydantic_core.to_json(longitude).decode()}'
    )
    return Visitor(
        user_id,
        device_type,
        os,
        browser,
        country,
        city,
        latitude,
        longitude,
        channel,
        user_id.encode(),
        f'"user_id":{_json_string(user_id)}',
        device,
    )


class PageVisit(NamedTuple):
    """One page as one visitor saw it in one session; the events on it share these fields."""

    session_id: str | None
    page_url: str
    page_type: PageType
    referrer_url: str | None
    campaign: Campaign | None
    json: str
    """Pre-rendered JSON members ``user_id`` through ``longitude`` (see :func:`page_visit`)."""


def page_visit(
    visitor: Visitor,
    *,
    session_id: str | None,
    page_url: str,
    page_type: PageType,
    referrer_url: str | None = None,
    campaign: Campaign | None = None,
) -> PageVisit:
    """A :class:`PageVisit` with its JSON fragment rendered (escaping as pydantic does)."""
    parts = [visitor.json_user]
    if session_id is not None:
        parts += (',"session_id":', _json_string(session_id))
    parts += (',"page_url":', _json_string(page_url), ',"page_type":"', page_type, '"')
    if referrer_url is not None:
        parts += (',"referrer_url":', _json_string(referrer_url))
    if campaign is not None:
        parts.append(campaign.json)
    parts.append(visitor.json_device)
    json = "".join(parts)
    return PageVisit(session_id, page_url, page_type, referrer_url, campaign, json)


class EventDetails(NamedTuple):
    """The fields only some event types carry (product, search, purchase)."""

    product_id: str | None = None
    search_query: str | None = None
    order_id: str | None = None
    revenue: Decimal | None = None
    currency: str | None = None
    json: str = ""
    """Pre-rendered JSON members (each with a leading comma; see :func:`event_details`)."""


def event_details(
    *,
    product_id: str | None = None,
    search_query: str | None = None,
    order_id: str | None = None,
    revenue: Decimal | None = None,
    currency: str | None = None,
) -> EventDetails:
    """An :class:`EventDetails` with its JSON fragment rendered (escaping as pydantic does)."""
    parts = []
    for name, value in (
        ("product_id", product_id),
        ("search_query", search_query),
        ("order_id", order_id),
    ):
        if value is not None:
            parts.append(f',"{name}":{_json_string(value)}')
    if revenue is not None:
        # ClickEvent serialises revenue as a JSON number through float.
        parts.append(f',"revenue":{pydantic_core.to_json(float(revenue)).decode()}')
    if currency is not None:
        parts.append(f',"currency":{_json_string(currency)}')
    return EventDetails(product_id, search_query, order_id, revenue, currency, "".join(parts))


_NO_DETAILS: Final = EventDetails()


class SimulatedEvent(NamedTuple):
    """One simulated click event, valid by construction (the unit tests check it).

    ``occurred_ms`` is the event time in milliseconds since the Unix epoch (UTC). The page and
    session fields are shared with the other events of the same page (:attr:`page`), the
    visitor's fields with all their events (:attr:`visitor`).
    """

    event_id: str
    event_type: EventType
    occurred_ms: int
    visitor: Visitor
    page: PageVisit
    details: EventDetails = _NO_DETAILS

    @property
    def user_id(self) -> str:
        """The visitor's id, also the Kafka message key."""
        return self.visitor.user_id

    @property
    def session_id(self) -> str | None:
        """The tracker's session id (the same for every event of one simulated session)."""
        return self.page.session_id

    @property
    def occurred_at(self) -> datetime:
        """The event time as a timezone-aware UTC datetime."""
        return datetime.fromtimestamp(self.occurred_ms / 1000, tz=UTC)

    def to_json(self) -> bytes:
        """The wire form, byte-identical to ``self.to_click_event().to_json()`` but faster."""
        return (
            f'{{"event_id":"{self.event_id}","event_type":"{self.event_type}",'
            f'"occurred_at":"{_format_time(self.occurred_ms)}",'
            f"{self.page.json}{self.details.json}}}"
        ).encode()

    def to_dict(self) -> dict[str, object]:
        """The event's fields as :class:`ClickEvent` takes them (``None`` for absent ones)."""
        visitor, page, details, campaign = self.visitor, self.page, self.details, self.page.campaign
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "occurred_at": _format_time(self.occurred_ms),
            "user_id": visitor.user_id,
            "session_id": page.session_id,
            "page_url": page.page_url,
            "page_type": page.page_type,
            "referrer_url": page.referrer_url,
            "utm_source": campaign.source if campaign else None,
            "utm_medium": campaign.medium if campaign else None,
            "utm_campaign": campaign.name if campaign else None,
            "device_type": visitor.device_type,
            "os": visitor.os,
            "browser": visitor.browser,
            "country": visitor.country,
            "city": visitor.city,
            "latitude": visitor.latitude,
            "longitude": visitor.longitude,
            "product_id": details.product_id,
            "search_query": details.search_query,
            "order_id": details.order_id,
            "revenue": details.revenue,
            "currency": details.currency,
        }

    def to_click_event(self) -> ClickEvent:
        """The validated :class:`ClickEvent` (full contract validation; slower than to_json)."""
        return ClickEvent.model_validate(self.to_dict())


@lru_cache(maxsize=4096)
def _second_prefix(epoch_second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


_MILLIS: Final = ('Z"', *(f'.{millis:03d}000Z"' for millis in range(1, 1000)))
"""The end of a rendered ``occurred_at`` (closing quote included), by millisecond of the second."""


def _format_time(occurred_ms: int) -> str:
    # Pydantic's rendering of a UTC datetime: no fraction when it is zero, else microseconds.
    second, millis = divmod(occurred_ms, 1000)
    return _second_prefix(second) + _MILLIS[millis][:-1]


def _to_ms(moment: datetime) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        msg = f"the clock must return timezone-aware datetimes, got {moment!r}"
        raise ConfigError(msg)
    return math.floor(moment.timestamp() * 1000)


_T = TypeVar("_T")
Pick = Callable[[Callable[[], float]], _T]
"""A weighted choice: call it with a uniform [0, 1) source (``rng.random``)."""


def _cumulative(pairs: Sequence[tuple[_T, float]]) -> tuple[list[_T], list[float]]:
    """Items and cumulative probabilities: ``items[bisect(cumulative, random())]`` picks one."""
    items = [item for item, weight in pairs if weight > 0]
    cumulative = list(accumulate(weight for _, weight in pairs if weight > 0))
    total = cumulative[-1]
    cumulative = [c / total for c in cumulative]
    cumulative[-1] = math.inf  # the last division can round below 1
    return items, cumulative


def _weighted(pairs: Sequence[tuple[_T, float]]) -> Pick[_T]:
    items, cumulative = _cumulative(pairs)

    def pick(random: Callable[[], float]) -> _T:
        return items[bisect(cumulative, random())]

    return pick


_Chain = dict[PageType, tuple[list[PageType | None], list[float]]]
"""A Markov chain ready for inline sampling: page type -> (next page types, cumulative)."""


def _chain(chain: Transitions) -> _Chain:
    return {
        source: _cumulative(
            [(None if str(target) == _EXIT else PageType(target), w) for target, w in row.items()]
        )
        for source, row in chain.items()
    }


_DWELL_STEPS: Final = 4096


@lru_cache(maxsize=64)
def _dwell_table(median_s: float, sigma: float, max_s: float) -> tuple[tuple[float, float], ...]:
    """Inverse CDF of a log-normal dwell time in ms, piecewise linear over 4096 steps.

    Step ``i`` is ``(start, slope)``: a uniform ``u`` in ``[0, 4096)`` maps to
    ``start + (u - i) * slope`` with ``i = int(u)``, so one uniform draw gives a dwell time that
    follows the log-normal law (clamped to ``[1 s, max_s]``) without a log, exp or cos per draw.
    The two end knots, which the law puts at 0 and infinity, are the quantiles a quarter step
    further out.
    """
    normal = NormalDist(math.log(median_s), sigma)
    probabilities = [0.25 / _DWELL_STEPS]
    probabilities += [i / _DWELL_STEPS for i in range(1, _DWELL_STEPS)]
    probabilities.append(1.0 - 0.25 / _DWELL_STEPS)
    knots = [min(max(math.exp(normal.inv_cdf(p)), 1.0), max_s) * 1000.0 for p in probabilities]
    return tuple((knots[i], knots[i + 1] - knots[i]) for i in range(_DWELL_STEPS))


@dataclass(frozen=True, slots=True)
class _Page:
    """A page as the events on it render it; built once per URL where the URL is fixed.

    A slotted class rather than a named tuple: reading a slot is the faster attribute access.
    """

    url: str
    page_type: PageType
    json: str
    """JSON members ``page_url`` and ``page_type``, with a leading comma."""
    as_referrer: str
    """JSON member ``referrer_url`` naming this page, for the next page's events."""


_Referrer = tuple[str | None, str]
"""A referrer URL (or None) and its JSON member ``referrer_url`` with a leading comma (or "")."""
_NO_REFERRER: Final[_Referrer] = (None, "")


def _referrer(url: str) -> _Referrer:
    return url, ',"referrer_url":' + _json_string(url)


def _page(url: str, page_type: PageType) -> _Page:
    url_json = _json_string(url)
    return _Page(
        url,
        page_type,
        f',"page_url":{url_json},"page_type":"{page_type}"',
        ',"referrer_url":' + url_json,
    )


@dataclass(frozen=True, slots=True)
class _Product:
    product_id: str
    category: str
    price: Decimal
    page: _Page
    viewed: EventDetails
    searches: tuple[tuple[_Page, EventDetails], ...]
    """(results page, details of the search event) for a few queries that find the product."""


_Pending = tuple[int, int, EventType, Visitor, PageVisit | None, str, EventDetails]
"""An event made but not yet emitted: due time (ms), sequence number (events are numbered as they
are made, so ties in time keep that order and no two entries compare further), type, visitor,
page record (None on the wire path), JSON members ``user_id`` through ``longitude`` of its page,
details."""


WireEvent = tuple[bytes, bytes, int]
"""A simulated event ready for Kafka, what :meth:`TrafficSimulator.messages` yields:
``(key, value, occurred_ms)``, the message key (``user_id``), the event as JSON (byte-identical
to :meth:`SimulatedEvent.to_json`) and the event time in milliseconds since the Unix epoch (UTC),
for pacing. A plain tuple: the wire path makes one per event, and a named tuple costs more."""


_new_tuple = tuple.__new__
_floor = math.floor
"""int() of a non-negative float, about twice as fast as int()."""
_sqrt, _cos, _sin, _TWO_PI = math.sqrt, math.cos, math.sin, 2.0 * math.pi
_UUID_KEEP: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_V4: Final = (0x4000 << 64) | (0x8000 << 48)


def _format_uuid4(bits: int) -> str:
    """128 random bits as a version 4 UUID in canonical form, as ``str(uuid.UUID(...))``."""
    h = f"{bits & _UUID_KEEP | _UUID_V4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_ID_BATCH: Final = 1024
"""Event and session ids are drawn and formatted this many at a time."""
_BATCH_KEEP: Final = sum((_UUID_KEEP % 2**128) << (128 * i) for i in range(_ID_BATCH))
_BATCH_V4: Final = sum(_UUID_V4 << (128 * i) for i in range(_ID_BATCH))
_ID_TEMPLATE: Final = b"00000000-0000-4000-8000-000000000000," * _ID_BATCH
_ID_SLOT: Final = 37
_HEX_PLACES: Final = tuple(d + (d >= 8) + (d >= 12) + (d >= 16) + (d >= 20) for d in range(32))
"""Where the n-th hex digit of a UUID goes in its canonical text (after 0 to 4 dashes)."""


def _format_uuid4_batch(bits: int) -> list[str]:
    """``_ID_BATCH * 128`` random bits as that many version 4 UUIDs in canonical form.

    The same text as :func:`_format_uuid4` on each 128-bit slice, made with a few operations on
    the whole batch: set the version and variant bits, write the hex digits into a template
    that has the dashes (one strided copy per digit position), split.
    """
    digits = ((bits & _BATCH_KEEP) | _BATCH_V4).to_bytes(16 * _ID_BATCH).hex().encode()
    text = bytearray(_ID_TEMPLATE)
    for digit, place in enumerate(_HEX_PLACES):
        text[place::_ID_SLOT] = digits[digit::32]
    return text[:-1].decode().split(",")


_E4_FRACTIONS: Final = (".0", *(f".{n:04d}".rstrip("0") for n in range(1, 10_000)))
"""The fractional part of a number of 0.0001 units as repr() writes it, by units mod 10000."""
_DEGREES: Final = tuple(str(n) for n in range(1000))
"""Whole degrees as text (a look-up is cheaper than formatting an int); room for any jitter."""

_CLOCK_EVERY: Final = 256
"""In clamp mode, read the clock at most once per this many events."""
_NEVER: Final = 2**62
"""A time after every event (milliseconds)."""

_HOME, _CATEGORY, _PRODUCT, _SEARCH = (
    PageType.HOME,
    PageType.CATEGORY,
    PageType.PRODUCT,
    PageType.SEARCH,
)
_CART, _CHECKOUT, _CONFIRMATION = PageType.CART, PageType.CHECKOUT, PageType.CONFIRMATION
_ACCOUNT = PageType.ACCOUNT
_DIRECT, _ORGANIC_SEARCH, _PAID_SEARCH = Channel.DIRECT, Channel.ORGANIC_SEARCH, Channel.PAID_SEARCH
_SOCIAL, _EMAIL, _REFERRAL = Channel.SOCIAL, Channel.EMAIL, Channel.REFERRAL
_PAGE_VIEW, _ADD_TO_CART, _SEARCH_EVENT = (
    EventType.PAGE_VIEW,
    EventType.ADD_TO_CART,
    EventType.SEARCH,
)
_REMOVE_FROM_CART, _BEGIN_CHECKOUT = EventType.REMOVE_FROM_CART, EventType.BEGIN_CHECKOUT
_PURCHASE = EventType.PURCHASE
_EVENT_HEADS: Final = {t: f'","event_type":"{t}","occurred_at":"' for t in EventType}
"""JSON from the end of ``event_id`` to the start of the ``occurred_at`` value, by event type."""


class TrafficSimulator:
    """A deterministic stream of realistic shop traffic (see the module docstring).

    Args:
        config: weights and rates; ``config.events_per_second`` sets the session arrival rate.
        seed: seeds the random generator and the Faker instance of this simulator.
        clock: returns the current time (timezone-aware); read for the default start and, when
            ``clamp_to_clock`` is set, while generating.
        start: first possible event time (default: ``clock()``).
        end: stop before the first event later than this (default: never stop).
        clamp_to_clock: stamp an event whose simulated time is still in the future with the
            clock's time instead, so an unpaced producer never sends future events. Time order
            is kept; dwell times shrink.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        seed: int,
        clock: Callable[[], datetime],
        start: datetime | None = None,
        end: datetime | None = None,
        clamp_to_clock: bool = False,
    ) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.seed = seed
        self._clock = clock
        self._start_ms = _to_ms(start if start is not None else clock())
        self._end_ms = _to_ms(end) if end is not None else None
        self._clamp = clamp_to_clock
        self._base_ms = self._start_ms - self._start_ms % 1000
        """Session and queue times count milliseconds from here (see _stream)."""
        self._rng = random.Random(seed)  # noqa: S311 - a simulation, not secrets
        self._faker = Faker("en_US")
        self._faker.seed_instance(seed)
        # Visitor ids are what Faker's uuid4() returns, drawn from the same seeded generator
        # but formatted here: Faker's provider dispatch costs more than the rest of a visitor.
        self._faker_bits = self._faker.random.getrandbits
        self._build_tables()
        self._ids: list[str] = []
        """Drawn event and session ids not used yet (taken from the end)."""
        self._visitor_ids: list[str] = []
        self._records = True
        """Build a PageVisit per page (for SimulatedEvent records), or not (wire path)."""
        self._jitter_km = self.config.location_jitter_km
        self._known: list[Visitor] = []
        self._cooling: list[tuple[int, int, Visitor]] = []
        """Visitors whose last session is over, by when they may come back (and session number)."""
        # Events made and not yet emitted wait in a calendar queue: buckets of 2**bits ms (about
        # a hundred events each), a heap of the bucket numbers, and the bucket being emitted,
        # sorted. Per event that is a list append and a pop, where a heap of all the pending
        # events (ten thousand and more) costs a few dozen comparisons.
        self._bucket_bits = max(0, round(math.log2(100_000.0 / self.config.events_per_second)))
        self._buckets: dict[int, list[_Pending]] = {}
        self._bucket_heap: list[int] = []
        self._current: list[_Pending] = []
        """The bucket being emitted, sorted (emitted from the front, by position)."""
        self._current_index = -1
        self._sequence = 0
        """Events made so far."""
        self._sessions = 0
        self._samples = 4000
        self._sample_offsets_ms: list[int] = []
        """Event times of the estimate's sample sessions, from their starts (for backfill)."""
        self._end_rel = _NEVER
        """The end, in queue time (see _stream); _NEVER while the estimate walks sessions."""
        self.mean_events_per_session, self.mean_session_seconds = self._estimate_sessions()
        if self._end_ms is not None:
            self._end_rel = self._end_ms - self._base_ms

    @classmethod
    def backfill(
        cls,
        config: SimulatorConfig | None = None,
        *,
        seed: int,
        clock: Callable[[], datetime],
        window: timedelta,
        count: int,
    ) -> TrafficSimulator:
        """``count`` events spread over the ``window`` that ends at ``clock()``.

        Take the first ``count`` events: the density is set so that they fit the window with a
        margin. Up to :data:`BACKFILL_ALIGN_MAX` events, the simulation is then shifted later by
        whole seconds (the events made once more to find how much), so that the last of them
        falls within a second of ``clock()`` and the margin leaves the start of the window
        empty instead of its end; beyond that the margin is a few percent of the window, left
        at its end. Sessions still running at the end are cut there: no event lies in the
        future.
        """
        if window <= timedelta(0) or count <= 0:
            msg = "backfill needs a positive window and a positive count"
            raise ConfigError(msg)
        config = config if config is not None else SimulatorConfig()
        end = clock()
        probe = cls(config, seed=seed, clock=lambda: end)
        # Sessions that start near the end are cut short. Two densities allow for that; the
        # higher one is used. The first leaves room for an average session (enough for windows
        # of many sessions' length); the second is the expected count of events inside the
        # window, cut sessions included, from the sample sessions' event times (needed when
        # the window is not much longer than a session, e.g. 100 s of traffic).
        seconds = window.total_seconds()
        usable = max(seconds - probe.mean_session_seconds, seconds / 2)
        within = probe._events_per_session_within(seconds)
        per_second = max(count / usable, count * probe.mean_events_per_session / within / seconds)
        # A little denser than needed, so that the count is reached inside the window even
        # when chance brings fewer events (the event count of n sessions varies by about
        # 1.5 * sqrt(n) sessions' worth): the last few percent of the window stay empty.
        sessions = max(count / probe.mean_events_per_session, 1.0)
        margin = 1.0 + 5.0 / math.sqrt(sessions)
        if per_second * margin > MAX_EVENTS_PER_SECOND:
            msg = (
                f"{count:,} events in {window} is too dense: about "
                f"{MAX_EVENTS_PER_SECOND / margin / (per_second / count):,.0f} at most fit a "
                "window this long "
                f"(the simulator makes at most {MAX_EVENTS_PER_SECOND:,.0f} events per second "
                "of event time); use a longer window or fewer events"
            )
            raise ConfigError(msg)
        dense = replace(config, events_per_second=per_second * margin)
        start = end - window
        if count <= BACKFILL_ALIGN_MAX:
            made = last_ms = 0
            probe_events = cls(dense, seed=seed, clock=lambda: end, start=start, end=end)
            for message in islice(probe_events.messages(), count):
                made += 1
                last_ms = message[2]
            if made == count:  # else the window holds fewer (the caller warns): keep it whole
                # Times count from the start's second, so a shift by whole seconds moves every
                # event by exactly that much and changes nothing else (the same events).
                start += timedelta(seconds=(_to_ms(end) - last_ms) // 1000)
        return cls(dense, seed=seed, clock=lambda: end, start=start, end=end)

    def __iter__(self) -> Iterator[SimulatedEvent]:
        return self.events()

    def events(self) -> Iterator[SimulatedEvent]:
        """Yield events forever (or until ``end``), in non-decreasing ``occurred_ms`` order.

        Iterate once per simulator (or once over :meth:`messages`): the visitors and the random
        stream belong to it.
        """
        return self._stream(wire=False)  # type: ignore[return-value]

    def messages(self) -> Iterator[WireEvent]:
        """The same events as :meth:`events` for the same seed, ready for Kafka (faster).

        Each is ``(key, value, occurred_ms)`` with ``key == event.visitor.key`` and
        ``value == event.to_json()`` of the corresponding :class:`SimulatedEvent`, built
        without the event records (the fast path of the producer).
        """
        return self._stream(wire=True)  # type: ignore[return-value]

    def _stream(self, *, wire: bool) -> Iterator[SimulatedEvent | WireEvent]:
        # The hot loop. A session is played to its end when it starts (_play queues all its
        # events), so per event there is the queue, an id and the rendering. The wire path
        # renders each event's JSON in one go from its page's JSON; the records path builds a
        # PageVisit per page for the SimulatedEvents to share. Times are milliseconds since
        # `base` (the start's second), small ints that Python adds and compares faster.
        self._records = not wire
        base = self._base_ms
        uniform, log = self._rng.random, math.log
        heappop, play = heapq.heappop, self._play
        buckets, bucket_heap, bucket_bits = self._buckets, self._bucket_heap, self._bucket_bits
        current, position = self._current, 0
        ids, more_ids = self._ids, self._more_ids
        take_id = ids.pop
        make, event_class = _new_tuple, SimulatedEvent
        heads, millis_text, second_prefix = _EVENT_HEADS, _MILLIS, _second_prefix
        arrivals_per_ms = self.config.events_per_second / self.mean_events_per_session / 1000.0
        start_ms = self._start_ms - base
        next_arrival = float(start_ms)
        end_ms = self._end_ms - base if self._end_ms is not None else 2**62
        clamp, clock = self._clamp, self._clock
        clock_ms, stale = start_ms, 0
        second_ms, next_second_ms, prefix = 0, 0, ""
        while True:
            try:
                due, _, event_type, visitor, page, json, details = current[position]
            except IndexError:
                if bucket_heap and bucket_heap[0] << bucket_bits < next_arrival:
                    # The next bucket starts before the next session: emit from it. (Events
                    # made later for this bucket are inserted after the position: they are
                    # due no earlier than the next session, and numbered after the rest.)
                    index = heappop(bucket_heap)
                    current, position = buckets.pop(index), 0
                    current.sort()
                    self._current, self._current_index = current, index
                    continue
                due = _NEVER
            if due >= next_arrival:
                if next_arrival > end_ms:
                    return  # every event still to come, queued or not, lies after the end
                play(_floor(next_arrival))
                # Poisson arrivals: exponential gaps (as random.expovariate draws them).
                next_arrival -= log(1.0 - uniform()) / arrivals_per_ms
                continue
            position += 1
            if due > end_ms:
                return
            stamp = due
            if clamp and due > clock_ms:
                # Stamps stay in order: both the due times and clock_ms never decrease. The
                # clock is read every _CLOCK_EVERY such events (every one until it has moved).
                if stale:
                    stale -= 1
                else:
                    clock_ms = max(clock_ms, _to_ms(clock()) - base)
                    stale = _CLOCK_EVERY - 1 if clock_ms != start_ms else 0
                if due > clock_ms:
                    stamp = clock_ms
            if not ids:
                more_ids()
            if wire:
                if stamp >= next_second_ms:
                    second_ms = stamp - stamp % 1000
                    next_second_ms = second_ms + 1000
                    prefix = second_prefix((base + second_ms) // 1000)
                yield (
                    visitor.key,
                    f'{{"event_id":"{take_id()}{heads[event_type]}{prefix}'
                    f"{millis_text[stamp - second_ms]},{json}{details.json}}}".encode(),
                    base + stamp,
                )
            else:
                yield make(
                    event_class, (take_id(), event_type, base + stamp, visitor, page, details)
                )

    def click_events(self) -> Iterator[ClickEvent]:
        """Like :meth:`events`, as validated :class:`ClickEvent` models (slower)."""
        for event in self.events():
            yield event.to_click_event()

    # -- set-up -------------------------------------------------------------------------------

    def _build_tables(self) -> None:
        config, fake, rng = self.config, self._faker, self._rng
        self._random = rng.random
        # Visitors' device profile (type, system and browser) in one pick, and their city with
        # its JSON members and the degrees of longitude per km at its latitude.
        device_shares = config.device_weights
        profile_totals = {
            t: sum(p.weight for p in DEVICE_PROFILES if p.device_type is t) for t in DeviceType
        }
        self._profiles = _cumulative(
            [
                (
                    (
                        p,
                        f',"device_type":"{p.device_type}","os":{_json_string(p.os)}'
                        f',"browser":{_json_string(p.browser)}',
                    ),
                    device_shares.get(p.device_type, 0.0)
                    * p.weight
                    / profile_totals[p.device_type],
                )
                for p in DEVICE_PROFILES
            ]
        )
        self._cities = _cumulative(
            [
                (
                    (
                        city,
                        f',"country":"{city.country}","city":{_json_string(city.name)}',
                        1.0 / (_KM_PER_DEGREE * math.cos(math.radians(city.latitude))),
                    ),
                    city.weight,
                )
                for city in CITIES
            ]
        )
        self._channels = _weighted(list(config.channel_weights.items()))
        self._visitor_channels = _cumulative(list(config.channel_weights.items()))
        self._engines = _weighted([((_referrer(url), name), w) for url, name, w in _SEARCH_ENGINES])
        self._socials = _weighted(
            [((_referrer(url), name), w) for url, name, w in _SOCIAL_NETWORKS]
        )
        self._paid_campaigns = {
            name: [Campaign(name, "cpc", c) for c in _PAID_CAMPAIGNS]
            for _, name, _ in _SEARCH_ENGINES
        }
        self._social_campaigns = {
            name: [Campaign(name, "social", c) for c in _SOCIAL_CAMPAIGNS]
            for _, name, _ in _SOCIAL_NETWORKS
        }
        self._email_campaigns = [Campaign("newsletter", "email", c) for c in _EMAIL_CAMPAIGNS]
        self._referral_sites = [
            _referrer(f"https://{fake.domain_name()}/{fake.uri_path()}") for _ in range(40)
        ]
        site = config.site_url
        products: list[_Product] = []
        self._by_category: dict[str, tuple[list[_Product], list[float]]] = {}
        self._category_pages: dict[str, tuple[_Page, ...]] = {}
        for category, (nouns, median) in _CATEGORIES.items():
            in_category = []
            for index in range(config.products_per_category):
                colour = fake.safe_color_name()
                noun = nouns[index % len(nouns)]
                name = f"{colour.title()} {fake.word().title()} {noun}"
                product_id = f"SKU-{fake.unique.random_int(100_000, 999_999)}"
                slug = "-".join(name.lower().split())
                queries = (noun, f"{colour} {noun}", f"{noun} {category}", name.lower())
                in_category.append(
                    _Product(
                        product_id=product_id,
                        category=category,
                        price=_price(rng, median),
                        page=_page(f"{site}/p/{slug}-{product_id.lower()}", _PRODUCT),
                        viewed=event_details(product_id=product_id),
                        searches=tuple(
                            (
                                _page(f"{site}/search?q={quote_plus(q)}", _SEARCH),
                                event_details(search_query=q),
                            )
                            for q in queries
                        ),
                    )
                )
            # Popularity follows a Zipf-like law: a few best sellers, a long tail.
            self._by_category[category] = _cumulative(
                [(p, 1.0 / (rank + 1)) for rank, p in enumerate(in_category)]
            )
            products += in_category
            # The first listing page, then pages 2 to 5.
            self._category_pages[category] = (
                _page(f"{site}/c/{category}", _CATEGORY),
                *(_page(f"{site}/c/{category}?page={n}", _CATEGORY) for n in range(2, 6)),
            )
        per_category = config.products_per_category
        self._products = _cumulative(
            [(p, 1.0 / (1 + i % per_category)) for i, p in enumerate(products)]
        )
        self._categories = _cumulative([(c, 1.0 / (1 + i / 2)) for i, c in enumerate(_CATEGORIES)])
        self._home_page = _page(site + "/", _HOME)
        self._cart_page = _page(site + "/cart", _CART)
        self._checkout_page = _page(site + "/checkout", _CHECKOUT)
        self._account_pages = [_page(site + path, _ACCOUNT) for path in _ACCOUNT_PATHS]
        self._other_pages = [_page(site + path, PageType.OTHER) for path in _OTHER_PATHS]
        self._browse = _chain(config.browse_transitions)
        self._buy = _chain(config.buy_transitions)
        self._dwell = {
            page_type: _dwell_table(median, config.dwell_sigma, config.max_dwell_seconds)
            for page_type, median in config.dwell_median_seconds.items()
        }
        self._max_pages = config.max_pages_per_session
        self._return_after_ms = int(config.return_after_min_seconds * 1000)
        self._emit_session_id = config.emit_session_id
        self._cart_rates = (config.add_to_cart_rate_browse, config.add_to_cart_rate_buy)

    def _estimate_sessions(self) -> tuple[float, float]:
        """Mean events per session and mean session length (seconds), by walking sessions.

        Runs on a private generator so that the main stream is unaffected.
        """
        main_random = self._random
        self._random = random.Random(0x5EED).random  # noqa: S311
        someone = {
            channel: visitor(
                user_id="estimate",
                device_type=DeviceType.DESKTOP,
                os="Linux",
                browser="Firefox",
                country="DE",
                city="Berlin",
                latitude=0.0,
                longitude=0.0,
                channel=channel,
            )
            for channel in Channel
        }
        samples, events, span = self._samples, 0, 0
        offsets = self._sample_offsets_ms
        try:
            for _ in range(samples):
                channel = self._channels(self._random)
                returning = self._random() < self.config.returning_share
                made = self._sequence
                span += self._walk(someone[channel], 0, "estimate", returning=returning)
                events += self._sequence - made
                for bucket in self._buckets.values():
                    offsets.extend(entry[0] for entry in bucket)
                self._buckets.clear()
                self._bucket_heap.clear()
        finally:
            self._random = main_random
        return events / samples, span / samples / 1000.0

    def _events_per_session_within(self, seconds: float) -> float:
        """Mean events inside a window of ``seconds`` of a session that starts in it.

        The session's start is uniform over the window and the window cuts it at its end: an
        event ``o`` seconds into a session falls inside with probability ``(seconds - o) /
        seconds``. Estimated from the sample sessions of :meth:`_estimate_sessions`.
        """
        window_ms = seconds * 1000.0
        inside = sum(window_ms - o for o in self._sample_offsets_ms if o < window_ms)
        return max(inside / window_ms / self._samples, 1e-9)

    # -- visitors and sessions ----------------------------------------------------------------

    def _more_ids(self) -> None:
        self._ids += _format_uuid4_batch(self._rng.getrandbits(128 * _ID_BATCH))

    def _more_visitor_ids(self) -> None:
        # Popped from the end, these are Faker's uuid4() values in the order it would draw them.
        self._visitor_ids += _format_uuid4_batch(self._faker_bits(128 * _ID_BATCH))

    def _make_visitor(self) -> Visitor:
        random = self._random
        profiles, cumulative = self._profiles
        profile, device_json = profiles[bisect(cumulative, random())]
        cities, cumulative = self._cities
        city, city_json, lon_per_km = cities[bisect(cumulative, random())]
        # Uniform over a disc of location_jitter_km around the centre, rounded to 4 decimals
        # (about 11 m) in integer units of 0.0001 degree: cheaper than round(x, 4) and repr().
        distance = self._jitter_km * _sqrt(random())
        bearing = random() * _TWO_PI
        lat_e4 = _floor((city.latitude + distance * _cos(bearing) / _KM_PER_DEGREE) * 10_000 + 0.5)
        lon_e4 = _floor((city.longitude + distance * _sin(bearing) * lon_per_km) * 10_000 + 0.5)
        if not self._visitor_ids:
            self._more_visitor_ids()
        user_id = self._visitor_ids.pop()
        # The same fragments as visitor() renders, from pieces rendered once per profile and
        # city; a coordinate's text is what pydantic writes for lat_e4 / 10_000.
        degrees, fractions = _DEGREES, _E4_FRACTIONS
        lat_text = (
            f"{degrees[lat_e4 // 10_000]}{fractions[lat_e4 % 10_000]}"
            if lat_e4 >= 0
            else f"-{degrees[-lat_e4 // 10_000]}{fractions[-lat_e4 % 10_000]}"
        )
        lon_text = (
            f"{degrees[lon_e4 // 10_000]}{fractions[lon_e4 % 10_000]}"
            if lon_e4 >= 0
            else f"-{degrees[-lon_e4 // 10_000]}{fractions[-lon_e4 % 10_000]}"
        )
        device = f'{device_json}{city_json},"latitude":{lat_text},"longitude":{lon_text}'
        channels, cumulative = self._visitor_channels
        return _new_tuple(
            Visitor,
            (
                user_id,
                profile.device_type,
                profile.os,
                profile.browser,
                city.country,
                city.name,
                lat_e4 / 10_000,
                lon_e4 / 10_000,
                channels[bisect(cumulative, random())],
                user_id.encode(),
                f'"user_id":"{user_id}"',
                device,
            ),
        )

    def _play(self, at_ms: int) -> None:
        """Start a session at ``at_ms``: pick its visitor, make and queue all its events."""
        random, cooling, known = self._random, self._cooling, self._known
        while cooling and cooling[0][0] <= at_ms:
            known.append(heapq.heappop(cooling)[2])
        if len(known) > self.config.max_known_visitors:
            # Forget a random past visitor: memory stays flat however long the run.
            index = int(random() * len(known))
            known[index] = known[-1]
            known.pop()
        if known and random() < self.config.returning_share:
            index = int(random() * len(known))
            visitor = known[index]
            known[index] = known[-1]
            known.pop()
            returning = True
        else:
            visitor = self._make_visitor()
            returning = False
        session_id = None
        if self._emit_session_id:
            if not self._ids:
                self._more_ids()
            session_id = self._ids.pop()
        last_ms = self._walk(visitor, at_ms, session_id, returning=returning)
        # The visitor may come back after the 30-minute gap that follows their last event.
        self._sessions += 1
        heapq.heappush(cooling, (last_ms + self._return_after_ms, self._sessions, visitor))

    def _acquisition(self, channel: Channel) -> tuple[_Referrer, Campaign | None, PageType]:
        # Enum members come from module constants: a class attribute look-up on an enum costs
        # more than the rest of a comparison.
        random = self._random
        choice = random()
        campaign: Campaign | None
        if channel is _ORGANIC_SEARCH:
            referrer, _ = self._engines(random)
            return referrer, None, (_HOME, _CATEGORY, _PRODUCT)[int(choice * 3)]
        if channel is _PAID_SEARCH:
            referrer, name = self._engines(random)
            campaign = _one_of(random, self._paid_campaigns[name])
            return referrer, campaign, _PRODUCT if choice < 0.6 else _CATEGORY
        if channel is _SOCIAL:
            referrer, name = self._socials(random)
            tagged = choice < 0.4
            campaign = _one_of(random, self._social_campaigns[name]) if tagged else None
            return referrer, campaign, _PRODUCT if random() < 0.65 else _CATEGORY
        if channel is _EMAIL:
            # Mail clients send no referrer; the UTM tags are the only trace.
            campaign = _one_of(random, self._email_campaigns)
            return _NO_REFERRER, campaign, _CATEGORY if choice < 0.5 else _PRODUCT
        if channel is _REFERRAL:
            referrer = _one_of(random, self._referral_sites)
            return referrer, None, _PRODUCT if choice < 0.7 else _HOME
        return _NO_REFERRER, None, _HOME if choice < 0.7 else _PRODUCT

    # -- pages --------------------------------------------------------------------------------

    def _walk(
        self,
        visitor: Visitor,
        at_ms: int,
        session_id: str | None,
        *,
        returning: bool,
    ) -> int:
        """Play a session that lands at ``at_ms``: make its events and queue them.

        Returns the time of the session's last event.

        The visitor walks from page to page along the Markov chain until it says exit (or the
        session reaches ``max_pages_per_session``); each page gets a ``page_view`` and maybe one
        more event (search, add to or remove from cart, begin checkout, purchase) a moment
        later, and the next page comes a dwell time after the page's last event.
        """
        random, config, records = self._random, self.config, self._records
        max_pages, cart_rates, dwell = self._max_pages, self._cart_rates, self._dwell
        buying = random() < config.conversion_rate
        channel = visitor.channel
        if returning and random() < config.returning_direct_share:
            channel = _DIRECT
        (referrer, as_referrer), campaign, page_type = self._acquisition(channel)
        # The JSON of an event's shared fields is head + body + device: head and device are the
        # session's and the visitor's, body is the current page's (as page_visit() renders it).
        head = visitor.json_user
        if session_id is not None:
            # Session ids are UUIDs (or a plain word): nothing to escape.
            head = f'{head},"session_id":"{session_id}"'
        device = visitor.json_device
        heappush = heapq.heappush
        cart: list[_Product] = []
        category = ""
        search_product: _Product | None = None
        # A converting session walks the buying chain until it has bought, then browses on.
        converting = buying
        chain = self._buy if converting else self._browse
        page_count = 0
        sequence = self._sequence
        # The calendar queue (see __init__): an event for the bucket being emitted is inserted
        # in order, one for a later bucket appended (the bucket is sorted when its turn comes).
        buckets, bucket_heap, bucket_bits = self._buckets, self._bucket_heap, self._bucket_bits
        current, current_index = self._current, self._current_index
        # Events after the end are never emitted: they are made (the same random draws, so the
        # same stream) but not queued, so a dense backfill holds only what it will send.
        end_ms = self._end_rel
        now_ms = last_ms = at_ms
        while True:
            details = _NO_DETAILS
            later: tuple[int, EventType, EventDetails] | None = None
            if page_type is _PRODUCT:
                # Often the product just searched for, else one of the category being browsed.
                product = search_product
                search_product = None
                if product is None or random() >= 0.6:
                    if category and random() < 0.8:
                        products, cumulative = self._by_category[category]
                    else:
                        products, cumulative = self._products
                    product = products[bisect(cumulative, random())]
                page = product.page
                details = product.viewed
                category = product.category
                forced = buying and not cart and page_count >= max_pages
                if forced or random() < cart_rates[buying]:
                    cart.append(product)
                    later = (now_ms + 3_000 + _floor(random() * 27_000), _ADD_TO_CART, details)
            elif page_type is _CATEGORY:
                categories, cumulative = self._categories
                category = categories[bisect(cumulative, random())]
                pages = self._category_pages[category]
                page = pages[1 + _floor(random() * 4)] if random() < 0.3 else pages[0]
            elif page_type is _HOME:
                page = self._home_page
            elif page_type is _SEARCH:
                products, cumulative = self._products
                product = products[bisect(cumulative, random())]
                page, search = _one_of(random, product.searches)
                search_product = product
                later = (now_ms + 200 + _floor(random() * 1_300), _SEARCH_EVENT, search)
            elif page_type is _CART:
                page = self._cart_page
                if cart and random() < config.remove_from_cart_rate:
                    removed = cart.pop(int(random() * len(cart)))
                    after = now_ms + _within(random, 2_000, 20_000)
                    later = (after, _REMOVE_FROM_CART, removed.viewed)
            elif page_type is _CHECKOUT:
                page = self._checkout_page
                later = (now_ms + _within(random, 500, 3_000), _BEGIN_CHECKOUT, _NO_DETAILS)
            elif page_type is _CONFIRMATION:
                order_id = f"ORD-{int(random() * 2**48):012X}"
                revenue = sum((p.price for p in cart), Decimal(0)).quantize(_CENT)
                cart.clear()
                converting, chain = False, self._browse
                page = _page(f"{config.site_url}/checkout/confirmation?order={order_id}", page_type)
                purchase = event_details(
                    order_id=order_id, revenue=revenue, currency=config.currency
                )
                later = (now_ms + _within(random, 300, 2_000), _PURCHASE, purchase)
            elif page_type is _ACCOUNT:
                page = _one_of(random, self._account_pages)
            else:
                page = _one_of(random, self._other_pages)
            if campaign is not None:
                url = page.url
                page = _page(url + ("&" if "?" in url else "?") + campaign.query, page_type)
                json = f"{head}{page.json}{as_referrer}{campaign.json}{device}"
            else:
                json = f"{head}{page.json}{as_referrer}{device}"
            record = None
            if records:
                record = _new_tuple(
                    PageVisit, (session_id, page.url, page_type, referrer, campaign, json)
                )
            page_count += 1
            # Queue the page view (and below, the page's later event) in its time bucket. The
            # two insertions are written out, not shared in a helper: this loop runs once per
            # event, and a call costs more than the insertion itself.
            entry = (now_ms, sequence, _PAGE_VIEW, visitor, record, json, details)
            sequence += 1
            if now_ms > end_ms:
                pass
            elif (index := now_ms >> bucket_bits) == current_index:
                insort(current, entry)
            elif (bucket := buckets.get(index)) is None:
                buckets[index] = [entry]
                heappush(bucket_heap, index)
            else:
                bucket.append(entry)
            if later is None:
                last_ms = now_ms
            else:
                last_ms, event_type, extra = later
                entry = (last_ms, sequence, event_type, visitor, record, json, extra)
                sequence += 1
                if last_ms > end_ms:
                    pass
                elif (index := last_ms >> bucket_bits) == current_index:
                    insort(current, entry)
                elif (bucket := buckets.get(index)) is None:
                    buckets[index] = [entry]
                    heappush(bucket_heap, index)
                else:
                    bucket.append(entry)
            # The next page, or the end of the session.
            target: PageType | None
            if page_count >= max_pages:
                if not converting:
                    break
                target = _FORCED_NEXT[page_type]
            else:
                targets, cumulative = chain[page_type]
                target = targets[bisect(cumulative, random())]
                if target is None:
                    break
            if target is _CHECKOUT and not cart:
                # Nothing to check out: the visitor goes back to the products.
                target = _PRODUCT if converting else _CATEGORY
            # Log-normal dwell time by inverse transform sampling (see _dwell_table).
            step = random() * _DWELL_STEPS
            index = _floor(step)
            start, slope = dwell[page_type][index]
            now_ms = last_ms + _floor(start + (step - index) * slope)
            referrer, as_referrer, campaign = page.url, page.as_referrer, None
            page_type = target
        self._sequence = sequence
        return last_ms


_FORCED_NEXT: Final[dict[PageType, PageType]] = {
    PageType.HOME: PageType.PRODUCT,
    PageType.CATEGORY: PageType.PRODUCT,
    PageType.SEARCH: PageType.PRODUCT,
    PageType.ACCOUNT: PageType.PRODUCT,
    PageType.OTHER: PageType.PRODUCT,
    PageType.PRODUCT: PageType.CART,
    PageType.CART: PageType.CHECKOUT,
    PageType.CHECKOUT: PageType.CONFIRMATION,
}
"""A converting session past ``max_pages_per_session`` goes product -> cart -> checkout -> buy."""


def _one_of(random: Callable[[], float], items: Sequence[_T]) -> _T:
    return items[_floor(random() * len(items))]


def _within(random: Callable[[], float], low_ms: int, high_ms: int) -> int:
    return low_ms + _floor(random() * (high_ms - low_ms))


def _price(rng: random.Random, median: float) -> Decimal:
    raw = rng.lognormvariate(math.log(median), 0.5)
    cents = rng.choice((99, 99, 95, 90, 0, 50))
    return Decimal(f"{max(int(raw), 1)}.{cents:02d}")


PURE_PYTHON_VARIABLE: Final = "CLICKSTREAM_PURE_PYTHON"
"""Set to ``1`` to run this source even when its compiled copy is built (to compare them)."""
_COMPILED_NAME: Final = "clickstream._simulator_compiled"


def _is_extension(path: str | None) -> bool:
    return path is not None and path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _compiled_copy() -> tuple[ModuleType | None, str]:
    """The mypyc-compiled copy of this module, if it was built from these very sources.

    ``make install`` compiles a copy of this file with mypyc into an extension module,
    ``clickstream._simulator_compiled`` (see ``setup.py``), stamped with the digest of the
    sources it was built from (:mod:`clickstream._build_stamp`). A copy built from other
    sources (one was edited since) is not used, so an old build never shadows an edit.

    The one exception to "no I/O" and "no environment" in this module: at import it reads
    its sources to compute the digest, and :data:`PURE_PYTHON_VARIABLE`.
    """
    if os.environ.get(PURE_PYTHON_VARIABLE) == "1":
        return None, f"pure Python ({PURE_PYTHON_VARIABLE}=1)"
    try:
        compiled = importlib.import_module(_COMPILED_NAME)
    except ImportError:
        return None, "pure Python (no compiled copy: `make compile` builds one)"
    if not _is_extension(getattr(compiled, "__file__", None)):
        return None, "pure Python (the compiled copy is not an extension module: `make compile`)"
    if getattr(compiled, "SOURCE_DIGEST", None) != source_digest(Path(__file__).parent):
        return None, "pure Python (the compiled copy is of older sources: `make compile`)"
    return compiled, "compiled (mypyc)"


IMPLEMENTATION: str = "pure Python"
"""Which implementation runs: ``compiled (mypyc)``, or ``pure Python (why)``. (``setup.py``
sets it to ``compiled (mypyc)`` at the end of the copy it compiles.)"""
if __name__ == "clickstream.simulator":  # not in the compiled copy, nor under another name
    _COMPILED, _IMPLEMENTATION = _compiled_copy()
    if _COMPILED is not None:
        # Every function, class and constant of the compiled copy replaces its source twin,
        # so callers use one set of classes (the copy's functions use the copy's globals).
        globals().update(
            (name, value) for name, value in vars(_COMPILED).items() if not name.startswith("__")
        )
    IMPLEMENTATION = _IMPLEMENTATION

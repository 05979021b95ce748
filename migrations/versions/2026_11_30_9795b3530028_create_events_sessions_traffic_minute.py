"""Create events, sessions and traffic_minute.

Revision ID: 9795b3530028
Revises:
Create Date: 2026-11-30 00:34:23.429706

Reviewed by hand before merging; never edited after it has been merged.
Portable: runs unchanged on PostgreSQL and SQLite (server defaults use sa.func.now(), CHECK
constraints are plain SQL understood by both, constraint names follow the naming convention
of clickstream.db.models.NAMING_CONVENTION).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "9795b3530028"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEVICE_TYPES = "device_type IN ('desktop', 'mobile', 'tablet')"


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("event_type", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=True, comment="The tracker's own session id."),
        sa.Column("page_url", sa.String(length=2048), nullable=False),
        sa.Column("page_type", sa.String(length=16), nullable=False),
        sa.Column("referrer_url", sa.Text(), nullable=True),
        sa.Column("utm_source", sa.Text(), nullable=True),
        sa.Column("utm_medium", sa.Text(), nullable=True),
        sa.Column("utm_campaign", sa.Text(), nullable=True),
        sa.Column("device_type", sa.String(length=8), nullable=False),
        sa.Column("os", sa.Text(), nullable=True),
        sa.Column("browser", sa.Text(), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("city", sa.Text(), nullable=True),
        sa.Column("latitude", sa.Double(), nullable=True),
        sa.Column("longitude", sa.Double(), nullable=True),
        sa.Column("product_id", sa.Text(), nullable=True),
        sa.Column("search_query", sa.Text(), nullable=True),
        sa.Column("order_id", sa.Text(), nullable=True),
        sa.Column("revenue", sa.Numeric(precision=12, scale=2), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column(
            "ingested_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "kafka_partition",
            sa.Integer(),
            nullable=True,
            comment="Kafka partition of the first stored copy (for tracing).",
        ),
        sa.Column(
            "kafka_offset",
            sa.BigInteger(),
            nullable=True,
            comment="Kafka offset of the first stored copy (for tracing).",
        ),
        sa.CheckConstraint(
            "event_type IN ('page_view', 'search', 'add_to_cart', 'remove_from_cart', "
            "'begin_checkout', 'purchase')",
            name=op.f("ck_events_event_type"),
        ),
        sa.CheckConstraint(
            "page_type IN ('home', 'category', 'product', 'search', 'cart', 'checkout', "
            "'confirmation', 'account', 'other')",
            name=op.f("ck_events_page_type"),
        ),
        sa.CheckConstraint(DEVICE_TYPES, name=op.f("ck_events_device_type")),
        sa.CheckConstraint(
            "(latitude IS NULL) = (longitude IS NULL)", name=op.f("ck_events_coordinates")
        ),
        sa.CheckConstraint("latitude BETWEEN -90 AND 90", name=op.f("ck_events_latitude")),
        sa.CheckConstraint("longitude BETWEEN -180 AND 180", name=op.f("ck_events_longitude")),
        sa.CheckConstraint("revenue >= 0", name=op.f("ck_events_revenue")),
        sa.CheckConstraint(
            "event_type <> 'purchase' OR "
            "(order_id IS NOT NULL AND revenue IS NOT NULL AND currency IS NOT NULL)",
            name=op.f("ck_events_purchase"),
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_events")),
    )
    op.create_index(
        op.f("ix_events_user_id_occurred_at"), "events", ["user_id", "occurred_at"], unique=False
    )
    op.create_index(op.f("ix_events_occurred_at"), "events", ["occurred_at"], unique=False)

    op.create_table(
        "sessions",
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_seconds", sa.Double(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("page_views", sa.Integer(), nullable=False),
        sa.Column("purchases", sa.Integer(), nullable=False),
        sa.Column(
            "revenue", sa.Numeric(precision=18, scale=2), server_default="0", nullable=False
        ),
        sa.Column("converted", sa.Boolean(), nullable=False),
        sa.Column("bounced", sa.Boolean(), nullable=False),
        sa.Column("entry_page", sa.String(length=2048), nullable=False),
        sa.Column("exit_page", sa.String(length=2048), nullable=False),
        sa.Column("conversion_path", sa.Text(), nullable=True),
        sa.Column("traffic_source", sa.Text(), nullable=False),
        sa.Column("device_type", sa.String(length=8), nullable=False),
        sa.Column("os", sa.Text(), nullable=True),
        sa.Column("browser", sa.Text(), nullable=True),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("city", sa.Text(), nullable=True),
        sa.Column(
            "funnel_step",
            sa.SmallInteger(),
            server_default="0",
            nullable=False,
            comment="Funnel steps reached in order (page view, product view, add to cart, "
            "checkout, purchase): 0..5.",
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint("ended_at >= started_at", name=op.f("ck_sessions_ended_after_started")),
        sa.CheckConstraint("duration_seconds >= 0", name=op.f("ck_sessions_duration_seconds")),
        sa.CheckConstraint("event_count >= 1", name=op.f("ck_sessions_event_count")),
        sa.CheckConstraint(
            "page_views BETWEEN 0 AND event_count", name=op.f("ck_sessions_page_views")
        ),
        sa.CheckConstraint("purchases BETWEEN 0 AND event_count", name=op.f("ck_sessions_purchases")),
        sa.CheckConstraint("revenue >= 0", name=op.f("ck_sessions_revenue")),
        sa.CheckConstraint("converted = (purchases > 0)", name=op.f("ck_sessions_converted")),
        sa.CheckConstraint("bounced = (event_count = 1)", name=op.f("ck_sessions_bounced")),
        sa.CheckConstraint(
            "(conversion_path IS NOT NULL) = converted", name=op.f("ck_sessions_conversion_path")
        ),
        sa.CheckConstraint(DEVICE_TYPES, name=op.f("ck_sessions_device_type")),
        sa.CheckConstraint("funnel_step BETWEEN 0 AND 5", name=op.f("ck_sessions_funnel_step")),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_started_at"), "sessions", ["started_at"], unique=False)
    op.create_index(
        op.f("ix_sessions_user_id_started_at"), "sessions", ["user_id", "started_at"], unique=False
    )

    op.create_table(
        "traffic_minute",
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device_type", sa.String(length=8), nullable=False),
        sa.Column("country", sa.String(length=2), server_default="", nullable=False),
        sa.Column("events", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("page_views", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("add_to_carts", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("purchases", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "revenue", sa.Numeric(precision=20, scale=2), server_default="0", nullable=False
        ),
        sa.CheckConstraint(DEVICE_TYPES, name=op.f("ck_traffic_minute_device_type")),
        sa.CheckConstraint("events >= 0", name=op.f("ck_traffic_minute_events")),
        sa.CheckConstraint(
            "page_views BETWEEN 0 AND events", name=op.f("ck_traffic_minute_page_views")
        ),
        sa.CheckConstraint(
            "add_to_carts BETWEEN 0 AND events", name=op.f("ck_traffic_minute_add_to_carts")
        ),
        sa.CheckConstraint(
            "purchases BETWEEN 0 AND events", name=op.f("ck_traffic_minute_purchases")
        ),
        sa.CheckConstraint("revenue >= 0", name=op.f("ck_traffic_minute_revenue")),
        sa.PrimaryKeyConstraint(
            "minute", "device_type", "country", name=op.f("pk_traffic_minute")
        ),
    )


def downgrade() -> None:
    op.drop_table("traffic_minute")
    op.drop_index(op.f("ix_sessions_user_id_started_at"), table_name="sessions")
    op.drop_index(op.f("ix_sessions_started_at"), table_name="sessions")
    op.drop_table("sessions")
    op.drop_index(op.f("ix_events_occurred_at"), table_name="events")
    op.drop_index(op.f("ix_events_user_id_occurred_at"), table_name="events")
    op.drop_table("events")

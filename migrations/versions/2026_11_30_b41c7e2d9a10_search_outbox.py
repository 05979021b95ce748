"""Add search_outbox: session documents to synchronise with OpenSearch after a commit.

Revision ID: b41c7e2d9a10
Revises: 9795b3530028
Create Date: 2026-11-30 01:40:00

Reviewed by hand before merging; never edited after it has been merged.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "b41c7e2d9a10"
down_revision: str | Sequence[str] | None = "9795b3530028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "search_outbox",
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="1", nullable=False),
        sa.Column(
            "enqueued_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_search_outbox")),
    )


def downgrade() -> None:
    op.drop_table("search_outbox")

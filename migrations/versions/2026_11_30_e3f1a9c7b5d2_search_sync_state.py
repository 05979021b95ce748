"""The high-water mark of the versions outbox drains write to OpenSearch.

Each drain writes its session documents with a version that OpenSearch compares with the one
it holds. Taken from this one row (the greater of the database clock's microseconds and the
last version plus one), versions only grow, even if the clock steps back.

Revision ID: e3f1a9c7b5d2
Revises: c5e8a1f40b27
Create Date: 2026-11-30 23:55:00

Reviewed by hand before merging; never edited after it has been merged.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "e3f1a9c7b5d2"
down_revision: str | Sequence[str] | None = "c5e8a1f40b27"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "search_sync_state",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_search_sync_state_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_sync_state")),
    )
    op.bulk_insert(table, [{"id": 1, "version": 0}])


def downgrade() -> None:
    op.drop_table("search_sync_state")

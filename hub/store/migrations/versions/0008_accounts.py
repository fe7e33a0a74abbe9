"""System accounts: which hub user each belongs to, and the retired ones (never reused)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account", sa.String(length=32), nullable=False),
        sa.Column("hub_user", sa.String(length=255), nullable=True),
        sa.Column("claimed", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("account"),
        sa.UniqueConstraint("hub_user"),
    )


def downgrade() -> None:
    op.drop_table("accounts")

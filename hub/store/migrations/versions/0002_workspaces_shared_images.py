"""Workspaces, shared images

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("max_instances", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("visibility", sa.String(length=16), nullable=False, server_default="public")
        )
        batch_op.add_column(sa.Column("workspace", sa.String(length=64), nullable=True))

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("workspace", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_instances_workspace"), ["workspace"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instances_workspace"))
        batch_op.drop_column("workspace")

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("workspace")
        batch_op.drop_column("visibility")

    op.drop_table("workspaces")

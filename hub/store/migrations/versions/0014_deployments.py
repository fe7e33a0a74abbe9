"""Deployments: their versions, replicas, events, app keys and request metrics

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("serving", sa.Integer(), nullable=True),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("stopped", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("owner", "name"),
    )
    op.create_table(
        "deployment_replicas",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("deployment", sa.String(32), nullable=False, index=True),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(1024), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=True),
        sa.UniqueConstraint("deployment", "number"),
    )
    op.create_table(
        "deployment_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("deployment", sa.String(32), nullable=False, index=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message", sa.String(2000), nullable=False),
    )
    op.create_table(
        "app_keys",
        sa.Column("prefix", sa.String(16), primary_key=True),
        sa.Column("deployment", sa.String(32), nullable=False, index=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "deployment_metrics",
        sa.Column("deployment", sa.String(32), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("histogram", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    for table in ("deployment_metrics", "app_keys", "deployment_events"):
        op.drop_table(table)
    op.drop_table("deployment_replicas")
    op.drop_table("deployments")

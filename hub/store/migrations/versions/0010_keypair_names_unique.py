"""Key pairs: a name only once per owner (a duplicate there was gets its id appended)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    keypairs = sa.table(
        "keypairs", sa.column("id"), sa.column("owner"), sa.column("name"), sa.column("created")
    )
    connection = op.get_bind()
    seen = set()
    rows = sa.select(keypairs.c.id, keypairs.c.owner, keypairs.c.name).order_by(keypairs.c.created)
    for key_id, owner, name in connection.execute(rows).all():
        if (owner, name) in seen:
            renamed = keypairs.update().where(keypairs.c.id == key_id)
            connection.execute(renamed.values(name=f"{name[:47]}-{key_id}"))
        seen.add((owner, name))
    with op.batch_alter_table("keypairs") as batch:
        batch.create_unique_constraint("uq_keypairs_owner_name", ["owner", "name"])


def downgrade() -> None:
    with op.batch_alter_table("keypairs") as batch:
        batch.drop_constraint("uq_keypairs_owner_name", type_="unique")

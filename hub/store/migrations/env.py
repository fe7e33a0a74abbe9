"""Alembic environment for Atelier's store: run with the connection the Store passes in."""

from alembic import context

from atelier.hub.store.records import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

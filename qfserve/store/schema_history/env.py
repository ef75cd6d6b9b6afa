"""Alembic environment: qfserve runs migrations itself (`Store.migrate`), on the connection it passes."""

from alembic import context

from qfserve.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs go through a table copy
)
with context.begin_transaction():
    context.run_migrations()

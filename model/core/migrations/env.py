"""Alembic's environment for every store: Database hands it an open connection (inside the migration's
transaction and lock) and the store's version table; each store keeps its revisions in a folder of its own."""
from alembic import context

config = context.config
context.configure(connection=config.attributes["connection"], version_table=config.attributes["version_table"],
                  render_as_batch=True, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()

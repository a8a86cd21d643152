"""A claimed task is leased to its holder's token until lease_expires."""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("items", sa.Column("lease", sa.Text))
    op.add_column("items", sa.Column("lease_expires", sa.Float, nullable=False, server_default="0"))

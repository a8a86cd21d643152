"""The derived work an annotation still owes, written in the annotation's own transaction."""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "derived_work",
        sa.Column("annotation_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("updated_at", sa.Text, nullable=False),
        sa.Column("project", sa.Text, nullable=False),
        sa.Column("task_id", sa.BigInteger, nullable=False),
        sa.Column("image", sa.Text, nullable=False),
        sa.Column("task_data", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("queued", sa.Float, nullable=False))

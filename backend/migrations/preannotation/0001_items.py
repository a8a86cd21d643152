"""The pre-annotation queue: one row per (project, task, model version)."""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("project", sa.Text, nullable=False),
        sa.Column("task_id", sa.BigInteger, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column("not_before", sa.Float, nullable=False, server_default="0"),
        sa.Column("queued", sa.Float, nullable=False),
        sa.Column("finished", sa.Float),
        sa.PrimaryKeyConstraint("project", "task_id", "model_version"))
    op.create_index("items_by_state", "items", ["state", "not_before"])

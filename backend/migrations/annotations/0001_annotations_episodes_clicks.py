"""The annotations Label Studio sent (one row per region), the agent's episodes and the interactive requests.
Files written before the store had migrations hold these tables already (at version 0): they are kept."""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite's AUTOINCREMENT needs INTEGER


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "annotation_regions" not in existing:
        op.create_table(
            "annotation_regions",
            sa.Column("project", sa.Text, nullable=False),
            sa.Column("task_id", sa.BigInteger, nullable=False),
            sa.Column("annotation_id", sa.BigInteger, nullable=False),
            sa.Column("updated_at", sa.Text, nullable=False),
            sa.Column("region_index", sa.Integer, nullable=False),
            sa.Column("label", sa.Text, nullable=False),
            sa.Column("prompt", sa.Text),
            sa.Column("source", sa.Text, nullable=False),
            sa.Column("mask_rle", sa.Text, nullable=False),
            sa.Column("received", sa.Float, nullable=False),
            sa.Column("quality", sa.Float),
            sa.PrimaryKeyConstraint("annotation_id", "region_index"))
        op.create_index("regions_by_task", "annotation_regions", ["project", "task_id"])
    if "agent_episodes" not in existing:
        op.create_table(
            "agent_episodes",
            sa.Column("id", SERIAL, primary_key=True, autoincrement=True),
            sa.Column("project", sa.Text, nullable=False),
            sa.Column("task_id", sa.BigInteger, nullable=False),
            sa.Column("label", sa.Text, nullable=False),
            sa.Column("description", sa.Text, nullable=False),
            sa.Column("model_version", sa.Text, nullable=False),
            sa.Column("steps", sa.Text, nullable=False),
            sa.Column("mask_rle", sa.Text, nullable=False),
            sa.Column("score", sa.Float, nullable=False),
            sa.Column("stop_reason", sa.Text, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            sqlite_autoincrement=True)
        op.create_index("episodes_by_task", "agent_episodes", ["project", "task_id"])
    if "interactive_steps" not in existing:
        op.create_table(
            "interactive_steps",
            sa.Column("id", SERIAL, primary_key=True, autoincrement=True),
            sa.Column("project", sa.Text, nullable=False),
            sa.Column("task_id", sa.BigInteger, nullable=False),
            sa.Column("label", sa.Text, nullable=False),
            sa.Column("clicks", sa.Text, nullable=False),
            sa.Column("mask_rle", sa.Text, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            sqlite_autoincrement=True)
        op.create_index("interactive_by_task", "interactive_steps", ["project", "task_id", "label"])

"""Trajectories (one per object of an annotation) and their steps (a click, the mask before and after)."""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "trajectories",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("project", sa.Text, nullable=False),
        sa.Column("task_id", sa.BigInteger, nullable=False),
        sa.Column("annotation_id", sa.BigInteger, nullable=False),
        sa.Column("annotation_version", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("image_sha", sa.Text, nullable=False),
        sa.Column("target_rle", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sqlite_autoincrement=True)
    op.create_index("trajectories_by_annotation", "trajectories", ["annotation_id"])
    op.create_index("trajectories_by_project", "trajectories", ["project"])
    op.create_table(
        "steps",
        sa.Column("trajectory_id", sa.BigInteger, sa.ForeignKey("trajectories.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("x", sa.Float, nullable=False),
        sa.Column("y", sa.Float, nullable=False),
        sa.Column("positive", sa.Integer, nullable=False),
        sa.Column("mask_before_rle", sa.Text, nullable=False),
        sa.Column("mask_after_rle", sa.Text, nullable=False),
        sa.Column("iou", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("trajectory_id", "position"))

"""The regions predicted for each task, each mask bit-packed and compressed with its bounding box."""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "predicted_regions",
        sa.Column("project", sa.Text, nullable=False),
        sa.Column("task", sa.BigInteger, nullable=False),
        sa.Column("region_id", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        *(sa.Column(name, sa.Integer, nullable=False) for name in ("height", "width", "top", "left_", "bottom", "right_")),
        sa.Column("mask", sa.LargeBinary, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("project", "task", "region_id"))
    op.create_index("predicted_regions_by_label", "predicted_regions", ["project", "task", "label"])

"""The quality labels corrections bring: a predicted mask's features and its IoU with what the annotator kept."""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "quality_labels",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("project", sa.Text, nullable=False),
        sa.Column("task_id", sa.BigInteger, nullable=False),
        sa.Column("annotation_id", sa.BigInteger, nullable=False),
        sa.Column("annotation_version", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("prediction_id", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("iou", sa.Float, nullable=False),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("features_version", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.UniqueConstraint("annotation_id", "source", "prediction_id"),
        sqlite_autoincrement=True)
    op.create_index("quality_labels_by_project", "quality_labels", ["project", "seq"])

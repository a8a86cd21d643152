"""Which object of a label a region and an interactive request were: with two objects of one label, the real
clicks of each are joined to its own region (Label Studio's region id, the backend's object id)."""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("annotation_regions", sa.Column("region_id", sa.Text))
    op.add_column("interactive_steps", sa.Column("region_id", sa.Text))

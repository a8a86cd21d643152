"""The policy and scorer registries (rows namespaced by kind: "models", "scorers"): each scope's versions, its active
version, the history of its changes and its training jobs' records. A version's files stay in the blob folder."""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "registry_versions",
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),  # N of vN
        sa.Column("meta", sa.Text, nullable=True),  # JSON; NULL: allocated, its files not registered yet
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("kind", "scope", "version"))
    op.create_table(
        "registry_active",
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),  # v0: the base
        sa.PrimaryKeyConstraint("kind", "scope"))
    op.create_table(
        "registry_history",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("entry", sa.Text, nullable=False),  # JSON: version, previous, reason, at
        sqlite_autoincrement=True)
    op.create_index("registry_history_by_scope", "registry_history", ["kind", "scope", "seq"])
    op.create_table(
        "registry_jobs",
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),  # JSON: a JobRecord
        sa.Column("updated", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("kind", "job_id"))
    op.create_index("registry_jobs_by_scope", "registry_jobs", ["kind", "scope"])

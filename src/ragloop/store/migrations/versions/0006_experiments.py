"""A/B experiments

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-14 09:00:00

``experiments`` holds A/B experiments on the live traffic of an alias (arms frozen at start, share, ramp,
metrics, status and decision) and ``experiment_snapshots`` the history of their checks. A partial unique
index lets at most one experiment per alias be ``running`` (SQLite and PostgreSQL both have partial
indexes). Every interaction records the experiment that served it, its arm and the assignment unit;
existing rows stay NULL: they were served outside any experiment.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("ramp", sa.JSON(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("unit", sa.String(length=32), nullable=False),
        sa.Column("primary_metric", sa.String(length=64), nullable=False),
        sa.Column("guardrails", sa.JSON(), nullable=False),
        sa.Column("min_units", sa.Integer(), nullable=False),
        sa.Column("max_days", sa.Float(), nullable=True),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decision", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.Column("stopped_by", sa.String(length=64), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_experiments_alias", "experiments", ["alias"])
    op.create_index("ix_experiments_status", "experiments", ["status"])
    op.create_index(
        "uq_experiments_running_alias",
        "experiments",
        ["alias"],
        unique=True,
        sqlite_where=RUNNING,
        postgresql_where=RUNNING,
    )
    op.create_table(
        "experiment_snapshots",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("experiment_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_experiment_snapshots_experiment_id", "experiment_snapshots", ["experiment_id"])
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("experiment_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("arm", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("experiment_unit", sa.String(length=160), nullable=True))
        batch_op.create_index("ix_interactions_experiment_id", ["experiment_id"])


def downgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_index("ix_interactions_experiment_id")
        batch_op.drop_column("experiment_unit")
        batch_op.drop_column("arm")
        batch_op.drop_column("experiment_id")
    op.drop_index("ix_experiment_snapshots_experiment_id", table_name="experiment_snapshots")
    op.drop_table("experiment_snapshots")
    op.drop_index("uq_experiments_running_alias", table_name="experiments")
    op.drop_index("ix_experiments_status", table_name="experiments")
    op.drop_index("ix_experiments_alias", table_name="experiments")
    op.drop_table("experiments")

"""eval runs heartbeat

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 08:45:00

A running evaluation writes ``heartbeat_at`` every few seconds. It fences the ``running`` → ``interrupted``
transition (a conditional update on the heartbeat seen, as training jobs do), and it is how a run whose
process died on another machine is told from one still at work there.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")

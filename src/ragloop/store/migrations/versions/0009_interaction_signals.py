"""interaction answer signals

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 14:50:00

``interactions.verified`` / ``abstained`` / ``signals_at``: an answer's automatic signals (citations
verified against the passages shown, an abstention), computed once after the fact by the monitoring stage, so
the dashboard (issue 19) and drift checks (issue 18) aggregate them in SQL over 100,000s of records instead of
re-verifying every answer on every page load.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("interactions") as batch:
        batch.add_column(sa.Column("verified", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("abstained", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("signals_at", sa.DateTime(), nullable=True))
        batch.create_index("ix_interactions_signals_at", ["signals_at"])


def downgrade() -> None:
    with op.batch_alter_table("interactions") as batch:
        batch.drop_index("ix_interactions_signals_at")
        batch.drop_column("signals_at")
        batch.drop_column("abstained")
        batch.drop_column("verified")

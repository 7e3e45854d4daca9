"""feedback evidence

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 11:30:00

A reviewer's feedback may name knowledge-base passages that the retriever did not show but that support the
(corrected) answer. They become the gold passage of the training example, with the passages the retriever
did show as its hard negatives: a correction is no longer lost because retrieval missed its evidence.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evidence", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_column("evidence")

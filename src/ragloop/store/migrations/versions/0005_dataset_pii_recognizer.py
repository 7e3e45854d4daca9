"""dataset PII recognizer version

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 12:00:00

A dataset version records the version of the PII recognizers it was built with
(``ragloop.curation.pii.RECOGNIZER_VERSION``), so ``ragloop dataset list`` can mark the versions built
with an older one — whose examples may still hold names the newer recognizers replace — and the models
trained on them. Existing rows stay NULL: built before versions were recorded, that is with version 1.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pii_recognizer", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.drop_column("pii_recognizer")

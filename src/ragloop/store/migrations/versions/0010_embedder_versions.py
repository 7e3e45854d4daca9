"""embedder versions

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 14:30:00

``embedder_versions`` registers each fine-tuned retriever embedder with its lineage (pairs dataset, base
embedder and hash, hyperparameters, code version) and the KB versions embedded with it (issue 20). The base
embedder has no row: ``None`` in the ``embedder_version`` columns means the configured base embedder, as for
every record made before this migration. ``interactions.embedder_version`` records which embedder retrieved
a turn's passages; ``model_aliases`` / ``registry_events`` gain the column so an alias serves a pair
(model version, embedder version) and promote/rollback move either.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embedder_versions",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("base", sa.Text(), nullable=False),
        sa.Column("base_hash", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("kb_versions", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_embedder_versions_dataset_id", "embedder_versions", ["dataset_id"])
    with op.batch_alter_table("interactions") as batch:
        batch.add_column(sa.Column("embedder_version", sa.String(length=128), nullable=True))
    with op.batch_alter_table("model_aliases") as batch:
        batch.add_column(sa.Column("embedder_version", sa.String(length=128), nullable=True))
    with op.batch_alter_table("registry_events") as batch:
        batch.add_column(sa.Column("embedder_version", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registry_events") as batch:
        batch.drop_column("embedder_version")
    with op.batch_alter_table("model_aliases") as batch:
        batch.drop_column("embedder_version")
    with op.batch_alter_table("interactions") as batch:
        batch.drop_column("embedder_version")
    op.drop_index("ix_embedder_versions_dataset_id", table_name="embedder_versions")
    op.drop_table("embedder_versions")

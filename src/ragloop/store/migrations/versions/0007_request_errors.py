"""request errors

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 12:00:00

``request_errors`` counts the live requests that were resolved to a model and then failed (503 when every
generation slot is busy and the queue is full, 502 when the engine fails): issue 16 asks for a refusal to be
recorded as an error, and an A/B arm's error rate (issue 17) needs the failures beside the interactions.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_errors",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=64), nullable=True),
        sa.Column("user_id", sa.String(length=128), nullable=True),
        sa.Column("api_key_id", sa.String(length=32), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("model_alias", sa.String(length=128), nullable=True),
        sa.Column("experiment_id", sa.String(length=32), nullable=True),
        sa.Column("arm", sa.String(length=16), nullable=True),
        sa.Column("unit", sa.String(length=160), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_request_errors_created_at", "request_errors", ["created_at"])
    op.create_index("ix_request_errors_model_version", "request_errors", ["model_version"])
    op.create_index("ix_request_errors_experiment_id", "request_errors", ["experiment_id"])


def downgrade() -> None:
    op.drop_index("ix_request_errors_experiment_id", table_name="request_errors")
    op.drop_index("ix_request_errors_model_version", table_name="request_errors")
    op.drop_index("ix_request_errors_created_at", table_name="request_errors")
    op.drop_table("request_errors")

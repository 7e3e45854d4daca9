"""claim owner and periodic tasks

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 09:00:00

Background work is claimed one way (``ragloop.store.claims``). Who holds a claim (host, boot id, pid) was
kept inside each record's own JSON (``jobs.progress["worker"]``, ``eval_runs.config["owner"]``); it becomes
a column ``owner`` of its own, and what was stored is moved there. ``periodic_tasks`` holds the state of
the tasks the servers of one database take turns at (retention now), claimed the same way.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The tables as this migration sees them (not the models, which move on).
jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("pid", sa.Integer),
                sa.column("progress", sa.JSON), sa.column("owner", sa.JSON))  # fmt: skip
eval_runs = sa.table("eval_runs", sa.column("id", sa.String), sa.column("config", sa.JSON),
                     sa.column("owner", sa.JSON))  # fmt: skip


def upgrade() -> None:
    for table in ("jobs", "eval_runs"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("owner", sa.JSON(), nullable=True))
    op.create_table(
        "periodic_tasks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.JSON(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("next_due", sa.DateTime(), nullable=True),
        sa.Column("last_run_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )

    conn = op.get_bind()
    # Filtered here rather than in SQL: JSON has no portable "has key" between SQLite and PostgreSQL, and
    # these tables hold hundreds of rows, not millions.
    for id_, pid, progress in conn.execute(sa.select(jobs.c.id, jobs.c.pid, jobs.c.progress)).all():
        worker = (progress or {}).get("worker")
        if worker is None:
            continue
        rest = {k: v for k, v in progress.items() if k != "worker"}
        owner = {**worker, "pid": worker.get("pid", pid)}
        conn.execute(sa.update(jobs).where(jobs.c.id == id_).values(owner=owner, progress=rest))
    for id_, config in conn.execute(sa.select(eval_runs.c.id, eval_runs.c.config)).all():
        owner = (config or {}).get("owner")
        if owner is None:
            continue
        rest = {k: v for k, v in config.items() if k != "owner"}
        conn.execute(sa.update(eval_runs).where(eval_runs.c.id == id_).values(owner=owner, config=rest))


def downgrade() -> None:
    conn = op.get_bind()
    for id_, owner, progress in conn.execute(sa.select(jobs.c.id, jobs.c.owner, jobs.c.progress)).all():
        if owner is not None:
            progress = {**(progress or {}), "worker": owner}
            conn.execute(sa.update(jobs).where(jobs.c.id == id_).values(progress=progress))
    for id_, owner, config in conn.execute(
        sa.select(eval_runs.c.id, eval_runs.c.owner, eval_runs.c.config)
    ).all():
        if owner is not None:
            config = {**(config or {}), "owner": owner}
            conn.execute(sa.update(eval_runs).where(eval_runs.c.id == id_).values(config=config))
    op.drop_table("periodic_tasks")
    for table in ("jobs", "eval_runs"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("owner")

"""Leases bound to their holder: the principal that took a lease, its token stored as a sha256 (a reader of the
database cannot use it); TRUNCATE of the history refused on PostgreSQL as UPDATE and DELETE already are.

Revision ID: 0004
Revises: 0003
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deployment_locks", sa.Column("principal", sa.String(256), nullable=False, server_default=""))
    bind = op.get_bind()
    locks = sa.table("deployment_locks", sa.column("model_id"), sa.column("token"))
    for model_id, token in bind.execute(sa.select(locks.c.model_id, locks.c.token)).all():
        digest = hashlib.sha256(token.encode()).hexdigest()
        bind.execute(locks.update().where(locks.c.model_id == model_id).values(token=digest))
    if bind.dialect.name != "sqlite":  # SQLite has no TRUNCATE (its DELETE trigger covers `DELETE FROM history`)
        op.execute(
            "CREATE TRIGGER history_no_truncate BEFORE TRUNCATE ON history "
            "FOR EACH STATEMENT EXECUTE FUNCTION registry_history_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER IF EXISTS history_no_truncate ON history")
    op.drop_column("deployment_locks", "principal")

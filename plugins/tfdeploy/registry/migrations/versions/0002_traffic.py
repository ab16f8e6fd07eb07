"""Gray releases: a traffic split per model (stable, canary and its weight, pause, pending promote/abort) and a
per-model rate limit.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "traffic",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id"), primary_key=True),
        sa.Column("stable_version", sa.BigInteger(), nullable=True),
        sa.Column("canary_version", sa.BigInteger(), nullable=True),
        sa.Column("canary_weight", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("pending_action", sa.String(16), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=False, server_default=""),
        sa.Column("run_id", sa.String(250), nullable=False, server_default=""),
        sa.CheckConstraint("canary_weight BETWEEN 0 AND 100", name="ck_traffic_canary_weight"),
        sa.CheckConstraint("canary_version IS NOT NULL OR canary_weight = 0", name="ck_traffic_weight_needs_canary"),
        sa.CheckConstraint("pending_action IN ('promote', 'abort')", name="ck_traffic_pending_action"),
    )
    op.add_column("models", sa.Column("rate_limit_rps", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("rate_limit_rps")
    op.drop_table("traffic")

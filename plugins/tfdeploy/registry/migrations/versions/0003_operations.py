"""Operations: the health vocabulary (``unhealthy`` is now ``failing``) and a model's health as its production
version's; per-model settings (auto-rollback on failing, approval, freeze); Alertmanager's alerts; what /metrics
needs (lock refusals, when a version entered its state).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# A model's health is the latest health record of its production version (none in production: no health).
PRODUCTION_HEALTH = (
    "UPDATE models SET health_status = (SELECT h.status FROM health_records h WHERE h.model_id = models.id "
    "AND h.version = models.production_version ORDER BY h.recorded_at DESC, h.id DESC LIMIT 1)"
)


# Plain ADD/DROP COLUMN (SQLite >= 3.35 has both): a batch copy of `models` would have to drop the table, which
# the foreign keys of its versions refuse once the database holds data.
def _model_columns() -> tuple[sa.Column, ...]:
    return (
        sa.Column("auto_rollback_on_failing", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("require_approval", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("frozen", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("frozen_reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("frozen_by", sa.String(256), nullable=False, server_default=""),
        sa.Column("frozen_at", sa.DateTime(), nullable=True),
        sa.Column("lock_refusals", sa.BigInteger(), nullable=False, server_default="0"),
    )


def upgrade() -> None:
    for column in _model_columns():
        op.add_column("models", column)
    op.add_column("model_versions", sa.Column("state_changed_at", sa.DateTime(), nullable=True))
    # when each version entered its state: its last history event into that state, else its last update
    op.execute(
        "UPDATE model_versions SET state_changed_at = COALESCE((SELECT MAX(h.at) FROM history h JOIN models m "
        "ON m.name = h.model_name WHERE m.id = model_versions.model_id AND h.version = model_versions.version "
        "AND h.to_state = model_versions.state), updated_at)"
    )
    op.create_index("ix_health_model_version_time", "health_records", ["model_id", "version", "recorded_at"])
    op.create_index("ix_history_kind_model", "history", ["kind", "model_name"])
    op.execute("UPDATE health_records SET status = 'failing' WHERE status = 'unhealthy'")
    op.execute(PRODUCTION_HEALTH)
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("starts_at", sa.DateTime(), nullable=False),
        sa.Column("ends_at", sa.DateTime(), nullable=True),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("alertname", sa.String(256), nullable=False, server_default=""),
        sa.Column("severity", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.JSON(), nullable=False),
        sa.Column("generator_url", sa.Text(), nullable=False, server_default=""),
        sa.Column("receiver", sa.String(256), nullable=False, server_default=""),
        sa.Column("first_received_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("rollback_status", sa.String(16), nullable=True),
        sa.Column("rollback_run_id", sa.String(250), nullable=False, server_default=""),
        sa.Column("rollback_started_at", sa.DateTime(), nullable=True),
        sa.Column("rollback_note", sa.Text(), nullable=False, server_default=""),
        sa.UniqueConstraint("fingerprint", "starts_at", name="uq_alert_instance"),
        sa.CheckConstraint("status IN ('firing', 'resolved')", name="ck_alert_status"),
    )
    op.create_index("ix_alerts_model_status", "alerts", ["model", "status"])
    op.create_index("ix_alerts_status_received", "alerts", ["status", "received_at"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.execute("UPDATE health_records SET status = 'unhealthy' WHERE status = 'failing'")
    op.execute("UPDATE models SET health_status = 'unhealthy' WHERE health_status = 'failing'")
    op.drop_index("ix_history_kind_model", table_name="history")
    op.drop_index("ix_health_model_version_time", table_name="health_records")
    op.drop_column("model_versions", "state_changed_at")
    for column in reversed(_model_columns()):
        op.drop_column("models", column.name)

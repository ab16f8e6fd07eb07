"""SQLAlchemy schema and engine set-up. The schema itself is created by Alembic (see migrations/)."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

WRITE = "tfdeploy_write"  # execution option marking a write transaction


def utcnow() -> dt.datetime:
    """Naive UTC: stored the same way on SQLite and PostgreSQL."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Denormalised for the list view (kept in step by the service in the same transaction).
    production_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    canary_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    health_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    latest_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Requests per second the router lets through to this model (None: no limit).
    rate_limit_rps: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Operations settings (migration 0003): an alert's or a check's failure may start model_rollback at once;
    # a release must be approved by a person; a frozen model takes no new release until unfrozen.
    auto_rollback_on_failing: Mapped[bool] = mapped_column(Boolean, default=False)
    require_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    frozen_reason: Mapped[str] = mapped_column(Text, default="")
    frozen_by: Mapped[str] = mapped_column(String(256), default="")
    frozen_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # Deployment-lock requests refused because another run held the lock (the lock waits; for /metrics).
    lock_refusals: Mapped[int] = mapped_column(BigInteger, default=0)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_model_version"),
        Index("ix_model_versions_model_state", "model_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(32))
    row_version: Mapped[int] = mapped_column(Integer, default=1)  # optimistic concurrency
    hdfs_uri: Mapped[str] = mapped_column(Text, default="")
    manifest_sha256: Mapped[str] = mapped_column(String(64), default="")
    source: Mapped[str] = mapped_column(Text, default="")
    signatures: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    validation_report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(256), default="")
    interface: Mapped[str] = mapped_column(String(32), default="")
    dag_id: Mapped[str] = mapped_column(String(250), default="")
    run_id: Mapped[str] = mapped_column(String(250), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # When the version entered its current state (updated_at also moves when a report is attached).
    state_changed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, default=utcnow)


class Deployment(Base):
    """Which version a label (stable, canary) points at on a serving target."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("model_id", "target", "label", name="uq_deployment_label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    target: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(BigInteger)
    updated_by: Mapped[str] = mapped_column(String(256), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class HealthRecord(Base):
    __tablename__ = "health_records"
    __table_args__ = (
        Index("ix_health_model_time", "model_id", "recorded_at"),
        Index("ix_health_model_version_time", "model_id", "version", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(BigInteger)
    target: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    actor: Mapped[str] = mapped_column(String(256), default="")
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class DeploymentLock(Base):
    """A lease per model: one deployment run at a time; an expired lease can be taken over."""

    __tablename__ = "deployment_locks"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    run_id: Mapped[str] = mapped_column(String(250), default="")
    principal: Mapped[str] = mapped_column(String(256), default="")  # who took it (the holder proves it is them)
    token: Mapped[str] = mapped_column(String(64))  # sha256 of the token: the database never holds a usable one
    acquired_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Traffic(Base):
    """A model's traffic split during a gray release: the stable version, the canary and its weight (percent of
    calls), and the operator's controls (pause, and a promote/abort the pipeline has yet to act on). No row: the
    production version takes all traffic."""

    __tablename__ = "traffic"
    __table_args__ = (
        CheckConstraint("canary_weight BETWEEN 0 AND 100", name="ck_traffic_canary_weight"),
        CheckConstraint("canary_version IS NOT NULL OR canary_weight = 0", name="ck_traffic_weight_needs_canary"),
        CheckConstraint("pending_action IN ('promote', 'abort')", name="ck_traffic_pending_action"),
    )

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    stable_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    canary_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    canary_weight: Mapped[int] = mapped_column(Integer, default=0)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    pending_action: Mapped[str | None] = mapped_column(String(16), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(256), default="")
    run_id: Mapped[str] = mapped_column(String(250), default="")


class Alert(Base):
    """An alert Alertmanager delivered (its webhook), one row per alert instance: the same fingerprint firing
    again later starts a new row (another startsAt). ``rollback_*``: what the registry did about it."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("fingerprint", "starts_at", name="uq_alert_instance"),
        Index("ix_alerts_model_status", "model", "status"),
        Index("ix_alerts_status_received", "status", "received_at"),
        CheckConstraint("status IN ('firing', 'resolved')", name="ck_alert_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(128))
    starts_at: Mapped[dt.datetime] = mapped_column(DateTime)
    ends_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    alertname: Mapped[str] = mapped_column(String(256), default="")
    severity: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    generator_url: Mapped[str] = mapped_column(Text, default="")
    receiver: Mapped[str] = mapped_column(String(256), default="")
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # started | deduplicated | declined | failed (None: no automatic rollback was due)
    rollback_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    rollback_run_id: Mapped[str] = mapped_column(String(250), default="")
    rollback_started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    rollback_note: Mapped[str] = mapped_column(Text, default="")


class HistoryEvent(Base):
    """Append-only: database triggers refuse UPDATE and DELETE on this table."""

    __tablename__ = "history"
    __table_args__ = (
        Index("ix_history_model_at", "model_name", "at"),
        Index("ix_history_at", "at"),
        Index("ix_history_actor_at", "actor", "at"),
        Index("ix_history_kind_model", "kind", "model_name"),  # /metrics counts events of a kind per model
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    model_name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # registered, transition, deployment, health, lock, serving, router, traffic, release_control, rate_limit,
    # settings, freeze, unfreeze, alert, auto_rollback, rollback
    kind: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    to_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    actor: Mapped[str] = mapped_column(String(256), default="")
    principal: Mapped[str] = mapped_column(String(256), default="")  # who authenticated the write
    interface: Mapped[str] = mapped_column(String(32), default="")
    dag_id: Mapped[str] = mapped_column(String(250), default="")
    run_id: Mapped[str] = mapped_column(String(250), default="")
    task_id: Mapped[str] = mapped_column(String(250), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL for concurrent readers, a busy timeout, and BEGIN IMMEDIATE for writes so racing writers queue
    instead of failing on a lock upgrade (the loser of a race then sees the winner's row and gets a clean
    409). Reads begin a plain (deferred) transaction and never block writers."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def session_factory(url: str) -> sessionmaker:
    return sessionmaker(bind=engine_for(url), expire_on_commit=False)

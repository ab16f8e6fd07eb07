"""Registry operations. Every write locks the model's row, checks the state machine, changes the rows and
appends its history event in one transaction, so readers never see a half-done change."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tfdeploy.core.errors import (
    Conflict,
    InvalidModelName,
    InvalidRequest,
    LockHeld,
    LostRace,
    NotFound,
    RollbackNotStarted,
)
from tfdeploy.core.names import validate_model_name
from tfdeploy.core.states import ModelState, check_transition

from . import db

INTERFACES = frozenset({"schedule", "ui", "rest_api", "cli", "asset", "backfill", "pipeline", "unknown"})
HEALTH = ("healthy", "degraded", "failing", "unknown")
HEALTH_ALIASES = {"unhealthy": "failing"}  # the old word, still accepted (stored as its new one)
# events the pipeline appends as they happen: serving (which replicas serve what), router (a routing change),
# approval (a release waiting for, or given, a human decision), diagnosis (a diagnosis bundle was stored),
# alert (a health change the pipeline's checks noticed and notified; Alertmanager's alerts come by /v1/alerts)
SERVING_EVENTS = frozenset({"serving", "router", "approval", "diagnosis", "alert"})
RELEASE_ACTIONS = frozenset({"pause", "resume", "promote", "abort"})
PENDING_ACTIONS = frozenset({"promote", "abort"})  # the pipeline acts on these, then clears them
ALERT_STATUSES = frozenset({"firing", "resolved"})
# An automatic rollback started by an alert holds off another one for the same model this long.
AUTO_ROLLBACK_WINDOW = dt.timedelta(minutes=10)
ROLLBACK_DAG = "model_rollback"
STATE_AGE_STATES = ("registered", "validated", "canary")  # states a release passes through (and can get stuck in)

# (model, reason) -> the Airflow run id of the model_rollback run it started (None: it started none)
RollbackStarter = Callable[[str, str], "str | None"]
# (model, version, reason) -> the Airflow run id of the model_rollback run it started
RollbackStarterTo = Callable[[str, int, str], str]


@dataclass(frozen=True)
class Actor:
    """Who did it and through what: recorded with every history event."""

    actor: str
    principal: str = ""
    interface: str = "unknown"
    dag_id: str = ""
    run_id: str = ""
    task_id: str = ""

    def __post_init__(self) -> None:
        if self.interface not in INTERFACES:
            raise InvalidRequest(f"unknown interface {self.interface!r}; use one of {', '.join(sorted(INTERFACES))}")
        if not self.actor:
            raise InvalidRequest("actor is required: say who (a user, or the run's triggering user) made the change")


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.replace(microsecond=value.microsecond).isoformat() + "Z"


def parse_time(value: str | dt.datetime | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(f"invalid time {value!r}: use ISO 8601, e.g. 2026-11-24T14:05:00Z") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def version_dict(model: db.Model, v: db.ModelVersion, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "modelName": model.name,
        "version": v.version,
        "state": v.state,
        "hdfsUri": v.hdfs_uri,
        "manifestSha256": v.manifest_sha256,
        "source": v.source,
        "metrics": v.metrics,
        "createdBy": v.created_by,
        "interface": v.interface,
        "dagId": v.dag_id,
        "runId": v.run_id,
        "createdAt": iso(v.created_at),
        "updatedAt": iso(v.updated_at),
        "rowVersion": v.row_version,
    }
    if full:
        out["signatures"] = v.signatures
        out["validationReport"] = v.validation_report
    return out


def event_dict(e: db.HistoryEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "modelName": e.model_name,
        "version": e.version,
        "kind": e.kind,
        "fromState": e.from_state,
        "toState": e.to_state,
        "actor": e.actor,
        "principal": e.principal,
        "interface": e.interface,
        "dagId": e.dag_id,
        "runId": e.run_id,
        "taskId": e.task_id,
        "reason": e.reason,
        "details": e.details,
    }


def model_summary(m: db.Model) -> dict[str, Any]:
    return {
        "modelName": m.name,
        "version": m.production_version,
        "canaryVersion": m.canary_version,
        "latestVersion": m.latest_version,
        "health": m.health_status,
        "updatedAt": iso(m.updated_at),
    }


def normalize_health(status: str) -> str:
    """A health status in the current vocabulary (``unhealthy`` is accepted as ``failing``), or InvalidRequest."""
    value = HEALTH_ALIASES.get(status, status)
    if value not in HEALTH:
        aliases = ", ".join(f"{old} = {new}" for old, new in HEALTH_ALIASES.items())
        raise InvalidRequest(f"unknown health status {status!r}; use one of {', '.join(HEALTH)} ({aliases})")
    return value


def health_dict(r: db.HealthRecord) -> dict[str, Any]:
    return {
        "version": r.version,
        "target": r.target,
        "status": r.status,
        "details": r.details,
        "actor": r.actor,
        "recordedAt": iso(r.recorded_at),
    }


def settings_dict(m: db.Model) -> dict[str, Any]:
    """A model's operations settings. Not frozen: no reason, who or when (the history keeps past freezes)."""
    return {
        "autoRollbackOnFailing": bool(m.auto_rollback_on_failing),
        "requireApproval": bool(m.require_approval),
        "frozen": bool(m.frozen),
        "frozenReason": (m.frozen_reason or None) if m.frozen else None,
        "frozenBy": (m.frozen_by or None) if m.frozen else None,
        "frozenAt": iso(m.frozen_at) if m.frozen else None,
    }


def alert_dict(a: db.Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "fingerprint": a.fingerprint,
        "modelName": a.model,
        "alertname": a.alertname,
        "severity": a.severity,
        "status": a.status,
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": iso(a.starts_at),
        "endsAt": iso(a.ends_at),
        "generatorUrl": a.generator_url or None,
        "receiver": a.receiver or None,
        "firstReceivedAt": iso(a.first_received_at),
        "receivedAt": iso(a.received_at),
        "autoRollback": (
            {"status": a.rollback_status, "runId": a.rollback_run_id or None, "note": a.rollback_note or None}
            if a.rollback_status
            else None
        ),
    }


def _split(stable: int | None, canary: int | None, canary_weight: int) -> dict[str, Any]:
    """A traffic split as history records it: both sides always present (a side without a version: null)."""
    weight = canary_weight if canary is not None else 0
    return {
        "stable": {"version": stable, "weight": 100 - weight if stable is not None else 0},
        "canary": {"version": canary, "weight": weight},
    }


def traffic_dict(model: db.Model, row: db.Traffic | None) -> dict[str, Any]:
    """The traffic JSON. No row (no gray release was ever set up): the production version takes every call."""
    if row is None:
        split = _split(model.production_version, None, 0)
        return {
            "stable": split["stable"],
            "canary": None,
            "paused": False,
            "pendingAction": None,
            "updatedAt": None,
            "updatedBy": None,
        }
    split = _split(row.stable_version, row.canary_version, row.canary_weight)
    return {
        "stable": split["stable"],
        "canary": split["canary"] if row.canary_version is not None else None,
        "paused": row.paused,
        "pendingAction": row.pending_action,
        "updatedAt": iso(row.updated_at),
        "updatedBy": row.updated_by or None,
    }


def _check_weight(canary_weight: int, canary_version: int | None) -> None:
    if isinstance(canary_weight, bool) or not isinstance(canary_weight, int) or not 0 <= canary_weight <= 100:
        raise InvalidRequest(f"canaryWeight must be an integer percentage in 0..100, got {canary_weight!r}")
    if canary_weight > 0 and canary_version is None:
        raise InvalidRequest(
            f"canaryWeight {canary_weight} needs a canaryVersion: without a canary that share of calls would reach "
            "no version; set canaryVersion, or canaryWeight 0"
        )


class RegistryService:
    def __init__(self, url: str) -> None:
        self.url = url
        self._sessions = db.session_factory(url)

    # ------------------------------------------------------------------ schema

    def migrate(self) -> None:
        migrate(self.url)

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """A write transaction (BEGIN IMMEDIATE on SQLite; row locks on PostgreSQL)."""
        with self._sessions() as session:
            session.connection(execution_options={db.WRITE: True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def _model(self, session: Session, name: str, *, lock: bool = False) -> db.Model:
        validate_model_name(name)
        query = select(db.Model).where(db.Model.name == name)
        if lock:
            query = query.with_for_update()
        model = session.scalars(query).one_or_none()
        if model is None:
            raise NotFound(f"model {name!r} is not registered; register a version of it first")
        return model

    def _version(self, session: Session, model: db.Model, version: int) -> db.ModelVersion:
        row = session.scalars(
            select(db.ModelVersion).where(db.ModelVersion.model_id == model.id, db.ModelVersion.version == version)
        ).one_or_none()
        if row is None:
            raise NotFound(f"model {model.name!r} has no version {version}")
        return row

    def _event(self, session: Session, ctx: Actor, model: str, kind: str, **fields: Any) -> None:
        session.add(
            db.HistoryEvent(
                at=db.utcnow(),
                model_name=model,
                kind=kind,
                actor=ctx.actor,
                principal=ctx.principal,
                interface=ctx.interface,
                dag_id=ctx.dag_id,
                run_id=ctx.run_id,
                task_id=ctx.task_id,
                reason=fields.pop("reason", "") or "",
                details=fields.pop("details", None) or {},
                **fields,
            )
        )

    def _ensure_model(self, session: Session, name: str, ctx: Actor, description: str = "") -> db.Model:
        validate_model_name(name)
        existing = session.scalars(select(db.Model).where(db.Model.name == name).with_for_update()).one_or_none()
        if existing is not None:
            return existing
        model = db.Model(name=name, description=description, created_at=db.utcnow(), updated_at=db.utcnow())
        session.add(model)
        try:
            session.flush()
        except IntegrityError:
            raise Conflict(f"model {name!r} was created concurrently; retry") from None
        self._event(session, ctx, name, "model_created", reason=description)
        return model

    # ------------------------------------------------------------------ models

    def create_model(self, name: str, ctx: Actor, description: str = "") -> dict[str, Any]:
        with self._tx() as session:
            return model_summary(self._ensure_model(session, name, ctx, description))

    def list_models(self, *, limit: int = 1000, offset: int = 0, q: str = "") -> dict[str, Any]:
        """The query API's list. Plain rows, not ORM objects: with thousands of models the object churn
        (and the garbage collections it triggers) dominated the tail latency."""
        m = db.Model
        columns = (m.name, m.production_version, m.canary_version, m.latest_version, m.health_status, m.updated_at)
        query = select(*columns).order_by(m.name)
        count = select(func.count()).select_from(m)
        if q:
            query = query.where(m.name.contains(q, autoescape=True))
            count = count.where(m.name.contains(q, autoescape=True))
        with self._sessions() as session:
            rows = session.execute(query.limit(limit).offset(offset)).all()
            total = session.scalar(count)
        models = [
            {
                "modelName": name,
                "version": prod,
                "canaryVersion": canary,
                "latestVersion": latest,
                "health": health,
                "updatedAt": iso(updated),
            }
            for name, prod, canary, latest, health, updated in rows
        ]
        return {"models": models, "total": total, "limit": limit, "offset": offset}

    def get_model(self, name: str) -> dict[str, Any]:
        with self._sessions() as session:
            model = self._model(session, name)
            out = model_summary(model)
            out["description"] = model.description
            out["createdAt"] = iso(model.created_at)
            out["versionCount"] = session.scalar(
                select(func.count()).select_from(db.ModelVersion).where(db.ModelVersion.model_id == model.id)
            )
            out["deployments"] = [
                {
                    "target": d.target,
                    "label": d.label,
                    "version": d.version,
                    "updatedBy": d.updated_by,
                    "updatedAt": iso(d.updated_at),
                }
                for d in session.scalars(
                    select(db.Deployment).where(db.Deployment.model_id == model.id).order_by(db.Deployment.target)
                )
            ]
            lock = session.get(db.DeploymentLock, model.id)
            out["lock"] = (
                {
                    "holder": lock.holder,
                    "runId": lock.run_id,
                    "expiresAt": iso(lock.expires_at),
                    "expired": lock.expires_at <= db.utcnow(),
                }
                if lock
                else None
            )
            out["traffic"] = traffic_dict(model, session.get(db.Traffic, model.id))
            out["rateLimitRps"] = model.rate_limit_rps
            out["settings"] = settings_dict(model)
            latest = self._latest_health(session, model, model.production_version)
            out["productionHealth"] = health_dict(latest) if latest is not None else None
            out["openAlerts"] = session.scalar(
                select(func.count()).select_from(db.Alert).where(db.Alert.model == name, db.Alert.status == "firing")
            )
            out["pendingApproval"] = self._pending_approval(session, name)
            return out

    def _pending_approval(self, session: Session, name: str) -> dict[str, Any] | None:
        """The release waiting for a human decision: the model's newest ``approval`` event, if it is a request (a
        decision or a timeout comes after it as another ``approval`` event); with where to answer it in Airflow."""
        latest = session.scalars(
            select(db.HistoryEvent)
            .where(db.HistoryEvent.model_name == name, db.HistoryEvent.kind == "approval")
            .order_by(db.HistoryEvent.id.desc())
            .limit(1)
        ).one_or_none()
        if latest is None or (latest.details or {}).get("state") != "requested":
            return None
        return {
            "version": latest.version,
            "requestedAt": iso(latest.at),
            "reason": latest.reason,
            "dagId": latest.dag_id,
            "runId": latest.run_id,
            "taskId": latest.task_id,
            "timeoutSeconds": (latest.details or {}).get("timeoutSeconds"),
            # the Airflow UI's page of the waiting task, where Approve / Reject are (its "Required actions")
            "airflowPath": "/dags/{}/runs/{}/tasks/{}/required_actions".format(
                *(quote(str(s), safe="") for s in (latest.dag_id, latest.run_id, latest.task_id))
            )
            if latest.dag_id and latest.run_id and latest.task_id
            else None,
        }

    def _latest_health(self, session: Session, model: db.Model, version: int | None) -> db.HealthRecord | None:
        if version is None:
            return None
        return session.scalars(
            select(db.HealthRecord)
            .where(db.HealthRecord.model_id == model.id, db.HealthRecord.version == version)
            .order_by(db.HealthRecord.recorded_at.desc(), db.HealthRecord.id.desc())
            .limit(1)
        ).one_or_none()

    def _refresh_health(self, session: Session, model: db.Model) -> None:
        """A model's health is its production version's latest health record (none in production: none)."""
        latest = self._latest_health(session, model, model.production_version)
        model.health_status = latest.status if latest is not None else None

    # ------------------------------------------------------------------ versions

    def register_version(
        self,
        name: str,
        ctx: Actor,
        *,
        version: int | None = None,
        hdfs_uri: str = "",
        manifest_sha256: str = "",
        source: str = "",
        signatures: dict | None = None,
        metrics: dict | None = None,
        validation_report: dict | None = None,
        reason: str = "",
    ) -> tuple[dict[str, Any], bool]:
        """Register a version as `registered`. Same version with the same content is a no-op (returns
        created=False); with different content it is a Conflict: versions are never overwritten."""
        if version is not None and version < 0:
            raise InvalidRequest(f"version must be a non-negative integer, got {version}")
        with self._tx() as session:
            model = self._ensure_model(session, name, ctx)
            if version is None:
                highest = session.scalar(
                    select(func.max(db.ModelVersion.version)).where(db.ModelVersion.model_id == model.id)
                )
                version = (highest or 0) + 1
            existing = session.scalars(
                select(db.ModelVersion).where(db.ModelVersion.model_id == model.id, db.ModelVersion.version == version)
            ).one_or_none()
            if existing is not None:
                if (existing.manifest_sha256, existing.hdfs_uri) == (manifest_sha256, hdfs_uri):
                    return version_dict(model, existing, full=True), False
                raise Conflict(
                    f"version {version} of model {name!r} already exists with different content "
                    f"(manifest {existing.manifest_sha256[:12] or '-'} at {existing.hdfs_uri or '-'}, "
                    f"not {manifest_sha256[:12] or '-'} at {hdfs_uri or '-'}); register it as a new version"
                )
            now = db.utcnow()
            row = db.ModelVersion(
                model_id=model.id,
                version=version,
                state=ModelState.REGISTERED.value,
                row_version=1,
                hdfs_uri=hdfs_uri,
                manifest_sha256=manifest_sha256,
                source=source,
                signatures=signatures or {},
                metrics=metrics or {},
                validation_report=validation_report or {},
                created_by=ctx.actor,
                interface=ctx.interface,
                dag_id=ctx.dag_id,
                run_id=ctx.run_id,
                created_at=now,
                updated_at=now,
                state_changed_at=now,
            )
            session.add(row)
            model.latest_version = max(version, model.latest_version or 0)
            model.updated_at = now
            self._event(
                session,
                ctx,
                name,
                "registered",
                version=version,
                to_state=ModelState.REGISTERED.value,
                reason=reason,
                details={"hdfsUri": hdfs_uri, "manifestSha256": manifest_sha256, "source": source},
            )
            session.flush()
            return version_dict(model, row, full=True), True

    def list_versions(self, name: str, *, state: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        with self._sessions() as session:
            model = self._model(session, name)
            query = select(db.ModelVersion).where(db.ModelVersion.model_id == model.id)
            count = select(func.count()).select_from(db.ModelVersion).where(db.ModelVersion.model_id == model.id)
            if state:
                ModelState(state) if state in ModelState._value2member_map_ else _bad_state(state)
                query = query.where(db.ModelVersion.state == state)
                count = count.where(db.ModelVersion.state == state)
            rows = session.scalars(query.order_by(db.ModelVersion.version.desc()).limit(limit).offset(offset)).all()
            return {
                "versions": [version_dict(model, v) for v in rows],
                "total": session.scalar(count),
                "limit": limit,
                "offset": offset,
            }

    def get_version(self, name: str, version: int) -> dict[str, Any]:
        with self._sessions() as session:
            model = self._model(session, name)
            return version_dict(model, self._version(session, model, version), full=True)

    def update_report(
        self,
        name: str,
        version: int,
        ctx: Actor,
        *,
        metrics: dict | None = None,
        validation_report: dict | None = None,
        signatures: dict | None = None,
    ) -> dict[str, Any]:
        """Attach validation results (allowed while a version is registered; later they are history)."""
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            row = self._version(session, model, version)
            if row.state != ModelState.REGISTERED.value:
                raise Conflict(
                    f"version {version} of {name!r} is {row.state}; reports can only change while registered"
                )
            if metrics is not None:
                row.metrics = metrics
            if validation_report is not None:
                row.validation_report = validation_report
            if signatures is not None:
                row.signatures = signatures
            row.row_version += 1
            row.updated_at = db.utcnow()
            self._event(session, ctx, name, "report", version=version, details={"metrics": row.metrics})
            return version_dict(model, row, full=True)

    def transition(
        self,
        name: str,
        version: int,
        to_state: str,
        ctx: Actor,
        *,
        reason: str = "",
        expected_state: str | None = None,
        details: dict | None = None,
    ) -> dict[str, Any]:
        """Move a version to another state. Moving one to production supersedes the previous one in the same
        transaction. `expected_state` makes the write conditional: a writer that lost a race gets LostRace."""
        target = ModelState(to_state) if to_state in ModelState._value2member_map_ else _bad_state(to_state)
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            row = self._version(session, model, version)
            if expected_state is not None and row.state != expected_state:
                raise LostRace(
                    f"version {version} of {name!r} is {row.state}, not {expected_state}: another writer changed it "
                    "first; re-read it and retry if the change is still wanted"
                )
            src, dst = check_transition(row.state, target)
            now = db.utcnow()
            if dst == ModelState.PRODUCTION and model.production_version not in (None, version):
                previous = self._version(session, model, model.production_version)
                self._set_state(session, model, previous, ModelState.SUPERSEDED, now)
                self._event(
                    session,
                    ctx,
                    name,
                    "transition",
                    version=previous.version,
                    from_state="production",
                    to_state="superseded",
                    reason=f"superseded by version {version}",
                )
            self._set_state(session, model, row, dst, now, expected_row_version=row.row_version)
            self._refresh_health(session, model)  # the production version may have changed
            self._event(
                session,
                ctx,
                name,
                "transition",
                version=version,
                from_state=src.value,
                to_state=dst.value,
                reason=reason,
                details=details,
            )
            return version_dict(model, row, full=True)

    def _set_state(
        self,
        session: Session,
        model: db.Model,
        row: db.ModelVersion,
        state: ModelState,
        now: dt.datetime,
        expected_row_version: int | None = None,
    ) -> None:
        result = session.execute(
            update(db.ModelVersion)
            .where(
                db.ModelVersion.id == row.id, db.ModelVersion.row_version == (expected_row_version or row.row_version)
            )
            .values(
                state=state.value, row_version=db.ModelVersion.row_version + 1, updated_at=now, state_changed_at=now
            )
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:  # a CursorResult for UPDATE
            raise LostRace(f"version {row.version} of {model.name!r} changed while being written; retry")
        session.refresh(row)
        if state == ModelState.PRODUCTION:
            model.production_version = row.version
        elif model.production_version == row.version:
            model.production_version = None
        if state == ModelState.CANARY:
            model.canary_version = row.version
        elif model.canary_version == row.version:
            model.canary_version = None
        model.updated_at = now

    # ------------------------------------------------------------------ deployments and health

    def set_deployment(self, name: str, target: str, label: str, version: int, ctx: Actor, reason: str = "") -> dict:
        if not target or not label:
            raise InvalidRequest("target and label are required")
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            self._version(session, model, version)
            row = session.scalars(
                select(db.Deployment).where(
                    db.Deployment.model_id == model.id, db.Deployment.target == target, db.Deployment.label == label
                )
            ).one_or_none()
            previous = row.version if row else None
            if row is None:
                row = db.Deployment(model_id=model.id, target=target, label=label, version=version)
                session.add(row)
            row.version, row.updated_by, row.updated_at = version, ctx.actor, db.utcnow()
            self._event(
                session,
                ctx,
                name,
                "deployment",
                version=version,
                reason=reason,
                details={"target": target, "label": label, "previousVersion": previous},
            )
            return {"target": target, "label": label, "version": version, "previousVersion": previous}

    def clear_deployment(self, name: str, target: str, label: str, ctx: Actor, reason: str = "") -> None:
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            row = session.scalars(
                select(db.Deployment).where(
                    db.Deployment.model_id == model.id, db.Deployment.target == target, db.Deployment.label == label
                )
            ).one_or_none()
            if row is None:
                return
            session.delete(row)
            self._event(
                session,
                ctx,
                name,
                "deployment",
                version=row.version,
                reason=reason,
                details={"target": target, "label": label, "removed": True},
            )

    def record_serving_event(
        self, name: str, kind: str, ctx: Actor, *, version: int | None, reason: str, details: dict[str, Any]
    ) -> dict[str, Any]:
        """Append a ``serving`` (which replicas of which pool serve what) or ``router`` (a routing change)
        event to the model's history."""
        if kind not in SERVING_EVENTS:
            raise InvalidRequest(f"unknown event kind {kind!r}; use one of {', '.join(sorted(SERVING_EVENTS))}")
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            if version is not None:
                self._version(session, model, version)
            self._event(session, ctx, name, kind, version=version, reason=reason, details=details)
            return {"modelName": name, "kind": kind, "version": version, "reason": reason, "details": details}

    def record_health(
        self, name: str, version: int, target: str, status: str, ctx: Actor, details: dict | None = None
    ) -> dict[str, Any]:
        """Record a health check of ``version`` on ``target``. It is the model's health only if ``version`` is the
        production version: a candidate's checks (a failed smoke test) belong to that version alone."""
        given, status = status, normalize_health(status)
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            self._version(session, model, version)
            now = db.utcnow()
            session.add(
                db.HealthRecord(
                    model_id=model.id,
                    version=version,
                    target=target,
                    status=status,
                    details=details or {},
                    actor=ctx.actor,
                    recorded_at=now,
                )
            )
            if version == model.production_version:
                model.health_status = status
                model.updated_at = now
            event: dict[str, Any] = {
                "target": target,
                "status": status,
                "production": version == model.production_version,
            }
            if given != status:
                event["given"] = given  # the old word it was sent as
            self._event(session, ctx, name, "health", version=version, details=event)
            return {
                "modelName": name,
                "version": version,
                "target": target,
                "status": status,
                "details": details or {},
                "modelHealth": model.health_status,
                "recordedAt": iso(now),
            }

    def health(self, name: str, *, version: int | None = None, limit: int = 50) -> dict[str, Any]:
        """The newest health records (of one version, or all); ``status`` is the model's health: its production
        version's latest record (``latest``)."""
        with self._sessions() as session:
            model = self._model(session, name)
            query = select(db.HealthRecord).where(db.HealthRecord.model_id == model.id)
            if version is not None:
                query = query.where(db.HealthRecord.version == version)
            rows = session.scalars(
                query.order_by(db.HealthRecord.recorded_at.desc(), db.HealthRecord.id.desc()).limit(limit)
            ).all()
            latest = self._latest_health(session, model, model.production_version)
            return {
                "modelName": name,
                "productionVersion": model.production_version,
                "status": model.health_status,
                "latest": health_dict(latest) if latest is not None else None,
                "records": [health_dict(r) for r in rows],
            }

    # ------------------------------------------------------------------ gray releases: traffic split and controls

    def traffic(self, name: str) -> dict[str, Any]:
        with self._sessions() as session:
            model = self._model(session, name)
            return traffic_dict(model, session.get(db.Traffic, model.id))

    def set_traffic(
        self,
        name: str,
        ctx: Actor,
        *,
        stable_version: int | None,
        canary_version: int | None,
        canary_weight: int = 0,
        reason: str = "",
    ) -> dict[str, Any]:
        """Set the model's traffic split (the pipeline, at every step of a gray release). A canary other than the
        current one (or none: the release is over) starts afresh: not paused, no pending action."""
        _check_weight(canary_weight, canary_version)
        for field_name, value in (("stableVersion", stable_version), ("canaryVersion", canary_version)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidRequest(f"{field_name} must be a non-negative integer or null, got {value!r}")
        if canary_version is not None and canary_version == stable_version:
            raise InvalidRequest(
                f"canaryVersion and stableVersion are both {canary_version}: a canary is a version other than the "
                "stable one (once promoted, set it as stableVersion with canaryVersion null)"
            )
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            for version in (stable_version, canary_version):
                if version is not None:
                    self._version(session, model, version)
            row = session.get(db.Traffic, model.id)
            previous = (
                _split(row.stable_version, row.canary_version, row.canary_weight)
                if row is not None
                else _split(model.production_version, None, 0)
            )
            if row is None:
                row = db.Traffic(model_id=model.id, paused=False)
                session.add(row)
            if canary_version is None or canary_version != row.canary_version:
                row.paused, row.pending_action = False, None
            now = db.utcnow()
            row.stable_version, row.canary_version, row.canary_weight = stable_version, canary_version, canary_weight
            row.updated_at, row.updated_by, row.run_id = now, ctx.actor, ctx.run_id
            model.updated_at = now
            details = _split(stable_version, canary_version, canary_weight) | {"previous": previous, "reason": reason}
            self._event(session, ctx, name, "traffic", reason=reason, details=details)
            session.flush()
            return traffic_dict(model, row)

    def release_control(self, name: str, action: str, ctx: Actor, *, reason: str) -> dict[str, Any]:
        """An operator's control of the release in progress: pause / resume the weight changes, or ask the
        pipeline to promote now / abort (a pending action; the last one asked wins). ``ctx.actor`` is recorded as
        who did it: the API passes the authenticated principal."""
        if action not in RELEASE_ACTIONS:
            raise InvalidRequest(f"unknown action {action!r}; use one of {', '.join(sorted(RELEASE_ACTIONS))}")
        if not reason.strip():
            raise InvalidRequest(f"reason is required: say why the release is to {action}")
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            row = session.get(db.Traffic, model.id)
            if row is None or row.canary_version is None:
                raise Conflict(f"no release of {name} is in progress (its traffic has no canary): nothing to {action}")
            previous = {"paused": row.paused, "pendingAction": row.pending_action}
            if action in PENDING_ACTIONS:
                row.pending_action = action
            else:
                row.paused = action == "pause"
            row.updated_at, row.updated_by = db.utcnow(), ctx.actor
            self._event(
                session,
                ctx,
                name,
                "release_control",
                version=row.canary_version,
                reason=reason,
                details={
                    "action": action,
                    "reason": reason,
                    "who": ctx.actor,
                    "paused": row.paused,
                    "pendingAction": row.pending_action,
                    "previous": previous,
                },
            )
            return traffic_dict(model, row)

    def clear_pending_action(self, name: str, ctx: Actor, *, expected: str | None = None) -> dict[str, Any]:
        """The pipeline has acted on the pending promote/abort: clear it. Nothing pending: a no-op. With
        ``expected``, only if that action is still the pending one (else Conflict: the operator asked again)."""
        if expected is not None and expected not in PENDING_ACTIONS:
            choices = ", ".join(sorted(PENDING_ACTIONS))
            raise InvalidRequest(f"unknown pending action {expected!r}; use one of {choices}")
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            row = session.get(db.Traffic, model.id)
            if row is None or row.pending_action is None:
                return traffic_dict(model, row)
            if expected is not None and row.pending_action != expected:
                raise Conflict(
                    f"the pending action of {name}'s release is now {row.pending_action}, not {expected}: an operator "
                    "asked again; re-read the traffic and act on the new one"
                )
            cleared, row.pending_action = row.pending_action, None
            row.updated_at, row.updated_by = db.utcnow(), ctx.actor
            self._event(
                session,
                ctx,
                name,
                "release_control",
                version=row.canary_version,
                reason=f"{cleared} carried out",
                details={"action": "clear_pending", "cleared": cleared, "who": ctx.actor},
            )
            return traffic_dict(model, row)

    def set_rate_limit(
        self,
        name: str,
        rps: float | None,
        ctx: Actor,
        *,
        reason: str = "",
        apply: Callable[[str, float | None], None] | None = None,
    ) -> dict[str, Any]:
        """Store the model's rate limit (requests per second; None: no limit). ``apply`` (the router's sink) is
        called inside the transaction, before the commit: if it raises, nothing is stored."""
        if rps is not None and (
            isinstance(rps, bool) or not isinstance(rps, int | float) or not math.isfinite(rps) or rps <= 0
        ):
            raise InvalidRequest(f"rps must be a number > 0 (or null: no limit), got {rps!r}")
        limit = None if rps is None else float(rps)
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            previous = model.rate_limit_rps
            model.rate_limit_rps, model.updated_at = limit, db.utcnow()
            self._event(session, ctx, name, "rate_limit", reason=reason, details={"rps": limit, "previous": previous})
            session.flush()
            if apply is not None:
                apply(name, limit)
            return {"modelName": name, "rateLimitRps": limit}

    # ------------------------------------------------------------------ operations: settings and freeze

    def settings(self, name: str) -> dict[str, Any]:
        with self._sessions() as session:
            return {"modelName": name} | settings_dict(self._model(session, name))

    def set_settings(
        self,
        name: str,
        ctx: Actor,
        *,
        auto_rollback_on_failing: bool | None = None,
        require_approval: bool | None = None,
        reason: str,
    ) -> dict[str, Any]:
        """Change a model's operations settings (None: unchanged). A change is recorded in the history (kind
        ``settings``, who = ``ctx.actor``: the API passes the authenticated principal); none: a no-op."""
        wanted = {"autoRollbackOnFailing": auto_rollback_on_failing, "requireApproval": require_approval}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        if not wanted:
            raise InvalidRequest("nothing to change: send autoRollbackOnFailing and/or requireApproval (true or false)")
        for key, value in wanted.items():
            if not isinstance(value, bool):
                raise InvalidRequest(f"{key} must be true or false, got {value!r}")
        reason = _need_reason(reason, "change the settings")
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            before = settings_dict(model)
            if auto_rollback_on_failing is not None:
                model.auto_rollback_on_failing = auto_rollback_on_failing
            if require_approval is not None:
                model.require_approval = require_approval
            after = settings_dict(model)
            changes = {k: {"from": before[k], "to": after[k]} for k in wanted if before[k] != after[k]}
            if changes:
                model.updated_at = db.utcnow()
                details = {"changes": changes, "who": ctx.actor}
                self._event(session, ctx, name, "settings", reason=reason, details=details)
            return {"modelName": name} | after

    def freeze(self, name: str, ctx: Actor, *, reason: str) -> dict[str, Any]:
        """Freeze the model: no new release starts until it is unfrozen (the pipeline checks at the start of a run;
        a release in progress goes on). Already frozen: a no-op (the first freeze's reason, who and when stay)."""
        reason = _need_reason(reason, "freeze the model")
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            if model.frozen:
                return {"modelName": name} | settings_dict(model)
            now = db.utcnow()
            model.frozen, model.frozen_reason, model.frozen_by, model.frozen_at = True, reason, ctx.actor, now
            model.updated_at = now
            traffic = session.get(db.Traffic, model.id)
            in_progress = traffic is not None and traffic.canary_version is not None
            details = {"who": ctx.actor, "releaseInProgress": in_progress}
            self._event(session, ctx, name, "freeze", reason=reason, details=details)
            return {"modelName": name} | settings_dict(model)

    def unfreeze(self, name: str, ctx: Actor, *, reason: str) -> dict[str, Any]:
        """Lift the freeze (not frozen: a no-op); the history keeps who froze it, when and why."""
        reason = _need_reason(reason, "unfreeze the model")
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            if not model.frozen:
                return {"modelName": name} | settings_dict(model)
            details = {
                "who": ctx.actor,
                "frozenBy": model.frozen_by,
                "frozenReason": model.frozen_reason,
                "frozenAt": iso(model.frozen_at),
            }
            model.frozen, model.frozen_reason, model.frozen_by, model.frozen_at = False, "", "", None
            model.updated_at = db.utcnow()
            self._event(session, ctx, name, "unfreeze", reason=reason, details=details)
            return {"modelName": name} | settings_dict(model)

    # ------------------------------------------------------------------ operations: rollbacks started in Airflow

    def _rollback_target(self, session: Session, model: db.Model) -> int | None:
        """The version a rollback without a version goes back to: the newest superseded one (as model_rollback
        picks it)."""
        return session.scalar(
            select(func.max(db.ModelVersion.version)).where(
                db.ModelVersion.model_id == model.id, db.ModelVersion.state == ModelState.SUPERSEDED.value
            )
        )

    def start_rollback(
        self, name: str, version: int, ctx: Actor, *, reason: str, starter: RollbackStarterTo | None
    ) -> dict[str, Any]:
        """Start model_rollback to ``version`` (a superseded one) through ``starter``, called inside the
        transaction: if it fails, nothing is recorded (RollbackNotStarted). Recorded as history kind ``rollback``
        with the started run (its dagId/runId link to it), who asked = ``ctx.actor``."""
        reason = _need_reason(reason, "roll back", minimum=3)
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            row = self._version(session, model, version)
            if row.state == ModelState.PRODUCTION.value:
                raise Conflict(f"version {version} of {name} is already in production: nothing to roll back")
            if row.state != ModelState.SUPERSEDED.value:
                raise Conflict(
                    f"version {version} of {name} is {row.state}: only a version that was in production (superseded) "
                    "can be rolled back to"
                )
            if starter is None:
                raise RollbackNotStarted(_NO_STARTER)
            try:
                run_id = starter(name, version, reason)
            except Exception as exc:  # noqa: BLE001 - whatever Airflow raised: nothing started, nothing recorded
                raise RollbackNotStarted(
                    f"{ROLLBACK_DAG} could not be started for {name} v{version}: {_cause(exc)}; nothing was changed"
                ) from exc
            details: dict[str, Any] = {
                "dagId": ROLLBACK_DAG,
                "runId": run_id,
                "fromVersion": model.production_version,
                "toVersion": version,
                "who": ctx.actor,
            }
            if ctx.run_id:
                details["caller"] = {"dagId": ctx.dag_id, "runId": ctx.run_id, "taskId": ctx.task_id}
            started = Actor(ctx.actor, ctx.principal, ctx.interface, ROLLBACK_DAG, str(run_id), "")
            self._event(session, started, name, "rollback", version=version, reason=reason, details=details)
            return {
                "modelName": name,
                "version": version,
                "fromVersion": model.production_version,
                "dagId": ROLLBACK_DAG,
                "runId": run_id,
            }

    # ------------------------------------------------------------------ operations: alerts (Alertmanager)

    def receive_alerts(
        self,
        alerts: list[dict[str, Any]],
        ctx: Actor,
        *,
        receiver: str = "",
        starter: RollbackStarter | None = None,
        window: dt.timedelta = AUTO_ROLLBACK_WINDOW,
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Record the alerts of one Alertmanager notification (each upserted by fingerprint + startsAt) and act
        on them: a firing ``critical`` alert on a model with auto-rollback on starts model_rollback through
        ``starter`` (at most one per model per ``window``). Returns the result per alert and the messages of
        the rollbacks that could not be started (the alerts are recorded all the same)."""
        results, failures = [], []
        for alert in alerts:
            out, due = self._record_alert(ctx, receiver=receiver, **alert)
            if due:
                try:
                    out["autoRollback"] = self._auto_rollback(out["id"], ctx, starter, window)
                except RollbackNotStarted as exc:
                    failures.append(exc.message)
                    out["autoRollback"] = {"status": "failed", "runId": None, "note": exc.message}
            results.append(out)
        return results, failures

    def _record_alert(
        self,
        ctx: Actor,
        *,
        fingerprint: str,
        status: str,
        labels: dict[str, Any],
        annotations: dict[str, Any],
        starts_at: str | dt.datetime,
        ends_at: str | dt.datetime | None = None,
        generator_url: str = "",
        receiver: str = "",
    ) -> tuple[dict[str, Any], bool]:
        """Upsert one alert; append a history event (kind ``alert``) when it is new or changed status and names a
        registered model. Returns it (with ``recorded``: new, changed or repeated) and whether an automatic
        rollback is due."""
        if status not in ALERT_STATUSES:
            raise InvalidRequest(f"unknown alert status {status!r}; use firing or resolved")
        if not fingerprint:
            raise InvalidRequest("an alert needs a fingerprint (Alertmanager sends one with every alert)")
        start = parse_time(starts_at)
        if start is None:
            raise InvalidRequest("an alert needs startsAt")
        end = parse_time(ends_at)
        if end is not None and end.year <= 1:  # Alertmanager's zero time: no end yet
            end = None
        labels = {str(k): str(v) for k, v in (labels or {}).items()}
        annotations = {str(k): str(v) for k, v in (annotations or {}).items()}
        model_name = _alert_model(labels)
        alertname = labels.get("alertname", "")[:256]
        severity = (labels.get("severity") or "")[:64] or None
        with self._tx() as session:
            model = None
            if model_name is not None:  # locked first: deliveries for one model queue here
                query = select(db.Model).where(db.Model.name == model_name).with_for_update()
                model = session.scalars(query).one_or_none()
            row = session.scalars(
                select(db.Alert).where(db.Alert.fingerprint == fingerprint[:128], db.Alert.starts_at == start)
            ).one_or_none()
            now = db.utcnow()
            if row is None:
                recorded = "new"
                row = db.Alert(fingerprint=fingerprint[:128], starts_at=start, first_received_at=now, model=model_name)
                session.add(row)
            else:
                recorded = "changed" if row.status != status else "repeated"
            row.status, row.ends_at, row.alertname, row.severity = status, end, alertname, severity
            row.labels, row.annotations, row.generator_url, row.received_at = labels, annotations, generator_url, now
            row.receiver = receiver[:256]
            try:
                session.flush()
            except IntegrityError:
                raise Conflict(f"alert {fingerprint} was recorded concurrently; send it again") from None
            if model is not None and recorded != "repeated":
                summary = _summary(annotations)
                self._event(
                    session,
                    ctx,
                    model.name,
                    "alert",
                    version=_int_label(labels.get("version")),
                    reason=f"{alertname or 'alert'} {status}" + (f": {summary}" if summary else ""),
                    details={
                        "alertId": row.id,
                        "alertname": alertname,
                        "severity": severity,
                        "status": status,
                        "fingerprint": row.fingerprint,
                        "startsAt": iso(start),
                        "endsAt": iso(end),
                        "summary": summary,
                        "labels": labels,
                        "generatorUrl": generator_url or None,
                        "receiver": receiver or None,
                    },
                )
            due = (
                model is not None
                and status == "firing"
                and model.auto_rollback_on_failing
                and severity == "critical"
                and _about_production(labels, model.production_version)
                and row.rollback_status in (None, "failed")
            )
            return alert_dict(row) | {"recorded": recorded}, bool(due)

    def _auto_rollback(
        self, alert_id: int, ctx: Actor, starter: RollbackStarter | None, window: dt.timedelta
    ) -> dict[str, Any] | None:
        """Act on a firing critical alert of a model with auto-rollback on, holding the model's row lock (so two
        deliveries cannot both start one): another alert's rollback less than ``window`` old -> deduplicated; no
        earlier version -> declined; else ``starter`` is called. Each outcome is a history event (kind
        ``auto_rollback``); a starter that raises is recorded as failed, then RollbackNotStarted is raised."""
        failure: RollbackNotStarted | None = None
        with self._tx() as session:
            row = session.get(db.Alert, alert_id)
            assert row is not None and row.model is not None
            model = self._model(session, row.model, lock=True)
            session.refresh(row)
            if row.rollback_status in ("started", "deduplicated", "declined") or not model.auto_rollback_on_failing:
                return alert_dict(row)["autoRollback"]  # another delivery acted first, or the setting went off
            now = db.utcnow()
            summary = _summary(row.annotations)
            reason = f"automatic: {row.alertname or 'alert'}" + (f": {summary}" if summary else "")
            details: dict[str, Any] = {
                "alertId": row.id,
                "alertname": row.alertname,
                "severity": row.severity,
                "fingerprint": row.fingerprint,
                "fromVersion": model.production_version,
            }
            recent = session.scalars(
                select(db.Alert)
                .where(db.Alert.model == model.name, db.Alert.rollback_started_at >= now - window)
                .order_by(db.Alert.rollback_started_at.desc())
                .limit(1)
            ).one_or_none()
            run_id = ""
            target = self._rollback_target(session, model)
            if recent is not None:
                run_id = recent.rollback_run_id
                status, note = "deduplicated", f"auto-rollback already started: run {run_id}"
                details |= {"started": False, "alreadyStarted": run_id, "startedAt": iso(recent.rollback_started_at)}
            elif model.production_version is None or target is None:
                status = "declined"
                note = (
                    f"no rollback possible: {model.name} has no earlier production version (none superseded) to go "
                    "back to"
                    if model.production_version is not None
                    else f"no rollback possible: {model.name} has no version in production"
                )
                details |= {"started": False}
            elif starter is None:
                status, note = "failed", _NO_STARTER
                details |= {"started": False, "error": note}
                failure = RollbackNotStarted(f"the alert was recorded, but {note}")
            else:
                try:
                    started = starter(model.name, reason)
                except Exception as exc:  # noqa: BLE001 - recorded, then answered as RollbackNotStarted
                    status = "failed"
                    note = f"the automatic rollback could not be started: {ROLLBACK_DAG}: {_cause(exc)}"
                    details |= {"started": False, "error": _cause(exc)}
                    failure = RollbackNotStarted(
                        f"the alert was recorded, but the automatic rollback of {model.name} could not be started: "
                        f"{_cause(exc)}"
                    )
                else:
                    if started:
                        run_id, status, note = str(started), "started", reason
                        row.rollback_started_at = now
                        details |= {"started": True, "toVersion": target}
                    else:
                        status, note = "declined", "the rollback starter started no run"
                        details |= {"started": False}
            row.rollback_status, row.rollback_run_id, row.rollback_note = status, run_id, note
            details |= {"status": status, "dagId": ROLLBACK_DAG if run_id else None, "runId": run_id or None}
            lineage = Actor(ctx.actor, ctx.principal, ctx.interface, ROLLBACK_DAG if run_id else "", run_id, "")
            version = target if status == "started" else None
            self._event(session, lineage, model.name, "auto_rollback", version=version, reason=note, details=details)
            out = alert_dict(row)["autoRollback"]
        if failure is not None:
            raise failure  # after the commit: the failure stays recorded
        return out

    def list_alerts(
        self, *, model: str | None = None, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> dict[str, Any]:
        """Alerts, open (firing) ones first, then the newest first."""
        if status is not None and status not in ALERT_STATUSES:
            raise InvalidRequest(f"unknown alert status {status!r}; use firing or resolved")
        query = select(db.Alert)
        count = select(func.count()).select_from(db.Alert)
        if model:
            validate_model_name(model)
            query, count = query.where(db.Alert.model == model), count.where(db.Alert.model == model)
        if status:
            query, count = query.where(db.Alert.status == status), count.where(db.Alert.status == status)
        open_first = case((db.Alert.status == "firing", 0), else_=1)
        with self._sessions() as session:
            rows = session.scalars(
                query.order_by(open_first, db.Alert.starts_at.desc(), db.Alert.id.desc()).limit(limit).offset(offset)
            ).all()
            return {
                "alerts": [alert_dict(a) for a in rows],
                "total": session.scalar(count),
                "limit": limit,
                "offset": offset,
            }

    def model_alerts(self, name: str, *, status: str | None = None, limit: int = 100, offset: int = 0) -> dict:
        with self._sessions() as session:
            self._model(session, name)  # an unknown model is a 404
        return {"modelName": name} | self.list_alerts(model=name, status=status, limit=limit, offset=offset)

    # ------------------------------------------------------------------ query: what the page shows beside the records

    def require_model(self, name: str) -> None:
        """Raise NotFound (404) unless ``name`` is a registered model (for endpoints whose data comes from
        elsewhere: live performance, replica logs)."""
        with self._sessions() as session:
            self._model(session, name)

    def diagnoses(self, name: str, *, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """The diagnosis bundles the model's history records (events of kind ``diagnosis``, ``details.path`` on
        HDFS), newest first: where each is, why and when it was collected, by which run, and what it lacks."""
        query = select(db.HistoryEvent).where(db.HistoryEvent.model_name == name, db.HistoryEvent.kind == "diagnosis")
        count = select(func.count()).select_from(db.HistoryEvent)
        count = count.where(db.HistoryEvent.model_name == name, db.HistoryEvent.kind == "diagnosis")
        with self._sessions() as session:
            self._model(session, name)  # an unknown model is a 404
            rows = session.scalars(
                query.order_by(db.HistoryEvent.at.desc(), db.HistoryEvent.id.desc()).limit(limit).offset(offset)
            ).all()
            bundles = []
            for e in rows:
                details = e.details if isinstance(e.details, dict) else {}
                path = details.get("path")
                missing = details.get("missing")
                bundles.append(
                    {
                        "id": e.id,
                        "at": iso(e.at),
                        "version": e.version,
                        "path": path if isinstance(path, str) and path else None,
                        "reason": e.reason,
                        "parts": len(details["parts"]) if isinstance(details.get("parts"), list) else None,
                        "missing": sorted(missing) if isinstance(missing, dict) else [],
                        "actor": e.actor,
                        "dagId": e.dag_id,
                        "runId": e.run_id,
                        "taskId": e.task_id,
                    }
                )
            return {
                "modelName": name,
                "bundles": bundles,
                "total": session.scalar(count),
                "limit": limit,
                "offset": offset,
            }

    # ------------------------------------------------------------------ operations: what /metrics exposes

    def metrics_snapshot(self) -> dict[str, Any]:
        """Everything /metrics exposes, read in one transaction (plain tuples)."""
        m, v, h = db.Model, db.ModelVersion, db.HistoryEvent
        with self._sessions() as session:
            models = session.execute(
                select(m.name, m.production_version, m.health_status, m.frozen, m.lock_refusals).order_by(m.name)
            ).all()
            versions = session.execute(
                select(m.name, v.state, func.count()).join(v, v.model_id == m.id).group_by(m.name, v.state)
            ).all()
            deployments = session.execute(
                select(m.name, db.Deployment.target, db.Deployment.label, db.Deployment.version).join(
                    db.Deployment, db.Deployment.model_id == m.id
                )
            ).all()
            rollbacks = session.execute(
                select(h.model_name, func.count())
                .where(h.kind == "transition", h.to_state == ModelState.ROLLED_BACK.value)
                .group_by(h.model_name)
            ).all()
            acquisitions = session.execute(
                select(h.model_name, func.count())
                .where(h.kind == "lock", h.reason.startswith("acquired"))
                .group_by(h.model_name)
            ).all()
            ages = session.execute(
                select(m.name, v.version, v.state, func.coalesce(v.state_changed_at, v.updated_at))
                .join(v, v.model_id == m.id)
                .where(v.state.in_(STATE_AGE_STATES))
            ).all()
        return {
            "now": db.utcnow(),
            "models": [tuple(r) for r in models],
            "versions": [tuple(r) for r in versions],
            "deployments": [tuple(r) for r in deployments],
            "rollbacks": dict(tuple(r) for r in rollbacks),
            "lock_acquisitions": dict(tuple(r) for r in acquisitions),
            "state_ages": [tuple(r) for r in ages],
        }

    # ------------------------------------------------------------------ history

    def history(
        self,
        *,
        model: str | None = None,
        since: str | dt.datetime | None = None,
        until: str | dt.datetime | None = None,
        actor: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        query = select(db.HistoryEvent)
        if model:
            validate_model_name(model)
            query = query.where(db.HistoryEvent.model_name == model)
        if (start := parse_time(since)) is not None:
            query = query.where(db.HistoryEvent.at >= start)
        if (end := parse_time(until)) is not None:
            query = query.where(db.HistoryEvent.at <= end)
        if actor:
            query = query.where(db.HistoryEvent.actor == actor)
        if kind:
            query = query.where(db.HistoryEvent.kind == kind)
        with self._sessions() as session:
            if model:
                self._model(session, model)  # an unknown model is a 404, not an empty history
            rows = session.scalars(
                query.order_by(db.HistoryEvent.at.desc(), db.HistoryEvent.id.desc()).limit(limit).offset(offset)
            ).all()
            return {"events": [event_dict(e) for e in rows], "limit": limit, "offset": offset}

    def production_at(self, name: str, at: str | dt.datetime) -> dict[str, Any]:
        """Which version was in production at a moment, and who put it there (from the history)."""
        moment = parse_time(at)
        if moment is None:
            raise InvalidRequest("at is required: an ISO 8601 time, e.g. 2026-11-24T14:05:00Z")
        with self._sessions() as session:
            self._model(session, name)
            events = session.scalars(
                select(db.HistoryEvent)
                .where(
                    db.HistoryEvent.model_name == name,
                    db.HistoryEvent.kind == "transition",
                    db.HistoryEvent.at <= moment,
                )
                .order_by(db.HistoryEvent.at, db.HistoryEvent.id)
            ).all()
            current: db.HistoryEvent | None = None
            for e in events:
                if e.to_state == ModelState.PRODUCTION.value:
                    current = e
                elif current is not None and e.version == current.version and e.from_state == "production":
                    current = None
            return {
                "modelName": name,
                "at": iso(moment),
                "version": current.version if current else None,
                "since": iso(current.at) if current else None,
                "promotedBy": event_dict(current) if current else None,
            }

    # ------------------------------------------------------------------ deployment locks (leases)

    def acquire_lock(self, name: str, holder: str, ctx: Actor, *, ttl_seconds: float, run_id: str = "") -> dict:
        """Take the model's lease. Only the request that creates a lease gets its token (stored hashed). The same
        run asking again with the same principal (a task retry) extends its lease and gets no token: the holder
        proves itself with the token or as that principal and run. Held by another run: LockHeld, and the refusal is
        counted (``lock_refusals``, the lock waits of /metrics), committed before the error is raised. An expired
        lease is taken over: the answer's ``takenOverFrom`` names the run that held it (the caller checks that
        serving and the registry agree before changing anything)."""
        _check_ttl(ttl_seconds)
        with self._tx() as session:
            model = self._ensure_model(session, name, ctx)
            now = db.utcnow()
            lock = session.get(db.DeploymentLock, model.id, with_for_update=True)
            held = lock is not None and lock.expires_at > now
            if lock is not None and held:
                if run_id and lock.run_id == run_id and lock.principal == ctx.principal:
                    lock.expires_at = now + dt.timedelta(seconds=ttl_seconds)
                    return _lock_dict(name, lock) | {"renewed": True}
                model.lock_refusals = (model.lock_refusals or 0) + 1
                refused = LockHeld(
                    f"model {name!r} is being deployed by {lock.holder} (run {lock.run_id or '-'}) until "
                    f"{iso(lock.expires_at)}; wait for it, or for the lease to expire"
                )
            else:
                previous = None
                if lock is None:
                    lock = db.DeploymentLock(model_id=model.id)
                    session.add(lock)
                else:
                    previous = {"holder": lock.holder, "runId": lock.run_id, "expiredAt": iso(lock.expires_at)}
                token = secrets.token_urlsafe(32)
                lock.holder, lock.run_id, lock.principal, lock.token = holder, run_id, ctx.principal, _digest(token)
                lock.acquired_at, lock.expires_at = now, now + dt.timedelta(seconds=ttl_seconds)
                self._event(
                    session,
                    ctx,
                    name,
                    "lock",
                    reason="acquired" + (" (expired lease taken over)" if previous else ""),
                    details={"holder": holder, "expiresAt": iso(lock.expires_at)}
                    | ({"takenOverFrom": previous} if previous else {}),
                )
                return _lock_dict(name, lock) | {"token": token, "takenOverFrom": previous}
        raise refused  # after the commit: the refusal stays counted

    def renew_lock(self, name: str, token: str, ctx: Actor, *, ttl_seconds: float) -> dict:
        """Extend the lease by its holder (module doc of the API: the token, or the same principal and run). An
        expired lease is not renewed, even if nobody took it: its holder lost it at expiry."""
        _check_ttl(ttl_seconds)
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            lock = session.get(db.DeploymentLock, model.id)
            if lock is None or not _holds(lock, token, ctx):
                raise Conflict(
                    f"the lease of model {name!r} is not held by this caller (it expired and was taken over, or was "
                    "released): stop changing serving and let the run fail"
                )
            now = db.utcnow()
            if lock.expires_at <= now:
                raise Conflict(
                    f"the lease of model {name!r} expired at {iso(lock.expires_at)}: another run may take it over, "
                    "so this one must not go on changing serving"
                )
            lock.expires_at = now + dt.timedelta(seconds=ttl_seconds)
            return _lock_dict(name, lock)

    def release_lock(self, name: str, token: str, ctx: Actor) -> None:
        with self._tx() as session:
            model = self._model(session, name, lock=True)
            lock = session.get(db.DeploymentLock, model.id)
            if lock is None:
                return
            if not _holds(lock, token, ctx):
                raise Conflict(f"lock of model {name!r} is held by {lock.holder}, not by this caller")
            session.delete(lock)
            self._event(session, ctx, name, "lock", reason="released", details={"holder": lock.holder})


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _holds(lock: db.DeploymentLock, token: str, ctx: Actor) -> bool:
    """The caller holds the lease: it sends the lease's token, or it is the principal that took it, acting for the
    same run (the pipeline's service identity: its tasks never see the token)."""
    if token:
        return secrets.compare_digest(lock.token, _digest(token))
    return bool(lock.run_id) and lock.run_id == ctx.run_id and bool(lock.principal) and lock.principal == ctx.principal


def _lock_dict(name: str, lock: db.DeploymentLock) -> dict[str, Any]:
    return {
        "modelName": name,
        "holder": lock.holder,
        "runId": lock.run_id,
        "principal": lock.principal,
        "acquiredAt": iso(lock.acquired_at),
        "expiresAt": iso(lock.expires_at),
    }


def _check_ttl(ttl: float) -> None:
    if not 0 < ttl <= 86400:
        raise InvalidRequest(f"ttl_seconds must be in (0, 86400], got {ttl}")


_NO_STARTER = (
    "this registry cannot start Airflow runs (no rollback starter: it runs outside Airflow's api-server); "
    f"trigger {ROLLBACK_DAG} in Airflow"
)


def _need_reason(reason: str, what: str, *, minimum: int = 1) -> str:
    reason = (reason or "").strip()
    if len(reason) < minimum:
        raise InvalidRequest(
            f"reason is required to {what}" + (f" (at least {minimum} characters)" if minimum > 1 else "")
        )
    return reason


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _alert_model(labels: dict[str, str]) -> str | None:
    """The model an alert is about (label ``model``, else ``model_name``); None if none or not a model name."""
    name = labels.get("model") or labels.get("model_name")
    if not name:
        return None
    try:
        return validate_model_name(name)
    except InvalidModelName:
        return None


def _about_production(labels: dict[str, str], production: int | None) -> bool:
    """Whether an alert may concern the production version: not if its labels say it is about the canary pool
    or another version (a candidate's failure is the candidate's: the release's own checks act on it), nor if its
    rule says a rollback would not help (``rollback="no"``: a replica or the router down is not the version's
    fault; going back to an earlier version would not bring it back)."""
    if labels.get("pool") == "canary" or labels.get("rollback") == "no":
        return False
    version = _int_label(labels.get("version"))
    return version is None or version == production


def _summary(annotations: dict[str, Any]) -> str:
    return str(annotations.get("summary") or annotations.get("description") or "")[:1000]


def _int_label(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _bad_state(state: str) -> ModelState:
    raise InvalidRequest(f"unknown state {state!r}; use one of {', '.join(s.value for s in ModelState)}")


def migrate(url: str) -> None:
    """Bring the database to the newest schema (Alembic upgrade head); safe to call at every start."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")

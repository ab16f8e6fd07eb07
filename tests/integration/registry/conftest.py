"""The registry's API tests run twice per module: on SQLite and on the test stack's PostgreSQL (a clean schema
for each module)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from .test_registry_api import move, register, unique


@pytest.fixture(params=["sqlite", "postgres"], scope="module")
def db_url(request, tmp_path_factory, settings):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'registry.db'}"
    url = settings.postgres_test_url
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a clean schema for this module
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    return url


@pytest.fixture
def released(client, request) -> str:
    """A model with v1 superseded, v2 in production and v3 a canary, written by the service token through the
    requesting module's ``client``; its name starts with the module's last word (``sec``urity, ``ope``rations)."""
    model = unique(request.module.__name__.rsplit("_", 1)[-1][:3])
    for v in (1, 2):
        register(client, model, v)
        move(client, model, v, "validated", "canary", "production")
    register(client, model, 3)
    move(client, model, 3, "validated", "canary")
    return model


@pytest.fixture
def old_db_url(db_url, tmp_path) -> str:
    """An empty database of the same kind (PostgreSQL: a schema of its own in the test database)."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    schema = f"mig_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    yield f"{db_url}?options=-csearch_path%3D{schema}"
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()

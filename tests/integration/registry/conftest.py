"""The registry's API tests run twice per module: on SQLite and on the test stack's PostgreSQL (a clean schema
for each module)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa


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

"""The model registry: versions, states, lineage, deployments, health, locks and an append-only history.

The source of truth for what is, and was, in production. SQLAlchemy over SQLite (default) or PostgreSQL,
schema managed by Alembic, served as a FastAPI app mounted in Airflow's api-server at /registry.
"""

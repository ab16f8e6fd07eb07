"""One custom operator per deployment step (see dags/model_deploy.py)."""

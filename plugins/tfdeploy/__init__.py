"""tfdeploy: an Airflow-native release pipeline for TensorFlow models.

Airflow puts ``plugins/`` on ``sys.path``, so DAGs import this package directly.
"""

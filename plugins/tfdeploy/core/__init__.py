"""Pure modules: the facts every layer shares, written once. No Airflow, no network, no service.

``names`` (the model-name and version-directory rules), ``errors`` (every typed error), ``states`` (the
model version state machine), ``manifest`` (the model store's manifest format and file hashing),
``models_config`` (TF Serving's models.config as data), ``golden`` (golden examples and metrics).
Layers above: hooks -> services -> operators -> DAGs; nothing here imports them.
"""

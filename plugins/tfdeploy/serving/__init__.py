"""Serving: what the pipeline tells TF Serving (``models_config``) and the serving layer's typed errors (``errors``).

The hooks that drive servers live in ``tfdeploy.hooks.tfserving`` (one server's gRPC/REST APIs) and
``tfdeploy.hooks.serving_host`` (a server container on a Docker engine, and its model directory).
"""

"""A TensorFlow-Serving-compatible model server built on real TensorFlow.

It stands in for the official ``tensorflow/serving`` image on machines where that image and the
``tensorflow_model_server`` binary cannot be had. It follows TF Serving's external interface
(``shared/docs/tfserving-interface.md``): flags, REST, gRPC, models.config, version discovery, warmup
and Prometheus metrics. Pipeline code never special-cases it: which image serves is configuration.
"""

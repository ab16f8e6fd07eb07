#!/bin/sh
# As tensorflow/serving's entrypoint, but with exec so the server is PID 1 and gets SIGTERM directly.
exec tensorflow_model_server --port=8500 --rest_api_port=8501 \
  --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"

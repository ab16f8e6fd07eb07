"""`python -m tfserving_compat <tensorflow_model_server flags>`."""

import os
import sys

from .server import main

rc = main()
sys.stdout.flush()
sys.stderr.flush()
os._exit(rc)  # TensorFlow's and gRPC's threads must not delay exit (docker stop must be prompt)

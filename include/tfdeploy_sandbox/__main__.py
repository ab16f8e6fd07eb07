"""`python -m tfdeploy_sandbox /job/job.json`: runs the job, writes its result, exits 0 (done) or 1 (failed)."""

import os
import sys

from tfdeploy_sandbox.runner import main

status = main(sys.argv[1:])
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)  # TensorFlow's threads must not delay the exit

"""tfdeploy's sandbox: the only code of the project that loads or runs a model.

It runs inside the sandbox image (``include/images/sandbox``: the serving image's TensorFlow plus this package),
one short-lived container per job, started by ``tfdeploy.hooks.sandbox.SandboxHook``: no network, no secrets in
its environment, a read-only root filesystem, read-only inputs, one writable output directory, memory, CPU,
process and time limits, a non-root user. It imports neither Airflow nor tfdeploy (it lives outside
``plugins/`` so that Airflow never imports it, and the image carries it alone): all it needs is in the job file,
all it says is in the result file. ``python -m tfdeploy_sandbox /job/job.json``; see :mod:`.runner`.
"""

from tfdeploy_sandbox.runner import PROTOCOL, main

__all__ = ["PROTOCOL", "main"]

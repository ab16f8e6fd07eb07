"""stack_check: proves, from inside Airflow tasks, that the stack the pipeline needs is reachable.

One task writes and reads back a file on HDFS through the WebHDFS connection; one asks the Docker
engine for its version through the Docker provider's hook. Run it after `make up`, or whenever the
deployment pipeline cannot reach a service, to tell a platform fault from a model fault.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

default_args = {
    "owner": "ml-platform",
    "retries": 1,
    "retry_delay": timedelta(seconds=5),
    "execution_timeout": timedelta(minutes=5),
}


@dag(
    dag_id="stack_check",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=default_args,
    tags=["tfdeploy", "operations"],
    doc_md=__doc__,
    params={
        "note": Param("", type="string", maxLength=200, description="Free text written into the HDFS probe file."),
    },
)
def stack_check():
    @task
    def hdfs_roundtrip() -> dict:
        """Write, read back and delete a small file through the `webhdfs_default` connection."""
        from airflow.providers.apache.hdfs.hooks.webhdfs import WebHDFSHook

        ctx = get_current_context()
        client = WebHDFSHook(webhdfs_conn_id="webhdfs_default").get_conn()
        payload = f"stack_check {ctx['run_id']} {ctx['params']['note']}".encode()
        path = f"/tmp/stack_check/{ctx['run_id'].replace(':', '_').replace('+', '_')}.txt"
        client.write(path, data=payload, overwrite=True)
        with client.read(path) as reader:
            echoed = reader.read()
        client.delete(path)
        if echoed != payload:
            raise RuntimeError(
                f"HDFS returned {len(echoed)} bytes that differ from the {len(payload)} written to {path}"
            )
        return {"path": path, "bytes": len(payload)}

    @task
    def docker_engine() -> dict:
        """Ask the Docker engine at DOCKER_HOST for its version through the Docker provider's hook."""
        from airflow.providers.docker.hooks.docker import DockerHook

        base_url = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        version = DockerHook(docker_conn_id=None, base_url=base_url).get_conn().version()
        return {"docker_host": base_url, "engine": version.get("Version"), "api": version.get("ApiVersion")}

    hdfs_roundtrip()
    docker_engine()


stack_check()

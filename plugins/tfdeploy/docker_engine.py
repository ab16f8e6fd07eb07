"""A Docker SDK client of one engine, built in one place (``ServingHostHook`` and ``include/scripts/stack.py``).

requests lets ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` replace a session's own CA (``verify``) for every request
made without one, which is every request docker-py makes: where they are set (an intercepting proxy's bundle, as on
these machines), an engine with TLS and a CA of its own fails verification ("unable to get local issuer
certificate"). So the client ignores the environment (no proxies either: an engine is reached directly), and asks the
engine's API version only after that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker


def docker_client(base_url: str, *, tls: Any = None, timeout: float = 60) -> docker.DockerClient:
    """A client of the engine at ``base_url`` (``tls``: a ``docker.tls.TLSConfig`` or None), with the engine's API
    version; raises what docker-py and requests raise when the engine does not answer."""
    import docker
    from docker.constants import MINIMUM_DOCKER_API_VERSION

    probe = docker.APIClient(base_url=base_url, tls=tls or False, timeout=timeout, version=MINIMUM_DOCKER_API_VERSION)
    probe.trust_env = False
    try:
        version = str(probe.version(api_version=False)["ApiVersion"])
    finally:
        probe.close()
    client = docker.DockerClient(base_url=base_url, tls=tls or False, timeout=timeout, version=version)
    client.api.trust_env = False
    return client

"""SandboxStep: a deployment step that loads or runs model code, which it does only in the sandbox
(``hooks/sandbox.py``: a throw-away container with no network, no secrets, read-only inputs and limits)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from tfdeploy.hooks.sandbox import SandboxHook, SandboxLimits
from tfdeploy.operators.base import DeployStep
from tfdeploy.settings import get_settings


class SandboxStep(DeployStep):
    """Base of the steps that run model code (validate, export): the sandbox they run it in.

    :param sandbox_limits: memory, CPUs, processes and wall-clock timeout of each sandbox container
        (defaults: ``SandboxLimits()``: 2 GiB, 1 CPU, 512 processes, 300 s).
    :param sandbox_image: the sandbox image; None: ``SANDBOX_IMAGE``.
    :param sandbox_conn_id: the Docker engine's Connection (the serving host's).
    """

    def __init__(
        self,
        *,
        sandbox_limits: SandboxLimits | None = None,
        sandbox_image: str | None = None,
        sandbox_conn_id: str = SandboxHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if sandbox_limits is not None and not isinstance(sandbox_limits, SandboxLimits):
            raise TypeError(f"{self.task_id}: sandbox_limits must be a SandboxLimits, got {sandbox_limits!r}")
        self.sandbox_limits = sandbox_limits or SandboxLimits()
        self.sandbox_image = sandbox_image
        self.sandbox_conn_id = sandbox_conn_id

    @cached_property
    def sandbox(self) -> SandboxHook:
        return SandboxHook(
            self.sandbox_conn_id, image=self.sandbox_image or get_settings().sandbox_image, limits=self.sandbox_limits
        )

    def on_kill(self) -> None:
        """The task is being killed: so is its sandbox container (removed, not left running)."""
        if "sandbox" in self.__dict__:
            self.sandbox.kill()
        super().on_kill()

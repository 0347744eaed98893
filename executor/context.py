"""What every run on this executor shares: settings, the bus, the artifact and environment
caches, how to launch a process, and the counters behind the shutdown summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio.abc

from broker.connection import Bus
from broker.models import OrchestrationRecord
from executor.artifacts import Artifacts
from executor.credentials import RunCredentialsFn, no_credentials
from executor.environments import Environment, Environments
from executor.isolation import Isolation
from executor.process import Launcher
from executor.secrets import Secrets
from executor.settings import ExecutorSettings


@dataclass
class Context:
    """What every run on this executor shares (built once by the daemon)."""

    settings: ExecutorSettings
    bus: Bus
    artifacts: Artifacts
    environments: Environments
    launcher_for: Callable[[Environment | None], Launcher]
    base_env: dict[str, str]  # allowlisted (``executor.isolation.allowed_environment``)
    isolation: Isolation
    # The text of a .creds file for one run, valid until the deadline (None: the run has no
    # timeout), or None for no credential (executor.credentials). Its text is written 0600 as
    # the run's own ``run.creds`` and TASKBUS_CREDS points at it.
    run_credentials: RunCredentialsFn = no_credentials
    stats: Counter[str] = field(default_factory=Counter)
    ready_orchestrations: dict[str, OrchestrationRecord] = field(default_factory=dict)
    secrets: Secrets | None = None  # connections for runs (executor.secrets)
    # The daemon's task group for work that outlives a run (deleting its folder); None
    # before the daemon serves (then such work is done in line).
    background: anyio.abc.TaskGroup | None = None

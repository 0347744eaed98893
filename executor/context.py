"""What every run on this executor shares: settings, the bus, the artifact and environment
caches, how to launch a process, and the counters behind the shutdown summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.connection import Bus
from broker.models import OrchestrationRecord
from executor.artifacts import Artifacts
from executor.environments import Environment, Environments
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
    base_env: dict[str, str]
    stats: Counter[str] = field(default_factory=Counter)
    ready_orchestrations: dict[str, OrchestrationRecord] = field(default_factory=dict)
    secrets: Secrets | None = None  # workspaces branch: connections for runs (executor.secrets)

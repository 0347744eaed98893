"""Each run's own NATS credential (user code never sees the executor's), minted by the executor.

The executor holds the run role's scoped signing key (``TASKBUS_RUN_SIGNING_KEY`` or
``--run-signing-key``), never the account key: whatever it signs gets the run template of
``broker.roles`` from the server — its own task, orchestration and run record, nothing else —
with the run's ids as the tags that fill the template. The credential expires when the run
must have ended (timeout + kill grace + a margin); a run without a timeout gets
``RUN_CREDENTIAL_MAX_S``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from broker import names, tokens
from broker.authority import RunSigner
from broker.models import OrchestrationRecord, RunRequest, utcnow
from executor.logstream import LogStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunCredentials:
    signer: RunSigner
    kill_grace_s: float

    def __call__(
        self,
        request: RunRequest,
        orchestration: OrchestrationRecord,
        deadline: datetime | None,
    ) -> str:
        if deadline is None:
            expires_at = utcnow().timestamp() + names.RUN_CREDENTIAL_MAX_S
        else:
            expires_at = deadline.timestamp() + self.kill_grace_s + names.RUN_CREDENTIAL_MARGIN_S
        return self.signer.mint(
            task_id=request.task_id,
            run_id=request.run_id,
            orchestration_id=request.orchestration_id,
            workspace=orchestration.workspace or names.DEFAULT_WORKSPACE,
            expires_at=expires_at,
        )


def hide_credential(logs: LogStream, creds: str) -> None:
    """Mask the run's own credential (its JWT and seed) in its log lines, on top of any mask
    the log stream has: printed, it could be used from outside until it expires."""
    parsed = tokens.parse_creds(creds)
    secrets = [parsed.jwt, *(line for line in creds.splitlines() if line.startswith("SU"))]
    inner = logs.mask

    def mask(lines: list[str]) -> list[str]:
        # Plain substring tests, not a regex: compiling one per run costs about a millisecond
        # on the start path, and nearly every line holds neither secret.
        lines = inner(lines) if inner is not None else lines
        return [_without(line, secrets) for line in lines]

    logs.mask = mask


def _without(line: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in line:
            line = line.replace(secret, names.MASK)
    return line


RunCredentialsFn = Callable[[RunRequest, OrchestrationRecord, datetime | None], str | None]


def no_credentials(
    request: RunRequest, orchestration: OrchestrationRecord, deadline: datetime | None
) -> str | None:
    """Without a run signing key (a server without authentication) runs get no credential."""
    return None

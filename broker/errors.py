"""Taskbus errors: one root, every leaf says when it is raised and its message what to do.

::

    TaskbusError
    ├── NotConnected                 no server answered at the URL(s) tried, or it refused
    │                                the credential
    ├── PermissionDenied             the server refused an action to this credential; also a
    │                                PermissionError
    ├── CredentialError              a credential file or key cannot be read or used
    ├── ServerError                  the embedded nats-server could not start or stopped
    ├── WrongArgumentType            an argument has the wrong type; also a TypeError
    ├── OrchestrationMissingFile     upload got neither a path nor a bytes buffer (or a path
    │                                that does not exist); also a ValueError
    ├── InvalidOrchestration         the zip is not a valid orchestration (no main.py, …)
    ├── OrchestrationUploadFailed    the zip could not be stored on the bus
    ├── OrchestrationNotReady        packaging failed, or a wait for ready timed out
    ├── OrchestrationNotFound        no orchestration with that id or name; also a LookupError
    ├── InvalidSchedule              a cron string, time zone or policy is not valid; also a
    │                                ValueError
    ├── TaskNotFound                 no task with that id; also a LookupError
    ├── WorkspaceNotFound            no workspace with that name or id; also a LookupError
    ├── InvalidWorkspace             a workspace name that is malformed or taken; also a
    │                                ValueError
    ├── ConnectionNotFound           no connection with that name; also a LookupError
    ├── InvalidConnection            a connection name, type or details that cannot be
    │                                stored (malformed, taken, too large); also a ValueError
    ├── SecretKeyError               the connections' encryption key is missing or wrong
    └── WaitTimeout                  a wait() ran out of time; also a TimeoutError
"""

from __future__ import annotations


class TaskbusError(Exception):
    """The root of every error Taskbus raises on purpose."""


class NotConnected(TaskbusError):
    """No NATS server answered at the URL(s) tried."""

    def __init__(self, urls: list[str], reason: str, hint: str | None = None) -> None:
        self.urls = urls
        joined = ", ".join(urls)
        if hint is None:
            hint = (
                "Start a local stack with `taskbus up` (or only the server with `taskbus "
                "server`), or point --url / TASKBUS_URL at a running server."
            )
        super().__init__(f"Could not connect to NATS at {joined}: {reason}. {hint}")


class PermissionDenied(TaskbusError, PermissionError):
    """The server refused an action to the credential in use (its role does not allow it)."""

    def __init__(self, action: str, credential: str, allowed_by: str) -> None:
        self.action = action
        self.credential = credential
        super().__init__(f"Permission denied: {credential} may not {action}. {allowed_by}")


class CredentialError(TaskbusError):
    """A credential file or key cannot be read, or is not what it should be."""


def exit_status(exc: TaskbusError) -> int:
    """How a daemon stopped by ``exc`` exits, in the ``taskbus`` CLI's codes: 3 when no
    server answered, else 1 (it could not start)."""
    return 3 if isinstance(exc, NotConnected) else 1


class ServerError(TaskbusError):
    """The embedded nats-server could not be started, or exited."""


class WrongArgumentType(TaskbusError, TypeError):
    """An argument has the wrong type; the message names the type expected."""


class OrchestrationMissingFile(TaskbusError, ValueError):
    """upload_orchestration() got no file to upload, or a path that does not exist."""


class InvalidOrchestration(TaskbusError, ValueError):
    """The zip is not a valid orchestration; the message names the problem."""


class OrchestrationUploadFailed(TaskbusError):
    """The zip was valid but could not be stored on the bus."""


class OrchestrationNotReady(TaskbusError):
    """Packaging ended in ``error`` (message has the packager's reason), or a wait timed out."""


class OrchestrationNotFound(TaskbusError, LookupError):
    """No orchestration has that id or name."""


class InvalidSchedule(TaskbusError, ValueError):
    """A cron string, time zone, overlap or missed-run policy is not valid."""


class TaskNotFound(TaskbusError, LookupError):
    """No task has that id."""


class WorkspaceNotFound(TaskbusError, LookupError):
    """No workspace has that name or id."""


class InvalidWorkspace(TaskbusError, ValueError):
    """A workspace name is malformed or already taken."""


class ConnectionNotFound(TaskbusError, LookupError):
    """No connection has that name."""


class InvalidConnection(TaskbusError, ValueError):
    """A connection's name, type or details cannot be stored (malformed, taken, too large)."""


class SecretKeyError(TaskbusError):
    """The key that encrypts connection details is missing, malformed or not the one used."""


class WaitTimeout(TaskbusError, TimeoutError):
    """A wait() ran out of time before the awaited state was reached."""

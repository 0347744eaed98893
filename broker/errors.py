"""Taskbus errors: one root, every leaf says when it is raised and its message what to do.

::

    TaskbusError
    ├── CommunicationFailed          the bus could not be reached or did not answer
    │   ├── NotConnected             no server answered at the URL(s) tried, or it refused
    │   │   │                        the credential
    │   │   └── UnusableCredential   the credential file cannot be read or is not one; also
    │   │                            a CredentialError
    │   └── RequestTimeout           a request got no answer within the client's
    │                                request_timeout; also a TimeoutError
    ├── PermissionDenied             the server refused an action to this credential; also a
    │                                PermissionError
    ├── CredentialError              a credential file or key cannot be read or used
    │   └── SecretKeyError           the connections' encryption key is missing or wrong
    ├── ServerError                  the embedded nats-server could not start or stopped
    ├── InvalidArgument              an argument has a bad value; also a ValueError
    │   └── InvalidName              a name is empty or not a string
    ├── WrongArgumentType            an argument has the wrong type; also a TypeError
    ├── OrchestrationMissingFile     upload got neither a path nor a bytes buffer (or a path
    │                                that does not exist); also a ValueError
    ├── InvalidOrchestration         the zip is not a valid orchestration (no main.py, …)
    ├── OrchestrationUploadFailed    the zip could not be stored on the bus
    ├── ZipUnavailable               an orchestration's stored zip cannot be read: missing
    │                                (ZipMissing) or corrupt (ZipCorrupt), both in
    │                                broker.zipstore
    ├── OrchestrationNotReady        packaging failed, or a wait for ready timed out
    │   └── OrchestrationCannotRun   a run_* of an orchestration that failed packaging (also
    │                                an OrchestrationDeployOneshotFailed)
    ├── OrchestrationDeployOneshotFailed   a run_* could not create its task (reference name)
    ├── NotFound                     no entity with that id or name; also a LookupError
    │   ├── OrchestrationNotFound    no orchestration with that id or name
    │   └── TaskNotFound             no task with that id
    ├── InvalidSchedule              a cron string, time zone or policy is not valid; also a
    │                                ValueError
    ├── InvalidJsonArgs              json_args too large or too deeply nested; also a ValueError
    ├── LogsUnavailable              the logs stream is gone from the server
    ├── WorkspaceNotFound            no workspace with that name or id; also a NotFound
    ├── InvalidWorkspace             a workspace name that is malformed or taken; also a
    │   │                            ValueError
    │   └── WorkspaceNameType        a workspace name that is not a str; also a TypeError
    ├── ConnectionNotFound           no connection with that name; also a NotFound
    │   └── ConnectionNotGranted     inside a task: none of that name in the task's
    │                                workspace; also a PermissionDenied
    ├── InvalidConnection            a connection name, type or details that cannot be
    │                                stored (malformed, taken, too large); also a ValueError
    ├── SchedulerUnavailable         no scheduler started a run only it may start
    └── WaitTimeout                  a wait() ran out of time; also a TimeoutError

``sdk.object`` gives the reference SDK's names for these (``EntityNotFoundError`` is
``NotFound``, ``CommunicationError`` is ``CommunicationFailed``, …).
"""

from __future__ import annotations

from enum import IntEnum


class TaskbusError(Exception):
    """The root of every error Taskbus raises on purpose."""


class CommunicationFailed(TaskbusError):
    """The bus could not be reached, or did not answer in time."""


class NotConnected(CommunicationFailed):
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


class UnusableCredential(NotConnected, CredentialError):
    """The credential file given to connect cannot be read or is not one: no connection was
    tried (exits with the usage code: trying again will not help)."""


class ExitCode(IntEnum):
    """The exit codes of every Taskbus command and daemon: the one table scripts can trust."""

    OK = 0
    FAILED = 1  # the work failed: a run that did not succeed, a daemon that could not start
    USAGE = 2  # bad input, an unknown name, a credential that cannot be used or is refused
    NOT_CONNECTED = 3  # no server to talk to
    INTERRUPTED = 130  # SIGINT (Ctrl+C), as shells report it: 128 + 2


def exit_status(exc: TaskbusError) -> ExitCode:
    """How a command or daemon stopped by ``exc`` exits: ``NOT_CONNECTED`` when no server
    answered; ``USAGE`` for bad input, an unknown name, or a credential that cannot be used or
    does not allow the work; else ``FAILED``."""
    if isinstance(exc, NotConnected) and not isinstance(exc, CredentialError):
        return ExitCode.NOT_CONNECTED
    usage = (ValueError, TypeError, LookupError, PermissionDenied, CredentialError)
    return ExitCode.USAGE if isinstance(exc, usage) else ExitCode.FAILED


class RequestTimeout(CommunicationFailed, TimeoutError):
    """A request got no answer within the client's ``request_timeout``."""


class ServerError(TaskbusError):
    """The embedded nats-server could not be started, or exited."""


class InvalidArgument(TaskbusError, ValueError):
    """An argument has a value the call cannot take; the message says which values it can."""


class InvalidName(InvalidArgument):
    """A name (of a task, an orchestration) is empty or not a string."""


class WrongArgumentType(TaskbusError, TypeError):
    """An argument has the wrong type; the message names the type expected."""


class OrchestrationMissingFile(TaskbusError, ValueError):
    """upload_orchestration() got no file to upload, or a path that does not exist."""


class InvalidOrchestration(TaskbusError, ValueError):
    """The zip is not a valid orchestration; the message names the problem."""


class OrchestrationUploadFailed(TaskbusError):
    """The zip was valid but could not be stored on the bus."""


class ZipUnavailable(TaskbusError):
    """An orchestration's stored zip is missing or corrupt; the message says to upload the
    orchestration again (``broker.zipstore`` raises its two leaves)."""


class OrchestrationNotReady(TaskbusError):
    """Packaging ended in ``error`` (message has the packager's reason), or a wait timed out."""


class OrchestrationDeployOneshotFailed(TaskbusError):
    """A ``run_once`` / ``run_scheduled`` / ``run_continuously`` could not create its task (the
    reference SDK's name, raised where it raises it)."""


class OrchestrationCannotRun(OrchestrationNotReady, OrchestrationDeployOneshotFailed):
    """A ``run_*`` of an orchestration whose packaging failed."""


class NotFound(TaskbusError, LookupError):
    """No entity (orchestration, task, …) has that id or name: the base of every
    ``…NotFound`` (the reference SDK's ``EntityNotFoundError``)."""


class OrchestrationNotFound(NotFound):
    """No orchestration has that id or name."""


class InvalidSchedule(TaskbusError, ValueError):
    """A cron string, time zone, overlap or missed-run policy is not valid."""


class TaskNotFound(NotFound):
    """No task has that id."""


class InvalidJsonArgs(TaskbusError, ValueError):
    """json_args are over the size limit or nested too deep to encode; says what to do."""


class LogsUnavailable(TaskbusError):
    """The server has no logs stream (it was deleted): a run's lines cannot be read."""


class WorkspaceNotFound(NotFound):
    """No workspace has that name or id."""


class InvalidWorkspace(InvalidArgument):
    """A workspace name is malformed or already taken."""


class WorkspaceNameType(InvalidWorkspace, TypeError):
    """A workspace name that is not a str (an ``InvalidWorkspace`` and a ``TypeError``)."""


class ConnectionNotFound(NotFound):
    """No connection has that name."""


class ConnectionNotGranted(PermissionDenied, ConnectionNotFound):
    """Inside a task: no connection of that name is added to the task's workspace. The run
    cannot tell an unknown name from another workspace's connection (it may see neither), so
    this is both a ``PermissionDenied`` and a ``ConnectionNotFound``."""


class InvalidConnection(InvalidArgument):
    """A connection's name, type or details cannot be stored (malformed, taken, too large)."""


class SecretKeyError(CredentialError):
    """The key that encrypts connection details is missing, malformed or not the one used."""


class SchedulerUnavailable(TaskbusError):
    """A run only the scheduler may start (run now under a user or operator credential) was
    not started: no scheduler answered."""


class WaitTimeout(TaskbusError, TimeoutError):
    """A wait() ran out of time before the awaited state was reached."""

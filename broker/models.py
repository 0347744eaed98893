"""The wire contract: every record and message that crosses the bus, defined once.

Records are msgspec Structs, frozen and keyword-only, encoded as JSON so that an operator can
read them with the ``nats`` CLI. Only broker code turns bytes into objects and back (``encode``
/ ``decode``). New fields get defaults; a field's type never changes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from broker import names
from broker.status import MissedPolicy, OrchestrationStatus, Overlap, RunStatus, TaskKind

# Every instant on the wire carries its time zone: one without would fail every comparison
# with an aware one (a record written by hand must be refused where it is decoded, not crash
# a daemon that compares it).
Instant = Annotated[datetime, msgspec.Meta(tz=True)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every wire type."""


class RunKeys:
    """The keys of a run (a ``RunRecord``'s, a ``RunRequest``'s): workspace first."""

    __slots__ = ()
    workspace: str
    task_id: str
    run_id: str

    @property
    def key(self) -> str:
        """The run's key (in RUNS and CONTROL)."""
        return names.run_key(names.workspace_token(self.workspace), self.task_id, self.run_id)

    @property
    def task_key(self) -> str:
        return names.task_key(names.workspace_token(self.workspace), self.task_id)


class OrchestrationRecord(Record, frozen=True, kw_only=True):
    id: str
    name: str
    file_name: str
    sha: str  # sha256 of the zip: also its name in its workspace's zips
    size: int  # bytes of the zip
    status: OrchestrationStatus = OrchestrationStatus.PENDING_PACKAGING
    error: str = ""
    entrypoint: str = ""  # path of main.py inside the zip
    requirements: str = ""  # requirements.txt as uploaded ("" when there is none)
    lock: str = ""  # pinned requirements resolved at packaging ("" when there are none)
    python: str = ""  # "3.11" the lock was resolved for
    # The workspace's name ("" in stores made before workspaces: ``default``). Readers take it
    # from the record's key, which server permissions scope; never from a record's own field.
    workspace: str = ""
    created_at: Instant
    updated_at: Instant

    @property
    def key(self) -> str:
        return names.orchestration_key(names.workspace_token(self.workspace), self.id)


class TaskRecord(Record, frozen=True, kw_only=True):
    id: str
    name: str
    orchestration_id: str
    kind: TaskKind
    json_args: dict[str, Any] = {}
    timeout_s: int | None = None
    debug: bool = False
    schedule: str = ""  # cron, for scheduled tasks
    tz: str = "UTC"
    overlap: Overlap = Overlap.ALLOW
    missed: MissedPolicy = MissedPolicy.LATEST
    missed_cap: int = 10  # with MissedPolicy.ALL: at most this many catch-up fires
    starting_deadline_s: float = 300.0  # a missed fire older than this is not caught up
    retries: int = 0  # extra attempts after a failed, timed-out or lost one
    retry_delay_s: float = 10.0  # before the first retry; doubled for each one after
    pool: str = "default"
    workspace: str = ""
    memory_limit_bytes: int | None = None  # the run's memory cap (cgroup, else RLIMIT_AS)
    cpu_limit: float | None = None  # CPUs the run may use (1.5: 150 ms per 100 ms)
    killed: bool = False
    paused: bool = False
    # "Run now" asked at this instant (the console's, or a user's): the scheduler starts it,
    # with a run id derived from the task and this instant (exactly once across schedulers).
    run_now_at: Instant | None = None
    created_at: Instant
    updated_at: Instant

    @property
    def key(self) -> str:
        return names.task_key(names.workspace_token(self.workspace), self.id)

    def run_key(self, run_id: str) -> str:
        return names.run_key(names.workspace_token(self.workspace), self.id, run_id)

    @property
    def orchestration_key(self) -> str:
        """Its orchestration's key: always in the task's own workspace."""
        return names.orchestration_key(names.workspace_token(self.workspace), self.orchestration_id)


class RunRecord(Record, RunKeys, frozen=True, kw_only=True):
    task_id: str
    run_id: str
    workspace: str = ""  # its task's (as on TaskRecord: the key's, when read)
    status: RunStatus = RunStatus.PENDING
    attempt: int = 1
    executor: str = ""
    pid: int = 0
    exit_code: int | None = None
    reason: str = ""  # why it ended the way it did: "timeout 60s", "executor lost", "missed"…
    instant: Instant | None = None  # the scheduled instant this run fires for
    pool: str = "default"  # the pool whose executors may take it
    retry_of: str = ""  # the run id of the attempt this run retries ("" for a first attempt)
    not_before: Instant | None = None  # a retry starts no sooner (its back-off)
    created_at: Instant
    started_at: Instant | None = None
    finished_at: Instant | None = None
    updated_at: Instant | None = None


class ExecutorRecord(Record, frozen=True, kw_only=True):
    id: str
    host: str
    pid: int
    pool: str
    slots: int
    running: list[str] = []  # ``names.run_token`` of each run it runs
    started_at: Instant
    heartbeat_at: Instant


class WorkspaceRecord(Record, frozen=True, kw_only=True):
    """A workspace: the unit of grouping and access. Orchestrations and tasks carry its name
    as their ``workspace`` label ("" is the default workspace, as in stores made before)."""

    id: int
    name: str
    created_at: Instant


class SchemaMark(Record, frozen=True, kw_only=True):
    """The layout of the store's keys and subjects (key ``names.SCHEMA_KEY``)."""

    version: int


class WorkspaceIds(Record, frozen=True, kw_only=True):
    """The last workspace id handed out (key ``names.WORKSPACE_IDS``)."""

    last_id: int


class ConnectionRecord(Record, frozen=True, kw_only=True):
    """A data connection: its details are a Fernet token (``broker.secret_key``), never clear
    text. One copy per workspace it is added to, each listing all of them."""

    name: str
    connection_type: str
    details_token: str  # Fernet token of the details' JSON
    workspaces: list[str] = []  # names of the workspaces it is added to
    created_at: Instant
    id: str = ""  # shared by its copies; "" (older records): the name is the identity

    @property
    def identity(self) -> str:
        """What the copies of one connection share."""
        return self.id or f"name:{self.name}"


class SchedulerMark(Record, frozen=True, kw_only=True):
    """The last instant the scheduler fired (or recorded as missed) for one task."""

    task_id: str
    last_instant: Instant


class RunControl(Record, frozen=True, kw_only=True):
    """A request to stop one run (overlap ``replace``), read by the executor that owns it."""

    task_id: str
    run_id: str
    kill: bool = True
    reason: str = ""
    requested_at: Instant


# --- Messages --------------------------------------------------------------------------------
class RunRequest(Record, RunKeys, frozen=True, kw_only=True):
    """Published on the run queue once the run record exists as ``pending``."""

    task_id: str
    run_id: str
    orchestration_id: str
    workspace: str = ""  # the task's (from its key: the scheduler and executors write these)
    json_args: dict[str, Any] = {}
    timeout_s: int | None = None
    retries: int = 0
    memory_limit_bytes: int | None = None
    cpu_limit: float | None = None
    not_before: Instant | None = None  # a retry's back-off: executors nak it until then
    requested_at: Instant

    @property
    def orchestration_key(self) -> str:
        return names.orchestration_key(names.workspace_token(self.workspace), self.orchestration_id)


class PackageRequest(Record, frozen=True, kw_only=True):
    orchestration_id: str
    workspace: str = ""


class LogLine(Record, frozen=True, kw_only=True, array_like=True):
    seq: int  # per run, from 1, strictly increasing
    ts: Instant
    stream: Literal["stdout", "stderr", "taskbus"]
    text: str


class LogBatch(Record, frozen=True, kw_only=True):
    task_id: str
    run_id: str
    lines: list[LogLine]
    eof: bool = False  # the last batch of the run: nothing follows


class ZipManifest(Record, frozen=True, kw_only=True):
    """A stored zip's last message (``broker.zipstore``): its chunks are all written."""

    size: int  # bytes of the zip
    chunks: int  # messages "c.0" … "c.<chunks - 1>"
    chunk_bytes: int  # bytes of every chunk but the last
    uploaded_at: Instant


# --- Encoding --------------------------------------------------------------------------------
_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
R = TypeVar("R", bound=Record)


def encode(record: Record) -> bytes:
    return _encoder.encode(record)


def decode(kind: type[R], data: bytes) -> R:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    result: R = decoder.decode(data)
    return result

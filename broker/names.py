"""Every name on the bus, and the reason behind every number.

Subjects, streams, buckets, headers and environment variables live here and nowhere else, so
that a component that speaks to another one can only do so through a name both import.
"""

from __future__ import annotations

import hashlib

# --- Key-value buckets -----------------------------------------------------------------------
# Every record of a workspace has the workspace's name as its key's first token, and so does
# every log subject and zip: server permissions scope a credential to its workspaces with
# ``{{tag(workspace)}}`` in the subject (``broker.roles``).
ORCHESTRATIONS = "taskbus_orchestrations"  # KV: key "<workspace>.<orchestration_id>"
TASKS = "taskbus_tasks"  # KV: key "<workspace>.<task_id>" (spec + killed/paused flags)
RUNS = "taskbus_runs"  # KV: one record per run, key "<workspace>.<task_id>.<run_id>"
EXECUTORS = "taskbus_executors"  # KV with a bucket-wide TTL: one heartbeat per live executor
SCHEDULER = "taskbus_scheduler"  # KV: last fired instant per scheduled task
# Key in SCHEDULER: every cron instant up to this one has been handled (fired or recorded).
SCHEDULER_WATERMARK = "watermark"
CONTROL = "taskbus_control"  # KV: kill requests for single runs, keyed like RUNS
WORKSPACES = "taskbus_workspaces"  # KV: one record per workspace, keyed by its name
# Key in WORKSPACES holding the last workspace id handed out (ids come from compare-and-set on
# it, so they are unique and never reused). One token, so that only a credential granted every
# workspace (``workspace:*``) may write it; not a valid workspace name, so listings skip it.
WORKSPACE_IDS = "_ids"
# Key in WORKSPACES: the layout of the store's keys and subjects (``broker.migration``).
SCHEMA_KEY = "_schema"
SCHEMA_VERSION = 2  # 2: every key and log subject carries its workspace
DEFAULT_WORKSPACE = "default"  # always exists (id 1); records with an empty label are in it
DEFAULT_WORKSPACE_ID = 1
# KV: connections (encrypted details), key "<workspace>.<name>": one copy per workspace it is
# added to, the workspace first in the subject so that server permissions can scope it.
CONNECTIONS = "taskbus_connections"

# --- Streams ---------------------------------------------------------------------------------
RUNQ_STREAM = "TASKBUS_RUNQ"  # work queue of RunRequests, one subject per pool
RUNQ_SUBJECTS = "taskbus.runq.>"
PKGQ_STREAM = "TASKBUS_PKGQ"  # work queue of PackageRequests (any executor packages)
PKGQ_SUBJECT = "taskbus.pkgq"
LOGS_STREAM = "TASKBUS_LOGS"  # log batches, one subject per run
LOGS_SUBJECTS = "taskbus.logs.>"

DEFAULT_POOL = "default"

# --- Orchestration zips ----------------------------------------------------------------------
# One stream for every workspace's zips, with the workspace as a subject token, so that a
# server permission template (taskbus.zips.{{tag(workspace)}}.>) scopes a user to its own.
# Chunk i of a zip is "<workspace>.<sha256>.c.<i>"; its manifest "<workspace>.<sha256>.m" is
# written last. One message per subject: a re-upload or a delete (empty messages) replaces it.
ZIPS_STREAM = "TASKBUS_ZIPS"
ZIPS_SUBJECTS = "taskbus.zips.>"


def zip_subject(workspace: str, sha: str, part: str) -> str:
    """``part``: ``"m"`` for the manifest, ``"c.<i>"`` for chunk i (``broker.zipstore``
    checks the workspace and sha before it builds one)."""
    return f"taskbus.zips.{workspace}.{sha}.{part}"


# A deleted zip's messages are replaced by empty ones (a user may publish, never purge) that
# expire this long after (the server's per-message TTL, whole seconds): a tombstone only has to
# displace the data, so deleted zips leave nothing behind.
ZIP_TOMBSTONE_TTL_S = 1


# --- Headers ---------------------------------------------------------------------------------
MSG_ID = "Nats-Msg-Id"  # JetStream de-duplication key (short-term guard; records are idempotent)
# A KV create(): the write wins only while the key has no message ("0") — as nats-py sends it.
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
# Per-message TTL in seconds (nats-server 2.11+; nats-py creates KV streams allowing it).
TTL = "Nats-TTL"
# A KV delete or purge is a message with this header ("DEL" or "PURGE") and no value.
KV_OPERATION = "KV-Operation"
KV_REMOVALS = ("DEL", "PURGE")
# On a message the server placed itself (nats-server 2.11+): a record whose TTL ran out leaves
# one, which readers treat as a deletion of its key.
MARKER_REASON = "Nats-Marker-Reason"


def runq_subject(pool: str) -> str:
    return f"taskbus.runq.{pool}"


def runq_consumer(pool: str) -> str:
    """One durable pull consumer per pool, shared by every executor of that pool."""
    return f"runq_{pool}"


PKGQ_CONSUMER = "pkgq"


def workspace_token(label: str) -> str:
    """The workspace's name in keys and subjects, for a record's ``workspace`` label ("" is
    the default workspace, as in stores made before workspaces)."""
    return label or DEFAULT_WORKSPACE


def logs_subject(workspace: str, task_id: str, run_id: str) -> str:
    return f"taskbus.logs.{workspace}.{task_id}.{run_id}"


def task_key(workspace: str, task_id: str) -> str:
    return f"{workspace}.{task_id}"


def orchestration_key(workspace: str, orchestration_id: str) -> str:
    return f"{workspace}.{orchestration_id}"


def run_key(workspace: str, task_id: str, run_id: str) -> str:
    """A run's key in RUNS and CONTROL (and in an executor's list of running runs)."""
    return f"{workspace}.{task_id}.{run_id}"


def run_token(run_key: str) -> str:
    """What an executor's heartbeat says of a run it runs: a digest of the run's key, so the
    heartbeat (every user reads the executors bucket, for the pools served) names no
    workspace and no id; whoever knows the run computes the same token."""
    return hashlib.blake2b(run_key.encode(), digest_size=12).hexdigest()


def connection_key(workspace: str, name: str) -> str:
    return f"{workspace}.{name}"


def kv_stream(bucket: str) -> str:
    """The stream that holds a KV bucket (as nats-py and the server name it)."""
    return f"KV_{bucket}"


def object_stream(store: str) -> str:
    """The stream that holds an object store (only the migration of an old store reads one)."""
    return f"OBJ_{store}"


def kv_subject(bucket: str, key: str = ">") -> str:
    """The raw subject a KV put lands on: a core subscription sees every change for free."""
    return f"$KV.{bucket}.{key}"


# --- Environment variables -------------------------------------------------------------------
ENV_URL = "TASKBUS_URL"  # comma-separated server URLs
ENV_USER = "TASKBUS_USER"
ENV_PASSWORD = "TASKBUS_PASSWORD"
ENV_TOKEN = "TASKBUS_TOKEN"
ENV_CREDS = "TASKBUS_CREDS"  # path to a NATS .creds file
ENV_TLS_CA = "TASKBUS_TLS_CA"  # CA file that signed the servers' TLS certificates
ENV_WORKSPACE = "TASKBUS_WORKSPACE"
# The run role's signing key at an executor: with it each run gets its own credential.
ENV_RUN_SIGNING_KEY = "TASKBUS_RUN_SIGNING_KEY"
ENV_DATA_DIR = "TASKBUS_DATA_DIR"
ENV_REPLICAS = "TASKBUS_REPLICAS"  # 1 embedded, 3 in a cluster
ENV_RUN_RETENTION_DAYS = "TASKBUS_RUN_RETENTION_DAYS"  # finished runs' records kept this long
# Set by the executor for every task run (the in-task contract: what ``sdk.intask`` reads).
ENV_TASK_ID = "TASKBUS_TASK_ID"
ENV_WALLAROO_TASK_ID = "WALLAROO_TASK_ID"  # the same id, where the reference's code reads it
ENV_RUN_ID = "TASKBUS_RUN_ID"
ENV_ORCH_ID = "TASKBUS_ORCH_ID"
ENV_ORCH_SHA = "TASKBUS_ORCH_SHA"
ENV_ARGS_FILE = "TASKBUS_ARGS_FILE"
# The package index executors resolve and install requirements from (uv's --default-index);
# unset, uv's own configuration decides. Never the user's: requirements.txt may not name one.
ENV_INDEX_URL = "TASKBUS_INDEX_URL"
# The operator's base requirements file (the executor's --base-requirements): packages every
# task environment of that executor gets under the orchestration's own pins.
ENV_BASE_REQUIREMENTS = "TASKBUS_BASE_REQUIREMENTS"
# The executor's run UID pool, FIRST-LAST or "none" (its --run-uids).
ENV_RUN_UIDS = "TASKBUS_RUN_UIDS"
# The run's connections, decrypted by the executor into a 0600 file next to the args file: a
# run reads its workspace's connections there and never holds the encryption key.
ENV_CONNECTIONS_FILE = "TASKBUS_CONNECTIONS_FILE"
# The Fernet key that encrypts connection details: at whoever creates connections and at
# executors; the bus never holds it. Else the file SECRET_KEY_FILE in the authority directory.
ENV_SECRET_KEY = "TASKBUS_SECRET_KEY"

# A run's credential expires this long after its deadline (timeout + kill grace): the final
# status and the last log lines are written by the executor, not the run, so the margin only
# covers clock skew between the executor and the server.
RUN_CREDENTIAL_MARGIN_S = 30.0
# A run without a timeout gets a credential valid this long (it keeps running after, but the
# SDK inside it can no longer reach the bus; give such tasks a timeout, or a user credential).
RUN_CREDENTIAL_MAX_S = 7 * 24 * 3600.0
# A run-once task (or a "run now") of a user or operator is started by the scheduler: one that
# sees it this long after it was asked for (it was down meanwhile) records it skipped
# instead, as for a missed cron instant; the asker waits for its run this long.
RUN_ONCE_DEADLINE_S = 300.0
RUN_NOW_WAIT_S = 10.0
# Under the data directory: the authority `taskbus up` creates (keys, JWTs, creds/<role>.creds).
AUTH_DIR = "auth"
SECRET_KEY_FILE = "secret.key"  # in AUTH_DIR: the connections' Fernet key (0600)

DEFAULT_PORT = 4222
DEFAULT_URL = f"nats://127.0.0.1:{DEFAULT_PORT}"

# --- Numbers, with their reasons -------------------------------------------------------------
# Ack wait on the run queue: long enough that a loaded executor's in_progress() (sent every
# third of it) never misses, short enough that a dead executor's run is redelivered promptly.
RUNQ_ACK_WAIT_S = 30.0
# A message stays in a work queue after max_deliver; redeliveries of one run are bounded by
# the run record's attempt counter instead, so the consumer itself never gives up.
RUNQ_MAX_DELIVER = -1
# Retries (TaskRecord.retries): the n-th retry waits retry_delay_s * 2**(n-1), at most an hour
# (a longer wait is an outage, not a back-off). A waiting retry's request is naked for at most
# RETRY_RECHECK_S at a time, so a kill of its task is recorded within that.
RETRY_DELAY_MAX_S = 3600.0
RETRY_RECHECK_S = 5.0
MAX_RETRIES = 100
# Packaging resolves requirements and builds an environment: minutes, not seconds.
PKGQ_ACK_WAIT_S = 60.0
# Executors write a heartbeat every interval (at most a sixth of the ack wait). Three missed
# beats means lost: the console's rule of thumb for a record it still sees.
HEARTBEAT_INTERVAL_S = 2.0
EXECUTOR_TTL_S = 3 * HEARTBEAT_INTERVAL_S
# The ack waits an executor accepts. Its heartbeat record lives (a per-message TTL, in whole
# seconds: the server's granularity, 1 s at least) a little over half the ack wait and never
# longer than it: a dead executor's record is gone by the time the queue redelivers its run (an
# ack wait after its last in_progress, sent every third of it) or a heartbeat after, so the run
# is recorded lost within the ack wait + one heartbeat. Over half: the executor's own fence
# (half the ack wait) still comes before its lease (executor.heartbeat) runs out.
MIN_ACK_WAIT_S = 1.0
MAX_ACK_WAIT_S = 3600.0
# The executors bucket's own max age only backstops records written without a TTL: it must
# exceed every record's TTL, or it would cut a live executor's lease short.
EXECUTORS_MAX_AGE_S = MAX_ACK_WAIT_S


def executor_record_ttl_s(ack_wait_s: float) -> int:
    """The TTL of an executor's heartbeat record, for its ack wait."""
    return max(1, min(int(ack_wait_s), int(ack_wait_s // 2) + 1))


# --- Runs' isolation -------------------------------------------------------------------------
# UIDs for runs when the executor may switch (like systemd's DynamicUser, below its 61184+).
DEFAULT_RUN_UIDS = "61000-61183"
# Host-wide flocks that keep two executors on one host from handing out the same UID.
RUN_UID_LOCK_DIR = "/run/taskbus-uids"
RUN_UID_PROBE_TIMEOUT_S = 30.0  # the start-up probe imports the SDK as a run UID
# Processes (and threads) one run may have at once (its cgroup's pids.max; RLIMIT_NPROC of its
# UID without cgroups): far above what a task's worker pools use (a 64-core pool of processes
# with a few threads each), far below the host's pid_max (32768 by default), so a fork bomb
# stays inside its run and the host keeps pids for everyone else.
DEFAULT_MAX_RUN_PIDS = 1024
# Each UID-switched run gets empty /tmp, /var/tmp and /dev/shm of its own (tmpfs, gone with
# the run): files a run leaves there can't reach the next run that gets its UID. Their pages
# are charged to the run's memory cgroup; the size cap is tmpfs's own default (half the RAM),
# the same as the host's /dev/shm where a run's TMPDIR already lives.
RUN_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
RUN_TEMP_TMPFS_OPTIONS = "size=50%"
# Without private temp dirs, a released UID's files are removed from RUN_TEMP_DIRS: at most
# this many entries are looked at in each (a sweep must stay a millisecond-scale step).
RUN_TEMP_SWEEP_MAX_ENTRIES = 10_000
CGROUP_POLL_S = 0.01  # freezing and emptying a cgroup take milliseconds
CPU_PERIOD_US = 100_000  # CFS period; a cpu_limit of 1.5 is a quota of 150 ms per 100 ms
# A run's processes must all be gone this long after SIGKILL (kill grace + this, issue 10).
KILL_SETTLE_S = 2.0
# De-duplication window of the run queue: covers a scheduler restart and a catch-up burst.
RUNQ_DUPLICATE_WINDOW_S = 120.0
# A finished run's record expires this long after it finished (a per-message TTL set with its
# final status; pending and running records never expire). Without it the runs bucket, and
# every console start, grows with every fire for ever. Four times the logs' age: a record is
# small, and history outlives the log lines.
RUN_RETENTION_S = 30 * 24 * 3600.0
# When a record expires the server leaves a delete marker, itself kept this long: live watchers
# (console, scheduler) see the expiry as a deletion; a watch started later never sees the run.
RUNS_EXPIRY_MARKER_S = 3600.0
# Logs are kept a week or up to 1 GiB, whichever is hit first (limits retention).
LOGS_MAX_AGE_S = 7 * 24 * 3600.0
LOGS_MAX_BYTES = 1 << 30
# Free space a server's store needs beyond the logs' reservation: records, the run queue, zips.
STORE_HEADROOM_BYTES = 256 << 20
# Well under the server's 1 MiB max_payload, with headroom for msgpack framing.
LOG_BATCH_MAX_BYTES = 256 * 1024
# One log line longer than this is split in pieces (never dropped).
LOG_LINE_MAX_CHARS = 16 * 1024
# Zip limits: one upload is checked against these before it reaches the bus.
MAX_ZIP_UNCOMPRESSED_BYTES = 2 << 30
MAX_ZIP_ENTRIES = 100_000
# Compression ratio past which an entry (or the whole zip) is a bomb, not an orchestration:
# source, text and even sparse data files stay far below 100:1, while a deflate bomb reaches
# ~1000:1 (1 GiB of zeros in ~1 MB). Entries under the minimum size are exempt: a few KiB
# of repeated text legitimately compress that well and cost nothing to unpack.
MAX_ZIP_RATIO = 100
ZIP_RATIO_MIN_BYTES = 1 << 20
# A stored zip travels in chunks of this size, one message each: nats-py's own object store
# default, far under the server's 1 MiB max_payload, and small enough that a reader's window of
# chunks in flight (broker.zipstore) holds a couple of MiB, not a zip's worth.
ZIP_CHUNK_BYTES = 128 * 1024
# requirements.txt travels on the orchestration record (one KV message under the server's
# 1 MiB max_payload); a real one is a few KiB even with every hash pinned.
MAX_REQUIREMENTS_BYTES = 256 * 1024
# json_args travel whole in the task record and in every run request, each one message under
# the server's 1 MiB max_payload, with room left for the rest of the record. Bigger inputs
# belong in a connection, an object store or a file the task reads.
MAX_JSON_ARGS_BYTES = 512 * 1024
# Nesting deeper than this is refused: Python's json and msgspec recurse once per level (the
# interpreter stops near 1000), and no real argument is nested a hundred deep.
MAX_JSON_ARGS_DEPTH = 100
# Workspace and connection names end up in KV keys, subjects and credential tags: one token.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
# A connection's details (JSON) are held in every copy and in every run's connections file:
# database URLs and credentials, not data. 64 KiB is far above any and well under max_payload.
MAX_CONNECTION_DETAILS_BYTES = 64 * 1024
# Secret values shorter than this are not masked in log lines: a 1-3 character value ("1",
# "on") would garble every line and masks little; values this long and more are masked.
MIN_MASKED_CHARS = 4
MIN_MASKED_SUBSTRING_CHARS = 8  # in a task's shown arguments, inside a longer string
MASK = "****"

"""Who may do what on the bus: one subject-permission template per role (least privilege).

Each role is a scoped signing key of the TASKBUS account whose template is below; nats-server
applies the template to every user the key signs, filling ``{{tag(task)}}``-style holes from
the user's own tags, so a credential cannot carry more than its role allows — not even one the
executor minted for a run. Subjects come from ``broker.names``; the JetStream API subjects are
the ones nats-py sends (``$JS.API.DIRECT.GET.<stream>.<subject>`` for a KV get,
``$JS.API.CONSUMER.CREATE.<stream>`` for a watch, a publish on ``$KV.<bucket>.<key>`` for a
write or a delete).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from broker import names


class Role(StrEnum):
    ADMIN = "admin"  # `taskbus up` / `taskbus auth`: provisions, everything
    SCHEDULER = "scheduler"
    EXECUTOR = "executor"
    OPERATOR = "operator"  # the console
    USER = "user"  # SDK and CLI
    RUN = "run"  # one task run's user code, minted by the executor per run


# Roles a person asks `taskbus auth user` for; RUN credentials are only minted by executors.
ISSUABLE = (Role.USER, Role.OPERATOR, Role.EXECUTOR, Role.SCHEDULER, Role.ADMIN)

# Every user subscribes only under its own nkey: another user's replies (KV gets, acks, watch
# deliveries) are out of its reach. Clients connect with ``inbox_prefix=_INBOX.<nkey>``.
OWN_INBOX = "_INBOX.{{subject()}}.>"

API = "$JS.API"


# Filled by the server from the credential's ``workspace:<name>`` tags (``workspace:*``: every
# workspace, as the token ``*`` then matches any); a credential without one gets none of the
# subjects that name it (nats-server drops a template subject whose tag is missing).
WS = "{{tag(workspace)}}"


def read_bucket(bucket: str) -> list[str]:
    """Get any key, list and watch the bucket (publish permissions)."""
    return read_stream(names.kv_stream(bucket))


def read_stream(stream: str) -> list[str]:
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.>",
        f"{API}.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def read_subjects(stream: str, subjects: str) -> list[str]:
    """Read only the messages of ``stream`` on ``subjects``: direct gets by subject, and
    consumers whose filter is within them (a named consumer puts its filter in the API
    subject: ``broker.follow``). No stream info (its subject listing would name every key),
    no get by sequence and no unfiltered consumer (either would reach any subject)."""
    return [
        f"{API}.DIRECT.GET.{stream}.{subjects}",
        f"{API}.CONSUMER.CREATE.{stream}.*.{subjects}",
        f"$JS.FC.{stream}.>",
    ]


def read_keys(bucket: str, keys: str) -> list[str]:
    return read_subjects(names.kv_stream(bucket), names.kv_subject(bucket, keys))


def get_key(bucket: str, key: str) -> str:
    """A direct get of one key: the only way a run reads a record."""
    return f"{API}.DIRECT.GET.{names.kv_stream(bucket)}.{names.kv_subject(bucket, key)}"


def write_bucket(bucket: str, keys: str = ">") -> list[str]:
    return [names.kv_subject(bucket, keys)]


def consume_queue(stream: str) -> list[str]:
    """Take messages from a work queue's durable pull consumers and ack them."""
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.CONSUMER.INFO.{stream}.>",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]


def _permissions(role: Role) -> tuple[list[str], list[str]]:
    """(publish allow, subscribe allow) of a role."""
    n = names
    account_info = [f"{API}.INFO"]
    if role is Role.ADMIN:
        return [">"], [">"]
    if role is Role.RUN:
        task = f"{WS}.{{{{tag(task)}}}}"
        # Its own task, orchestration and run record; nothing else (a run may read its own
        # task, orchestration and arguments). Nothing on the connections bucket:
        # the executor decrypts its workspace's connections into a file for it.
        return [
            get_key(n.TASKS, task),
            get_key(n.ORCHESTRATIONS, f"{WS}.{{{{tag(orchestration)}}}}"),
            get_key(n.RUNS, f"{task}.{{{{tag(run)}}}}"),
            # Its own task's runs, listed (broker.store.scan puts the filter in the subject).
            f"{API}.CONSUMER.CREATE.{n.kv_stream(n.RUNS)}.*.{n.kv_subject(n.RUNS, task)}.*",
        ], [OWN_INBOX]
    reads_all = [
        *read_bucket(n.TASKS),
        *read_bucket(n.RUNS),
        *read_bucket(n.ORCHESTRATIONS),
        *read_bucket(n.CONTROL),
        *read_bucket(n.EXECUTORS),
    ]
    if role is Role.SCHEDULER:
        # Never the connections bucket (the scheduler must never read connection details).
        return [
            *account_info,
            f"{API}.STREAM.NAMES",
            *reads_all,
            *read_bucket(n.SCHEDULER),
            *write_bucket(n.RUNS),
            *write_bucket(n.SCHEDULER),
            *write_bucket(n.CONTROL),
            n.RUNQ_SUBJECTS,
        ], [OWN_INBOX]
    if role is Role.EXECUTOR:
        return [
            *account_info,
            f"{API}.STREAM.NAMES",
            *reads_all,
            *read_subjects(n.ZIPS_STREAM, n.ZIPS_SUBJECTS),
            *read_bucket(n.CONNECTIONS),  # decrypted for the runs it executes (a live watch)
            *write_bucket(n.RUNS),
            *write_bucket(n.ORCHESTRATIONS),  # packaging writes the orchestration's status
            *write_bucket(n.EXECUTORS),
            n.LOGS_SUBJECTS,
            n.RUNQ_SUBJECTS,  # a retry is a new request
            *consume_queue(n.RUNQ_STREAM),
            *consume_queue(n.PKGQ_STREAM),
        ], [OWN_INBOX, n.kv_subject(n.TASKS), n.kv_subject(n.CONTROL)]
    # OPERATOR and USER: in the workspaces they are granted (and only there), drive tasks and
    # read everything, logs and zips included; manage connections (details stay encrypted on
    # the bus). Executors' heartbeats are shared (which pools are served).
    return [
        *account_info,
        *read_bucket(n.EXECUTORS),
        *read_keys(n.WORKSPACES, WS),
        *read_keys(n.TASKS, f"{WS}.>"),
        *read_keys(n.ORCHESTRATIONS, f"{WS}.>"),
        *read_keys(n.RUNS, f"{WS}.>"),
        *read_keys(n.CONTROL, f"{WS}.>"),
        *read_keys(n.CONNECTIONS, f"{WS}.>"),
        *read_subjects(n.LOGS_STREAM, f"{n.LOGS_SUBJECTS[:-1]}{WS}.>"),
        *read_subjects(n.ZIPS_STREAM, f"{n.ZIPS_SUBJECTS[:-1]}{WS}.>"),
        # Its workspaces' records; with ``workspace:*``, any workspace (creating one) and the
        # id counter (one token, which only ``*`` matches).
        *write_bucket(n.WORKSPACES, WS),
        *write_bucket(n.TASKS, f"{WS}.*"),
        *write_bucket(n.ORCHESTRATIONS, f"{WS}.*"),
        *write_bucket(n.CONNECTIONS, f"{WS}.*"),
        # No run records and no run requests: the scheduler starts run-once and run-now runs
        # (broker.catalog.starts_runs), so a user cannot forge a run's status.
        *write_bucket(n.CONTROL, f"{WS}.*.*"),
        f"{n.ZIPS_SUBJECTS[:-1]}{WS}.>",  # uploads
        n.PKGQ_SUBJECT,
    ], [OWN_INBOX]


def template(role: Role) -> dict[str, Any]:
    """The scoped signing key's template (jwt's ``UserPermissionLimits``)."""
    pub, sub = _permissions(role)
    return {
        "pub": {"allow": pub},
        "sub": {"allow": sub},
        "subs": -1,
        "data": -1,
        "payload": -1,
    }


def describe(subject: str) -> str:
    """What a refused subject would have done, in a user's words (nats-py reports the subject
    lower-cased, so prefixes are compared without case)."""
    n = names
    low = subject.lower()

    def after(prefix: str) -> str | None:
        return subject[len(prefix) :] if low.startswith(prefix.lower()) else None

    for bucket, what in (
        (n.TASKS, "task"),
        (n.RUNS, "run"),
        (n.ORCHESTRATIONS, "orchestration"),
        (n.EXECUTORS, "executor heartbeat"),
        (n.CONTROL, "run control"),
        (n.SCHEDULER, "scheduler mark"),
        (n.WORKSPACES, "workspace"),
        (n.CONNECTIONS, "connection"),
    ):
        kv = names.kv_subject(bucket, "")
        if (key := after(kv)) is not None:
            return f"write the {what} record {key!r}"
        if (key := after(f"{API}.DIRECT.GET.{names.kv_stream(bucket)}.{kv}")) is not None:
            return f"read the {what} record {key!r}"
        if after(f"{API}.CONSUMER.CREATE.{names.kv_stream(bucket)}") is not None:
            return f"list or watch {what} records"
    for prefix in (f"{API}.STREAM.DELETE.", f"{API}.STREAM.PURGE."):
        if (stream := after(prefix)) is not None:
            return f"delete or purge the stream {stream!r}"
    for prefix, action in (
        (f"{API}.CONSUMER.MSG.NEXT.", "take messages from a work queue"),
        (f"{API}.CONSUMER.CREATE.{n.LOGS_STREAM}", "read log lines"),
        (f"{API}.DIRECT.GET.{n.LOGS_STREAM}", "read log lines"),
        (n.LOGS_SUBJECTS[:-1], "publish log lines"),
        (n.RUNQ_SUBJECTS[:-1], "publish run requests"),
        ("_INBOX.", "subscribe to another client's replies"),
    ):
        if after(prefix) is not None:
            return action
    if (call := after(f"{API}.")) is not None:
        return f"call the JetStream API {call!r}"
    return f"use the subject {subject!r}"

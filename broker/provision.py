"""Idempotent provisioning of every JetStream resource (streams and buckets named in
``broker.names``), and binding to them.

Only the admin provisions (``taskbus up``/``server``/``provision``, or any client of a server
without authentication): creating a resource that exists with the same configuration is a
no-op on the server, one that exists with an older configuration is updated in place, so a
newer release can change limits without a migration step. Every other role ``bind``s: handles
made locally, without an API call its permissions would refuse.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, NotFoundError
from nats.js.kv import KeyValue

from broker import migration, names, workspaces, zipstore
from broker.errors import ServerError
from broker.limits import describe_bytes

# nats-server's error code when a stream's reservation (max_bytes) exceeds what its store has.
_INSUFFICIENT_STORAGE = 10047


async def _ensure_stream(js: JetStreamContext, config: js_api.StreamConfig) -> None:
    """Create the stream, or bring an existing one's limits up to date.

    Replicas never go down: a client provisioning with the default of 1 must not shrink a
    cluster's R3 stream.
    """
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    current = info.config
    limits = {
        "subjects": config.subjects,
        "max_age": config.max_age,
        "max_bytes": config.max_bytes,
        "max_msgs_per_subject": config.max_msgs_per_subject,
        "duplicate_window": config.duplicate_window or None,
        "allow_msg_ttl": config.allow_msg_ttl,  # can be switched on, never off
        "subject_delete_marker_ttl": config.subject_delete_marker_ttl,
    }
    wanted = current.evolve(
        **{key: value for key, value in limits.items() if value is not None},
        num_replicas=max(current.num_replicas or 1, config.num_replicas or 1),
    )
    if wanted != current:
        await js.update_stream(wanted)


async def _ensure_kv(js: JetStreamContext, config: js_api.KeyValueConfig) -> Any:
    stream = names.kv_stream(config.bucket)
    try:
        await js.stream_info(stream)
    except NotFoundError:
        return await js.create_key_value(config)
    await _ensure_stream(
        js,
        js_api.StreamConfig(
            name=stream,
            subjects=[names.kv_subject(config.bucket)],
            max_age=config.ttl,
            max_bytes=config.max_bytes,
            max_msgs_per_subject=config.history,
            num_replicas=config.replicas,
            allow_msg_ttl=True,  # as nats-py creates a bucket; stores made before may lack it
            subject_delete_marker_ttl=config.limit_marker_ttl,
        ),
    )
    return await js.key_value(config.bucket)


def _kv(bucket: str, replicas: int, **params: Any) -> js_api.KeyValueConfig:
    return js_api.KeyValueConfig(
        bucket=bucket,
        history=1,
        storage=js_api.StorageType.FILE,
        replicas=replicas,
        direct=True,  # faster gets; any replica can answer
        **params,
    )


_BUCKETS = {
    "orchestrations": names.ORCHESTRATIONS,
    "tasks": names.TASKS,
    "runs": names.RUNS,
    "executors": names.EXECUTORS,
    "scheduler": names.SCHEDULER,
    "control": names.CONTROL,
    "workspaces": names.WORKSPACES,
    "connections": names.CONNECTIONS,
}


def bind(js: JetStreamContext) -> dict[str, Any]:
    """The handles ``provision`` returns, for resources that exist already (no API call)."""
    handles: dict[str, Any] = {
        attr: KeyValue(
            name=bucket,
            stream=names.kv_stream(bucket),
            pre=names.kv_subject(bucket, ""),
            js=js,
            direct=True,
        )
        for attr, bucket in _BUCKETS.items()
    }
    return handles


async def provision(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    run_retention_s: float = names.RUN_RETENTION_S,
) -> dict[str, Any]:
    """Create or update every stream and bucket, and migrate a store made before today's
    layout (``broker.migration``); return the KV handles. A store too small for the streams'
    reservations is a ``ServerError`` saying how much."""
    try:
        return await _provision(js, replicas=replicas, run_retention_s=run_retention_s)
    except APIError as exc:
        if exc.err_code != _INSUFFICIENT_STORAGE:
            raise
        raise ServerError(
            f"the server's store is too small for Taskbus: its log stream reserves "
            f"{describe_bytes(names.LOGS_MAX_BYTES)} (nats-server: {exc.description}). Give "
            f"the server's data directory at least "
            f"{describe_bytes(names.LOGS_MAX_BYTES + names.STORE_HEADROOM_BYTES)} of free "
            f"space, or raise its max_file_store"
        ) from None


async def _provision(
    js: JetStreamContext, *, replicas: int, run_retention_s: float
) -> dict[str, Any]:
    file = js_api.StorageType.FILE
    streams = [
        js_api.StreamConfig(
            name=names.RUNQ_STREAM,
            subjects=[names.RUNQ_SUBJECTS],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            storage=file,
            num_replicas=replicas,
            duplicate_window=names.RUNQ_DUPLICATE_WINDOW_S,
        ),
        js_api.StreamConfig(
            name=names.PKGQ_STREAM,
            subjects=[names.PKGQ_SUBJECT],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            storage=file,
            num_replicas=replicas,
            duplicate_window=names.RUNQ_DUPLICATE_WINDOW_S,
        ),
        js_api.StreamConfig(
            name=names.LOGS_STREAM,
            subjects=[names.LOGS_SUBJECTS],
            retention=js_api.RetentionPolicy.LIMITS,
            discard=js_api.DiscardPolicy.OLD,
            storage=file,
            num_replicas=replicas,
            max_age=names.LOGS_MAX_AGE_S,
            max_bytes=names.LOGS_MAX_BYTES,
            allow_direct=True,
        ),
        zipstore.stream_config(replicas),
    ]
    buckets = {
        "orchestrations": _kv(names.ORCHESTRATIONS, replicas),
        "tasks": _kv(names.TASKS, replicas),
        "runs": _kv(names.RUNS, replicas, limit_marker_ttl=names.RUNS_EXPIRY_MARKER_S),
        "executors": _kv(names.EXECUTORS, replicas, ttl=names.EXECUTORS_MAX_AGE_S),
        "scheduler": _kv(names.SCHEDULER, replicas),
        "control": _kv(names.CONTROL, replicas, ttl=3600.0),
        "workspaces": _kv(names.WORKSPACES, replicas),
        "connections": _kv(names.CONNECTIONS, replicas),
    }
    try:
        await js.stream_info(names.kv_stream(names.WORKSPACES))
        new_workspaces = False
    except NotFoundError:
        new_workspaces = True
    await asyncio.gather(*(_ensure_stream(js, config) for config in streams))
    handles: dict[str, Any] = dict(
        zip(
            buckets,
            await asyncio.gather(*(_ensure_kv(js, config) for config in buckets.values())),
            strict=True,
        )
    )
    if new_workspaces:  # a store made before workspaces: its labels become workspaces
        await workspaces.migrate(handles["workspaces"], handles["orchestrations"], handles["tasks"])
    else:
        await workspaces.ensure_default(handles["workspaces"])
    await migration.migrate(js, handles, run_retention_s=run_retention_s)
    return handles

"""Idempotent provisioning of every JetStream resource in DESIGN.md.

Every component calls ``provision`` when it connects: creating a resource that exists with the
same configuration is a no-op on the server, one that exists with an older configuration is
updated in place, so a newer release can change limits without a migration step.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError

from broker import names

# "stream name already in use with a different configuration"
_STREAM_NAME_IN_USE = 10058


async def _ensure_stream(js: JetStreamContext, config: js_api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        await js.update_stream(config)


async def _ensure_kv(js: JetStreamContext, config: js_api.KeyValueConfig) -> Any:
    try:
        return await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        # Same bucket, other limits: bring the stream's limits up to date, then bind.
        info = await js.stream_info(f"KV_{config.bucket}")
        updated = info.config.evolve(
            max_age=config.ttl, max_msgs_per_subject=config.history, num_replicas=config.replicas
        )
        await js.update_stream(updated)
        return await js.key_value(config.bucket)


def _kv(bucket: str, replicas: int, **params: Any) -> js_api.KeyValueConfig:
    return js_api.KeyValueConfig(
        bucket=bucket,
        history=1,
        storage=js_api.StorageType.FILE,
        replicas=replicas,
        direct=True,  # faster gets; any replica can answer (NATS-NOTES)
        **params,
    )


async def provision(js: JetStreamContext, *, replicas: int = 1) -> dict[str, Any]:
    """Create or update every stream, bucket and object store; return the KV/object handles."""
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
    ]
    buckets = {
        "orchestrations": _kv(names.ORCHESTRATIONS, replicas),
        "tasks": _kv(names.TASKS, replicas),
        "runs": _kv(names.RUNS, replicas),
        "executors": _kv(names.EXECUTORS, replicas, ttl=names.EXECUTOR_TTL_S),
        "scheduler": _kv(names.SCHEDULER, replicas),
        "control": _kv(names.CONTROL, replicas, ttl=3600.0),
    }
    await asyncio.gather(*(_ensure_stream(js, config) for config in streams))
    handles: dict[str, Any] = dict(
        zip(
            buckets,
            await asyncio.gather(*(_ensure_kv(js, config) for config in buckets.values())),
            strict=True,
        )
    )
    handles["artifacts"] = await js.create_object_store(
        names.ARTIFACTS,
        config=js_api.ObjectStoreConfig(storage=file, replicas=replicas),
    )
    return handles

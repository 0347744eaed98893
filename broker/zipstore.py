"""Orchestration zips on the bus, each in the workspace it was uploaded to.

One stream (``names.ZIPS_STREAM``) holds every workspace's zips, with the workspace as a
subject token: ``taskbus.zips.<workspace>.<sha256>.c.<i>`` for chunk i, and the manifest
``….m`` (a ``ZipManifest``) written after every chunk is acknowledged, so a manifest means a
complete zip. A user's server permissions name only its own workspaces' subjects, for
publishes and for last-by-subject direct gets; the store needs nothing else (no consumer, no
purge, no stream info). Identical uploads to one workspace share one copy; the same zip in two
workspaces is two copies, deleted independently.

The stream keeps one message per subject, so a re-upload or a delete (an empty message, that
expires) replaces what was there and the space is reclaimed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncGenerator, Iterable
from typing import BinaryIO

import anyio
import msgspec
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from broker import names
from broker.errors import InvalidArgument, ZipUnavailable
from broker.models import ZipManifest, decode, encode, utcnow
from broker.publisher import PubAck, Publisher

log = logging.getLogger(__name__)

# Acknowledgements awaited at once while writing a zip's chunks: enough to keep the pipeline
# full (a JetStream ack takes ~0.2 ms on loopback), few enough that at most 16 chunks (2 MiB)
# are copied out of the caller's buffer at a time.
PUBLISH_WINDOW = 16
# Direct gets in flight while reading a zip: the same reasoning, on the reader's side.
READ_WINDOW = 16

_WORKSPACE = re.compile(names.NAME_PATTERN)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MANIFEST = "m"


class ZipMissing(ZipUnavailable):
    """No zip with that sha256 is stored in the workspace (never uploaded, or deleted)."""


class ZipCorrupt(ZipUnavailable):
    """The stored zip is incomplete or its bytes are not those of its sha256."""


def stream_config(replicas: int) -> js_api.StreamConfig:
    """The zips' stream, for provisioning."""
    return js_api.StreamConfig(
        name=names.ZIPS_STREAM,
        subjects=[names.ZIPS_SUBJECTS],
        retention=js_api.RetentionPolicy.LIMITS,
        discard=js_api.DiscardPolicy.OLD,
        storage=js_api.StorageType.FILE,
        num_replicas=replicas,
        max_msgs_per_subject=1,  # a re-upload or a delete replaces the old message
        allow_direct=True,  # reads are direct gets: no consumer, any replica answers
        allow_msg_ttl=True,  # deletions' tombstones expire
    )


def _chunk(index: int) -> str:
    return f"c.{index}"


def _checked(workspace: object, sha: object) -> None:
    """The workspace and sha, refused before they can reach a subject (no ``.``, ``*``,
    ``>`` or whitespace can pass either pattern)."""
    if not isinstance(workspace, str) or not _WORKSPACE.fullmatch(workspace):
        raise InvalidArgument(
            f"Workspace name {str(workspace)[:80]!r} cannot name stored zips: use 1-64 "
            f"letters, digits, '_' or '-', starting with a letter or digit."
        )
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise InvalidArgument(
            f"{str(sha)[:80]!r} is not a zip's sha256: give its 64 lowercase hex digits."
        )


def _acked(ack: PubAck) -> None:
    if ack.error is not None:
        raise ack.error.exception()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ZipStore:
    """Put, read and delete orchestration zips by workspace and sha256."""

    def __init__(self, js: JetStreamContext, publisher: Publisher) -> None:
        self._js = js
        self._publisher = publisher

    async def put(self, workspace: str, sha: str, data: bytes) -> None:
        """Store ``data`` (whose sha256 is ``sha``) in ``workspace``; nothing to do if it is
        there already. A sha that is not the data's raises ``InvalidArgument`` before any
        publish; a refused or unanswered publish raises nats-py's error, with no manifest
        written (a retry writes the zip again)."""
        _checked(workspace, sha)
        manifest = await self._manifest_or_none(workspace, sha)
        if manifest is not None and manifest.size == len(data):
            log.debug("zip %s already stored in %s", sha[:12], workspace)
            return
        digest = await anyio.to_thread.run_sync(_sha256, data)  # hashlib frees the GIL
        if digest != sha:
            raise InvalidArgument(
                f"The zip's sha256 is {digest}, not {sha}: pass the sha of the bytes stored."
            )
        step = names.ZIP_CHUNK_BYTES
        chunks = -(-len(data) // step)
        await self._publish_all(
            workspace, sha, ((_chunk(i), data[i * step : (i + 1) * step]) for i in range(chunks))
        )
        manifest = ZipManifest(
            size=len(data), chunks=chunks, chunk_bytes=step, uploaded_at=utcnow()
        )
        await self._publisher.publish(
            self._subject(workspace, sha, _MANIFEST), encode(manifest), {}
        )
        log.info(
            "stored zip %s in %s: %d bytes in %d chunks", sha[:12], workspace, len(data), chunks
        )

    async def exists(self, workspace: str, sha: str) -> bool:
        """Whether ``workspace`` holds a complete zip with this sha256 (its manifest)."""
        _checked(workspace, sha)
        return await self._manifest_or_none(workspace, sha) is not None

    async def read_into(self, workspace: str, sha: str, handle: BinaryIO) -> int:
        """Write the zip to ``handle`` in order and return its size. ``ZipMissing`` if it is
        not stored; ``ZipCorrupt`` if a chunk is missing or short or the bytes' sha256 is not
        ``sha`` (``handle`` then holds a partial zip: write to a temporary file)."""
        _checked(workspace, sha)
        manifest = await self._manifest(workspace, sha)
        if manifest is None:
            raise ZipMissing(
                f"No zip {sha[:12]} is stored in workspace {workspace!r} (it was deleted, or "
                f"never stored): upload the orchestration again."
            )
        digest = hashlib.sha256()
        written = 0
        async with contextlib.aclosing(self._chunks(workspace, sha, manifest)) as chunks:
            async for index, data in chunks:
                expected = min(manifest.chunk_bytes, manifest.size - written)
                if data is None or len(data) != expected:
                    found = "missing" if data is None else f"{len(data)} bytes, not {expected}"
                    raise self._corrupt(workspace, sha, f"chunk {index} is {found}")
                digest.update(data)
                handle.write(data)
                written += len(data)
        if digest.hexdigest() != sha:
            raise self._corrupt(workspace, sha, f"its bytes' sha256 is {digest.hexdigest()}")
        return written

    async def delete(self, workspace: str, sha: str) -> None:
        """Remove the zip from ``workspace`` (manifest first, so a reader meanwhile finds it
        missing, not corrupt); a zip that is not there is no error."""
        _checked(workspace, sha)
        try:
            manifest = await self._manifest(workspace, sha)
        except ZipCorrupt:  # its chunk count is unknown: remove what says it is complete
            manifest = ZipManifest(size=0, chunks=0, chunk_bytes=1, uploaded_at=utcnow())
        if manifest is None:
            return
        tombstone = b""
        parts = [_MANIFEST, *(_chunk(i) for i in range(manifest.chunks))]
        await self._publish_all(workspace, sha, ((part, tombstone) for part in parts), expire=True)
        log.info("deleted zip %s from %s", sha[:12], workspace)

    # --- Inside ----------------------------------------------------------------------------
    def _subject(self, workspace: str, sha: str, part: str) -> str:
        return names.zip_subject(workspace, sha, part)

    async def _publish_all(
        self,
        workspace: str,
        sha: str,
        parts: Iterable[tuple[str, bytes]],
        *,
        expire: bool = False,
    ) -> None:
        """Publish every part in order with at most ``PUBLISH_WINDOW`` acks awaited at once;
        the first refused or unanswered one raises."""
        headers = {names.TTL: f"{names.ZIP_TOMBSTONE_TTL_S}s"} if expire else {}
        window: collections.deque[asyncio.Future[PubAck]] = collections.deque()
        try:
            for part, payload in parts:
                if len(window) >= PUBLISH_WINDOW:
                    _acked(await window.popleft())
                subject = self._subject(workspace, sha, part)
                window.append(await self._publisher.send(subject, payload, dict(headers)))
            while window:
                _acked(await window.popleft())
        finally:
            for future in window:
                future.cancel()

    async def _get(self, subject: str) -> bytes | None:
        """The last message on ``subject`` by direct get; ``None`` if there is none or it is
        a tombstone (empty)."""
        try:
            msg = await self._js.get_msg(names.ZIPS_STREAM, subject=subject, direct=True)
        except NotFoundError:
            return None
        return msg.data or None

    async def _manifest(self, workspace: str, sha: str) -> ZipManifest | None:
        """The zip's manifest; ``None`` if there is none; ``ZipCorrupt`` if it is unreadable or
        does not add up."""
        data = await self._get(self._subject(workspace, sha, _MANIFEST))
        if data is None:
            return None
        try:
            manifest = decode(ZipManifest, data)
        except msgspec.DecodeError as exc:
            raise self._corrupt(workspace, sha, f"its manifest is unreadable ({exc})") from None
        step = manifest.chunk_bytes
        if manifest.size < 0 or step <= 0 or manifest.chunks != -(-manifest.size // step):
            raise self._corrupt(workspace, sha, "its manifest does not add up")
        return manifest

    async def _manifest_or_none(self, workspace: str, sha: str) -> ZipManifest | None:
        try:
            return await self._manifest(workspace, sha)
        except ZipCorrupt:
            return None  # as good as absent: a put writes it all again

    async def _chunks(
        self, workspace: str, sha: str, manifest: ZipManifest
    ) -> AsyncGenerator[tuple[int, bytes | None], None]:
        """Every chunk in order (``None`` for a missing one), with up to ``READ_WINDOW``
        direct gets in flight."""
        pending: collections.deque[asyncio.Future[bytes | None]] = collections.deque()
        requested = 0
        try:
            for index in range(manifest.chunks):
                while requested < manifest.chunks and len(pending) < READ_WINDOW:
                    subject = self._subject(workspace, sha, _chunk(requested))
                    pending.append(asyncio.ensure_future(self._get(subject)))
                    requested += 1
                yield index, await pending.popleft()
        finally:
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _corrupt(self, workspace: str, sha: str, why: str) -> ZipCorrupt:
        return ZipCorrupt(
            f"The zip {sha[:12]} stored in workspace {workspace!r} is corrupt ({why}): upload "
            f"the orchestration again."
        )

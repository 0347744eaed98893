"""How to reach the bus: one typed object, built from the environment or the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from broker import names
from broker.errors import InvalidArgument

if TYPE_CHECKING:
    import argparse


NATS_SCHEMES = ("nats", "tls", "ws", "wss")  # what nats-py connects to


def split_urls(value: str) -> list[str]:
    """ "a,b , c" -> ["a", "b", "c"]; a bare host:port gets the nats:// scheme; a URL of
    another scheme (http://…) is refused with ``InvalidArgument`` saying what to write."""
    urls = []
    for part in value.split(","):
        url = part.strip()
        if not url:
            continue
        if "://" not in url:
            url = f"nats://{url}"
        scheme = url.partition("://")[0].lower()
        if scheme not in NATS_SCHEMES:
            raise InvalidArgument(
                f"{url!r}: {scheme}:// is not a NATS URL: use nats://{_host(url)}:"
                f"{names.DEFAULT_PORT} (nats://, tls://, ws:// or wss://; the server's client "
                f"port, not its HTTP monitoring port)"
            )
        urls.append(url)
    return urls


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or "host"
    except ValueError:
        return "host"


@dataclass(frozen=True, kw_only=True)
class ConnectSettings:
    urls: list[str] = field(default_factory=lambda: [names.DEFAULT_URL])
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    tls_ca_file: str | None = None  # verify the servers' certificates against this CA
    name: str = "taskbus"  # the connection name the server shows
    replicas: int = 1  # for resources this process provisions: 1 embedded, 3 in a cluster
    connect_timeout_s: float = 2.0
    # How long to wait for JetStream to answer after connecting: a cluster that is still
    # electing its meta leader times out for a few seconds (~5 s seen on loopback).
    jetstream_wait_s: float = 30.0
    # Client pings find a silently dropped connection: nats-py's default (120 s, 2 missed)
    # takes minutes; daemons that fence on connectivity use a few seconds.
    ping_interval_s: float | None = None
    # How long a finished run's record is kept (its writer sets it as the record's TTL).
    run_retention_s: float = names.RUN_RETENTION_S

    @classmethod
    def from_env(
        cls, url: str | None = None, *, local_role: str = "user", **overrides: object
    ) -> ConnectSettings:
        """``url`` (comma-separated) wins over ``TASKBUS_URL``, which wins over the default.

        With no credential given and only loopback servers, the ``local_role`` credential that
        `taskbus up` left in the data directory is used (as Jupyter finds its token)."""
        env = os.environ
        raw_url = url or env.get(names.ENV_URL) or names.DEFAULT_URL
        values: dict[str, object] = {
            "urls": split_urls(raw_url) or [names.DEFAULT_URL],
            "user": env.get(names.ENV_USER) or None,
            "password": env.get(names.ENV_PASSWORD) or None,
            "token": env.get(names.ENV_TOKEN) or None,
            "creds_file": env.get(names.ENV_CREDS) or None,
            "tls_ca_file": env.get(names.ENV_TLS_CA) or None,
            "replicas": int(env.get(names.ENV_REPLICAS, "1")),
            "run_retention_s": _retention_s(env.get(names.ENV_RUN_RETENTION_DAYS)),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        if not any(values.get(k) for k in ("user", "password", "token", "creds_file")):
            values["creds_file"] = local_credentials(values["urls"], local_role)  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, *, local_role: str = "user", **overrides: object
    ) -> ConnectSettings:
        """The options ``broker.options.add_connection_options`` added (``--url --user
        --password --token --creds``); the environment fills what was not given, as in
        ``from_env``. Raises ``ValueError`` for a bad ``TASKBUS_*`` variable."""
        return cls.from_env(
            getattr(args, "url", None),
            user=getattr(args, "user", None),
            password=getattr(args, "password", None),
            token=getattr(args, "token", None),
            creds_file=getattr(args, "creds", None),
            tls_ca_file=getattr(args, "tls_ca", None),
            local_role=local_role,
            **overrides,
        )

    def environment(self) -> dict[str, str]:
        """The URL and credentials as the environment variables ``from_env`` reads: how a
        process hands its connection to a daemon it starts."""
        env = {names.ENV_URL: ",".join(self.urls)}
        for key, value in (
            (names.ENV_USER, self.user),
            (names.ENV_PASSWORD, self.password),
            (names.ENV_TOKEN, self.token),
            (names.ENV_CREDS, self.creds_file),
            (names.ENV_TLS_CA, self.tls_ca_file),
        ):
            if value:
                env[key] = value
        return env


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def local_credentials(urls: list[str], role: str) -> str | None:
    """``<data dir>/auth/creds/<role>.creds`` when every URL is on this machine and it exists."""
    if not urls or not all(_loopback(url) for url in urls):
        return None
    path = default_data_dir() / names.AUTH_DIR / "creds" / f"{role}.creds"
    return str(path) if path.is_file() else None


def _retention_s(days: str | None) -> float:
    if not days:
        return names.RUN_RETENTION_S
    try:
        value = float(days) * 86400
    except ValueError:
        value = 0.0
    if not value >= 1:  # also NaN; the server's TTL granularity is a second
        raise ValueError(
            f"{names.ENV_RUN_RETENTION_DAYS}={days!r} is not a number of days (at least a "
            f"second, e.g. 30 or 0.5); unset it to keep finished runs 30 days"
        )
    return value


def default_data_dir() -> Path:
    """Per-user data directory: ``TASKBUS_DATA_DIR``, else ``$XDG_DATA_HOME/taskbus``."""
    explicit = os.environ.get(names.ENV_DATA_DIR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "taskbus"

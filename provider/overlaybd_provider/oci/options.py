"""Transport, TLS and auth options of the registry client, as one frozen bundle.

Secrets (``password``, ``refresh_token``) are excluded from ``repr`` and never logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from oras.defaults import default_chunksize

DEFAULT_CHUNK_SIZE: int = default_chunksize  # 16 MiB
PASSWORD_ENV = "OVERLAYBD_PASSWORD"  # read for ``-u USER`` without ``:PASSWORD``


@dataclass(frozen=True)
class RegistryOptions:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: speak plain HTTP to every registry (as ``--plain-http``); hosts.toml may also set it per host.
    plain_http: bool = False
    #: skip TLS certificate verification (``-k/--insecure/--skip-verify``).
    skip_verify: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: containerd/docker ``certs.d`` layout: ``DIR/HOST[:PORT]/{ca.crt,*.crt,client.cert,client.key}``.
    cert_dir: Path | None = None
    #: containerd ``hosts.toml`` layout: ``DIR/HOST[:PORT]/hosts.toml`` (``_default`` as fallback).
    hosts_dir: Path | None = None
    #: docker ``config.json`` (``auths``, ``credHelpers``, ``credsStore``); ``None`` = ``$DOCKER_CONFIG``
    #: or ``~/.docker/config.json`` when present.
    docker_config: Path | None = None
    #: OAuth2 refresh token exchanged at the token server (``grant_type=refresh_token``).
    refresh_token: str | None = field(default=None, repr=False)
    #: log every request/response line and headers (secrets redacted).
    http_dump: bool = False
    #: log per-connection timings (DNS, connect, TLS, first byte).
    http_trace: bool = False
    max_retries: int = 5
    #: total seconds that retries of one request may take before giving up.
    retry_budget: float = 120.0
    #: first back-off delay in seconds (doubled per attempt, full jitter, capped at ``retry_max_delay``).
    retry_backoff: float = 0.5
    retry_max_delay: float = 20.0
    #: seconds for connect and for each read; every request has one.
    timeout: float = 60.0
    #: simultaneous requests per registry host.
    concurrency: int = 4
    #: chunk size of PATCH uploads; blobs up to this size go in one PUT.
    chunk_size: int = DEFAULT_CHUNK_SIZE
    user_agent: str = "overlaybd-provider"

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file", "cert_dir", "hosts_dir", "docker_config"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.max_retries < 0 or self.concurrency < 1 or self.chunk_size < 1 or self.timeout <= 0:
            raise ValueError("max_retries >= 0, concurrency >= 1, chunk_size >= 1 and timeout > 0 are required")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("--tlscert and --tlskey go together")

    @property
    def insecure(self) -> bool:
        """Alias of :attr:`skip_verify` (the name ``-k/--insecure`` uses)."""
        return self.skip_verify

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.repr:
                value = "***" if value else None
            shown.append(f"{f.name}={value!r}")
        return f"RegistryOptions({', '.join(shown)})"


def options_from_args(args: Any) -> RegistryOptions:
    """RegistryOptions from parsed ``cli.registry_args`` flags (an ``argparse.Namespace`` or any
    object with those attributes; missing attributes take the defaults)."""
    username = password = None
    user = getattr(args, "user", None)
    if user:
        username, sep, password = user.partition(":")
        if not sep:
            password = os.environ.get(PASSWORD_ENV) or None
    return RegistryOptions(
        username=username or None,
        password=password,
        plain_http=bool(getattr(args, "plain_http", False)),
        skip_verify=bool(getattr(args, "skip_verify", False)),
        ca_file=getattr(args, "tlscacert", None),
        cert_file=getattr(args, "tlscert", None),
        key_file=getattr(args, "tlskey", None),
        cert_dir=getattr(args, "cert_dir", None),
        hosts_dir=getattr(args, "hosts_dir", None),
        docker_config=getattr(args, "docker_config", None),
        refresh_token=getattr(args, "refresh", None),
        http_dump=bool(getattr(args, "http_dump", False)),
        http_trace=bool(getattr(args, "http_trace", False)),
        max_retries=int(getattr(args, "max_retries", 5)),
        timeout=float(getattr(args, "timeout", 60.0)),
    )

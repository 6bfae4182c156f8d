"""OCI registry connection → :class:`~overlaybd_provider.oci.options.RegistryOptions` / image store.

The hook owns the connection; operators only hand it a reference. Nothing touches the network or
the metadata DB in ``__init__``: the connection is read the first time ``registry_options`` is used.
Secrets (password, client key) are never logged; PEM text given inline is written to a private
temporary file because the TLS stack wants paths.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

log = logging.getLogger(__name__)

_PEM_MARK = "-----BEGIN"
_TRUE = {"1", "true", "yes", "on"}


def _as_bool(value: Any, *, field: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise AirflowException(f"oci_registry connection: extra {field!r} must be a boolean, got {value!r}")


class OciRegistryHook(BaseHook):
    """Registry credentials and transport flags from an ``oci_registry`` connection.

    Connection fields: host = registry (``host[:port]``), login / password; extras ``plain_http``,
    ``insecure``, ``ca_cert``, ``client_cert``, ``client_key`` (each a path or PEM text),
    ``docker_config`` (path to a docker ``config.json`` used when login is empty), ``max_retries``
    and ``timeout`` (per registry request).
    """

    conn_name_attr = "oci_registry_conn_id"
    default_conn_name = "oci_registry_default"
    conn_type = "oci_registry"
    hook_name = "OCI Registry (overlaybd)"

    def __init__(self, oci_registry_conn_id: str | None = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.oci_registry_conn_id = oci_registry_conn_id
        self._pem_dir: str | None = None

    # -- connection ---------------------------------------------------------------------------
    @cached_property
    def connection(self):
        if not self.oci_registry_conn_id:
            return None
        return self.get_connection(self.oci_registry_conn_id)

    @property
    def registry(self) -> str | None:
        """``host[:port]`` of the registry this connection is for (None: any / anonymous)."""
        conn = self.connection
        if conn is None or not conn.host:
            return None
        host = conn.host.split("://", 1)[-1].rstrip("/")
        return f"{host}:{conn.port}" if conn.port and ":" not in host else host

    def _extras(self) -> dict[str, Any]:
        conn = self.connection
        return dict(conn.extra_dejson) if conn is not None else {}

    def _pem_or_path(self, value: str | None, name: str) -> str | None:
        """Return a file path for ``value``, writing inline PEM text to a 0600 temporary file."""
        if not value:
            return None
        value = str(value)
        if _PEM_MARK not in value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise AirflowException(
                    f"oci_registry connection {self.oci_registry_conn_id!r}: {name} file {str(path)!r} not found"
                )
            return str(path)
        if self._pem_dir is None:
            self._pem_dir = tempfile.mkdtemp(prefix="overlaybd-tls-")
            atexit.register(shutil.rmtree, self._pem_dir, True)
        path = os.path.join(self._pem_dir, f"{name}.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(value if value.endswith("\n") else value + "\n")
        return path

    def option_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``RegistryOptions`` (secrets included: never log the result)."""
        extras = self._extras()
        conn = self.connection
        cert = self._pem_or_path(extras.get("client_cert"), "client_cert")
        key = self._pem_or_path(extras.get("client_key"), "client_key")
        if (cert is None) != (key is None):
            raise AirflowException(
                f"oci_registry connection {self.oci_registry_conn_id!r}: client_cert and client_key go together"
            )
        docker_config = extras.get("docker_config")
        tuning: dict[str, Any] = {}
        for name, kind in (("max_retries", int), ("timeout", float)):
            if extras.get(name) not in (None, ""):
                try:
                    tuning[name] = kind(extras[name])
                except (TypeError, ValueError):
                    raise AirflowException(
                        f"oci_registry connection {self.oci_registry_conn_id!r}: extra {name!r} must be a number"
                    ) from None
        return {
            **tuning,
            "username": (conn.login or None) if conn is not None else None,
            "password": (conn.password or None) if conn is not None else None,
            "plain_http": _as_bool(extras.get("plain_http"), field="plain_http"),
            "skip_verify": _as_bool(extras.get("insecure"), field="insecure"),
            "ca_file": self._pem_or_path(extras.get("ca_cert"), "ca_cert"),
            "cert_file": cert,
            "key_file": key,
            "docker_config": str(Path(docker_config).expanduser()) if docker_config else None,
        }

    def describe(self) -> str:
        """A log-safe one-line description (no secrets)."""
        extras = self._extras()
        flags = [k for k in ("plain_http", "insecure") if _as_bool(extras.get(k), field=k)]
        flags += [k for k in ("ca_cert", "client_cert", "docker_config") if extras.get(k)]
        user = self.connection.login if self.connection is not None and self.connection.login else "anonymous"
        return f"registry={self.registry or '*'} user={user} flags={','.join(flags) or '-'}"

    @cached_property
    def registry_options(self):
        """The oci layer's ``RegistryOptions`` for this connection (built once)."""
        from overlaybd_provider.oci.options import RegistryOptions

        kwargs = self.option_kwargs()
        log.info("oci registry connection %s: %s", self.oci_registry_conn_id, self.describe())
        return RegistryOptions(**kwargs)

    def get_conn(self):
        """Airflow's generic accessor: the ``RegistryOptions``."""
        return self.registry_options

    def open_store(self, reference: str):
        """``(store, parsed reference)`` for ``reference`` (registry name or ``oci:PATH``) with these
        options; the caller closes the store."""
        from overlaybd_provider.oci.store import open_store

        return open_store(reference, self.registry_options)

    def test_connection(self) -> tuple[bool, str]:
        """``GET /v2/`` with these credentials (the UI's "Test" button)."""
        from overlaybd_provider.oci.client import RegistryClient

        if not self.registry:
            return False, "the connection has no registry host"
        try:
            client = RegistryClient(self.registry, self.registry_options)
            try:
                client.ping()
            finally:
                close = getattr(client, "close", None)
                if close is not None:
                    close()
        except Exception as exc:
            return False, str(exc)
        return True, f"Connected to {self.registry}"


def conn_id_for_registry(registry: str) -> str:
    """The connection id looked up for a registry when none is named:
    ``oci_registry_`` + the host[:port] with every run of other characters as ``_``
    (``registry.example.com:5000`` → ``oci_registry_registry_example_com_5000``)."""
    return "oci_registry_" + re.sub(r"[^a-z0-9]+", "_", registry.lower()).strip("_")


def hook_for_reference(reference: str, conn_id: str | None = None) -> OciRegistryHook | None:
    """The registry connection to use for ``reference``: the one named, else — one connection per
    registry, the way docker's config works — the connection named after its registry host
    (:func:`conn_id_for_registry`), else ``oci_registry_default`` when it is for that registry
    (or names no host). None: anonymous, or an ``oci:`` layout."""
    if conn_id:
        return OciRegistryHook(oci_registry_conn_id=conn_id)
    from overlaybd_provider.oci.reference import parse_reference

    try:
        ref = parse_reference(reference)
    except Exception:
        return None  # the engine reports a bad reference with its own clear line
    if ref.is_layout:
        return None
    for candidate in (conn_id_for_registry(ref.registry), OciRegistryHook.default_conn_name):
        hook = OciRegistryHook(oci_registry_conn_id=candidate)
        try:
            registry = hook.registry
        except AirflowNotFoundException:
            continue
        if candidate == OciRegistryHook.default_conn_name and registry not in (None, ref.registry):
            continue
        log.info("registry %s: using connection %s", ref.registry, candidate)
        return hook
    return None

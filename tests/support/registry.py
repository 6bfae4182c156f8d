"""Test-support plugin: real registries (Debian's ``docker-registry``, distribution 2.8).

Fixtures (session scoped unless noted; tests isolate themselves with ``registry_repo``):

* ``registry`` — plain HTTP, no auth.
* ``auth_registry`` — htpasswd (bcrypt) basic auth; ``.username`` / ``.password``.
* ``tls_registry`` — HTTPS with a CA made by the test (``.ca``); ``mtls_registry`` additionally
  requires a client certificate signed by that CA (``http.tls.clientcas``; ``.client``).
* ``token_registry`` — bearer tokens from :mod:`support.tokenserver` (``.token_server``).
* ``fault_proxy`` (function) — :class:`support.faultproxy.FaultProxy` in front of ``registry``.
* ``registry_repo`` (function) — a repository name unique to the test.

Every server object has ``.host`` (``127.0.0.1:PORT``), ``.url`` and ``.options(**overrides)``
returning the :class:`RegistryOptions` that reach it. :func:`push_layout` copies an OCI layout
directory into a registry with our client.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from overlaybd_provider.oci.copy import CopyReport, copy_image
from overlaybd_provider.oci.layout import LayoutStore
from overlaybd_provider.oci.options import RegistryOptions
from overlaybd_provider.oci.store import open_store

from support.faultproxy import FaultProxy
from support.paths import require_tool
from support.tlscerts import CertPair, make_ca, make_leaf, make_token_signer
from support.tokenserver import ISSUER, SERVICE, TokenServer

READY_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RegistryServer:
    root: Path
    port: int
    scheme: str = "http"
    username: str | None = None
    password: str | None = None
    ca: CertPair | None = None
    client: CertPair | None = None
    token_server: TokenServer | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def ref(self, repository: str, tag: str = "latest") -> str:
        return f"{self.host}/{repository}:{tag}"

    def options(self, **overrides: Any) -> RegistryOptions:
        base = RegistryOptions(
            plain_http=self.scheme == "http",
            username=self.username,
            password=self.password,
            ca_file=self.ca.cert if self.ca else None,
            cert_file=self.client.cert if self.client else None,
            key_file=self.client.key if self.client else None,
            docker_config=self.root / "empty-docker-config.json",
            max_retries=3,
            retry_budget=30.0,
            retry_backoff=0.05,
            timeout=30.0,
        )
        return replace(base, **overrides)

    def skopeo_tls_args(self, direction: str) -> list[str]:
        """``--src-…``/``--dest-…`` flags that let skopeo reach this registry."""
        if self.scheme == "http":
            return [f"--{direction}-tls-verify=false"]
        certs = self.root / "skopeo-certs"
        if not certs.exists():
            certs.mkdir()
            assert self.ca is not None
            (certs / "ca.crt").write_bytes(self.ca.cert.read_bytes())
            if self.client is not None:
                (certs / "client.cert").write_bytes(self.client.cert.read_bytes())
                (certs / "client.key").write_bytes(self.client.key.read_bytes())
        return [f"--{direction}-cert-dir={certs}"]

    def skopeo_creds_args(self, direction: str) -> list[str]:
        if self.username:
            return [f"--{direction}-creds={self.username}:{self.password}"]
        return []

    def start(self, config: dict[str, Any]) -> RegistryServer:
        binary = require_tool("docker-registry")
        (self.root / "empty-docker-config.json").write_text("{}")
        config_path = self.root / "config.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = open(self.root / "registry.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        verify: Any = str(self.ca.cert) if self.ca else False
        cert = (str(self.client.cert), str(self.client.key)) if self.client else None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.root / 'registry.log').read_text()[-2000:]}")
            try:
                r = requests.get(f"{self.url}/v2/", verify=verify, cert=cert, timeout=2)
                if r.status_code in (200, 401):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"docker-registry not ready on {self.url}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.token_server is not None:
            self.token_server.stop()


def registry_config(root: Path, port: int) -> dict[str, Any]:
    return {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "overlaybd-test-secret"},
    }


def start_registry(
    root: Path,
    *,
    tls: bool = False,
    client_certs: bool = False,
    users: dict[str, str] | None = None,
    token: dict[str, Any] | None = None,
    notifications: list[dict[str, Any]] | None = None,
) -> RegistryServer:
    """Start one ``docker-registry`` under ``root``; ``token`` = TokenServer keyword arguments;
    ``notifications`` = ``notifications.endpoints`` entries (name, url, headers, timeout, ...)."""
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        port = free_port()
        server = RegistryServer(root=root, port=port, scheme="https" if tls else "http")
        config = registry_config(root, port)
        if tls:
            server.ca = make_ca(root / "pki")
            leaf = make_leaf(server.ca, root / "pki", "server")
            config["http"]["tls"] = {"certificate": str(leaf.cert), "key": str(leaf.key)}
            if client_certs:
                config["http"]["tls"]["clientcas"] = [str(server.ca.cert)]
                server.client = make_leaf(server.ca, root / "pki", "client", client=True)
        if users and token is None:
            lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}" for u, p in users.items()]
            (root / "htpasswd").write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "overlaybd-test", "path": str(root / "htpasswd")}}
            server.username, server.password = next(iter(users.items()))
        if token is not None:
            signer = make_token_signer(root / "token-pki")
            server.token_server = TokenServer(signer, users or {}, **token).start()
            config["auth"] = {"token": {"realm": server.token_server.realm, "service": SERVICE,
                                        "issuer": ISSUER, "rootcertbundle": str(signer.cert)}}
        if notifications:
            config["notifications"] = {"endpoints": notifications}
        try:
            return server.start(config)
        except RuntimeError as exc:
            server.stop()
            if "address already in use" not in str(exc):
                raise
    raise RuntimeError("could not start docker-registry on a free port")


def push_layout(layout_dir: Path, dest_ref: str, options: RegistryOptions | None = None,
                src_ref: str | None = None) -> CopyReport:
    """Copy ``src_ref`` (tag or digest; the only image when ``None``) of an OCI layout directory to
    ``dest_ref`` (a registry or ``oci:`` reference; tagged with its tag)."""
    dest, ref = open_store(dest_ref, options)
    try:
        return copy_image(LayoutStore(layout_dir), dest, src_ref, ref.tag)
    finally:
        dest.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    server = start_registry(tmp_path_factory.mktemp("registry-plain"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    server = start_registry(tmp_path_factory.mktemp("registry-auth"), users={"alice": "s3cret-Pa55word"})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory):
    server = start_registry(tmp_path_factory.mktemp("registry-tls"), tls=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mtls_registry(tmp_path_factory):
    server = start_registry(tmp_path_factory.mktemp("registry-mtls"), tls=True, client_certs=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    server = start_registry(
        tmp_path_factory.mktemp("registry-token"),
        users={"bob": "t0ken-Pa55word"},
        token={"refresh_tokens": {"refresh-abc123": "bob"}, "anonymous_pull": True},
    )
    server.username, server.password = "bob", "t0ken-Pa55word"
    yield server
    server.stop()


@pytest.fixture
def fault_proxy(registry):
    proxy = FaultProxy(registry.host).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def registry_repo(request) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60].strip("-")
    return f"test/{name}-{os.getpid()}"

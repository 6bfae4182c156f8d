"""Where to talk to a registry: containerd ``hosts.toml`` mirrors and ``certs.d`` certificates.

containerd's registry host configuration (``docs/hosts.md``): ``HOSTS_DIR/HOST[:PORT]/hosts.toml``
(``_default/hosts.toml`` as fallback) lists ``[host."URL"]`` mirrors tried in file order, each with
``capabilities`` (pull, resolve, push), ``ca``, ``client``, ``skip_verify``, ``override_path`` and
``header``, then the ``server`` (the upstream, all capabilities). Relative paths are relative to
the file's directory. A host directory without ``hosts.toml`` is read as a docker ``certs.d``
directory: ``*.crt`` are CA certificates, ``NAME.cert`` + ``NAME.key`` client pairs. oras-py has
no equivalent (one ``tls_verify`` and one ``insecure`` per client).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from overlaybd_provider.oci.errors import OciError
from overlaybd_provider.oci.options import RegistryOptions
from overlaybd_provider.oci.reference import DOCKER_HUB, DOCKER_HUB_ENDPOINT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

log = logging.getLogger(__name__)

ALL_CAPABILITIES = frozenset({"pull", "resolve", "push"})


class HostsConfigError(OciError):
    """A ``hosts.toml`` that cannot be read or holds values of the wrong type."""


@dataclass(frozen=True)
class Endpoint:
    """One base URL serving the distribution API for a registry, with its TLS material."""

    scheme: str
    host: str
    path: str = "/v2"
    capabilities: frozenset[str] = ALL_CAPABILITIES
    ca_files: tuple[Path, ...] = ()
    client_certs: tuple[tuple[Path, Path | None], ...] = ()
    skip_verify: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    #: a mirror (not the upstream server): requests carry ``ns=<registry>`` like containerd's.
    mirror_of: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}"


def registry_endpoints(registry: str, options: RegistryOptions) -> list[Endpoint]:
    """Endpoints for ``registry`` (a reference's registry name) in the order to try them."""
    default_host = DOCKER_HUB_ENDPOINT if registry == DOCKER_HUB else registry
    server = Endpoint(scheme="http" if options.plain_http else "https", host=default_host)
    endpoints: list[Endpoint] = []
    hosts_file = _find_hosts_file(options.hosts_dir, registry) if options.hosts_dir else None
    if hosts_file is not None:
        server, endpoints = _read_hosts_file(hosts_file, registry, server, options)
    elif options.hosts_dir is not None:
        server = _with_cert_dir(server, _host_dir(options.hosts_dir, registry, server.host))
    endpoints.append(server)
    result = []
    for endpoint in endpoints:
        if options.cert_dir is not None:
            endpoint = _with_cert_dir(endpoint, _host_dir(options.cert_dir, registry, endpoint.host))
        result.append(_with_global_tls(endpoint, options))
    log.debug("registry %s endpoints: %s", registry, ", ".join(e.base_url for e in result))
    return result


def auxiliary_endpoint(url: str, options: RegistryOptions) -> Endpoint:
    """TLS settings for a URL outside the registry API (token server, blob redirect target)."""
    parts = urlsplit(url)
    endpoint = Endpoint(scheme=parts.scheme or "https", host=parts.netloc, path="")
    if options.cert_dir is not None:
        endpoint = _with_cert_dir(endpoint, _host_dir(options.cert_dir, parts.netloc, parts.netloc))
    return _with_global_tls(endpoint, options)


def _host_dir(root: Path, registry: str, host: str) -> Path | None:
    for name in dict.fromkeys((host, registry)):
        candidate = root / name
        if candidate.is_dir():
            return candidate
    return None


def _find_hosts_file(hosts_dir: Path, registry: str) -> Path | None:
    for name in (registry, "_default"):
        candidate = hosts_dir / name / "hosts.toml"
        if candidate.is_file():
            return candidate
    return None


def _with_cert_dir(endpoint: Endpoint, directory: Path | None) -> Endpoint:
    if directory is None:
        return endpoint
    cas = tuple(sorted(directory.glob("*.crt")))
    pairs = []
    for cert in sorted(directory.glob("*.cert")):
        key = cert.with_suffix(".key")
        if not key.is_file():
            raise HostsConfigError(f"{cert}: client certificate without its key {key.name}")
        pairs.append((cert, key))
    return replace(endpoint, ca_files=endpoint.ca_files + cas, client_certs=endpoint.client_certs + tuple(pairs))


def _with_global_tls(endpoint: Endpoint, options: RegistryOptions) -> Endpoint:
    cas = endpoint.ca_files + ((options.ca_file,) if options.ca_file else ())
    certs = endpoint.client_certs
    if options.cert_file is not None:
        certs = ((options.cert_file, options.key_file), *certs)
    return replace(endpoint, ca_files=cas, client_certs=certs, skip_verify=endpoint.skip_verify or options.skip_verify)


def _read_hosts_file(
    path: Path, registry: str, server: Endpoint, options: RegistryOptions
) -> tuple[Endpoint, list[Endpoint]]:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HostsConfigError(f"{path}: cannot read hosts.toml: {exc}") from None
    base = path.parent
    if "server" in doc:
        server = _endpoint_from_url(path, str(doc["server"]), doc, base, None, upstream=True)
    else:
        server = _apply_host_table(path, server, doc, base, upstream=True)
    mirrors = []
    hosts = doc.get("host", {})
    if not isinstance(hosts, dict):
        raise HostsConfigError(f"{path}: [host] must be a table of URLs")
    for url, table in hosts.items():
        if not isinstance(table, dict):
            raise HostsConfigError(f"{path}: host {url!r} must be a table")
        mirrors.append(_endpoint_from_url(path, url, table, base, registry, upstream=False))
    return server, mirrors


def _endpoint_from_url(
    path: Path, url: str, table: Mapping[str, Any], base: Path, registry: str | None, *, upstream: bool
) -> Endpoint:
    if "://" not in url:
        url = f"https://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HostsConfigError(f"{path}: invalid host URL {url!r}")
    api_path = parts.path.rstrip("/")
    if not table.get("override_path", False):
        api_path = f"{api_path}/v2"
    endpoint = Endpoint(scheme=parts.scheme, host=parts.netloc, path=api_path, mirror_of=registry)
    return _apply_host_table(path, endpoint, table, base, upstream=upstream)


def _apply_host_table(path: Path, endpoint: Endpoint, table: Mapping[str, Any], base: Path, *, upstream: bool) -> Endpoint:
    caps = table.get("capabilities")
    if upstream or caps is None:
        capabilities = ALL_CAPABILITIES if caps is None else frozenset(caps)
    else:
        if not isinstance(caps, list) or not set(caps) <= ALL_CAPABILITIES:
            raise HostsConfigError(f"{path}: capabilities must be a list of pull, resolve, push")
        capabilities = frozenset(caps)
    cas = tuple(_abs(base, p) for p in _str_list(path, table.get("ca"), "ca"))
    clients: list[tuple[Path, Path | None]] = []
    raw_client = table.get("client")
    if isinstance(raw_client, str):
        clients.append((_abs(base, raw_client), None))
    elif isinstance(raw_client, list):
        for item in raw_client:
            if isinstance(item, str):
                clients.append((_abs(base, item), None))
            elif isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
                clients.append((_abs(base, item[0]), _abs(base, item[1])))
            else:
                raise HostsConfigError(f"{path}: client entries are paths or [cert, key] pairs")
    elif raw_client is not None:
        raise HostsConfigError(f"{path}: client must be a path or a list")
    skip = table.get("skip_verify", False)
    if not isinstance(skip, bool):
        raise HostsConfigError(f"{path}: skip_verify must be true or false")
    headers = {}
    for name, value in (table.get("header") or {}).items():
        headers[str(name)] = ", ".join(value) if isinstance(value, list) else str(value)
    return replace(
        endpoint,
        capabilities=capabilities,
        ca_files=endpoint.ca_files + cas,
        client_certs=endpoint.client_certs + tuple(clients),
        skip_verify=endpoint.skip_verify or skip,
        headers={**endpoint.headers, **headers},
    )


def _str_list(path: Path, value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise HostsConfigError(f"{path}: {name} must be a path or a list of paths")


def _abs(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p

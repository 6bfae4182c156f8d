"""TLS against a real HTTPS registry: CA files, certs.d, hosts.toml (mirrors, plain HTTP), mTLS."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from overlaybd_provider.oci.client import RegistryClient
from overlaybd_provider.oci.errors import NotFoundError, RegistryError, TLSError
from overlaybd_provider.oci.hosts import HostsConfigError, registry_endpoints
from overlaybd_provider.oci.options import RegistryOptions
from overlaybd_provider.oci.store import open_store
from support.imagegen import write_image
from support.registry import push_layout


def _roundtrip(host, options, repo, tmp_path, data=b"tls-blob"):
    client = RegistryClient(host, options)
    path = tmp_path / "blob"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    client.push_blob(repo, path, digest, len(data))
    assert client.blob_exists(repo, digest)
    return client


def test_ca_file(tls_registry, registry_repo, tmp_path):
    _roundtrip(tls_registry.host, tls_registry.options(), registry_repo, tmp_path)


def test_untrusted_certificate_is_not_retried(tls_registry, registry_repo):
    client = RegistryClient(tls_registry.host, tls_registry.options(ca_file=None, max_retries=5, retry_backoff=5))
    with pytest.raises(TLSError, match="certificate not trusted"):
        client.resolve(registry_repo, "latest")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_skip_verify(tls_registry, registry_repo, tmp_path):
    _roundtrip(tls_registry.host, tls_registry.options(ca_file=None, skip_verify=True), registry_repo, tmp_path)


def test_plain_http_to_tls_port_fails_clearly(tls_registry, registry_repo):
    client = RegistryClient(tls_registry.host, tls_registry.options(ca_file=None, plain_http=True, max_retries=0))
    with pytest.raises(RegistryError) as info:
        client.resolve(registry_repo, "latest")
    assert info.value.status == 400 and tls_registry.host in str(info.value)  # Go: "HTTP request to HTTPS server"


def test_cert_dir(tls_registry, registry_repo, tmp_path):
    certs = tmp_path / "certs.d" / tls_registry.host
    certs.mkdir(parents=True)
    shutil.copy(tls_registry.ca.cert, certs / "ca.crt")
    _roundtrip(tls_registry.host, tls_registry.options(ca_file=None, cert_dir=tmp_path / "certs.d"),
               registry_repo, tmp_path)


def test_mtls_requires_client_certificate(mtls_registry, registry_repo, tmp_path):
    without = mtls_registry.options(cert_file=None, key_file=None, max_retries=1)
    with pytest.raises(TLSError):
        RegistryClient(mtls_registry.host, without).resolve(registry_repo, "latest")
    _roundtrip(mtls_registry.host, mtls_registry.options(), registry_repo, tmp_path)  # --tlscert/--tlskey
    certs = tmp_path / "certs.d" / mtls_registry.host
    certs.mkdir(parents=True)
    shutil.copy(mtls_registry.ca.cert, certs / "ca.crt")
    shutil.copy(mtls_registry.client.cert, certs / "client.cert")
    shutil.copy(mtls_registry.client.key, certs / "client.key")
    via_dir = mtls_registry.options(ca_file=None, cert_file=None, key_file=None, cert_dir=tmp_path / "certs.d")
    _roundtrip(mtls_registry.host, via_dir, registry_repo, tmp_path, b"via cert dir")


def test_hosts_toml_tls_material(mtls_registry, registry_repo, tmp_path):
    hosts = tmp_path / "hosts" / mtls_registry.host
    hosts.mkdir(parents=True)
    shutil.copy(mtls_registry.ca.cert, hosts / "my-ca.pem")
    (hosts / "hosts.toml").write_text(
        f'server = "https://{mtls_registry.host}"\n\n'
        f'[host."https://{mtls_registry.host}"]\n'
        '  capabilities = ["pull", "resolve", "push"]\n'
        '  ca = "my-ca.pem"\n'
        f'  client = [["{mtls_registry.client.cert}", "{mtls_registry.client.key}"]]\n'
    )
    options = mtls_registry.options(ca_file=None, cert_file=None, key_file=None, hosts_dir=tmp_path / "hosts")
    _roundtrip(mtls_registry.host, options, registry_repo, tmp_path)
    (hosts / "hosts.toml").write_text(
        f'server = "https://{mtls_registry.host}"\n[host."https://{mtls_registry.host}"]\n  skip_verify = true\n'
        f'  client = "{mtls_registry.client.cert}"\n'
    )
    with pytest.raises(TLSError, match="cannot load the client certificate"):  # pem holds no key
        _roundtrip(mtls_registry.host, options, registry_repo, tmp_path)


def test_hosts_toml_plain_http_server_and_mirror(registry, tls_registry, registry_repo, tmp_path):
    """A made-up registry name served by the plain registry through ``server = "http://…"``, and a
    pull-only mirror in front of the TLS registry."""
    layout = tmp_path / "img"
    desc = write_image(layout, "v1", [{"m": b"mirror"}])
    hosts_dir = tmp_path / "hosts"
    (hosts_dir / "registry.invalid:5000").mkdir(parents=True)
    (hosts_dir / "registry.invalid:5000" / "hosts.toml").write_text(f'server = "http://{registry.host}"\n')
    options = RegistryOptions(hosts_dir=hosts_dir, max_retries=0)
    push_layout(layout, f"registry.invalid:5000/{registry_repo}:v1", options, "v1")
    store, _ = open_store(f"{registry.host}/{registry_repo}:v1", registry.options())
    assert store.resolve().digest == desc.digest  # it landed in the plain registry

    (hosts_dir / tls_registry.host).mkdir()
    (hosts_dir / tls_registry.host / "hosts.toml").write_text(
        f'server = "https://{tls_registry.host}"\n'
        f'ca = "{tls_registry.ca.cert}"\n\n'
        f'[host."http://{registry.host}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    mirrored = RegistryOptions(hosts_dir=hosts_dir, max_retries=0)
    endpoints = registry_endpoints(tls_registry.host, mirrored)
    assert [(e.scheme, e.host, sorted(e.capabilities)) for e in endpoints] == [
        ("http", registry.host, ["pull", "resolve"]),
        ("https", tls_registry.host, ["pull", "push", "resolve"]),
    ]
    store, ref = open_store(f"{tls_registry.host}/{registry_repo}:v1", mirrored)
    assert store.resolve(ref.target).digest == desc.digest  # served by the mirror only
    with pytest.raises(NotFoundError):
        store.resolve("missing-tag")  # mirror, then server: both say not found
    # pushes skip the pull-only mirror and reach the TLS server
    path = tmp_path / "p"
    path.write_bytes(b"pushed to server")
    digest = "sha256:" + hashlib.sha256(b"pushed to server").hexdigest()
    store.push_blob(path, digest, path.stat().st_size)
    assert RegistryClient(tls_registry.host, tls_registry.options()).blob_exists(registry_repo, digest)
    assert not RegistryClient(registry.host, registry.options()).blob_exists(registry_repo, digest)


def test_hosts_toml_errors(tmp_path):
    d = tmp_path / "h" / "example.com"
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text('[host."https://m.example.com"]\n  capabilities = ["fly"]\n')
    with pytest.raises(HostsConfigError, match="capabilities"):
        registry_endpoints("example.com", RegistryOptions(hosts_dir=tmp_path / "h"))
    (d / "hosts.toml").write_text("server = [")
    with pytest.raises(HostsConfigError, match="cannot read"):
        registry_endpoints("example.com", RegistryOptions(hosts_dir=tmp_path / "h"))
    default = tmp_path / "h" / "_default"
    default.mkdir()
    (default / "hosts.toml").write_text('[host."https://mirror.example.com/prefix"]\n  override_path = true\n')
    [mirror, server] = registry_endpoints("docker.io", RegistryOptions(hosts_dir=tmp_path / "h"))
    assert mirror.base_url == "https://mirror.example.com/prefix" and mirror.mirror_of == "docker.io"
    assert server.base_url == "https://registry-1.docker.io/v2"

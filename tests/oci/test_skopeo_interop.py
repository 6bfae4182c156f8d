"""Interop with skopeo 1.9 through a real registry: each side reads what the other pushed."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from overlaybd_provider.oci.copy import copy_image
from overlaybd_provider.oci.layout import LayoutStore
from overlaybd_provider.oci.mediatypes import MediaType
from overlaybd_provider.oci.store import open_store
from support.imagegen import write_image
from support.paths import require_tool
from support.registry import push_layout

DOCKER_LIST = "sha256:726023f73a8fc5103fa6776d48090539042cb822531c6b751b1f6dd18cb5705d"


@pytest.fixture
def skopeo(tmp_path):
    binary = require_tool("skopeo")
    policy = tmp_path / "policy.json"
    policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    auth = tmp_path / "auth.json"
    auth.write_text("{}")

    def run(*args: str) -> str:
        cmd = [binary, "--policy", str(policy), *args]
        if args[0] in ("copy", "inspect"):
            cmd.insert(4, f"--authfile={auth}")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
        return proc.stdout

    return run


@pytest.fixture
def hello(fixtures_dir, tmp_path):
    dest = tmp_path / "hello"
    shutil.copytree(fixtures_dir / "hello-world-oci", dest)
    return dest


def test_skopeo_reads_what_we_push(registry, registry_repo, tmp_path, skopeo):
    layout = tmp_path / "ours"
    oci = write_image(layout, "oci", [{"a": b"one"}, {"b": b"two"}])
    docker = write_image(layout, "docker", [{"c": b"three"}], docker=True)
    for tag in ("oci", "docker"):
        push_layout(layout, registry.ref(registry_repo, tag), registry.options(), tag)
    ref = f"docker://{registry.host}/{registry_repo}"
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"{ref}:oci")
    assert raw.encode() == LayoutStore(layout).get_manifest("oci")[0]
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"{ref}:docker"))
    assert info["Digest"] == docker.digest and info["Architecture"] == "amd64"
    # full pulls verify every blob digest on skopeo's side
    skopeo("copy", "--src-tls-verify=false", f"{ref}:oci", f"oci:{tmp_path / 'sk-oci'}:oci")
    assert LayoutStore(tmp_path / "sk-oci").resolve("oci").digest == oci.digest
    skopeo("copy", "--src-tls-verify=false", f"{ref}:docker", f"dir:{tmp_path / 'sk-dir'}")
    assert (tmp_path / "sk-dir" / "manifest.json").read_bytes() == LayoutStore(layout).get_manifest("docker")[0]


def test_we_read_what_skopeo_pushes(registry, registry_repo, hello, tmp_path, skopeo):
    src = LayoutStore(hello)
    want = src.resolve("amd64-converted")
    dest = f"docker://{registry.host}/{registry_repo}"
    skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{hello}:amd64-converted", f"{dest}:oci")
    skopeo("copy", "--dest-tls-verify=false", "--format", "v2s2", f"oci:{hello}:amd64-converted", f"{dest}:v2s2")
    store, _ = open_store(f"{registry.host}/{registry_repo}:oci", registry.options())
    desc = store.resolve("oci")
    assert (desc.media_type, desc.digest) == (MediaType.OCI_MANIFEST, want.digest)
    docker = store.resolve("v2s2")
    assert docker.media_type == MediaType.DOCKER_MANIFEST
    manifest = json.loads(store.get_manifest("v2s2")[0])
    assert manifest["config"]["mediaType"] == MediaType.DOCKER_CONFIG
    back = LayoutStore(tmp_path / "back")
    for tag in ("oci", "v2s2"):
        copy_image(store, back, tag, tag)  # fetches and verifies every blob
    assert back.resolve("oci").digest == want.digest
    assert back.resolve("v2s2").media_type == MediaType.DOCKER_MANIFEST


def test_multi_arch_docker_list(registry, registry_repo, hello, tmp_path, skopeo):
    push_layout(hello, registry.ref(registry_repo, "multi"), registry.options(), "docker-list")
    ref = f"docker://{registry.host}/{registry_repo}:multi"
    raw = skopeo("inspect", "--raw", "--tls-verify=false", ref)
    assert raw.encode() == LayoutStore(hello).get_manifest("docker-list")[0]
    info = json.loads(skopeo("inspect", "--tls-verify=false", "--override-arch", "arm64",
                             "--override-variant", "v8", ref))
    arm64 = json.loads(LayoutStore(hello).get_manifest("arm64")[0])
    assert info["Architecture"] == "arm64" and info["Digest"] == DOCKER_LIST
    assert info["Layers"] == [layer["digest"] for layer in arm64["layers"]]
    skopeo("copy", "--all", "--src-tls-verify=false", ref, f"dir:{tmp_path / 'all'}")
    children = json.loads(raw)["manifests"]
    assert len(list((tmp_path / "all").glob("*.manifest.json"))) == len(children)
    store, _ = open_store(f"{registry.host}/{registry_repo}:multi", registry.options())
    assert store.resolve().digest == DOCKER_LIST


def test_skopeo_with_tls_and_auth(tls_registry, auth_registry, registry_repo, tmp_path, skopeo):
    layout = tmp_path / "ours"
    desc = write_image(layout, "v1", [{"t": b"tls"}])
    push_layout(layout, tls_registry.ref(registry_repo, "v1"), tls_registry.options(), "v1")
    cert_dir = tls_registry.skopeo_tls_args("src")[0].split("=", 1)[1]
    info = json.loads(skopeo("inspect", f"--cert-dir={cert_dir}", f"docker://{tls_registry.host}/{registry_repo}:v1"))
    assert info["Digest"] == desc.digest
    skopeo("copy", *tls_registry.skopeo_tls_args("src"), *auth_registry.skopeo_tls_args("dest"),
           *auth_registry.skopeo_creds_args("dest"),
           f"docker://{tls_registry.host}/{registry_repo}:v1", f"docker://{auth_registry.host}/{registry_repo}:v1")
    store, _ = open_store(auth_registry.ref(registry_repo, "v1"), auth_registry.options())
    assert store.resolve().digest == desc.digest

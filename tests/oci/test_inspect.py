"""``inspect_reference``: summaries of registry and layout references."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess

import pytest
from overlaybd_provider.cli.registry_args import add_registry_arguments
from overlaybd_provider.oci.inspect import inspect_reference
from overlaybd_provider.oci.mediatypes import MediaType
from support.registry import push_layout

DOCKER_LIST = "sha256:726023f73a8fc5103fa6776d48090539042cb822531c6b751b1f6dd18cb5705d"


@pytest.fixture
def hello(fixtures_dir, tmp_path):
    dest = tmp_path / "hello"
    shutil.copytree(fixtures_dir / "hello-world-oci", dest)
    return dest


def _run(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("reference")
    parser.add_argument("--json", action="store_true")
    add_registry_arguments(parser)
    out = io.StringIO()
    assert inspect_reference(parser.parse_args(argv), out) == 0
    return out.getvalue()


def test_inspect_index_in_registry(registry, registry_repo, hello):
    push_layout(hello, registry.ref(registry_repo, "multi"), registry.options(), "docker-list")
    ref = registry.ref(registry_repo, "multi")
    doc = json.loads(_run([ref, "--json", "--plain-http"]))
    assert doc["mediaType"] == MediaType.DOCKER_MANIFEST_LIST and doc["digest"] == DOCKER_LIST
    platforms = [m.get("platform") for m in doc["manifests"]]
    assert "linux/arm64/v8" in platforms and "linux/amd64" in platforms and len(platforms) == 9
    text = _run([ref, "--plain-http"])
    assert f"Digest:     {DOCKER_LIST}" in text and "linux/arm/v7" in text
    assert _run([ref, "--plain-http"]) == text  # deterministic


def test_inspect_manifest_in_layout(hello):
    doc = json.loads(_run([f"oci:{hello}:amd64-converted", "--json"]))
    assert doc["mediaType"] == MediaType.OCI_MANIFEST and doc["size"] == 641
    assert doc["config"]["architecture"] == "amd64" and doc["config"]["os"] == "linux"
    assert doc["config"]["cmd"] == ["/hello"] and doc["config"]["diffIds"] == 1
    [layer] = doc["layers"]
    assert layer["annotations"]["containerd.io/snapshot/overlaybd/version"] == "0.1.0"
    assert doc["totalLayerSize"] == layer["size"]
    text = _run([f"oci:{hello}:amd64-converted"])
    assert "Layers:     1" in text and layer["digest"] in text


def test_cli_inspect_delegates_references(registry, registry_repo, hello, overlaybd_cmd):
    push_layout(hello, registry.ref(registry_repo, "v1"), registry.options(), "amd64")
    ref = registry.ref(registry_repo, "v1")
    proc = subprocess.run([*overlaybd_cmd, "inspect", ref, "--json", "--plain-http"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["mediaType"] == MediaType.DOCKER_MANIFEST and doc["config"]["architecture"] == "amd64"
    missing = subprocess.run([*overlaybd_cmd, "inspect", registry.ref(registry_repo, "nope"), "--plain-http"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "overlaybd: error:" in missing.stderr and "not found" in missing.stderr

"""Media types, descriptors, options and the registry CLI flags."""

from __future__ import annotations

import argparse
import json

import oras.defaults
import pytest
from overlaybd_provider.cli.registry_args import add_registry_arguments, registry_options_from_args
from overlaybd_provider.oci.descriptor import Descriptor, Platform
from overlaybd_provider.oci.mediatypes import (
    MANIFEST_ACCEPT,
    MediaType,
    detect_manifest_type,
    is_image_manifest,
    is_index,
)
from overlaybd_provider.oci.options import RegistryOptions


def test_media_types_agree_with_oras():
    assert oras.defaults.default_manifest_media_type == MediaType.OCI_MANIFEST
    assert oras.defaults.default_index_media_type == MediaType.OCI_INDEX
    assert oras.defaults.docker_manifest_media_type == MediaType.DOCKER_MANIFEST
    assert oras.defaults.docker_manifest_list_media_type == MediaType.DOCKER_MANIFEST_LIST
    assert set(MANIFEST_ACCEPT) == set(oras.defaults.default_manifest_accepted_media_types)
    assert is_index(MediaType.DOCKER_MANIFEST_LIST) and is_image_manifest(MediaType.DOCKER_MANIFEST)
    assert not is_index(MediaType.OCI_LAYER_GZIP)


def test_detect_manifest_type_without_media_type_field():
    assert detect_manifest_type(b'{"schemaVersion":2,"manifests":[]}') == MediaType.OCI_INDEX
    assert detect_manifest_type(b'{"schemaVersion":2,"config":{},"layers":[]}') == MediaType.OCI_MANIFEST
    assert detect_manifest_type(json.dumps({"mediaType": MediaType.DOCKER_MANIFEST.value}).encode()) == (
        MediaType.DOCKER_MANIFEST
    )
    assert detect_manifest_type(b"not json") == ""


def test_descriptor_round_trip_keeps_order_and_unknown_fields():
    doc = {
        "mediaType": MediaType.OCI_MANIFEST.value,
        "digest": "sha256:" + "1" * 64,
        "size": 641,
        "urls": ["https://example.com/x"],
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
        "artifactType": "application/x",
        "x-extra": {"kept": True},
    }
    desc = Descriptor.from_dict(doc)
    assert desc.platform == Platform("arm64", "linux", variant="v8")
    assert str(desc.platform) == "linux/arm64/v8"
    assert desc.ref_name == "v1"
    assert desc.to_dict() == doc
    assert list(desc.to_dict()) == list(doc)
    assert Descriptor.from_json(desc.to_json()) == desc


def test_options_repr_hides_secrets():
    opts = RegistryOptions(username="alice", password="hunter2-secret", refresh_token="rt-secret-xyz")
    text = repr(opts)
    assert "alice" in text
    assert "hunter2-secret" not in text and "rt-secret-xyz" not in text
    assert "password='***'" in text
    with pytest.raises(ValueError):
        RegistryOptions(cert_file="/x.pem")


def _parse(argv):
    parser = add_registry_arguments(argparse.ArgumentParser())
    return registry_options_from_args(parser.parse_args(argv))


def test_registry_args(tmp_path, monkeypatch):
    monkeypatch.delenv("OVERLAYBD_PASSWORD", raising=False)
    opts = _parse(["-u", "bob:pa:ss", "--plain-http", "-k", "--tlscacert", str(tmp_path / "ca.crt"),
                   "--tlscert", "c.pem", "--tlskey", "k.pem", "--cert-dir", "cd", "--hosts-dir", "hd",
                   "--docker-config", "dc.json", "--refresh", "rt", "--http-dump", "--http-trace",
                   "--max-retries", "2", "--timeout", "7.5"])
    assert (opts.username, opts.password) == ("bob", "pa:ss")
    assert opts.plain_http and opts.skip_verify and opts.insecure and opts.http_dump and opts.http_trace
    assert opts.ca_file == tmp_path / "ca.crt"
    assert str(opts.cert_file) == "c.pem" and str(opts.key_file) == "k.pem"
    assert str(opts.cert_dir) == "cd" and str(opts.hosts_dir) == "hd" and str(opts.docker_config) == "dc.json"
    assert opts.refresh_token == "rt" and opts.max_retries == 2 and opts.timeout == 7.5
    assert _parse(["--skip-verify"]).skip_verify and _parse(["--insecure"]).skip_verify


def test_user_without_password_reads_env(monkeypatch):
    monkeypatch.setenv("OVERLAYBD_PASSWORD", "from-env")
    opts = _parse(["--user", "carol"])
    assert (opts.username, opts.password) == ("carol", "from-env")
    monkeypatch.delenv("OVERLAYBD_PASSWORD")
    assert _parse(["--user", "carol"]).password is None
    assert _parse([]).username is None

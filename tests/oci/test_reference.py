"""Reference parsing: docker-style names (distribution's normalisation) and oci: layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from overlaybd_provider.oci.errors import InvalidReferenceError
from overlaybd_provider.oci.reference import parse_reference

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "0123456789abcdef" * 4

VALID = [
    # text, registry, repository, tag, digest, endpoint, canonical
    ("ubuntu", "docker.io", "library/ubuntu", "latest", None, "registry-1.docker.io", "docker.io/library/ubuntu:latest"),
    ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None, "registry-1.docker.io", "docker.io/library/ubuntu:22.04"),
    ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None, "registry-1.docker.io", None),
    ("index.docker.io/library/busybox:1", "docker.io", "library/busybox", "1", None, "registry-1.docker.io",
     "docker.io/library/busybox:1"),
    ("INDEX.docker.io/x/y", "docker.io", "x/y", "latest", None, "registry-1.docker.io", None),
    ("registry.hub.docker.com/x", "docker.io", "library/x", "latest", None, "registry-1.docker.io", None),
    ("foo/bar", "docker.io", "foo/bar", "latest", None, "registry-1.docker.io", "docker.io/foo/bar:latest"),
    ("docker://alpine:3", "docker.io", "library/alpine", "3", None, "registry-1.docker.io", None),
    ("localhost/foo", "localhost", "foo", "latest", None, "localhost", "localhost/foo:latest"),
    ("localhost:5000/a/b/c:t-1.2_x", "localhost:5000", "a/b/c", "t-1.2_x", None, "localhost:5000", None),
    ("127.0.0.1:5000/repo@" + D1, "127.0.0.1:5000", "repo", None, D1, "127.0.0.1:5000", f"127.0.0.1:5000/repo@{D1}"),
    ("ghcr.io/org/img:v1@" + D2, "ghcr.io", "org/img", "v1", D2, "ghcr.io", f"ghcr.io/org/img:v1@{D2}"),
    ("Host/foo", "Host", "foo", "latest", None, "Host", None),
    ("my-registry.example.com:443/ns/a__b.c-d", "my-registry.example.com:443", "ns/a__b.c-d", "latest", None,
     "my-registry.example.com:443", None),
    ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None, "[::1]:5000", None),
    ("busybox@" + D1, "docker.io", "library/busybox", None, D1, "registry-1.docker.io", None),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest", "endpoint", "canonical"), VALID)
def test_valid_references(text, registry, repository, tag, digest, endpoint, canonical):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.endpoint_host == endpoint
    assert ref.target == (digest or tag)
    assert not ref.is_layout
    if canonical is not None:
        assert str(ref) == canonical
    assert parse_reference(str(ref)) == ref


INVALID = [
    "",
    "UPPER",
    "foo/Bar",
    "foo:bad tag",
    "foo@sha256:abc",
    "foo@sha256:" + "A" * 64,
    "foo@md5",
    "foo//bar",
    "foo/",
    "-foo",
    "foo:" + "t" * 129,
    "host:port/x",
    "a/" + "b" * 260,
    "oci:",
    "oci:dir:",
    "oci::tag",
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_references(text):
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


def test_invalid_message_names_the_problem():
    with pytest.raises(InvalidReferenceError, match="lower case"):
        parse_reference("example.com/Foo")


@pytest.mark.parametrize(
    ("text", "path", "tag", "digest"),
    [
        ("oci:/tmp/layout", "/tmp/layout", None, None),
        ("oci:/tmp/layout:v1", "/tmp/layout", "v1", None),
        ("oci:relative/dir:latest", "relative/dir", "latest", None),
        (f"oci:/tmp/layout@{D1}", "/tmp/layout", None, D1),
        (f"oci:/tmp/x@y/layout@{D1}", "/tmp/x@y/layout", None, D1),
    ],
)
def test_layout_references(text, path, tag, digest):
    ref = parse_reference(text)
    assert ref.is_layout
    assert ref.path == Path(path)
    assert (ref.tag, ref.digest) == (tag, digest)
    assert str(ref) == text
    assert parse_reference(str(ref)) == ref


def test_with_tag_and_digest():
    ref = parse_reference("example.com/a/b:old")
    assert str(ref.with_tag("new")) == "example.com/a/b:new"
    assert str(ref.with_digest(D1)) == f"example.com/a/b:old@{D1}"
    with pytest.raises(InvalidReferenceError):
        ref.with_tag("bad tag")

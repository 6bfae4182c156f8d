"""What oras-py (the pinned ``oras`` release) does not do, checked against the installed package.

docs/oci.md, "oras-py and our code", says which parts of ``overlaybd_provider.oci`` are built on
oras-py and why the rest is ours. Each test here pins one stated reason, so an oras-py upgrade that
closes a gap fails the test that says so: that is the moment to adopt the new code and remove ours.
No registry is contacted: oras-py's request method is replaced by a recorder.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import oras.auth.base as oras_base
import oras.auth.utils as oras_auth_utils
import oras.defaults
import oras.utils
import pytest
import requests
from oras.auth.base import AuthBackend
from oras.auth.token import TokenAuth
from oras.container import Container
from oras.decorator import retry
from oras.layout import Layout
from oras.provider import Registry
from overlaybd_provider.oci import credentials, descriptor, layout, mediatypes, options, reference
from overlaybd_provider.oci.auth import parse_challenges
from overlaybd_provider.oci.reference import parse_reference


def _response(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r.headers.update(headers or {})
    r.raw = io.BytesIO(body)
    r.request = requests.Request("GET", "https://registry.test/v2/").prepare()
    return r


# -- what we take from oras-py ------------------------------------------------------------------


def test_adopted_constants_keep_our_values() -> None:
    """The constants now come from ``oras.defaults``; an upgrade must not change what we send."""
    assert (reference.DOCKER_HUB, reference.DOCKER_HUB_ENDPOINT, reference.DEFAULT_TAG) == (
        "docker.io", "registry-1.docker.io", "latest")
    assert sorted(reference.DOCKER_HUB_ALIASES) == ["docker.io", "index.docker.io", "registry.hub.docker.com"]
    assert credentials.DOCKER_HUB_AUTH_KEY == "https://index.docker.io/v1/"
    assert descriptor.REF_NAME_ANNOTATION == "org.opencontainers.image.ref.name"
    assert options.DEFAULT_CHUNK_SIZE == 16 << 20
    assert (layout.LAYOUT_FILE, layout.INDEX_FILE, layout.LAYOUT_VERSION, layout.BLOBS_DIR) == (
        "oci-layout", "index.json", "1.0.0", "blobs")
    assert mediatypes.MANIFEST_ACCEPT == (
        "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
    assert set(oras.defaults.default_manifest_accepted_media_types) == set(mediatypes.MANIFEST_ACCEPT)
    assert mediatypes.MediaType.OCI_LAYER.value == "application/vnd.oci.image.layer.v1.tar"


def test_append_url_params_reencodes_and_drops_blank_and_repeated_names() -> None:
    """The caveat of the adopted helper: harmless for distribution's ``?_state=`` Location."""
    assert oras.utils.append_url_params("http://r.test/u?a=&b=1&b=2", {"digest": "sha256:x"}) == (
        "http://r.test/u?b=2&digest=sha256%3Ax")


# -- reference: oras.container.Container --------------------------------------------------------


@pytest.mark.parametrize(("text", "oras_uri", "ours"), [
    ("busybox", "docker.io/busybox:latest", "docker.io/library/busybox:latest"),  # no library/
    ("index.docker.io/library/busybox", "index.docker.io/library/busybox:latest",
     "docker.io/library/busybox:latest"),  # alias kept
    ("localhost/foo", "docker.io/localhost/foo:latest", "localhost/foo:latest"),  # localhost is no host
    ("ghcr.io/org/img:v1@sha256:" + "a" * 64, "ghcr.io/org/img@sha256:" + "a" * 64,
     "ghcr.io/org/img:v1@sha256:" + "a" * 64),  # the tag is dropped
])
def test_container_does_not_normalise_like_distribution(text: str, oras_uri: str, ours: str) -> None:
    assert Container(text).uri == oras_uri
    assert str(parse_reference(text)) == ours


def test_container_validates_nothing() -> None:
    assert Container("Foo/Bar").uri == "docker.io/Foo/Bar:latest"  # upper case is not a valid name
    assert Container("foo@sha256:xyz").digest == "sha256:xyz"  # nor is this a digest


# -- auth: one token, a lenient header regex ----------------------------------------------------


def test_parse_auth_header_misses_bare_values_and_second_challenges() -> None:
    bare = oras_auth_utils.parse_auth_header("Bearer realm=https://auth.test/token,service=reg")
    assert bare.realm is None
    two = oras_auth_utils.parse_auth_header('Basic realm="basic", Bearer realm="https://auth.test/t"')
    assert two.realm == "https://auth.test/t"  # one dict: the Basic challenge is lost, no scheme kept
    assert [c.scheme for c in parse_challenges('Basic realm="basic", Bearer realm="https://auth.test/t"')] == [
        "basic", "bearer"]


def test_token_auth_reuses_one_token_for_every_scope() -> None:
    auth = TokenAuth()
    auth.token = "pull-token-for-repo-a"
    challenge = _response(401, {"Www-Authenticate":
                                'Bearer realm="https://auth.test/t",service="reg",scope="repository:b:push"'})
    headers, retry_it = auth.authenticate_request(challenge, {})
    assert retry_it and headers["Authorization"] == "Bearer pull-token-for-repo-a"  # no new token for b:push


# -- credentials: docker config ---------------------------------------------------------------


def test_docker_config_lookup_ignores_DOCKER_CONFIG(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text("{}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert oras.utils.find_docker_config() is None


def test_auth_entries_without_auth_field_are_ignored() -> None:
    backend = AuthBackend()
    backend._auth_config = {"auths": {"r.test": {"username": "u", "password": "p"}},
                            "credHelpers": {}, "credsStore": None}
    assert backend._load_auth("r.test") is False
    backend._auth_config = {"auths": {"r.test": {"identitytoken": "refresh"}}, "credHelpers": {}, "credsStore": None}
    assert backend._load_auth("r.test") is False


def test_auths_win_over_cred_helpers_and_token_answers_become_basic(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        asked.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, json.dumps({"Username": "<token>", "Secret": "s"}).encode(), b"")

    monkeypatch.setattr(oras_base.subprocess, "run", run)
    backend = AuthBackend()
    backend._auth_config = {"auths": {"r.test": {"auth": "aW5saW5lOnA="}}, "credHelpers": {"r.test": "x"},
                            "credsStore": None}
    assert backend._load_auth("r.test") and backend._basic_auth == "aW5saW5lOnA="  # docker asks the helper
    assert asked == []
    # an identity token from a helper is sent as the Basic password of user "<token>"
    assert backend._get_auth_from_creds_store("x", "r.test") == oras_auth_utils.get_basic_auth("<token>", "s")


# -- requests: retries and timeouts ------------------------------------------------------------


def test_retry_decorator_returns_503_and_429_untried() -> None:
    calls: list[int] = []

    @retry(attempts=3, timeout=0)
    def send(status: int) -> requests.Response:
        calls.append(status)
        return _response(status, {"Retry-After": "1"})

    assert send(503).status_code == 503 and send(429).status_code == 429
    assert calls == [503, 429]  # only a 500 or an exception is retried, with sleeps of 3**n s, no jitter


def test_do_request_sets_no_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    registry = Registry(hostname="registry.test")

    def record(method: str, url: str, **kwargs: Any) -> requests.Response:
        seen.update(kwargs)
        return _response(200)

    monkeypatch.setattr(registry.session, "request", record)
    registry.do_request("https://registry.test/v2/", "GET")
    assert "timeout" not in seen


# -- blobs: memory, verification, atomicity ----------------------------------------------------


def test_put_upload_sends_the_whole_blob_as_one_bytes_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * (3 << 20))
    bodies: list[Any] = []
    registry = Registry(hostname="registry.test")

    def do_request(url: str, method: str = "GET", data: Any = None, **kwargs: Any) -> requests.Response:
        bodies.append(data)
        return _response(202, {"Location": "/v2/r/blobs/uploads/1"})

    monkeypatch.setattr(registry, "do_request", do_request)
    registry.put_upload(str(blob), Container("registry.test/r"),
                        {"digest": "sha256:" + "0" * 64, "size": 3 << 20})
    assert isinstance(bodies[-1], bytes) and len(bodies[-1]) == 3 << 20


def test_get_manifest_returns_parsed_json_not_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(hostname="registry.test")
    body = b'{"schemaVersion": 2,  "layers": []}'  # the digest is over these exact bytes
    monkeypatch.setattr(registry, "do_request", lambda *a, **k: _response(200, body=body))
    assert registry.get_manifest("registry.test/r:t") == {"schemaVersion": 2, "layers": []}


def test_download_blob_writes_unverified_content_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(hostname="registry.test")
    monkeypatch.setattr(registry, "get_blob", lambda *a, **k: _response(200, body=b"not the blob"))
    out = tmp_path / "layer"
    digest = "sha256:" + "0" * 64  # matches no content: no error is raised
    assert registry.download_blob(Container("registry.test/r"), digest, str(out)) == str(out)
    assert out.read_bytes() == b"not the blob"


# -- layout ---------------------------------------------------------------------------------


def test_layout_maps_unvalidated_digests_and_pins_version(tmp_path: Path) -> None:
    lay = Layout(str(tmp_path), validate=False)
    assert ".." in lay.digest_to_blob_path("sha256:../../outside").parts
    (tmp_path / "blobs").mkdir()
    (tmp_path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.1.0"}))
    (tmp_path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    assert not Layout.is_oci_layout(str(tmp_path))  # a 1.x layout our reader accepts

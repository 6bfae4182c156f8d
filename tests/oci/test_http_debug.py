"""--http-dump (secrets redacted) and --http-trace (real per-connection timings)."""

from __future__ import annotations

import base64
import hashlib
import logging

from overlaybd_provider.oci.client import RegistryClient
from overlaybd_provider.oci.transport import redact_headers, redact_url


def test_redact_url_and_headers():
    assert redact_url("https://user:pw@h:5000/v2/x?token=abc&n=1&X-Amz-Signature=s&_state=zz") == (
        "https://h:5000/v2/x?token=<redacted>&n=1&X-Amz-Signature=<redacted>&_state=<redacted>"
    )
    headers = redact_headers({"Authorization": "Bearer abc", "Cookie": "c=1", "Set-Cookie": "s=2",
                              "X-Auth-Token": "t", "Location": "/v2/x?_state=abc", "Accept": "a/b"})
    assert headers == {"Authorization": "<redacted>", "Cookie": "<redacted>", "Set-Cookie": "<redacted>",
                       "X-Auth-Token": "<redacted>", "Location": "/v2/x?_state=<redacted>", "Accept": "a/b"}


def test_http_dump_redacts_basic_and_bearer_secrets(auth_registry, token_registry, registry_repo, tmp_path, caplog):
    data = b"dump me"
    path = tmp_path / "b"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with caplog.at_level(logging.DEBUG):
        for server in (auth_registry, token_registry):
            client = RegistryClient(server.host, server.options(http_dump=True))
            client.push_blob(registry_repo, path, digest, len(data))
    text = caplog.text
    assert f"> PUT http://{auth_registry.host}/v2/{registry_repo}/blobs/uploads/" in text
    assert "< 201 Created" in text and "< 401 Unauthorized" in text
    assert "Authorization: <redacted>" in text and "_state=<redacted>" in text
    for server in (auth_registry, token_registry):
        basic = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
        assert server.password not in text and basic not in text
    assert "eyJ" not in text  # no JWT (bearer token) anywhere


def test_http_trace_times_connections(tls_registry, registry, registry_repo):
    client = RegistryClient(tls_registry.host, tls_registry.options(http_trace=True))
    for _ in range(3):
        assert not client.blob_exists(registry_repo, "sha256:" + "0" * 64)
    events = client.transport.trace_events
    assert len(events) == 3
    first, *rest = events
    assert not first.reused and first.host == tls_registry.host
    assert first.dns_ms is not None and first.connect_ms is not None and first.tls_ms is not None
    assert first.tls_ms > 0 and first.first_byte_ms > 0
    assert all(e.reused and e.tls_ms is None and e.connection == first.connection for e in rest)
    assert "tls=" in str(first) and "reused" in str(rest[0])
    plain = RegistryClient(registry.host, registry.options(http_trace=True))
    plain.blob_exists(registry_repo, "sha256:" + "0" * 64)
    [event] = plain.transport.trace_events
    assert event.connect_ms is not None and event.tls_ms is None


def test_verbose_logs_redact_upload_state_and_credentials(auth_registry, registry_repo, tmp_path):
    """``-v`` shows urllib3's request lines: the upload ``_state`` token of blob uploads (in every
    Location URL) must be redacted there too, like ``--http-dump`` does, and no credential."""
    import os
    import subprocess

    from support.imagegen import write_image
    from support.paths import overlaybd_cli

    src = tmp_path / "src"
    write_image(src, "v1", [{"etc/a": os.urandom(3000)}])
    dst = auth_registry.ref(registry_repo, "obd")
    proc = subprocess.run(
        [*overlaybd_cli(), "convert", f"oci:{src}:v1", dst, "-v", "--plain-http", "--db-url", "none",
         "--blob-cache", "none", "-u", f"{auth_registry.username}:{auth_registry.password}"],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr
    assert "/blobs/uploads/" in log  # urllib3's request lines are there
    assert "_state=<redacted>" in log
    assert "_state=" not in log.replace("_state=<redacted>", "")
    basic = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    assert auth_registry.password not in log and basic not in log


def test_redact_text_finds_secrets_in_free_text():
    from overlaybd_provider.oci.redact import redact_text

    line = ('http://127.0.0.1:5000 "PATCH /v2/r/blobs/uploads/u1?_state=AbC%3D&digest=sha256:1 HTTP/1.1" 202 0 '
            "then https://bob:pw@h/v2/?access_token=xyz&token=t2&scope=repository:r:pull "
            "Authorization: Basic Ym9iOnB3 and authorization=Bearer eyJhbGciOi.x.y, X-Amz-Signature=s1")
    assert redact_text(line) == (
        'http://127.0.0.1:5000 "PATCH /v2/r/blobs/uploads/u1?_state=<redacted>&digest=sha256:1 HTTP/1.1" 202 0 '
        "then https://h/v2/?access_token=<redacted>&token=<redacted>&scope=repository:r:pull "
        "Authorization: <redacted> and authorization=<redacted>, X-Amz-Signature=<redacted>")

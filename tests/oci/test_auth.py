"""Authentication against real registries: htpasswd basic auth and bearer tokens."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat

import pytest
from overlaybd_provider.oci.auth import merge_scopes, parse_challenges
from overlaybd_provider.oci.client import RegistryClient
from overlaybd_provider.oci.credentials import lookup_credentials
from overlaybd_provider.oci.errors import AuthError
from overlaybd_provider.oci.options import RegistryOptions
from overlaybd_provider.oci.store import RemoteStore


def _push_small(client, repo, tmp_path, data=b"auth-test-blob"):
    path = tmp_path / "blob"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    client.push_blob(repo, path, digest, len(data))
    return digest


def test_parse_challenges():
    header = ('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
              'scope="repository:a/b:pull,push", Basic realm="x\\"y"')
    bearer, basic = parse_challenges(header)
    assert bearer.scheme == "bearer" and basic.scheme == "basic"
    assert bearer.params == {"realm": "https://auth.example.com/token", "service": "registry.example.com",
                             "scope": "repository:a/b:pull,push"}
    assert basic.params == {"realm": 'x"y'}
    [unquoted] = parse_challenges("Bearer realm=https://x/t , error=insufficient_scope")
    assert unquoted.params == {"realm": "https://x/t", "error": "insufficient_scope"}


def test_basic_auth_push_and_pull(auth_registry, registry_repo, tmp_path):
    client = RegistryClient(auth_registry.host, auth_registry.options())
    digest = _push_small(client, registry_repo, tmp_path)
    assert client.blob_exists(registry_repo, digest)


def test_wrong_password_is_a_clear_error_without_the_secret(auth_registry, registry_repo, caplog):
    secret = "Wr0ng-Secret-Value-42"
    options = auth_registry.options(password=secret, http_dump=True, max_retries=0)
    client = RegistryClient(auth_registry.host, options)
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as info:
        client.resolve(registry_repo, "latest")
    message = str(info.value)
    assert "wrong username or password" in message and "'alice'" in message
    assert info.value.status == 401
    encoded = base64.b64encode(f"alice:{secret}".encode()).decode()
    for text in (message, repr(info.value), caplog.text, repr(options), repr(client)):
        assert secret not in text and encoded not in text
    assert "Authorization: <redacted>" in caplog.text  # the dump did log the header line


def test_missing_credentials(auth_registry, registry_repo):
    client = RegistryClient(auth_registry.host, auth_registry.options(username=None, password=None))
    with pytest.raises(AuthError, match="requires credentials"):
        client.resolve(registry_repo, "latest")


def test_docker_config_auths(auth_registry, registry_repo, tmp_path):
    config = tmp_path / "config.json"
    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    config.write_text(json.dumps({"auths": {f"https://{auth_registry.host}/v1/": {"auth": token}}}))
    options = auth_registry.options(username=None, password=None, docker_config=config)
    creds = lookup_credentials(auth_registry.host, options)
    assert creds.username == "alice" and creds.password == auth_registry.password
    assert auth_registry.password not in repr(creds)
    _push_small(RegistryClient(auth_registry.host, options), registry_repo, tmp_path)


def _helper(tmp_path, monkeypatch, name, username, secret):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    script = bindir / f"docker-credential-{name}"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = get ] || exit 3\n'
        f"read server; echo \"$server\" >> {log}\n"
        f"printf '%s' '{json.dumps({'ServerURL': 'x', 'Username': username, 'Secret': secret})}'\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_docker_config_cred_helper(auth_registry, registry_repo, tmp_path, monkeypatch):
    log = _helper(tmp_path, monkeypatch, "overlaybdtest", auth_registry.username, auth_registry.password)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credHelpers": {auth_registry.host: "overlaybdtest"},
                                  "auths": {auth_registry.host: {"auth": "bm90OnVzZWQ="}}}))
    options = auth_registry.options(username=None, password=None, docker_config=config)
    _push_small(RegistryClient(auth_registry.host, options), registry_repo, tmp_path)
    assert log.read_text().split() == [auth_registry.host]


def test_docker_config_creds_store(auth_registry, tmp_path, monkeypatch):
    _helper(tmp_path, monkeypatch, "storetest", "alice", "from-store")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": "storetest"}))
    creds = lookup_credentials("docker.io", RegistryOptions(docker_config=config))
    assert (creds.username, creds.password) == ("alice", "from-store")
    _helper(tmp_path, monkeypatch, "tokentest", "<token>", "identity-xyz")
    config.write_text(json.dumps({"credsStore": "tokentest"}))
    creds = lookup_credentials("docker.io", RegistryOptions(docker_config=config))
    assert creds.identity_token == "identity-xyz" and creds.password is None


def test_bearer_token_flow_and_cache(token_registry, registry_repo, tmp_path):
    server = token_registry.token_server
    server.requests.clear()
    client = RegistryClient(token_registry.host, token_registry.options())
    digest = _push_small(client, registry_repo, tmp_path)
    pushes = [r for r in server.requests if any(":pull,push" in s for s in r["scopes"])]
    assert pushes and all(r["user"] == "bob" and r["service"] == "overlaybd-test-registry" for r in pushes)
    count = len(server.requests)
    for _ in range(3):
        assert client.blob_exists(registry_repo, digest)
    assert len(server.requests) == count == 2, server.requests  # one token per scope set, then cached
    assert sorted(r["scopes"] for r in server.requests) == [
        [f"repository:{registry_repo}:pull"], [f"repository:{registry_repo}:pull,push"]], server.requests
    # a token the registry no longer accepts is replaced after the 401
    [auth] = client._auth.values()
    for token in auth._tokens.values():
        token.value = "garbage"
    assert client.blob_exists(registry_repo, digest)
    assert len(server.requests) == 3 and server.requests[-1]["scopes"] == [f"repository:{registry_repo}:pull"]


def test_bearer_wrong_password_and_anonymous(token_registry, registry_repo, tmp_path):
    bad = RegistryClient(token_registry.host, token_registry.options(password="nope-Secret-77"))
    with pytest.raises(AuthError, match="wrong username or password") as info:
        _push_small(bad, registry_repo, tmp_path)
    assert "nope-Secret-77" not in str(info.value)
    owner = RegistryClient(token_registry.host, token_registry.options())
    digest = _push_small(owner, registry_repo, tmp_path)
    anonymous = RegistryClient(token_registry.host, token_registry.options(username=None, password=None))
    assert anonymous.blob_exists(registry_repo, digest)  # anonymous pull is allowed
    with pytest.raises(AuthError):
        _push_small(anonymous, registry_repo, tmp_path, b"other")


def test_refresh_token_grant(token_registry, registry_repo, tmp_path):
    server = token_registry.token_server
    server.requests.clear()
    options = token_registry.options(username=None, password=None, refresh_token="refresh-abc123")
    assert "refresh-abc123" not in repr(options)
    _push_small(RegistryClient(token_registry.host, options), registry_repo, tmp_path)
    assert server.requests and all(
        r["method"] == "POST" and r["grant_type"] == "refresh_token" for r in server.requests
    )
    wrong = token_registry.options(username=None, password=None, refresh_token="revoked")
    with pytest.raises(AuthError, match="refused the refresh token"):
        _push_small(RegistryClient(token_registry.host, wrong), registry_repo, tmp_path, b"x")


def test_identity_token_from_docker_config(token_registry, registry_repo, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {token_registry.host: {"identitytoken": "refresh-abc123"}}}))
    options = token_registry.options(username=None, password=None, docker_config=config)
    store = RemoteStore(RegistryClient(token_registry.host, options), registry_repo)
    path = tmp_path / "b"
    path.write_bytes(b"identity")
    digest = "sha256:" + hashlib.sha256(b"identity").hexdigest()
    assert store.push_blob(path, digest, 8)
    assert token_registry.token_server.requests[-1]["grant_type"] == "refresh_token"


def test_ping_checks_credentials(auth_registry, token_registry):
    RegistryClient(auth_registry.host, auth_registry.options()).ping()
    RegistryClient(token_registry.host, token_registry.options()).ping()
    with pytest.raises(AuthError):
        RegistryClient(auth_registry.host, auth_registry.options(password="bad-pass-1")).ping()


def test_merge_scopes():
    assert merge_scopes(["repository:a:pull", "repository:a:push,pull", "repository:b:pull",
                         "registry:catalog:*"]) == [
        "registry:catalog:*", "repository:a:pull,push", "repository:b:pull"]

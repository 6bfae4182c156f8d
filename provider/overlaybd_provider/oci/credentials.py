"""Credentials for a registry: explicit options, then docker ``config.json``.

Docker's lookup order: ``credHelpers[host]``, then ``credsStore``, then the inline ``auths`` entry
(``auth`` = base64 ``user:password``, or ``username``/``password``, or ``identitytoken``).
Helpers follow the ``docker-credential-<name> get`` protocol: server URL on stdin, JSON
``{"ServerURL", "Username", "Secret"}`` on stdout; ``Username == "<token>"`` marks an identity
(refresh) token. oras-py's lookup (``AuthBackend._load_auth``) is not used: it ignores
``$DOCKER_CONFIG``, tries ``auths`` before the helpers, reads only the ``auth`` field and sends a
``<token>`` answer as a Basic user (docs/oci.md, "oras-py and our code").
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oras.defaults import registry as _oras_hub

from overlaybd_provider.oci.errors import OciError
from overlaybd_provider.oci.options import RegistryOptions
from overlaybd_provider.oci.reference import DOCKER_HUB, DOCKER_HUB_ALIASES, DOCKER_HUB_ENDPOINT

log = logging.getLogger(__name__)

DOCKER_HUB_AUTH_KEY: str = _oras_hub.index_server  # "https://index.docker.io/v1/"
HELPER_TIMEOUT = 30.0


class CredentialsError(OciError):
    """A docker config or credential helper that could not be used (never carries the secret)."""


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: OAuth2 refresh token (docker ``identitytoken``), exchanged at the token server.
    identity_token: str | None = field(default=None, repr=False)
    source: str = "anonymous"

    @property
    def anonymous(self) -> bool:
        return not (self.username and self.password) and not self.identity_token


def lookup_credentials(registry: str, options: RegistryOptions) -> Credentials:
    """Credentials for ``registry`` (reference registry name, e.g. ``docker.io`` or ``host:5000``)."""
    if options.username:
        return Credentials(
            username=options.username,
            password=options.password,
            identity_token=options.refresh_token,
            source="options",
        )
    if options.refresh_token:
        return Credentials(identity_token=options.refresh_token, source="options")
    path = _config_path(options)
    if path is None:
        return Credentials()
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"{path}: cannot read docker config: {type(exc).__name__}") from None
    if not isinstance(config, dict):
        raise CredentialsError(f"{path}: docker config is not a JSON object")
    return _from_config(config, registry, path)


def _config_path(options: RegistryOptions) -> Path | None:
    if options.docker_config is not None:
        p = options.docker_config
        return p / "config.json" if p.is_dir() else p
    env = os.environ.get("DOCKER_CONFIG")
    candidate = Path(env) / "config.json" if env else Path.home() / ".docker" / "config.json"
    return candidate if candidate.is_file() else None


def _keys_for(registry: str) -> list[str]:
    if registry == DOCKER_HUB:
        return [DOCKER_HUB_AUTH_KEY, *sorted(DOCKER_HUB_ALIASES), DOCKER_HUB_ENDPOINT]
    return [registry]


def _normalise_key(key: str) -> str:
    if key == DOCKER_HUB_AUTH_KEY:
        return key
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


def _from_config(config: dict[str, Any], registry: str, path: Path) -> Credentials:
    keys = _keys_for(registry)
    helpers = config.get("credHelpers") or {}
    for key in keys:
        if key in helpers:
            return _from_helper(str(helpers[key]), keys[0], f"{path} credHelpers")
    auths = {_normalise_key(k): v for k, v in (config.get("auths") or {}).items()}
    store = config.get("credsStore")
    if store:
        try:
            creds = _from_helper(str(store), keys[0], f"{path} credsStore")
        except CredentialsError as exc:
            if not any(k in auths for k in keys):
                raise
            log.warning("%s; using the auths entry of %s instead", exc, path)
        else:
            if not creds.anonymous:
                return creds
    for key in keys:
        entry = auths.get(key)
        if isinstance(entry, dict):
            return _from_auth_entry(entry, key, path)
    return Credentials()


def _from_auth_entry(entry: dict[str, Any], key: str, path: Path) -> Credentials:
    username, password = entry.get("username"), entry.get("password")
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(f"{path}: auths[{key!r}].auth is not base64 of USER:PASSWORD") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise CredentialsError(f"{path}: auths[{key!r}].auth is not base64 of USER:PASSWORD")
    token = entry.get("identitytoken") or None
    if token and not username:
        username = "<token>"
    return Credentials(username=username or None, password=password or None, identity_token=token, source=str(path))


def _from_helper(name: str, server: str, where: str) -> Credentials:
    binary = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [binary, "get"], input=server.encode(), capture_output=True, timeout=HELPER_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise CredentialsError(f"{where}: credential helper {binary} is not installed") from None
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"{where}: credential helper {binary} did not answer") from None
    if proc.returncode != 0:
        text = proc.stdout.decode(errors="replace").strip()
        if "credentials not found" in text.lower():
            return Credentials()
        raise CredentialsError(f"{where}: credential helper {binary} failed with status {proc.returncode}")
    try:
        payload = json.loads(proc.stdout)
        username, secret = payload.get("Username") or "", payload.get("Secret") or ""
    except (ValueError, AttributeError):
        raise CredentialsError(f"{where}: credential helper {binary} printed no JSON object") from None
    if username == "<token>":
        return Credentials(username=None, identity_token=secret or None, source=binary)
    return Credentials(username=username or None, password=secret or None, source=binary)

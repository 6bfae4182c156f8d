"""Registry authentication: ``WWW-Authenticate`` challenges, bearer tokens per scope, basic auth.

Token flow (distribution ``docs/spec/auth/token.md``, ``oauth.md``): the registry answers 401 with
``Bearer realm=…,service=…,scope=…``; we ask the realm for a token covering our scopes (GET with
basic credentials or anonymously, or POST ``grant_type=refresh_token`` when we hold an identity /
refresh token), cache it per scope set until it expires, and fetch a new one when the registry
answers 401 to it. oras-py's ``TokenAuth`` keeps a single token and no scopes, so only its basic
header helper is reused here.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import requests
from oras.auth.utils import get_basic_auth

from overlaybd_provider.oci.credentials import Credentials
from overlaybd_provider.oci.errors import AuthError
from overlaybd_provider.oci.redact import redact_url

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 60.0
CLIENT_ID = "overlaybd-provider"
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BARE_RE = re.compile(r"[^,\s]*")

RequestFn = Callable[..., requests.Response]


@dataclass
class Challenge:
    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into challenges (RFC 7235 §4.1; quoted strings with
    escapes, several challenges in one header)."""
    challenges: list[Challenge] = []
    i, n = 0, len(header)
    current: Challenge | None = None
    while i < n:
        while i < n and header[i] in " \t,":
            i += 1
        m = _TOKEN_RE.match(header, i)
        if not m:
            i += 1
            continue
        name, j = m.group(), m.end()
        k = j
        while k < n and header[k] in " \t":
            k += 1
        if current is not None and k < n and header[k] == "=":
            k += 1
            while k < n and header[k] in " \t":
                k += 1
            if k < n and header[k] == '"':
                value, k = _quoted(header, k)
            else:
                vm = _BARE_RE.match(header, k)  # lenient: realms are often bare URLs
                value, k = vm.group(), vm.end()
            current.params[name.lower()] = value
            i = k
        else:
            current = Challenge(name.lower())
            challenges.append(current)
            i = j
    return challenges


def _quoted(text: str, start: int) -> tuple[str, int]:
    out, i = [], start + 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), i


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions)}"


_ACTION_ORDER = {"pull": 0, "push": 1, "delete": 2}


def merge_scopes(scopes: Iterable[str]) -> list[str]:
    """One scope per resource with the union of its actions, in a stable order (registries list
    actions in random order: ``push,pull`` and ``pull,push`` are the same scope)."""
    merged: dict[str, set[str]] = {}
    for scope in scopes:
        resource, sep, actions = scope.rpartition(":")
        if not sep or not resource:
            merged.setdefault(scope, set())
            continue
        merged.setdefault(resource, set()).update(a for a in actions.split(",") if a)
    out = []
    for resource in sorted(merged):
        actions = sorted(merged[resource], key=lambda a: (_ACTION_ORDER.get(a, 9), a))
        out.append(f"{resource}:{','.join(actions)}" if actions else resource)
    return out


@dataclass
class _Token:
    value: str
    expires: float


class Authenticator:
    """Authorization headers for one registry host."""

    def __init__(self, host: str, credentials: Callable[[], Credentials], request: RequestFn):
        self.host = host
        self._credentials_fn = credentials
        self._credentials: Credentials | None = None
        self._request = request
        self._lock = threading.Lock()
        self._scheme: str | None = None
        self._bearer: dict[str, str] = {}
        self._tokens: dict[tuple[str, ...], _Token] = {}

    @property
    def credentials(self) -> Credentials:
        if self._credentials is None:
            self._credentials = self._credentials_fn()
        return self._credentials

    def headers(self, scopes: Iterable[str]) -> dict[str, str]:
        """Header to send before any challenge: what an earlier 401 taught us."""
        with self._lock:
            if self._scheme == "basic":
                return {"Authorization": f"Basic {self._basic()}"}
            if self._scheme == "bearer":
                token = self._tokens.get(_key(scopes))
                if token is not None and token.expires > time.monotonic():
                    return {"Authorization": f"Bearer {token.value}"}
        return {}

    def refused(self, response: requests.Response) -> AuthError:
        """The error for a 401/403 that fresh credentials did not cure."""
        return self._refused(response.status_code, response.request.method or "", redact_url(response.request.url or ""))

    def handle_unauthorized(self, response: requests.Response, scopes: Iterable[str]) -> None:
        """Learn from a 401 so that the request can be retried once with fresh credentials; raise
        :class:`AuthError` when no retry can succeed."""
        method, url = response.request.method or "", redact_url(response.request.url or "")
        challenges = parse_challenges(response.headers.get("WWW-Authenticate", ""))
        by_scheme = {c.scheme: c for c in challenges}
        creds = self.credentials
        if "bearer" in by_scheme:
            challenge = by_scheme["bearer"]
            if not challenge.params.get("realm"):
                raise AuthError("bearer challenge without realm", status=401, method=method, url=url)
            scope_set = list(scopes)
            if challenge.params.get("scope"):
                scope_set.extend(challenge.params["scope"].split(" "))
            with self._lock:
                self._scheme = "bearer"
                self._bearer = challenge.params
                self._tokens.pop(_key(scopes), None)
            token = self._fetch_token(challenge.params, merge_scopes(scope_set))
            with self._lock:
                self._tokens[_key(scopes)] = token
            return
        if "basic" in by_scheme:
            if creds.anonymous or not creds.password:
                raise AuthError(
                    f"registry {self.host} requires credentials: pass --user or a docker config",
                    status=401, method=method, url=url,
                )
            with self._lock:
                self._scheme = "basic"
            return
        raise AuthError(
            f"registry {self.host} refused the request and offers no supported authentication scheme",
            status=401, method=method, url=url,
        )

    def _basic(self) -> str:
        creds = self.credentials
        return get_basic_auth(creds.username or "", creds.password or "")

    def _refused(self, status: int, method: str, url: str) -> AuthError:
        creds = self.credentials
        if status == 403:
            who = "anonymous access" if creds.anonymous else f"user {creds.username!r}"
            what = f"registry {self.host} denied access to {who}"
        elif creds.anonymous:
            what = f"registry {self.host} requires credentials: pass --user or a docker config"
        elif creds.identity_token and not creds.password:
            what = f"registry {self.host} refused the refresh token (from {creds.source})"
        else:
            what = (
                f"authentication failed for {self.host} as user {creds.username!r}: "
                f"wrong username or password (from {creds.source})"
            )
        return AuthError(what, status=status, method=method, url=url)

    def _fetch_token(self, params: dict[str, str], scopes: list[str]) -> _Token:
        realm = params["realm"]
        creds = self.credentials
        service = params.get("service")
        if creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": CLIENT_ID}
            if service:
                form["service"] = service
            if scopes:
                form["scope"] = " ".join(scopes)
            response = self._request("POST", realm, data=form, headers={"Accept": "application/json"})
        else:
            query: list[tuple[str, str]] = [("service", service)] if service else []
            query.extend(("scope", s) for s in scopes)
            headers = {"Accept": "application/json"}
            if not creds.anonymous:
                headers["Authorization"] = f"Basic {self._basic()}"
            prepared = requests.Request("GET", realm, params=query).prepare()
            response = self._request("GET", prepared.url or realm, headers=headers)
        if response.status_code in (401, 403):
            raise self._refused(response.status_code, response.request.method or "", redact_url(realm))
        if response.status_code != 200:
            raise AuthError(
                f"token server answered {response.status_code} {response.reason}",
                status=response.status_code, method=response.request.method or "", url=redact_url(realm),
            )
        try:
            doc = response.json()
            value = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            value, lifetime = None, 0.0
        if not value:
            raise AuthError("token server answered without a token", status=200, url=redact_url(realm))
        log.debug("got a bearer token for %s scopes %s (%.0f s)", self.host, " ".join(scopes), lifetime)
        return _Token(value=str(value), expires=time.monotonic() + max(1.0, lifetime * 0.9))


def _key(scopes: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(scopes)))

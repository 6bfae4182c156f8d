"""Request plumbing of the registry client: endpoints, auth, retries, error mapping, limits.

Every registry request goes through :meth:`RegistryRequester._send`: authentication (one retry
after a 401 with fresh credentials), retries with back-off on transient failures, a timeout, and
the answer turned into a :class:`RegistryError` subclass. Pulls try the ``hosts.toml`` mirrors in
order (:meth:`_pull`), pushes go to the first push-capable endpoint.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import requests
from oras.utils import append_url_params

from overlaybd_provider.errors import REMEDIES
from overlaybd_provider.oci.auth import Authenticator
from overlaybd_provider.oci.credentials import lookup_credentials
from overlaybd_provider.oci.errors import (
    AuthError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
    TLSError,
)
from overlaybd_provider.oci.hosts import Endpoint, auxiliary_endpoint, registry_endpoints
from overlaybd_provider.oci.options import RegistryOptions
from overlaybd_provider.oci.redact import redact_url
from overlaybd_provider.oci.retry import RETRYABLE_EXCEPTIONS, RETRYABLE_STATUS, RetryState, parse_retry_after
from overlaybd_provider.oci.transport import Transport

log = logging.getLogger(__name__)

Body = Callable[[], Any] | bytes | None


class HostLimiter:
    """Per-registry semaphore, re-entrant per thread (an operation may call another)."""

    _registry: dict[tuple[str, int], HostLimiter] = {}
    _guard = threading.Lock()

    def __init__(self, limit: int):
        self._sem = threading.BoundedSemaphore(limit)
        self._local = threading.local()

    @classmethod
    def for_host(cls, host: str, limit: int) -> HostLimiter:
        with cls._guard:
            return cls._registry.setdefault((host, limit), cls(limit))

    @contextmanager
    def slot(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._sem.acquire()
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth -= 1
            if self._local.depth == 0:
                self._sem.release()

    def hold(self) -> Callable[[], None]:
        """Take a slot for a stream that outlives the call (released by the returned function,
        from any thread). Inside an operation that already holds one, nothing more is taken."""
        if getattr(self._local, "depth", 0):
            return lambda: None
        self._sem.acquire()
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._sem.release()

        return release


def _registry_errors(response: requests.Response) -> list[dict[str, Any]]:
    try:
        doc = response.json()
    except ValueError:
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


class RegistryRequester:
    """Base of :class:`~overlaybd_provider.oci.client.RegistryClient`: one registry, its endpoints,
    session, authenticators and concurrency limit."""

    def __init__(self, registry: str, options: RegistryOptions | None = None):
        self.registry = registry
        self.options = options or RegistryOptions()
        self.endpoints = registry_endpoints(registry, self.options)
        self.transport = Transport(self.options)
        for endpoint in self.endpoints:
            self.transport.prepare_endpoint(endpoint)
        self._auth: dict[str, Authenticator] = {}
        self._auth_lock = threading.Lock()
        self.limiter = HostLimiter.for_host(registry, self.options.concurrency)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.registry!r})"

    def close(self) -> None:
        self.transport.close()

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def push_origin(self) -> str:
        """``scheme://host`` that receives pushes (two clients with the same one can mount)."""
        return self._endpoints("push")[0].origin

    def _authenticator(self, endpoint: Endpoint) -> Authenticator:
        with self._auth_lock:
            auth = self._auth.get(endpoint.origin)
            if auth is None:
                auth = Authenticator(
                    endpoint.host, lambda: lookup_credentials(self.registry, self.options), self._plain_request
                )
                self._auth[endpoint.origin] = auth
            return auth

    def _plain_request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Request outside the registry API (token server), with retries but no registry auth."""
        aux = auxiliary_endpoint(url, self.options)
        self.transport.prepare_endpoint(aux)
        state = RetryState.from_options(self.options)
        while True:
            try:
                response = self.transport.request(method, url, verify=not aux.skip_verify, **kwargs)
            except RETRYABLE_EXCEPTIONS as exc:
                if state.wait():
                    continue
                raise RegistryUnavailableError(
                    f"{state.summary()}: {type(exc).__name__}", method=method, url=redact_url(url)
                ) from None
            if response.status_code in RETRYABLE_STATUS and state.wait(
                parse_retry_after(response.headers.get("Retry-After"))
            ):
                continue
            return response

    def _url(self, endpoint: Endpoint, repository: str, kind: str, ref: str = "", query: dict | None = None) -> str:
        url = f"{endpoint.base_url}/{repository}/{kind}/{quote(ref, safe=':')}" if ref else (
            f"{endpoint.base_url}/{repository}/{kind}/"
        )
        query = dict(query or {})
        if endpoint.mirror_of:
            query["ns"] = endpoint.mirror_of
        return append_url_params(url, query) if query else url

    def _endpoints(self, capability: str) -> list[Endpoint]:
        found = [e for e in self.endpoints if capability in e.capabilities]
        if not found:
            raise RegistryError(f"no endpoint of {self.registry} may {capability} (hosts.toml capabilities)")
        return found

    def _send(
        self,
        endpoint: Endpoint,
        method: str,
        url: str,
        *,
        scopes: Sequence[str],
        headers: dict[str, str] | None = None,
        body: Body = None,
        stream: bool = False,
        ok: Iterable[int] = (200,),
        retry: bool = True,
        what: str = "",
    ) -> requests.Response:
        """One logical request. ``body`` may be a callable returning a fresh body per attempt."""
        ok = tuple(ok)
        auth = self._authenticator(endpoint)
        state = RetryState.from_options(self.options) if retry else RetryState(0, 0.0, 0.0, 0.0)
        challenged = False
        while True:
            hdrs = {**endpoint.headers, **(headers or {}), **auth.headers(scopes)}
            data = body() if callable(body) else body
            try:
                response = self.transport.request(
                    method, url, headers=hdrs, data=data, stream=stream, verify=not endpoint.skip_verify
                )
            except requests.exceptions.SSLError as exc:
                raise _tls_error(exc, endpoint, method, url) from None
            except RETRYABLE_EXCEPTIONS as exc:
                state.last_error = f"{type(exc).__name__}: {_short(exc)}"
                if state.wait():
                    log.info("retrying %s %s after %s", method, redact_url(url), state.last_error)
                    continue
                raise RegistryUnavailableError(
                    _gave_up(state), method=method, url=redact_url(url)
                ) from None
            finally:
                if hasattr(data, "close"):
                    data.close()
            status = response.status_code
            if status in ok:
                return response
            if status == 401:
                response.close()
                if challenged:
                    raise auth.refused(response)
                auth.handle_unauthorized(response, scopes)
                challenged = True
                continue
            if status in RETRYABLE_STATUS:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                state.last_error = f"{status} {response.reason}"
                response.close()
                if state.wait(retry_after):
                    log.info("retrying %s %s after %s", method, redact_url(url), state.last_error)
                    continue
                raise RegistryUnavailableError(
                    _gave_up(state),
                    status=status, method=method, url=redact_url(url), errors=_registry_errors(response),
                    retry_after=retry_after,
                )
            raise self._error(response, what)

    def _error(self, response: requests.Response, what: str) -> RegistryError:
        errors = _registry_errors(response) if response.request.method != "HEAD" else []
        method, url = response.request.method or "", redact_url(response.request.url or "")
        status = response.status_code
        response.close()
        codes = {str(e.get("code")) for e in errors}
        if status == 403:
            return AuthError(f"access denied{' to ' + what if what else ''}", status=status, method=method, url=url, errors=errors)
        if status == 404 or codes & {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"}:
            return NotFoundError(f"{what or 'object'} not found", status=status, method=method, url=url, errors=errors)
        return RegistryError(f"{response.reason or 'request failed'}", status=status, method=method, url=url, errors=errors)

    def _pull(self, fn: Callable[[Endpoint], Any]) -> Any:
        """Run ``fn`` against each pull endpoint until one has the object."""
        last: RegistryError | None = None
        for endpoint in self._endpoints("pull"):
            try:
                return fn(endpoint)
            except (NotFoundError, RegistryUnavailableError) as exc:
                last = exc
                if endpoint is not self.endpoints[-1]:
                    log.info("%s: %s; trying the next endpoint", endpoint.host, exc)
        assert last is not None
        raise last


def _gave_up(state: RetryState) -> str:
    return f"{state.summary()}: {state.last_error}" if state.max_retries else state.last_error


def _tls_error(exc: BaseException, endpoint: Endpoint, method: str, url: str) -> TLSError:
    text = str(exc)
    remedy = None
    if "CERTIFICATE_VERIFY_FAILED" in text:
        hint, remedy = f"certificate not trusted: {REMEDIES['tls_trust']['cli']}", "tls_trust"
    elif "certificate required" in text.lower() or "CERTIFICATE_REQUIRED" in text:
        hint = f"the registry requires a client certificate: {REMEDIES['client_cert']['cli']}"
        remedy = "client_cert"
    elif "WRONG_VERSION_NUMBER" in text:
        hint, remedy = f"the registry does not speak TLS here: {REMEDIES['plain_http']['cli']}", "plain_http"
    else:
        hint = _short(exc)
    error = TLSError(f"TLS handshake with {endpoint.host} failed: {hint}", method=method, url=redact_url(url))
    error.remedy = remedy
    return error


def _short(exc: BaseException) -> str:
    """The root cause of a requests/urllib3 exception in a few words."""
    arg = exc.args[0] if exc.args else None
    inner = getattr(arg, "reason", None) or arg or exc
    text = str(inner)
    match = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if match:
        return match.group(0).strip()
    for known in ("Read timed out", "Connection reset by peer", "RemoteDisconnected", "Connection aborted",
                  "timed out", "Connection broken", "IncompleteRead"):
        if known in text:
            return known
    return text if len(text) < 160 else text[:160] + "..."

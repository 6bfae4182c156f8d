"""HTTP plumbing: one ``requests`` session per client, a TLS-configured adapter per endpoint,
``--http-dump`` logging with secrets redacted, and ``--http-trace`` connection timings.

Tracing swaps urllib3's connection classes for subclasses that time name resolution, TCP connect,
the TLS handshake and the wait for the first response byte; it measures what really happens on
the wire (a reused connection reports only its first-byte time).

oras-py's ``Registry`` session has no timeout, no per-endpoint TLS and drops every cookie; we keep
cookies, because a load balancer's affinity cookie may be what keeps an upload on one backend.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from overlaybd_provider.oci.errors import TLSError
from overlaybd_provider.oci.hosts import Endpoint
from overlaybd_provider.oci.options import RegistryOptions
from overlaybd_provider.oci.redact import REDACTED, install_redaction, redact_headers, redact_url

__all__ = ["REDACTED", "EndpointAdapter", "TraceEvent", "Transport", "build_ssl_context", "redact_headers",
           "redact_url"]

log = logging.getLogger(__name__)
dump_log = logging.getLogger("overlaybd_provider.oci.http")

install_redaction()  # urllib3 logs every request line with its full URL (the upload _state token)


@dataclass(frozen=True)
class TraceEvent:
    """Timings of one request in milliseconds; connection fields are ``None`` on a reused one."""

    host: str
    connection: int
    method: str
    path: str
    reused: bool
    dns_ms: float | None
    connect_ms: float | None
    tls_ms: float | None
    first_byte_ms: float

    def __str__(self) -> str:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}ms"

        state = "reused" if self.reused else "new"
        return (
            f"trace {self.method} {self.host}{self.path} conn#{self.connection} {state} "
            f"dns={f(self.dns_ms)} connect={f(self.connect_ms)} tls={f(self.tls_ms)} "
            f"first-byte={f(self.first_byte_ms)}"
        )


_conn_ids = itertools.count(1)


class _TracingMixin:
    """Mixed into urllib3 connections; ``trace_sink`` is set on the generated subclass."""

    trace_sink: Callable[[TraceEvent], None]

    def _new_conn(self):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        host = self._dns_host  # type: ignore[attr-defined]
        try:
            infos = socket.getaddrinfo(host, self.port, 0, socket.SOCK_STREAM)  # type: ignore[attr-defined]
            address = infos[0][4][0]
        except OSError:
            address = host  # let urllib3 raise its own resolution error
        t1 = time.perf_counter()
        self._dns_host = address  # type: ignore[attr-defined]
        try:
            sock = super()._new_conn()  # type: ignore[misc]
        finally:
            self._dns_host = host  # type: ignore[attr-defined]
        t2 = time.perf_counter()
        self._trace_conn = (next(_conn_ids), (t1 - t0) * 1e3, (t2 - t1) * 1e3, None)
        self._trace_fresh = True
        return sock

    def connect(self):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        super().connect()  # type: ignore[misc]
        total = (time.perf_counter() - t0) * 1e3
        conn_id, dns, tcp, _ = self._trace_conn
        tls = max(0.0, total - dns - tcp) if isinstance(self, HTTPSConnection) else None
        self._trace_conn = (conn_id, dns, tcp, tls)

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._trace_request = (method, url)
        super().request(method, url, *args, **kwargs)  # type: ignore[misc]
        self._trace_sent = time.perf_counter()

    def getresponse(self):  # type: ignore[no-untyped-def]
        response = super().getresponse()  # type: ignore[misc]
        ttfb = (time.perf_counter() - getattr(self, "_trace_sent", time.perf_counter())) * 1e3
        fresh = getattr(self, "_trace_fresh", False)
        self._trace_fresh = False
        conn_id, dns, tcp, tls = getattr(self, "_trace_conn", (0, None, None, None))
        method, url = getattr(self, "_trace_request", ("?", "?"))
        event = TraceEvent(
            host=f"{self.host}:{self.port}",  # type: ignore[attr-defined]
            connection=conn_id,
            method=method,
            path=urlsplit(url).path,
            reused=not fresh,
            dns_ms=dns if fresh else None,
            connect_ms=tcp if fresh else None,
            tls_ms=tls if fresh else None,
            first_byte_ms=ttfb,
        )
        self.trace_sink(event)
        return response


SEND_BLOCK = 1 << 20


class EndpointAdapter(HTTPAdapter):
    """Adapter with the endpoint's TLS context, a pool as large as the concurrency limit and,
    optionally, traced connections."""

    def __init__(self, ssl_context: ssl.SSLContext | None, pool_size: int, trace_sink=None):
        self._ssl_context = ssl_context
        self._trace_sink = trace_sink
        super().__init__(pool_connections=2, pool_maxsize=pool_size, max_retries=0)

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # blob bodies are sent in 1 MiB pieces (urllib3's default is 16 KiB: thousands of
        # Python-level reads, hash updates and sendall calls per 100 MB layer)
        kwargs.setdefault("blocksize", SEND_BLOCK)
        if self._ssl_context is not None:
            kwargs["ssl_context"] = self._ssl_context
        super().init_poolmanager(*args, **kwargs)
        if self._trace_sink is not None:
            sink = staticmethod(self._trace_sink)
            http_conn = type("TracingHTTPConnection", (_TracingMixin, HTTPConnection), {"trace_sink": sink})
            https_conn = type("TracingHTTPSConnection", (_TracingMixin, HTTPSConnection), {"trace_sink": sink})
            self.poolmanager.pool_classes_by_scheme = {
                "http": type("TracingHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
                "https": type("TracingHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
            }


def build_ssl_context(endpoint: Endpoint) -> ssl.SSLContext | None:
    """System CAs plus the endpoint's CA files and first client pair; ``None`` when nothing is custom."""
    if endpoint.scheme != "https" or not (endpoint.ca_files or endpoint.client_certs or endpoint.skip_verify):
        return None
    ctx = ssl.create_default_context()
    for ca in endpoint.ca_files:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"{ca}: cannot load CA certificates for {endpoint.host}: {exc}") from None
    if endpoint.client_certs:
        cert, key = endpoint.client_certs[0]
        try:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(
                f"{cert}: cannot load the client certificate{' and key ' + str(key) if key else ''} "
                f"for {endpoint.host}: {exc}"
            ) from None
    if endpoint.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Transport:
    """Owns the session. ``request`` is one HTTP exchange: no retries, no auth (see ``client``)."""

    def __init__(self, options: RegistryOptions):
        self.options = options
        self.session = requests.Session()
        self.session.headers["User-Agent"] = options.user_agent
        self.trace_events: list[TraceEvent] = []
        self._lock = threading.Lock()
        self._mounted: set[str] = set()
        sink = self._record_trace if options.http_trace else None
        default = EndpointAdapter(None, options.concurrency, sink)
        self.session.mount("https://", default)
        self.session.mount("http://", default)

    def _record_trace(self, event: TraceEvent) -> None:
        with self._lock:
            self.trace_events.append(event)
        log.info("%s", event)

    def prepare_endpoint(self, endpoint: Endpoint) -> None:
        with self._lock:
            if endpoint.origin in self._mounted:
                return
            self._mounted.add(endpoint.origin)
        sink = self._record_trace if self.options.http_trace else None
        adapter = EndpointAdapter(build_ssl_context(endpoint), self.options.concurrency, sink)
        self.session.mount(endpoint.origin + "/", adapter)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data=None,
        stream: bool = False,
        verify: bool = True,
        allow_redirects: bool = True,
    ) -> requests.Response:
        timeout = (self.options.timeout, self.options.timeout)
        try:
            response = self.session.request(
                method,
                url,
                headers=dict(headers or {}),
                data=data,
                stream=stream,
                verify=verify,
                timeout=timeout,
                allow_redirects=allow_redirects,
            )
        except requests.RequestException as exc:
            if self.options.http_dump:
                dump_log.info("> %s %s\n< error: %s", method, redact_url(url), type(exc).__name__)
            raise
        if self.options.http_dump:
            self._dump(response)
        return response

    def _dump(self, response: requests.Response) -> None:
        lines = []
        for hop in [*response.history, response]:
            req = hop.request
            lines.append(f"> {req.method} {redact_url(req.url or '')}")
            lines.extend(f"> {k}: {v}" for k, v in redact_headers(req.headers).items())
            lines.append(f"< {hop.status_code} {hop.reason}")
            lines.extend(f"< {k}: {v}" for k, v in redact_headers(hop.headers).items())
        dump_log.info("%s", "\n".join(lines))

    def close(self) -> None:
        self.session.close()

"""A fault-injecting HTTP proxy in front of a real registry (threaded stdlib, streaming).

Rules fire on matching requests a given number of times, then requests pass through untouched:
``status`` answers with an HTTP status (500, 503, 429 + ``Retry-After``) after reading the request
body, ``reset`` closes the connection with a TCP RST before answering, ``cut`` forwards but resets
after half the response body, ``corrupt`` flips the first byte of the response body, ``truncate``
answers with the first half of the body and a matching (short) Content-Length, ``delay`` forwards
the request and holds the answer ``delay`` seconds (a slow registry: the client times out but the
registry did the work), ``drop`` forwards the request and resets instead of answering (the
registry did the work, its answer is lost).

``after=N`` moves a ``reset`` or ``cut`` into the body: ``reset`` forwards the first N bytes of the
request body upstream and then drops both connections (an upload broken mid-PATCH: the registry
keeps a partial chunk); ``cut`` resets after N bytes of the response body (a download broken
mid-GET). ``skip=N`` lets the first N matching requests through before the rule fires (a fault
on the fifth chunk of an upload). ``every=N`` fires on every Nth matching request only (a
registry that fails every second request defeats a retry that repeats the same request pattern).

Bodies are streamed in ``PIPE_CHUNK`` pieces both ways, so a multi-GiB blob passes through in
bounded memory; only bodies without a Content-Length (small error documents) are buffered.
``seen`` lists ``(method, path)`` and ``headers_seen`` the request headers, in arrival order.
``max_inflight`` records the most requests handled at once. The ``Host`` header is forwarded as
sent, so the registry's ``Location`` headers point back at the proxy.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "trailer"}
PIPE_CHUNK = 1 << 20


@dataclass
class Fault:
    kind: str
    count: int
    method: str | None = None
    path: str | None = None
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    after: int | None = None
    skip: int = 0
    every: int = 1
    fired: int = 0
    matched: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.count > 0
            and (self.method is None or self.method == method)
            and (self.path is None or re.search(self.path, path) is not None)
        )


class FaultProxy:
    def __init__(self, upstream_host: str):
        self.upstream = upstream_host
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.inflight = 0
        self.max_inflight = 0
        #: seconds every forwarded request is held (makes overlapping requests observable)
        self.hold = 0.0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, kind: str, count: int, *, method: str | None = None, path: str | None = None,
               status: int = 500, retry_after: str | None = None, delay: float = 0.0,
               after: int | None = None, skip: int = 0, every: int = 1) -> Fault:
        fault = Fault(kind, count, method, path, status, retry_after, delay, after, skip, every)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.seen.clear()
            self.headers_seen.clear()

    def _take(self, method: str, path: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            self.seen.append((method, path))
            self.headers_seen.append(headers)
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.skip > 0:  # let this one pass, fire on a later match
                        fault.skip -= 1
                        continue
                    fault.matched += 1
                    if fault.matched % fault.every:  # ``every=2``: only every 2nd match fires
                        continue
                    fault.count -= 1
                    fault.fired += 1
                    return fault
        return None

    def _inflight_window(self) -> None:
        """Between receiving a request and starting to answer it (``hold``, ``max_inflight``)."""
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.hold:
                time.sleep(self.hold)
        finally:
            with self._lock:
                self.inflight -= 1

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def finish(self):
                try:
                    super().finish()
                except OSError:
                    pass

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def _pipe_body(self, sink, limit: int | None = None) -> int:
                """Read the request body in pieces, handing each to ``sink``; stop after ``limit``."""
                left = int(self.headers.get("Content-Length") or 0)
                if limit is not None:
                    left = min(left, limit)
                moved = 0
                while left > 0:
                    piece = self.rfile.read(min(PIPE_CHUNK, left))
                    if not piece:
                        break
                    sink(piece)
                    moved += len(piece)
                    left -= len(piece)
                return moved

            def handle_any(self):
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                fault = proxy._take(self.command, self.path, headers)
                kind = fault.kind if fault is not None else None
                if kind in ("status", "reset") and not (kind == "reset" and fault.after is not None):
                    self._pipe_body(lambda piece: None)
                    proxy._inflight_window()
                    return self._reset() if kind == "reset" else self._status(fault)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in headers.items():
                        conn.putheader(k, v)
                    conn.endheaders()
                    if kind == "reset":  # mid-upload: part of the body reaches the registry
                        self._pipe_body(conn.send, fault.after)
                        time.sleep(0.2)  # let the registry store what it got before it sees EOF
                        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        conn.close()
                        return self._reset()
                    self._pipe_body(conn.send)
                    proxy._inflight_window()
                    resp = conn.getresponse()
                    if kind == "drop":
                        while resp.read(PIPE_CHUNK):
                            pass
                        return self._reset()
                    if kind == "delay":
                        time.sleep(fault.delay)
                    self._answer(resp, fault)
                finally:
                    conn.close()
                return None

            def _status(self, fault: Fault) -> None:
                self.send_response(fault.status)
                if fault.retry_after is not None:
                    self.send_header("Retry-After", fault.retry_after)
                payload = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _answer(self, resp: http.client.HTTPResponse, fault: Fault | None) -> None:
                """Relay the upstream answer, streamed when its length is known."""
                kind = fault.kind if fault is not None else None
                head = self.command == "HEAD"
                length = None if head else resp.length
                buffered = None
                if not head and length is None:  # no Content-Length: small, read it whole
                    buffered = resp.read()
                    length = len(buffered)
                send_len = length
                if kind == "truncate" and length:
                    send_len = length // 2
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() in _HOP or k.lower() == "content-length":
                        continue
                    self.send_header(k, v)
                if head:
                    send_len = resp.getheader("Content-Length")
                if send_len is not None:
                    self.send_header("Content-Length", str(send_len))
                self.end_headers()
                if head:
                    return
                stop = send_len
                if kind == "cut" and length:
                    stop = fault.after if fault.after is not None else length // 2
                sent, first = 0, True
                while sent < stop:
                    piece = buffered[sent:sent + PIPE_CHUNK] if buffered is not None else resp.read(
                        min(PIPE_CHUNK, stop - sent))
                    if not piece:
                        break
                    if first and kind == "corrupt":
                        piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
                    first = False
                    piece = piece[: stop - sent]
                    self.wfile.write(piece)
                    sent += len(piece)
                self.wfile.flush()
                # a cut, or upstream died early: do not pretend the body is complete
                if (kind == "cut" and length) or sent < send_len:
                    self._reset()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_any

        return Handler

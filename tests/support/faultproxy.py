"""A fault-injecting HTTP proxy in front of a real registry (threaded stdlib).

Rules fire on matching requests a given number of times, then requests pass through untouched:
``status`` answers with an HTTP status (500, 503, 429 + ``Retry-After``), ``reset`` closes the
connection with a TCP RST before answering, ``cut`` forwards but resets after half the response
body, ``corrupt`` flips one byte of the response body, ``truncate`` answers with the first half of
the body and a matching (short) Content-Length, ``delay`` holds the answer ``delay`` seconds.
``max_inflight`` records the most requests handled at once. The ``Host`` header is forwarded as sent, so the
registry's ``Location`` headers point back at the proxy.
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


@dataclass
class Fault:
    kind: str
    count: int
    method: str | None = None
    path: str | None = None
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    fired: int = 0

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
               status: int = 500, retry_after: str | None = None, delay: float = 0.0) -> Fault:
        fault = Fault(kind, count, method, path, status, retry_after, delay)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.seen.clear()

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.seen.append((method, path))
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.count -= 1
                    fault.fired += 1
                    return fault
        return None

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

            def _body(self) -> bytes | None:
                length = self.headers.get("Content-Length")
                return self.rfile.read(int(length)) if length else None

            def handle_any(self):
                body = self._body()
                with proxy._lock:  # window between receiving a request and starting to answer it
                    proxy.inflight += 1
                    proxy.max_inflight = max(proxy.max_inflight, proxy.inflight)
                try:
                    fault = proxy._take(self.command, self.path)
                    if proxy.hold:
                        time.sleep(proxy.hold)
                finally:
                    with proxy._lock:
                        proxy.inflight -= 1
                return self._handle(body, fault)

            def _handle(self, body, fault):
                if fault is not None and fault.kind == "delay":
                    time.sleep(fault.delay)
                if fault is not None and fault.kind == "reset":
                    return self._reset()
                if fault is not None and fault.kind == "status":
                    self.send_response(fault.status)
                    if fault.retry_after is not None:
                        self.send_header("Retry-After", fault.retry_after)
                    payload = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return None
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read() if self.command != "HEAD" else b""
                if fault is not None and fault.kind == "corrupt" and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                if fault is not None and fault.kind == "truncate" and data:
                    data = data[: len(data) // 2]
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() in _HOP or k.lower() == "content-length":
                        continue
                    self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                if fault is not None and fault.kind == "cut":
                    length = str(len(data))
                    data = data[: len(data) // 2]
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                conn.close()
                if fault is not None and fault.kind == "cut":
                    self._reset()
                return None

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_any

        return Handler

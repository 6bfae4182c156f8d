"""A token server for distribution's ``auth.token`` (docs/spec/auth/token.md, oauth.md).

GET ``/token?service=&scope=`` with basic credentials (or anonymously: pull only when
``anonymous_pull``), POST ``/token`` with ``grant_type=refresh_token`` or ``password``. Tokens are
RS256 JWTs carrying the signing certificate in ``x5c``; the registry trusts that certificate
through ``rootcertbundle``. Every request is recorded for assertions.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from support.tlscerts import CertPair

ISSUER = "overlaybd-test-issuer"
SERVICE = "overlaybd-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    def __init__(self, signer: CertPair, users: dict[str, str], refresh_tokens: dict[str, str],
                 *, anonymous_pull: bool = False, lifetime: int = 300):
        self.signer = signer
        self.users = users
        self.refresh_tokens = refresh_tokens
        self.anonymous_pull = anonymous_pull
        self.lifetime = lifetime
        self.requests: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def issue(self, subject: str, scopes: list[str], allowed: set[str]) -> str:
        der = self.signer.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if a in allowed]
            if kind == "repository" and granted:
                access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + self.lifetime,
                  "nbf": now - 60, "iat": now, "jti": f"{now}-{len(self.requests)}", "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.signer.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _basic_user(self) -> str | None:
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return None
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                return user if server.users.get(user) == password else ""

            def do_GET(self):
                query = parse_qs(urlsplit(self.path).query)
                scopes = query.get("scope", [])
                user = self._basic_user()
                server.requests.append({"method": "GET", "scopes": scopes, "user": user,
                                        "service": query.get("service", [None])[0]})
                if user == "":
                    return self._reply(401, {"details": "invalid credentials"})
                if user is None:
                    if not server.anonymous_pull:
                        return self._reply(401, {"details": "authentication required"})
                    return self._reply(200, {"token": server.issue("", scopes, {"pull"}), "expires_in": server.lifetime})
                token = server.issue(user, scopes, {"pull", "push", "delete"})
                return self._reply(200, {"token": token, "expires_in": server.lifetime})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                grant = form.get("grant_type", [""])[0]
                scopes = form.get("scope", [""])[0].split()
                record = {"method": "POST", "grant_type": grant, "scopes": scopes,
                          "service": form.get("service", [None])[0], "client_id": form.get("client_id", [None])[0]}
                server.requests.append(record)
                if grant == "refresh_token":
                    user = server.refresh_tokens.get(form.get("refresh_token", [""])[0])
                elif grant == "password":
                    name = form.get("username", [""])[0]
                    user = name if server.users.get(name) == form.get("password", [""])[0] else None
                else:
                    return self._reply(400, {"error": "unsupported_grant_type"})
                if not user:
                    return self._reply(401, {"error": "invalid_grant"})
                token = server.issue(user, scopes, {"pull", "push", "delete"})
                return self._reply(200, {"access_token": token, "expires_in": server.lifetime, "scope": " ".join(scopes)})

        return Handler

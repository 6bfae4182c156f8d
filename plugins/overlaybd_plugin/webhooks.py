"""Registry push notifications → ``overlaybd_convert`` runs: ``POST /overlaybd/webhook``.

Point a CNCF distribution registry (``notifications.endpoints``) or a Harbor project webhook
(``PUSH_ARTIFACT``) here. The sender authenticates with a shared token, the password of the
connection ``[overlaybd] webhook_conn_id`` (default ``overlaybd_webhook``), sent as
``Authorization: Bearer <token>`` or as the bare header value (Harbor's "Auth Header"); it is
compared in constant time. Answers:

* 202 — authenticated and read; the body lists what was queued and what was ignored, and why.
  Runs start after the burst window (see :mod:`overlaybd_provider.events.intake`).
* 400 — not a notification we can read (nothing is triggered); 401 — missing or wrong token;
  413 — body over 1 MiB; 503 — the token connection or the rules are missing/broken.

``GET /overlaybd/webhook/recent`` (an Airflow user who may read DAGs) shows the latest decisions.
Nothing logged here contains the token or the request body.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from overlaybd_plugin.auth import require_dag_reader

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
DEFAULT_CONN_ID = "overlaybd_webhook"
DEFAULT_RULES_VARIABLE = "overlaybd_push_rules"


def _setting(key: str, fallback: str | None) -> str | None:
    from airflow.sdk.configuration import conf

    return conf.get("overlaybd", key, fallback=fallback) or fallback


def expected_token() -> str:
    """The shared token (password of the webhook connection); 503 when it is not configured."""
    from airflow.sdk import BaseHook

    conn_id = _setting("webhook_conn_id", DEFAULT_CONN_ID) or DEFAULT_CONN_ID
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:
        conn = None
    token = (conn.password or "") if conn is not None else ""
    if len(token) < 16:
        log.error("webhook: connection %r is missing or its password (the token) is shorter than 16 characters",
                  conn_id)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"webhook token connection {conn_id!r} is not configured")
    return token


def load_rules():
    """Push rules from the Variable ``[overlaybd] push_rules_variable``, else ``push_rules_file``."""
    from airflow.sdk import Variable
    from overlaybd_provider.events.rules import RuleError, parse_rules

    name = _setting("push_rules_variable", DEFAULT_RULES_VARIABLE) or DEFAULT_RULES_VARIABLE
    text = Variable.get(name, default=None)
    source = f"Variable {name!r}"
    if text is None and (path := _setting("push_rules_file", None)):
        source = f"file {path}"
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            log.error("webhook: cannot read push rules %s: %s", source, exc.strerror)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"push rules: cannot read {source}") from None
    try:
        return parse_rules(text)
    except RuleError as exc:
        log.error("webhook: push rules in %s are invalid: %s", source, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"push rules ({source}): {exc}") from None


def presented_token(request: Request) -> str:
    header = request.headers.get("authorization", "").strip()
    scheme, _, rest = header.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else header


async def read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise HTTPException(413, "notification body over 1 MiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPException(413, "notification body over 1 MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def create_router(intake: Any | None = None) -> APIRouter:
    """The webhook routes; ``intake`` (an :class:`~overlaybd_provider.events.intake.Intake`) is
    created on first use unless given (tests pass their own)."""
    from overlaybd_provider.events.intake import Intake
    from overlaybd_provider.events.payloads import PayloadError, parse_notification
    from overlaybd_provider.events.planner import plan_events

    router = APIRouter()
    state: dict[str, Any] = {"intake": intake}

    def get_intake() -> Intake:
        if state["intake"] is None:
            state["intake"] = Intake()
        return state["intake"]

    @router.post("/webhook", status_code=status.HTTP_202_ACCEPTED)
    async def receive(request: Request) -> JSONResponse:
        token = await run_in_threadpool(expected_token)
        if not hmac.compare_digest(presented_token(request).encode(), token.encode()):
            log.warning("webhook: rejected a notification from %s: missing or wrong token",
                        request.client.host if request.client else "?")
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong webhook token",
                                headers={"WWW-Authenticate": "Bearer"})
        body = await read_body(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and "json" not in content_type:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unsupported content type {content_type[:80]!r}")
        try:
            notification = parse_notification(body)
        except PayloadError as exc:
            # the log gets where and what, not the offending values (they came from the body)
            log.warning("webhook: rejected a malformed notification: %s", str(exc).split("'")[0].rstrip(" :"))
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        rules = await run_in_threadpool(load_rules)
        plan = plan_events(notification.events, rules)
        ignored = [*notification.ignored, *plan.ignored]
        intake_ = get_intake()
        intake_.note_ignored(i for i in ignored if not i.quiet)
        intake_.submit(plan.planned, rules.fold_seconds)
        if plan.planned:
            log.info("webhook: %s notification: %d conversion(s) queued, %d event(s) ignored",
                     notification.kind, len(plan.planned), len(ignored))
        return JSONResponse(
            status_code=status.HTTP_202_ACCEPTED,
            content={
                "kind": notification.kind,
                "queued": [p.describe() for p in plan.planned],
                "ignored": [{"what": i.what, "reason": i.reason} for i in ignored if not i.quiet],
                "ignored_quietly": sum(1 for i in ignored if i.quiet),
                "fold_seconds": rules.fold_seconds,
            },
        )

    @router.get("/webhook/recent")
    def recent(user: Any = Depends(require_dag_reader)) -> JSONResponse:
        return JSONResponse({"decisions": get_intake().recent()})

    return router

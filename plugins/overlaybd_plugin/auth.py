"""Authentication for the overlaybd page: Airflow serves plugin apps without any login check.

Every route depends on :func:`require_dag_reader`, which validates the Airflow JWT (an
``Authorization: Bearer`` header, or the ``_token`` cookie the Airflow UI sets) through the auth
manager and requires read access to DAGs. Missing or expired token → 401, invalid token or no
DAG read permission → 403, as Airflow's own REST API answers.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException, Request, status

log = logging.getLogger(__name__)

COOKIE_NAME = "_token"


def token_from_request(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE_NAME) or None


def _auth_manager():
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


async def require_dag_reader(request: Request) -> Any:
    """FastAPI dependency: the authenticated Airflow user, allowed to read DAGs."""
    from jwt import ExpiredSignatureError, InvalidTokenError

    token = token_from_request(request)
    if not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "Not authenticated", headers={"WWW-Authenticate": "Bearer"}
        )
    manager = _auth_manager()
    try:
        user = await manager.get_user_from_token(token)
    except ExpiredSignatureError:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "Token expired", headers={"WWW-Authenticate": "Bearer"}
        ) from None
    except InvalidTokenError:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Invalid JWT token") from None
    if not manager.is_authorized_dag(method="GET", user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "DAG read access required")
    return user


def readable_dag_ids(user: Any, dag_ids: set[str]) -> set[str]:
    """The subset of ``dag_ids`` this user may read (per-DAG permissions of the auth manager)."""
    if not dag_ids:
        return set()
    return _auth_manager().filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method="GET")

"""Airflow test set-up: a private AIRFLOW_HOME with a SQLite metadata DB for the whole session.

Airflow reads its configuration when first imported, so the environment is set when this
conftest is loaded, before any test module of this folder imports Airflow. The DAG folder is the
repository's ``dags/`` (``dag.test()`` needs the DAG file inside it) and the plugins folder the
repository's ``plugins/``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_HOME = Path(tempfile.mkdtemp(prefix="overlaybd-airflow-home-"))
atexit.register(shutil.rmtree, _HOME, True)

AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(_HOME / "passwords.json"),
    "AIRFLOW__API_AUTH__JWT_SECRET": "overlaybd-test-jwt-secret-0123456789abcdef-0123456789abcdef-0123456789",
    "AIRFLOW__API__SECRET_KEY": "overlaybd-test-secret-key",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
}
os.environ.update(AIRFLOW_ENV)
(_HOME / "passwords.json").write_text('{"admin": "admin-pw", "viewer": "viewer-pw"}')


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> Path:
    """A migrated metadata DB (SQLite), created once per session."""
    from airflow.utils import db

    db.resetdb()
    return airflow_home / "airflow.db"


@pytest.fixture
def sqlite_dedup(tmp_path: Path) -> Iterator[Path]:
    """A fresh embedded dedup DB path, exported as the ``overlaybd_dedup_sqlite`` connection."""
    path = tmp_path / "dedup.db"
    conn_id = "AIRFLOW_CONN_OVERLAYBD_DEDUP_SQLITE"
    os.environ[conn_id] = f'{{"conn_type": "sqlite", "host": "{path}"}}'
    yield path
    os.environ.pop(conn_id, None)

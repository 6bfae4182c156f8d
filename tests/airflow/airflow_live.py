"""A real Airflow for end-to-end tests: api-server + scheduler + dag-processor (+ triggerer when
asked: ``components=(*COMPONENTS, "triggerer")``), LocalExecutor.

Everything lives in a temporary AIRFLOW_HOME (SQLite metadata DB, logs, passwords file); ports are
free ones; the DAGs and plugins folders are the repository's. Processes run in their own process
groups and are stopped by group id at the end (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
ADMIN = ("admin", "e2e-admin-Pa55")
COMPONENTS = ("api-server", "scheduler", "dag-processor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AirflowRest:
    """REST calls against a running Airflow 3 api-server (simple auth manager login)."""

    url: str
    user: str = ADMIN[0]
    password: str = ADMIN[1]
    _token: str | None = None

    # -- REST ---------------------------------------------------------------------------------
    def token(self) -> str:
        if self._token is None:
            r = requests.post(
                f"{self.url}/auth/token", json={"username": self.user, "password": self.password}, timeout=10
            )
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def wait_dag(self, dag_id: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api("GET", f"/api/v2/dags/{dag_id}").status_code == 200:
                return
            time.sleep(1)
        raise RuntimeError(f"DAG {dag_id} not parsed after {timeout}s\n{self.logs()}")

    def unpause(self, dag_id: str) -> None:
        r = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        r.raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        r = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        if r.status_code != 200:
            raise RuntimeError(f"trigger {dag_id}: {r.status_code} {r.text}")
        return r.json()["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json().get("state")
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise RuntimeError(f"run {dag_id}/{run_id} still {state} after {timeout}s\n{self.logs()}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100}).json()["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return r.json()["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        r = self.api(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
            params={"map_index": map_index, "deserialize": True},
        )
        r.raise_for_status()
        return r.json()["value"]

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        """Every try of a task instance (hostname, state, try_number), oldest first."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        path += f"/{map_index}/tries" if map_index >= 0 else "/tries"
        r = self.api("GET", path)
        r.raise_for_status()
        return sorted(r.json()["task_instances"], key=lambda t: t["try_number"])

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        r = self.api(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"map_index": map_index, "full_content": True},
            headers={"Accept": "application/json"},
        )
        r.raise_for_status()
        lines = r.json().get("content", [])
        return "\n".join(line.get("event", "") if isinstance(line, dict) else str(line) for line in lines)


@dataclass
class RemoteAirflow(AirflowRest):
    """An Airflow started by someone else (scripts/cluster.sh): its URL, login and log folder."""

    url: str = ""
    user: str = ADMIN[0]
    password: str = ADMIN[1]
    log_dir: Path | None = None
    _token: str | None = None

    def logs(self, tail: int = 4000) -> str:
        if self.log_dir is None:
            return ""
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted(self.log_dir.glob("*.log")))


@dataclass
class LiveAirflow(AirflowRest):
    home: Path = Path()
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    components: tuple[str, ...] = COMPONENTS
    _token: str | None = None
    url: str = ""

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": "e2e-jwt-secret-0123456789abcdef0123456789abcdef0123456789abcdef01",
                "AIRFLOW__API__SECRET_KEY": "e2e-secret-key",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN[0]}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
                "AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG": "16",
                # four processes share one SQLite file: wait for its lock instead of failing
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "airflow_local_settings.connect_args",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "airflow_local_settings.connect_args",
            }
        )
        env.update(self.extra_env)
        return env

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> LiveAirflow:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({ADMIN[0]: ADMIN[1]}))
        (self.home / "config").mkdir(exist_ok=True)  # on sys.path of every Airflow process
        (self.home / "config" / "airflow_local_settings.py").write_text('connect_args = {"timeout": 60}\n')
        self.cli("db", "migrate", timeout=300)
        # WAL: readers (api-server, dag-processor) no longer block the scheduler's and CLI's writes
        db = sqlite3.connect(self.home / "airflow.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.close()
        for name in self.components:
            self.start_component(name)
        self.wait_healthy()
        return self

    def start_component(self, name: str) -> None:
        commands = {
            "api-server": ["api-server", "--port", str(self.port), "--host", "127.0.0.1"],
            "scheduler": ["scheduler"],
            "dag-processor": ["dag-processor"],
            "triggerer": ["triggerer"],
        }
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [AIRFLOW, *commands[name]], env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop_component(self, name: str, timeout: float = 30) -> None:
        """Stop one component (its process group: SIGTERM, then SIGKILL), e.g. to test a restart."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for name in self.procs:
            path = self.home / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def cli(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            [AIRFLOW, *args], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            try:
                r = requests.get(f"{self.url}/api/v2/monitor/health", timeout=2)
                if r.ok and r.json().get("scheduler", {}).get("status") == "healthy":
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Airflow not healthy after {timeout}s\n{self.logs()}")


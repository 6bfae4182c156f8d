"""docker-compose.yml and its Dockerfile: Docker cannot run here, so check the structure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker --queues default,overlaybd",
}


def cluster_env() -> dict[str, str]:
    """docker/cluster.env: the settings scripts/cluster.sh and compose share."""
    lines = (REPO / "docker" / "cluster.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_services_and_backing_stores(compose):
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", "mysql", "registry", "airflow-init", *AIRFLOW_SERVICES}
    assert services["registry"]["image"] == "registry:2"
    assert services["redis"]["image"].startswith("redis:")
    assert services["postgres"]["image"].startswith("postgres:")
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == command, name
        assert "healthcheck" in services[name], name


def test_airflow_services_share_one_celery_configuration(compose):
    services = compose["services"]
    shared = cluster_env()
    assert shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" and shared["AIRFLOW__OVERLAYBD__QUEUE"] == "overlaybd"
    envs = [services[name]["environment"] for name in AIRFLOW_SERVICES]
    first = envs[0]
    for name in AIRFLOW_SERVICES:  # the same settings file as scripts/cluster.sh, never overridden
        assert services[name]["env_file"] == "docker/cluster.env", name
        assert not set(shared) & set(services[name]["environment"]), name
    assert first["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert first["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert first["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")
    for env in envs:  # same JWT secret and secret key everywhere, or task tokens are rejected
        for key in (
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW__API__SECRET_KEY",
            "AIRFLOW__CELERY__BROKER_URL",
        ):
            assert env[key] == first[key], key
    assert first["AIRFLOW_CONN_OVERLAYBD_DEDUP"].startswith("mysql://overlaybd:overlaybd@mysql:3306/")
    # every Airflow service builds the same image with the provider inside
    assert {services[n]["image"] for n in AIRFLOW_SERVICES} == {services["airflow-init"]["image"]}
    assert services["airflow-worker"]["build"]["dockerfile"] == "docker/airflow/Dockerfile"
    # workers listen to the queues cluster.sh gives its workers
    assert services["airflow-worker"]["command"].endswith(shared["OVERLAYBD_WORKER_QUEUES"])
    script = (REPO / "scripts" / "cluster.sh").read_text()
    assert "docker/cluster.env" in script and "--queues" in script


def test_worker_scales_and_shares_no_volume(compose):
    services = compose["services"]
    worker = services["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker  # `--scale airflow-worker=N`
    for name in AIRFLOW_SERVICES:
        volumes = services[name]["volumes"]
        assert "./dags:/opt/airflow/dags" in volumes and "./plugins:/opt/airflow/plugins" in volumes
        assert not any(v.startswith("staging:") for v in volumes), name  # stages share no disk
    assert (REPO / "dags" / "overlaybd_convert.py").is_file() and (REPO / "plugins").is_dir()
    assert "staging" not in compose["volumes"]


def test_mysql_is_initialised_with_the_dedup_schema(compose):
    mysql = compose["services"]["mysql"]
    mount = next(v for v in mysql["volumes"] if "docker-entrypoint-initdb.d" in v)
    host_dir = REPO / mount.split(":")[0]
    scripts = sorted(host_dir.glob("*.sql"))
    assert scripts, host_dir
    text = "".join(p.read_text() for p in scripts)
    for table in ("overlaybd_layers", "overlaybd_manifests", "overlaybd_conversions"):
        assert (
            f"CREATE TABLE IF NOT EXISTS {table}" in text or f"CREATE TABLE IF NOT EXISTS `{table}`" in text
        )
    assert mysql["environment"]["MYSQL_DATABASE"] == "overlaybd"


def test_dockerfile_installs_the_repo_with_a_celery_pin():
    dockerfile = (REPO / "docker" / "airflow" / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}", dockerfile, re.M)
    assert "ARG AIRFLOW_VERSION=3.3.2" in dockerfile
    assert '"celery[redis]>=5.5,<5.7"' in dockerfile
    assert "apache-airflow-providers-celery" in dockerfile
    assert (
        "/opt/overlaybd-src[airflow,mysql]" in dockerfile
        and "COPY --chown=airflow:0 . /opt/overlaybd-src" in dockerfile
    )
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "var" in ignored

#!/usr/bin/env bash
# An Airflow 3.3 CeleryExecutor cluster on this machine, without Docker:
#
#   bash scripts/cluster.sh up       # start (idempotent); writes var/cluster/env
#   bash scripts/cluster.sh status   # what runs
#   bash scripts/cluster.sh down     # stop exactly what `up` started (--purge: drop its databases too)
#
# PostgreSQL (metadata DB) and Redis (Celery broker) must already run here (this machine kind
# starts them); MariaDB holds the dedup database. `up` creates the databases and users it needs,
# migrates Airflow, and starts api-server, scheduler, dag-processor, triggerer and
# $OVERLAYBD_WORKERS (default 2) Celery workers. Every worker has its own AIRFLOW_HOME under the
# cluster directory (its work directory, blob cache and task logs), its own --celery-hostname, its
# own task-instance hostname (127.0.2.N, where its log server listens) and no directory shared with
# another worker: stages hand over through XCom and the registry. The settings common with
# docker-compose.yml are in docker/cluster.env.
#
# Knobs (environment): OVERLAYBD_WORKERS, OVERLAYBD_CLUSTER_DIR (default var/cluster),
# OVERLAYBD_CLUSTER_PORT (api-server, default 8080), OVERLAYBD_CLUSTER_LOG_PORT (worker log
# servers, default 8793), OVERLAYBD_CLUSTER_TRIGGER_LOG_PORT (default 8794),
# OVERLAYBD_CLUSTER_NAME (database and user names, default overlaybd_cluster),
# OVERLAYBD_CLUSTER_PG (host:port, default 127.0.0.1:5432), OVERLAYBD_CLUSTER_REDIS (default
# redis://127.0.0.1:6379/7), OVERLAYBD_CLUSTER_MYSQL (host:port, default 127.0.0.1:3306, root
# without password creates the dedup database), OVERLAYBD_WORKER_QUEUES (default from
# docker/cluster.env), OVERLAYBD_CLUSTER_ENV (extra KEY=value lines for every process).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

CLUSTER=${OVERLAYBD_CLUSTER_DIR:-$ROOT/var/cluster}
WORKERS=${OVERLAYBD_WORKERS:-2}
PORT=${OVERLAYBD_CLUSTER_PORT:-8080}
LOG_PORT=${OVERLAYBD_CLUSTER_LOG_PORT:-8793}
TRIGGER_LOG_PORT=${OVERLAYBD_CLUSTER_TRIGGER_LOG_PORT:-8794}
NAME=${OVERLAYBD_CLUSTER_NAME:-overlaybd_cluster}
PG=${OVERLAYBD_CLUSTER_PG:-127.0.0.1:5432}
REDIS=${OVERLAYBD_CLUSTER_REDIS:-redis://127.0.0.1:6379/7}
MYSQL=${OVERLAYBD_CLUSTER_MYSQL:-127.0.0.1:3306}
PY="$ROOT/.venv/bin/python"
AIRFLOW="$ROOT/.venv/bin/airflow"
PIDS="$CLUSTER/pids"
LOGS="$CLUSTER/logs"

die() { echo "cluster: $*" >&2; exit 1; }
say() { echo "cluster: $*"; }

# -- preconditions ------------------------------------------------------------------------------

check_services() {
  local pg_host=${PG%:*} pg_port=${PG##*:} my_host=${MYSQL%:*} my_port=${MYSQL##*:}
  command -v psql >/dev/null || die "psql is missing (apt-get install postgresql-client)"
  command -v mariadb >/dev/null || command -v mysql >/dev/null || die "the mariadb/mysql client is missing"
  psql -h "$pg_host" -p "$pg_port" -U postgres -tAc "select 1" >/dev/null 2>&1 \
    || die "PostgreSQL does not answer on $PG as user postgres (start it: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start)"
  "$PY" - "$REDIS" 2>/dev/null <<'EOF' || die "Redis does not answer at $REDIS (start it: redis-server --daemonize yes --port 6379)"
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_timeout=3).ping()
EOF
  mysql_client -h "$my_host" -P "$my_port" -uroot -e "select 1" >/dev/null 2>&1 \
    || die "MariaDB does not answer on $MYSQL as root (start it: start-stop-daemon --start --background --exec /usr/sbin/mariadbd)"
}

mysql_client() { if command -v mariadb >/dev/null; then mariadb "$@"; else mysql "$@"; fi; }

# -- secrets and settings -----------------------------------------------------------------------

make_secrets() {
  local file="$CLUSTER/secrets.env"
  if [ ! -f "$file" ]; then
    umask 077
    "$PY" - > "$file" <<'EOF'
import secrets
from cryptography.fernet import Fernet
print(f"JWT_SECRET={secrets.token_hex(32)}")
print(f"SECRET_KEY={secrets.token_hex(24)}")
print(f"FERNET_KEY={Fernet.generate_key().decode()}")
print(f"ADMIN_PASSWORD={secrets.token_urlsafe(12)}")
print(f"PG_PASSWORD={secrets.token_hex(12)}")
print(f"MYSQL_PASSWORD={secrets.token_hex(12)}")
EOF
    umask 022
  fi
  # shellcheck disable=SC1090
  . "$file"
}

create_databases() {
  local pg_host=${PG%:*} pg_port=${PG##*:} my_host=${MYSQL%:*} my_port=${MYSQL##*:}
  local pg=(psql -h "$pg_host" -p "$pg_port" -U postgres -v ON_ERROR_STOP=1 -tAq)
  if [ -z "$("${pg[@]}" -c "select 1 from pg_roles where rolname = '$NAME'")" ]; then
    "${pg[@]}" -c "create role $NAME login password '$PG_PASSWORD'"
  else
    "${pg[@]}" -c "alter role $NAME login password '$PG_PASSWORD'"
  fi
  if [ -z "$("${pg[@]}" -c "select 1 from pg_database where datname = '$NAME'")" ]; then
    "${pg[@]}" -c "create database $NAME owner $NAME"
  fi
  mysql_client -h "$my_host" -P "$my_port" -uroot -e "
    CREATE DATABASE IF NOT EXISTS \`${NAME}_dedup\` DEFAULT CHARACTER SET utf8mb4;
    CREATE USER IF NOT EXISTS '$NAME'@'%' IDENTIFIED BY '$MYSQL_PASSWORD';
    ALTER USER '$NAME'@'%' IDENTIFIED BY '$MYSQL_PASSWORD';
    GRANT ALL PRIVILEGES ON \`${NAME}_dedup\`.* TO '$NAME'@'%';"
}

write_settings() {
  local pg_host=${PG%:*} pg_port=${PG##*:} my_host=${MYSQL%:*} my_port=${MYSQL##*:}
  mkdir -p "$CLUSTER/control/config" "$PIDS" "$LOGS"
  printf '{"admin": "%s"}\n' "$ADMIN_PASSWORD" > "$CLUSTER/passwords.json"
  chmod 600 "$CLUSTER/passwords.json"
  umask 077
  {
    echo "# written by scripts/cluster.sh: the environment of every process of this cluster"
    grep -E '^[A-Z_][A-Z0-9_]*=' docker/cluster.env
    echo "AIRFLOW__CORE__DAGS_FOLDER=$ROOT/dags"
    echo "AIRFLOW__CORE__PLUGINS_FOLDER=$ROOT/plugins"
    echo "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$CLUSTER/passwords.json"
    echo "AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$PORT/execution/"
    echo "AIRFLOW__CORE__FERNET_KEY=$FERNET_KEY"
    echo "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://$NAME:$PG_PASSWORD@$pg_host:$pg_port/$NAME"
    echo "AIRFLOW__CELERY__RESULT_BACKEND=db+postgresql+psycopg2://$NAME:$PG_PASSWORD@$pg_host:$pg_port/$NAME"
    echo "AIRFLOW__CELERY__BROKER_URL=$REDIS"
    # every Celery key of this cluster carries its name: two clusters may share one Redis database
    echo "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX=$NAME:"
    echo "AIRFLOW__API__HOST=127.0.0.1"
    echo "AIRFLOW__API__PORT=$PORT"
    echo "AIRFLOW__API__BASE_URL=http://127.0.0.1:$PORT"
    echo "AIRFLOW__API__WORKERS=1"
    echo "AIRFLOW__API_AUTH__JWT_SECRET=$JWT_SECRET"
    echo "AIRFLOW__API__SECRET_KEY=$SECRET_KEY"
    echo "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$LOG_PORT"
    echo "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$TRIGGER_LOG_PORT"
    echo "AIRFLOW_CONN_OVERLAYBD_DEDUP=mysql://$NAME:$MYSQL_PASSWORD@$my_host:$my_port/${NAME}_dedup"
    [ -n "${OVERLAYBD_CLUSTER_ENV:-}" ] && printf '%s\n' "$OVERLAYBD_CLUSTER_ENV"
  } > "$CLUSTER/airflow.env"
  umask 022
  {
    echo "AIRFLOW_URL=http://127.0.0.1:$PORT"
    echo "AIRFLOW_USER=admin"
    echo "AIRFLOW_PASSWORD=$ADMIN_PASSWORD"
  } > "$CLUSTER/env"
  chmod 600 "$CLUSTER/env"
}

# -- processes ----------------------------------------------------------------------------------

starttime() {  # the kernel's start time of a pid (field 22 of /proc/PID/stat): pid + start = one process
  [ -r "/proc/$1/stat" ] && sed -E 's/^.*\) //' "/proc/$1/stat" | cut -d' ' -f20
}

alive() {  # alive NAME: the very process `up` started under NAME still runs (not a reused pid)
  local file="$PIDS/$1.pid" pid start
  [ -f "$file" ] || return 1
  read -r pid start < "$file"
  [ -n "$pid" ] && [ "$(starttime "$pid")" = "$start" ]
}

pid_of() { cut -d' ' -f1 < "$PIDS/$1.pid"; }

load_env() {  # export the KEY=value lines of a file as they are (no shell expansion: JSON is fine)
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue ;; esac
    export "${line?}"
  done < "$1"
}

launch() {  # launch NAME HOME CMD...: start CMD in its own session with the cluster environment
  local name=$1 home=$2
  shift 2
  if alive "$name"; then
    say "$name already runs (pid $(pid_of "$name"))"
    return
  fi
  mkdir -p "$home/config"
  (
    load_env "$CLUSTER/airflow.env"
    export AIRFLOW_HOME="$home"
    [ -f "$home/worker.env" ] && load_env "$home/worker.env"
    exec setsid "$@" > "$LOGS/$name.log" 2>&1 < /dev/null
  ) &
  echo "$! $(starttime $!)" > "$PIDS/$name.pid"
  say "started $name (pid $!, log $LOGS/$name.log)"
}

airflow_cli() {  # airflow_cli HOME ARGS...: a one-off airflow command with the cluster environment
  local home=$1
  shift
  (
    load_env "$CLUSTER/airflow.env"
    export AIRFLOW_HOME="$home"
    "$AIRFLOW" "$@"
  )
}

worker_home() {  # the private AIRFLOW_HOME of worker N, with its hostname and log server settings
  local n=$1 home="$CLUSTER/worker-$1"
  mkdir -p "$home/config"
  cat > "$home/config/obd_cluster_host.py" <<EOF
"""Task-instance hostname of cluster worker $n: the address its log server listens on."""


def hostname() -> str:
    return "127.0.2.$n"
EOF
  {
    echo "AIRFLOW__CORE__HOSTNAME_CALLABLE=obd_cluster_host.hostname"
    echo "OVERLAYBD_WORKER_NAME=worker-$n"
  } > "$home/worker.env"
  echo "$home"
}

wait_healthy() {
  local deadline=$((SECONDS + ${OVERLAYBD_CLUSTER_TIMEOUT:-180}))
  while [ $SECONDS -lt $deadline ]; do
    for name in api-server scheduler dag-processor triggerer; do
      alive "$name" || { tail -30 "$LOGS/$name.log" >&2; die "$name exited (log $LOGS/$name.log)"; }
    done
    if "$PY" - "http://127.0.0.1:$PORT/api/v2/monitor/health" <<'EOF' 2>/dev/null; then
import json, sys, urllib.request
doc = json.load(urllib.request.urlopen(sys.argv[1], timeout=3))
ok = all(doc.get(k, {}).get("status") == "healthy" for k in ("metadatabase", "scheduler", "dag_processor", "triggerer"))
sys.exit(0 if ok else 1)
EOF
      break
    fi
    sleep 1
  done
  [ $SECONDS -lt $deadline ] || die "Airflow is not healthy after ${OVERLAYBD_CLUSTER_TIMEOUT:-180}s (logs in $LOGS)"
  for n in $(seq "$WORKERS"); do
    until grep -q "ready" "$LOGS/worker-$n.log" 2>/dev/null; do
      alive "worker-$n" || { tail -30 "$LOGS/worker-$n.log" >&2; die "worker-$n exited"; }
      [ $SECONDS -lt $deadline ] || die "worker-$n not ready (log $LOGS/worker-$n.log)"
      sleep 1
    done
  done
}

up() {
  [ -x "$PY" ] || bash scripts/bootstrap.sh
  "$PY" -c "import airflow.providers.celery, psycopg2" 2>/dev/null || bash scripts/bootstrap.sh
  mkdir -p "$CLUSTER"
  check_services
  make_secrets
  create_databases
  write_settings
  if ! alive scheduler; then  # a fresh start: no Celery messages of an earlier run of this cluster
    forget_broker_keys
  fi
  say "migrating the metadata database ($NAME on $PG)"
  airflow_cli "$CLUSTER/control" db migrate > "$LOGS/db-migrate.log" 2>&1 \
    || { tail -40 "$LOGS/db-migrate.log" >&2; die "airflow db migrate failed"; }
  local control="$CLUSTER/control"
  launch api-server "$control" "$AIRFLOW" api-server --port "$PORT" --host 127.0.0.1
  launch scheduler "$control" "$AIRFLOW" scheduler
  launch dag-processor "$control" "$AIRFLOW" dag-processor
  launch triggerer "$control" "$AIRFLOW" triggerer
  local queues=${OVERLAYBD_WORKER_QUEUES:-$(grep -E '^OVERLAYBD_WORKER_QUEUES=' docker/cluster.env | cut -d= -f2)}
  for n in $(seq "$WORKERS"); do
    local home
    home=$(worker_home "$n")
    launch "worker-$n" "$home" "$AIRFLOW" celery worker --celery-hostname "worker-$n@%h" --queues "$queues" \
      --skip-serve-logs
    launch "logs-$n" "$home" "$PY" -c "
import uvicorn
from airflow.utils.serve_logs.log_server import create_app
uvicorn.run(create_app(), host='127.0.2.$n', port=$LOG_PORT, log_config=None, access_log=False)"
  done
  wait_healthy
  say "up: $WORKERS worker(s) on queues $queues; Airflow at http://127.0.0.1:$PORT (admin / see $CLUSTER/env)"
}

forget_broker_keys() {  # this cluster's keys only (prefix NAME:), never another cluster's
  "$PY" - "$REDIS" "$NAME:" <<'EOF'
import sys
import redis
r = redis.Redis.from_url(sys.argv[1])
for key in r.scan_iter(match=sys.argv[2] + "*", count=500):
    r.delete(key)
EOF
}

stop_one() {  # stop_one NAME: SIGTERM its session, then SIGKILL after 20 s
  local name=$1 pid
  alive "$name" || { rm -f "$PIDS/$name.pid"; return; }
  pid=$(pid_of "$name")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 40); do
    alive "$name" || break
    sleep 0.5
  done
  if alive "$name"; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$name.pid"
  say "stopped $name"
}

down() {
  [ -d "$PIDS" ] || { say "nothing runs under $CLUSTER"; return; }
  local name
  for file in "$PIDS"/worker-*.pid "$PIDS"/logs-*.pid; do
    [ -e "$file" ] && stop_one "$(basename "$file" .pid)"
  done
  for name in scheduler triggerer dag-processor api-server; do
    stop_one "$name"
  done
  if [ "${1:-}" = "--purge" ]; then
    local pg_host=${PG%:*} pg_port=${PG##*:} my_host=${MYSQL%:*} my_port=${MYSQL##*:}
    psql -h "$pg_host" -p "$pg_port" -U postgres -tAqc "drop database if exists $NAME" || true
    psql -h "$pg_host" -p "$pg_port" -U postgres -tAqc "drop role if exists $NAME" || true
    mysql_client -h "$my_host" -P "$my_port" -uroot -e \
      "DROP DATABASE IF EXISTS \`${NAME}_dedup\`; DROP USER IF EXISTS '$NAME'@'%';" || true
    forget_broker_keys || true
    rm -rf "$CLUSTER"
    say "purged $CLUSTER and its databases"
  fi
}

status() {
  local any=1
  for file in "$PIDS"/*.pid; do
    [ -e "$file" ] || continue
    local name
    name=$(basename "$file" .pid)
    if alive "$name"; then echo "$name: running (pid $(pid_of "$name"))"; any=0; else echo "$name: not running"; fi
  done
  return $any
}

case "${1:-}" in
  up) up ;;
  down) down "${2:-}" ;;
  status) status ;;
  *) echo "usage: bash scripts/cluster.sh up|down [--purge]|status" >&2; exit 2 ;;
esac

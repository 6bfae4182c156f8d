#!/usr/bin/env bash
# The main job: install everything (scripts/bootstrap.sh), then convert a real image through Airflow
# on embedded defaults: a SQLite metadata DB in var/main/airflow (gitignored), the embedded SQLite
# dedup DB, an OCI-layout source (the upstream hello-world fixture, or a small image made on the
# spot when ../shared is absent) converted by the overlaybd_convert DAG (`dag.test()`) to an
# OCI-layout target. Prints where the result is and its digest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

bash scripts/bootstrap.sh

VAR="$ROOT/var/main"
export AIRFLOW_HOME="$VAR/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__OVERLAYBD__SQLITE_PATH="$VAR/dedup.db"
export AIRFLOW__OVERLAYBD__STAGING_BASE="$VAR/staging"
mkdir -p "$AIRFLOW_HOME"

echo "main: migrating the Airflow metadata DB in $AIRFLOW_HOME"
.venv/bin/airflow db migrate >"$VAR/db-migrate.log" 2>&1 || { tail -50 "$VAR/db-migrate.log"; exit 1; }

SHARED="${OVERLAYBD_SHARED:-$ROOT/../shared}"
rm -rf "$VAR/source" "$VAR/target"
if [ -d "$SHARED/fixtures/hello-world-oci" ]; then
  echo "main: source = hello-world (linux/amd64) from $SHARED/fixtures/hello-world-oci"
  .venv/bin/python scripts/demo_image.py copy "$SHARED/fixtures/hello-world-oci" amd64 "$VAR/source" >/dev/null
else
  echo "main: $SHARED is absent: making a small two-layer image on the spot"
  .venv/bin/python scripts/demo_image.py make "$VAR/source" latest >/dev/null
fi

.venv/bin/python - "$VAR" <<'EOF'
import json
import sqlite3
import sys
from pathlib import Path

from airflow.dag_processing.dagbag import DagBag

var = Path(sys.argv[1])
conf = {
    "source": f"oci:{var / 'source'}",
    "destination": f"oci:{var / 'target'}:overlaybd",
    "algorithm": "lz4",
    "block_size_kb": 4,
}
bag = DagBag()
if bag.import_errors:
    sys.exit(f"main: DAG import errors: {bag.import_errors}")
dag = bag.dags["overlaybd_convert"]
print(f"main: running overlaybd_convert with conf {json.dumps(conf)}", flush=True)
run = dag.test(run_conf=conf)
if str(run.state) != "success":
    sys.exit(f"main: DAG run {run.run_id} ended {run.state}")

index = json.loads((var / "target" / "index.json").read_text())
entry = next(m for m in index["manifests"]
             if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "overlaybd")
db = sqlite3.connect(var / "dedup.db")
row = db.execute(
    "SELECT layers_total, layers_built, layers_reused, source_bytes, target_bytes, seconds "
    "FROM overlaybd_conversions ORDER BY id DESC LIMIT 1"
).fetchone()
print()
print(f"converted image : oci:{var / 'target'}:overlaybd")
print(f"digest          : {entry['digest']}  ({entry['mediaType']}, {entry['size']} bytes)")
if row:
    total, built, reused, src, dst, secs = row
    print(f"layers          : {total} ({built} built, {reused} reused from the dedup DB)")
    print(f"sizes           : {src} bytes source -> {dst} bytes overlaybd, {secs:.2f} s")
print(f"dedup database  : {var / 'dedup.db'}")
print(f"airflow home    : {var / 'airflow'} (run `airflow standalone` there to browse the run)")
EOF

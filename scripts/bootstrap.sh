#!/usr/bin/env bash
# Installs everything this project needs on a fresh Debian machine of this kind, idempotently:
# system packages (e2fsprogs, docker-registry, skopeo, chromium, MySQL client headers...),
# a virtualenv in .venv with the package (editable), Airflow 3.3 and the test tools,
# and starts MariaDB when it is installed but not running.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  e2fsprogs docker-registry skopeo apache2-utils openssl zstd
  default-libmysqlclient-dev pkg-config build-essential python3-dev
  chromium
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# MariaDB backs the dedup tests; this machine kind starts it, but restart it if it stopped.
if command -v mariadbd >/dev/null 2>&1 && ! mariadb -uroot -h127.0.0.1 -e 'select 1' >/dev/null 2>&1; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  for _ in $(seq 30); do mariadb -uroot -h127.0.0.1 -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[airflow,test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The optional accelerator (setup.py, overlaybd_provider/accel.py): the editable install compiles the
# hot modules; rebuild them when a source changed since (a stale build is never used: its .py runs).
if ! .venv/bin/overlaybd --accelerator >/dev/null 2>&1; then
  echo "bootstrap: building the accelerator (Cython, ~1 min)"
  .venv/bin/pip install -q --no-deps -e .
  .venv/bin/overlaybd --version
fi

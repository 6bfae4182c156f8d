#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/bootstrap.sh), lints, runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k zfile).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
lint_paths=()
for d in provider tests dags plugins bench; do [ -e "$d" ] && lint_paths+=("$d"); done
.venv/bin/ruff check "${lint_paths[@]}"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest exits 5 when nothing was collected: that is a failure for CI, not a pass.
exit $status

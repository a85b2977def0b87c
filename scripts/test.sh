#!/usr/bin/env bash
# Set up, then lint, type-check and run the whole test suite. Extra arguments go to pytest.
# The tests run in CSFL_TEST_WORKERS pytest-xdist workers (default 3: the Flower-engine tests
# spend most of their time waiting for processes and polls); mypy and the documentation
# site's strict build (mkdocs) run beside them.
# The multi-host tests (marker `hosts`: root, network namespaces, 3.5-4.5 minutes) are
# left out; a later `-m` replaces that (`bash scripts/test.sh -m hosts` runs only them).
set -euo pipefail
cd "$(dirname "$0")/.."
# Every process caches the bytecode of what it imports, even where the machine sets
# PYTHONDONTWRITEBYTECODE, so set-up compiles nothing: the first pytest worker compiles
# torch and MONAI while the others wait (tests/conftest.py), and Flower's processes (one per
# message) share what the first of them wrote.
unset PYTHONDONTWRITEBYTECODE
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check --quiet .
mypy_log=$(mktemp)
docs_log=$(mktemp)
docs_site=$(mktemp -d)
trap 'rm -rf "$mypy_log" "$docs_log" "$docs_site"' EXIT
.venv/bin/mypy >"$mypy_log" 2>&1 &
mypy_pid=$!
# the documentation site: a broken link, a missing page or a bad docstring fails the build
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$docs_site" \
    >"$docs_log" 2>&1 &
docs_pid=$!
status=0
.venv/bin/python -m pytest -n "${CSFL_TEST_WORKERS:-3}" --dist loadgroup -m "not hosts" "$@" \
    || status=$?
mypy_status=0
wait "$mypy_pid" || mypy_status=$?
docs_status=0
wait "$docs_pid" || docs_status=$?
cat "$mypy_log"
[ "$mypy_status" -eq 0 ] || exit "$mypy_status"
if [ "$docs_status" -ne 0 ]; then
    cat "$docs_log"
    echo "mkdocs build --strict failed" >&2
    exit "$docs_status"
fi
exit "$status"

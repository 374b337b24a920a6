#!/usr/bin/env bash
# The README's test command: set up (idempotent), then lint, type-check and run every test.
# Services (pcscd with vpcd, later PostgreSQL/Redis/SoftHSM) are started by the test fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export ONECARD_REQUIRE_SERVICES=1   # fixtures fail, not skip, when a service cannot be started
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest -q "$@"

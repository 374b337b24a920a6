#!/usr/bin/env bash
# The README's main command: set up (idempotent), then run `onecard demo` on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/onecard demo "$@"

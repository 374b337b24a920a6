#!/usr/bin/env bash
# One setup path behind both README commands: installs the Debian packages the project needs when they
# are missing, creates .venv and installs the project with its dev tools. Idempotent and quiet on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(pcscd libpcsclite-dev swig vsmartcard-vpcd pcsc-tools redis-server postgresql softhsm2 opensc fonts-wqy-microhei chromium)
missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts services on install; the project starts its own when it needs them.
  $SUDO service pcscd stop >/dev/null 2>&1 || true
  $SUDO service redis-server stop >/dev/null 2>&1 || true
  $SUDO service postgresql stop >/dev/null 2>&1 || true
fi

PY=${PYTHON:-python3}
stamp=.venv/.onecard-installed
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing the project into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1
  # pip's notes about this machine's unused local indexes and setuptools' editable-install banner are noise
  .venv/bin/python -m pip install -q -e '.[dev]' 2> >(grep -v -e "^WARNING: Location" -e "BuildBackendWarning" >&2)
  touch "$stamp"
fi

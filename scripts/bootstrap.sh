#!/usr/bin/env bash
# Installs everything qacloud needs on a fresh Debian 12 machine: the Debian packages listed in
# deps/apt.txt (only the missing ones), a venv in $VENV, and the Python packages pinned in
# requirements.lock. Idempotent; `make test` and `make demo` call it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${VENV:-.venv}")
PYTHON=${PYTHON:-python3}

mapfile -t wanted < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' deps/apt.txt | awk '{print $1}')
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$VENV/.qacloud-lock"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pipq() {  # pip, minus the noise of index locations that do not exist on this machine
  "$VENV/bin/pip" -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  return "${PIPESTATUS[0]}"
}
if ! cmp -s requirements.lock "$stamp" 2>/dev/null; then
  echo "bootstrap: installing Python packages from requirements.lock"
  pipq install -c requirements.lock -r requirements.in
  pipq install -c requirements.lock --no-deps --no-build-isolation -e .
  (cd / && "$VENV/bin/python" -c 'import buildbot, master.settings')  # fail loudly if broken
  cp requirements.lock "$stamp"
fi
# The lab's real Cobbler lives in its own venv (var/cobbler-venv, lab/cobbler-requirements.lock).
"$VENV/bin/python" -m lab.cobbler ensure-venv >/dev/null

#!/usr/bin/env bash
# Install everything redline needs on Debian 12 (run as root), then run the default job.
#   ./install.sh             install, then run the default experiment
#   ./install.sh --no-run    install only (what CI uses before running the tests)
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (redline creates cgroups and per-sandbox users)" >&2
  exit 1
fi

DEBIAN_PACKAGES=(bubblewrap catatonit util-linux coreutils procps iproute2 python3 python3-venv)
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== Installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== Python environment for the harness (.venv)"
[ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import redline' >/dev/null

if [ "${1:-}" = "--no-run" ]; then
  echo "== Installed. Run the tests with: .venv/bin/python -m pytest"
  exit 0
fi

echo "== Default job: sandbox self-check (what isolation and limits are in force here)"
exec .venv/bin/redline sandbox check

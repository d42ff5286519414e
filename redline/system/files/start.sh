#!/bin/bash
# Start the assistant: its LLM server, then its agent (which stays in the foreground).
# Usage: ./start.sh [--llm-port PORT] [--agent-port PORT]
# Ports default to llm_server.port and agent.port in config.json. Logs go to logs/.
set -e
cd "$(dirname "$0")"
LLM_PORT=$(python3 -c 'import json; print(json.load(open("config.json"))["llm_server"]["port"])')
AGENT_PORT=$(python3 -c 'import json; print(json.load(open("config.json"))["agent"]["port"])')
while [ $# -gt 0 ]; do
  case "$1" in
    --llm-port) LLM_PORT="$2"; shift 2 ;;
    --agent-port) AGENT_PORT="$2"; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "start.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p logs
# Vendored Python packages (pip install --target lib ...) are importable from lib/.
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}"
python3 llm_server.py --config config.json --port "$LLM_PORT" >> logs/llm_server.log 2>&1 &
LLM_PID=$!
# Wait up to 120 s for its /health (every 0.05 s); stop if it exits meanwhile.
python3 - "$LLM_PORT" "$LLM_PID" <<'WAIT' || { echo "start.sh: the LLM server exited; see logs/llm_server.log" >&2; exit 1; }
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        break
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(1)
    time.sleep(0.05)
WAIT
echo "LLM server (pid $LLM_PID) on port $LLM_PORT"
exec python3 -m agent --config config.json --port "$AGENT_PORT" --llm-port "$LLM_PORT"

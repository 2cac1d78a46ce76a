#!/usr/bin/env bash
# Stops the test environment that up.sh started in STATE_DIR. It signals only the processes
# named by the PID files in STATE_DIR/run/, and only while their command line still points
# into STATE_DIR. Data and logs stay. env.json and env.sh are removed, because their ports no
# longer respond.
#
# Usage: down.sh [STATE_DIR]   (default: <repo>/target/testenv)
set -euo pipefail

# shellcheck source=tests/env/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE_DIR=${1:-$DEFAULT_STATE_DIR}
if [[ ! -d "$STATE_DIR" ]]; then
  log "nothing to stop: $STATE_DIR does not exist"
  exit 0
fi
STATE_DIR=$(cd "$STATE_DIR" && pwd)
RUN_DIR="$STATE_DIR/run"
# Seconds to wait after SIGTERM before sending SIGKILL.
STOP_TIMEOUT=15

# Succeeds while process PID exists and is not a zombie. A stopped process stays a zombie until
# its parent or init reaps it, which can take seconds.
process_running() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# Sends SIGTERM to the named processes together, waits for all of them, then sends SIGKILL to
# any that are still running after STOP_TIMEOUT seconds.
stop_processes() {
  local name pid deadline pids=() names=()
  for name in "$@"; do
    if pid=$(live_pid "$STATE_DIR" "$name"); then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$name")
    fi
    rm -f "$RUN_DIR/$name.pid"
  done

  deadline=$((SECONDS + STOP_TIMEOUT))
  for i in "${!pids[@]}"; do
    while process_running "${pids[i]}" && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if process_running "${pids[i]}"; then
      log "${names[i]} (pid ${pids[i]}) did not stop within $STOP_TIMEOUT s after SIGTERM; sending SIGKILL"
      kill -KILL "${pids[i]}" 2>/dev/null || true
    fi
  done
  stopped_count=$((stopped_count + ${#pids[@]}))
}

mkdir -p "$RUN_DIR"
# up.sh holds the lock itself when it calls down.sh to clear a broken environment.
if [[ -z "${PMA2DOCKER_LOCK_HELD:-}" ]]; then
  exec 9>"$RUN_DIR/lock"
  flock 9
fi

rm -f "$STATE_DIR/env.json" "$STATE_DIR/env.sh"
stopped_count=0
# etcd goes last, so that kube-apiserver shuts down with its storage still there.
stop_processes registry-plain registry-auth registry-tls kube-apiserver
stop_processes etcd
if ((stopped_count > 0)); then
  log "stopped $stopped_count processes of the test environment in $STATE_DIR"
fi

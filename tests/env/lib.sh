# shellcheck shell=bash disable=SC2034 # variables are used by the scripts that source this file
# Shared helpers for the test environment scripts. Source it from bash; it defines functions and
# variables only.

ENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$ENV_DIR/../.." && pwd)
GO_MODULES_DIR="$ENV_DIR/go"

# Built binaries live outside the repository, one file per tool and version, so that every
# checkout on the machine shares them.
TOOLS_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/pma2docker/bin"

DEFAULT_STATE_DIR="$REPO_ROOT/target/testenv"

# Tools built from the wrapper modules under go/, one per line:
#   name  wrapper-module-dir  module-whose-version-names-the-binary  main-package
TOOLS_TABLE="
kube-apiserver kube-apiserver k8s.io/kubernetes k8s.io/kubernetes/cmd/kube-apiserver
kubectl kube-apiserver k8s.io/kubernetes k8s.io/kubernetes/cmd/kubectl
etcd etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3
registry registry github.com/distribution/distribution/v3 github.com/distribution/distribution/v3/cmd/registry
helm helm helm.sh/helm/v4 helm.sh/helm/v4/cmd/helm
crane crane github.com/google/go-containerregistry github.com/google/go-containerregistry/cmd/crane
regctl regctl github.com/regclient/regclient github.com/regclient/regclient/cmd/regctl
oras oras oras.land/oras oras.land/oras/cmd/oras
glua glua github.com/yuin/gopher-lua github.com/yuin/gopher-lua/cmd/glua
"

log() {
  printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

tool_names() {
  awk 'NF == 4 { print $1 }' <<<"$TOOLS_TABLE"
}

# Prints one field of a tool's row: 2 = module dir, 3 = version module, 4 = main package.
tool_field() {
  local name=$1 field=$2 value
  value=$(awk -v n="$name" -v f="$field" 'NF == 4 && $1 == n { print $f }' <<<"$TOOLS_TABLE")
  [[ -n "$value" ]] || die "unknown tool: $name"
  printf '%s\n' "$value"
}

# Prints the version at which a wrapper module's go.mod requires a module. It reads go.mod as
# text, so it works without Go installed.
module_version() {
  local gomod=$1 module=$2 version
  version=$(awk -v m="$module" '
    /=>/ { next }
    { for (i = 1; i < NF; i++) if ($i == m && $(i + 1) ~ /^v[0-9]/) { print $(i + 1); exit } }
  ' "$gomod")
  [[ -n "$version" ]] || die "$gomod does not require $module"
  printf '%s\n' "$version"
}

tool_version() {
  local name=$1
  module_version "$GO_MODULES_DIR/$(tool_field "$name" 2)/go.mod" "$(tool_field "$name" 3)"
}

tool_path() {
  local name=$1
  printf '%s/%s-%s\n' "$TOOLS_CACHE_DIR" "$name" "$(tool_version "$name")"
}

# Installs the Debian packages whose command is missing. Arguments are command:package pairs.
# apt-get update runs only when an install is needed.
ensure_apt_commands() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  ((${#missing[@]} > 0)) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    die "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}"
  fi
  log "installing Debian packages: ${missing[*]}"
  # Wait for the dpkg lock rather than fail when another apt-get is running.
  local lock_wait=(-o DPkg::Lock::Timeout=300)
  DEBIAN_FRONTEND=noninteractive apt-get "${lock_wait[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive apt-get "${lock_wait[@]}" install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
}

# Prints COUNT distinct free TCP ports on 127.0.0.1, one per line. The kernel picks them
# through bind(port 0), and all sockets stay open until every port is chosen, so the ports
# differ from each other. Another process can still take one before the server binds it.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
sockets = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    sockets.append(s)
for s in sockets:
    print(s.getsockname()[1])
EOF
}

# Prints the PID in STATE_DIR/run/NAME.pid if that process is alive and was started for
# STATE_DIR. Every process that up.sh starts has a path inside STATE_DIR on its command line,
# which guards against a PID that the kernel has since given to an unrelated process.
live_pid() {
  local state_dir=$1 name=$2 pid
  pid=$(cat "$state_dir/run/$name.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$state_dir/" || return 1
  printf '%s\n' "$pid"
}

# Prints the absolute form of a directory path, creating the directory.
absolute_dir() {
  mkdir -p "$1"
  (cd "$1" && pwd)
}

#!/usr/bin/env bash
# Starts the local test environment on 127.0.0.1: etcd, kube-apiserver with RBAC, and three OCI
# registries (plain HTTP, HTTP with basic auth, HTTPS). Every port is picked free at start, so
# several environments can run on one machine. Connection details go to STATE_DIR/env.json and
# STATE_DIR/env.sh, process logs to STATE_DIR/logs/.
#
# Usage: up.sh [STATE_DIR]   (default: <repo>/target/testenv)
# PMA2DOCKER_START_TIMEOUT sets the seconds to wait for each process to become ready (120).
#
# If the environment in STATE_DIR is already running and healthy, up.sh leaves it as it is.
# Otherwise it stops whatever is left of it and starts a fresh one: new certificates, an empty
# etcd, empty registries and a new registry password.
set -euo pipefail

# shellcheck source=tests/env/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE_DIR=$(absolute_dir "${1:-$DEFAULT_STATE_DIR}")
BIN_DIR="$STATE_DIR/bin"
PKI_DIR="$STATE_DIR/pki"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/logs"
REGISTRY_NAMES=(plain auth tls)
AUTH_USERNAME=pma2docker
# Seconds to wait for each process to become ready. kube-apiserver 1.36 was ready after about
# 3 s on a 2-core machine, and the limit leaves room for a machine busy with builds.
START_TIMEOUT=${PMA2DOCKER_START_TIMEOUT:-120}

# Succeeds when env.sh exists, every process is alive and every endpoint responds.
environment_healthy() {
  local name
  [[ -f "$STATE_DIR/env.sh" && -f "$STATE_DIR/env.json" ]] || return 1
  for name in etcd kube-apiserver "${REGISTRY_NAMES[@]/#/registry-}"; do
    live_pid "$STATE_DIR" "$name" >/dev/null || return 1
  done
  (
    # shellcheck source=/dev/null
    source "$STATE_DIR/env.sh"
    curl -fsS --max-time 5 --cacert "$STATE_DIR/ca.crt" "$PMA2DOCKER_APISERVER/readyz" >/dev/null &&
      registry_returns_status "http://$PLAIN_REGISTRY" 200 &&
      registry_returns_status "http://$AUTH_REGISTRY" 401 &&
      registry_returns_status "https://$TLS_REGISTRY" 200 --cacert "$TLS_CA_FILE"
  )
}

# Succeeds when GET URL/v2/ returns the expected HTTP status.
registry_returns_status() {
  local url=$1 expected=$2 status
  shift 2
  status=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "$@" "$url/v2/" 2>/dev/null) || return 1
  [[ "$status" == "$expected" ]]
}

# Starts a process in the background with its output in LOG_DIR/NAME.log and its PID in
# RUN_DIR/NAME.pid. The caller's environment is passed through, plus any VAR=value words
# given before the command.
start_process() {
  local name=$1
  shift
  log "starting $name"
  # 9>&- closes the lock file, so that the lock ends with up.sh and not with this process.
  env "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN_DIR/$name.pid"
}

# Waits until COMMAND succeeds; fails with the end of the log if NAME exits or times out.
wait_ready() {
  local name=$1
  shift
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ! live_pid "$STATE_DIR" "$name" >/dev/null; then
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "$name exited during start; log: $LOG_DIR/$name.log"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "$name was not ready after $START_TIMEOUT s; log: $LOG_DIR/$name.log"
    fi
    sleep 0.2
  done
  log "$name is ready"
}

# Writes an OpenSSL config that contains the X.509 extensions of every certificate made here.
write_openssl_config() {
  cat >"$PKI_DIR/openssl.cnf" <<'EOF'
[req]
distinguished_name = subject

[subject]

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
}

# Creates a self-signed CA: PKI_DIR/NAME.key and the certificate at CERT_PATH.
make_ca() {
  local name=$1 cert_path=$2
  openssl req -x509 -new -config "$PKI_DIR/openssl.cnf" -extensions ca \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 365 \
    -subj "/CN=pma2docker test $name" -keyout "$PKI_DIR/$name.key" -out "$cert_path" 2>/dev/null
}

# Creates PKI_DIR/NAME.crt and NAME.key signed by the CA at CA_CERT with key CA_KEY.
# EXTENSIONS is a section of openssl.cnf (server or client).
make_leaf() {
  local name=$1 subject=$2 extensions=$3 ca_cert=$4 ca_key=$5
  openssl req -new -config "$PKI_DIR/openssl.cnf" \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "$subject" -keyout "$PKI_DIR/$name.key" -out "$PKI_DIR/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$ca_cert" -CAkey "$ca_key" \
    -CAserial "$ca_key.srl" -CAcreateserial \
    -sha256 -days 365 -extfile "$PKI_DIR/openssl.cnf" -extensions "$extensions" \
    -out "$PKI_DIR/$name.crt" 2>/dev/null
  rm -f "$PKI_DIR/$name.csr"
}

make_certificates() {
  write_openssl_config
  # The cluster CA signs the apiserver's serving certificate and the client certificates
  # that the apiserver accepts (--client-ca-file).
  make_ca cluster-ca "$STATE_DIR/ca.crt"
  make_leaf apiserver "/CN=kube-apiserver" server "$STATE_DIR/ca.crt" "$PKI_DIR/cluster-ca.key"
  # O= is the Kubernetes group; system:masters is bound to cluster-admin.
  make_leaf admin "/O=system:masters/CN=pma2docker-admin" client \
    "$STATE_DIR/ca.crt" "$PKI_DIR/cluster-ca.key"
  # The TLS registry gets its own CA, so tests cannot pass by trusting the cluster CA.
  make_ca registry-ca "$STATE_DIR/registry-ca.crt"
  make_leaf registry-tls "/CN=pma2docker test registry" server \
    "$STATE_DIR/registry-ca.crt" "$PKI_DIR/registry-ca.key"
  # Key pair that signs and verifies service account tokens.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$PKI_DIR/sa.key"
  openssl pkey -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub"
  chmod 600 "$PKI_DIR"/*.key
}

start_etcd() {
  local client_port=$1 peer_port=$2
  start_process etcd "$BIN_DIR/etcd" \
    --name=pma2docker-test \
    --data-dir="$STATE_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$client_port" \
    --advertise-client-urls="http://127.0.0.1:$client_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="pma2docker-test=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync=true \
    --logger=zap --log-outputs=stderr
  wait_ready etcd curl -fsS --max-time 2 "http://127.0.0.1:$client_port/health"
}

start_apiserver() {
  local port=$1 etcd_port=$2
  # --advertise-address: with a loopback bind address, kube-apiserver would advertise the IP of
  # the host's default route, and fail to start where there is none.
  # --endpoint-reconciler-type=none: the reconciler would write the advertise address into the
  # "kubernetes" Endpoints, and validation rejects loopback addresses there.
  # --disable-admission-plugins=ServiceAccount: no controller-manager runs, so namespaces get
  # no "default" ServiceAccount and that plugin would reject every Pod.
  start_process kube-apiserver "$BIN_DIR/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 \
    --secure-port="$port" \
    --advertise-address=127.0.0.1 \
    --tls-cert-file="$PKI_DIR/apiserver.crt" \
    --tls-private-key-file="$PKI_DIR/apiserver.key" \
    --client-ca-file="$STATE_DIR/ca.crt" \
    --authorization-mode=RBAC \
    --service-cluster-ip-range=10.0.0.0/24 \
    --service-account-issuer="https://127.0.0.1:$port" \
    --service-account-key-file="$PKI_DIR/sa.pub" \
    --service-account-signing-key-file="$PKI_DIR/sa.key" \
    --disable-admission-plugins=ServiceAccount \
    --endpoint-reconciler-type=none \
    --allow-privileged=true
  wait_ready kube-apiserver curl -fsS --max-time 2 --cacert "$STATE_DIR/ca.crt" \
    "https://127.0.0.1:$port/readyz"
}

write_kubeconfig() {
  local server=$1
  (
    umask 077
    cat >"$STATE_DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pma2docker-test
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$STATE_DIR/ca.crt")
users:
- name: pma2docker-admin
  user:
    client-certificate-data: $(base64 -w0 "$PKI_DIR/admin.crt")
    client-key-data: $(base64 -w0 "$PKI_DIR/admin.key")
contexts:
- name: pma2docker-test
  context:
    cluster: pma2docker-test
    user: pma2docker-admin
current-context: pma2docker-test
EOF
  )
}

# Writes the distribution registry config for registry NAME listening on PORT. The optional
# third argument is extra YAML for the http section.
write_registry_config() {
  local name=$1 port=$2 http_extra=${3:-} auth=""
  if [[ "$name" == auth ]]; then
    auth="auth:
  htpasswd:
    realm: pma2docker-test
    path: $STATE_DIR/registries/auth/htpasswd"
  fi
  cat >"$STATE_DIR/registries/$name/config.yml" <<EOF
version: 0.1
log:
  level: info
  fields:
    service: registry-$name
storage:
  filesystem:
    rootdirectory: $STATE_DIR/registries/$name/storage
  # Tests delete manifests to empty a target repository.
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
$auth
http:
  addr: 127.0.0.1:$port
  secret: $(openssl rand -hex 16)
  headers:
    X-Content-Type-Options: [nosniff]
$http_extra
EOF
}

start_registry() {
  local name=$1 port=$2 scheme=http curl_options=() expected_status=200
  mkdir -p "$STATE_DIR/registries/$name/storage"
  case "$name" in
    plain)
      write_registry_config plain "$port"
      ;;
    auth)
      # bcrypt cost 5 (the htpasswd default) keeps the per-request password check cheap.
      htpasswd -nbB -C 5 "$AUTH_USERNAME" "$AUTH_PASSWORD" >"$STATE_DIR/registries/auth/htpasswd"
      write_registry_config auth "$port"
      expected_status=401
      ;;
    tls)
      write_registry_config tls "$port" "  tls:
    certificate: $PKI_DIR/registry-tls.crt
    key: $PKI_DIR/registry-tls.key"
      scheme=https
      curl_options=(--cacert "$STATE_DIR/registry-ca.crt")
      ;;
  esac
  # distribution v3 exports OpenTelemetry traces to localhost:4318 unless this is set.
  start_process "registry-$name" OTEL_TRACES_EXPORTER=none \
    "$BIN_DIR/registry" serve "$STATE_DIR/registries/$name/config.yml"
  wait_ready "registry-$name" registry_returns_status "$scheme://127.0.0.1:$port" "$expected_status" \
    "${curl_options[@]}"
}

write_connection_files() {
  local api_port=$1 plain_port=$2 auth_port=$3 tls_port=$4
  python3 - "$STATE_DIR" "$BIN_DIR" "$api_port" "$plain_port" "$auth_port" "$tls_port" \
    "$AUTH_USERNAME" "$AUTH_PASSWORD" >"$STATE_DIR/env.json.tmp" <<'EOF'
import json, sys
state_dir, bin_dir, api, plain, auth, tls, username, password = sys.argv[1:]
print(json.dumps({
    "stateDir": state_dir,
    "kubeconfig": f"{state_dir}/kubeconfig",
    "apiserver": f"https://127.0.0.1:{api}",
    "caFile": f"{state_dir}/ca.crt",
    "registries": {
        "plain": {"host": f"127.0.0.1:{plain}"},
        "auth": {"host": f"127.0.0.1:{auth}", "username": username, "password": password},
        "tls": {"host": f"127.0.0.1:{tls}", "caFile": f"{state_dir}/registry-ca.crt"},
    },
    "bin": bin_dir,
}, indent=2))
EOF
  {
    echo "# Generated by tests/env/up.sh. Source it to use the test environment in $STATE_DIR."
    printf 'export PMA2DOCKER_ENV_DIR=%q\n' "$STATE_DIR"
    printf 'export PMA2DOCKER_APISERVER=%q\n' "https://127.0.0.1:$api_port"
    printf 'export KUBECONFIG=%q\n' "$STATE_DIR/kubeconfig"
    printf 'export PLAIN_REGISTRY=%q\n' "127.0.0.1:$plain_port"
    printf 'export AUTH_REGISTRY=%q\n' "127.0.0.1:$auth_port"
    printf 'export AUTH_USERNAME=%q\n' "$AUTH_USERNAME"
    printf 'export AUTH_PASSWORD=%q\n' "$AUTH_PASSWORD"
    printf 'export TLS_REGISTRY=%q\n' "127.0.0.1:$tls_port"
    printf 'export TLS_CA_FILE=%q\n' "$STATE_DIR/registry-ca.crt"
    # shellcheck disable=SC2016 # $PATH must expand when env.sh is sourced
    printf 'export PATH=%q:"$PATH"\n' "$BIN_DIR"
  } >"$STATE_DIR/env.sh.tmp"
  chmod 600 "$STATE_DIR/env.json.tmp" "$STATE_DIR/env.sh.tmp"
  # env.json is written last, so its presence means that the environment is complete.
  mv -f "$STATE_DIR/env.sh.tmp" "$STATE_DIR/env.sh"
  mv -f "$STATE_DIR/env.json.tmp" "$STATE_DIR/env.json"
}

# Stops the processes of a start that failed. Their logs stay in LOG_DIR.
stop_after_failure() {
  local status=$?
  if ((status != 0)); then
    log "start failed; stopping the processes started so far"
    PMA2DOCKER_LOCK_HELD=1 "$ENV_DIR/down.sh" "$STATE_DIR" || true
  fi
}

print_summary() {
  log "test environment is up in $STATE_DIR"
  cat "$STATE_DIR/env.json"
  echo "To use it in a shell: source $STATE_DIR/env.sh"
}

main() {
  mkdir -p "$RUN_DIR"
  # Serialize up.sh and down.sh runs on the same STATE_DIR.
  exec 9>"$RUN_DIR/lock"
  flock 9

  if environment_healthy; then
    log "test environment in $STATE_DIR is already running"
    print_summary
    return 0
  fi

  local started=$SECONDS
  PMA2DOCKER_LOCK_HELD=1 "$ENV_DIR/down.sh" "$STATE_DIR"
  trap stop_after_failure EXIT
  rm -rf "$STATE_DIR/etcd" "$STATE_DIR/registries" "$PKI_DIR" "$BIN_DIR" "$LOG_DIR" \
    "$STATE_DIR/kubeconfig" "$STATE_DIR/ca.crt" "$STATE_DIR/registry-ca.crt"
  mkdir -p "$PKI_DIR" "$LOG_DIR" "$STATE_DIR/registries"

  ensure_apt_commands curl:curl openssl:openssl htpasswd:apache2-utils python3:python3
  "$ENV_DIR/build-tools.sh" --link "$BIN_DIR"

  make_certificates
  AUTH_PASSWORD=$(openssl rand -hex 16)

  local ports
  mapfile -t ports < <(free_ports 6)
  local etcd_port=${ports[0]} etcd_peer_port=${ports[1]} api_port=${ports[2]}
  local plain_port=${ports[3]} auth_port=${ports[4]} tls_port=${ports[5]}

  start_etcd "$etcd_port" "$etcd_peer_port"
  start_apiserver "$api_port" "$etcd_port"
  write_kubeconfig "https://127.0.0.1:$api_port"
  start_registry plain "$plain_port"
  start_registry auth "$auth_port"
  start_registry tls "$tls_port"
  write_connection_files "$api_port" "$plain_port" "$auth_port" "$tls_port"
  trap - EXIT
  log "started in $((SECONDS - started)) s"
  print_summary
}

main

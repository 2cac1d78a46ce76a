#!/usr/bin/env bash
# Checks the three registries of the test environment in STATE_DIR. The auth registry must
# reject anonymous requests with 401 and accept the generated password. The TLS registry must
# verify against the registry CA and fail without it. On each registry an artifact must push,
# show up in the catalog and delete. Exits non-zero on the first failure.
#
# Usage: check-registries.sh [STATE_DIR]   (default: <repo>/target/testenv)
set -euo pipefail

# shellcheck source=tests/env/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE_DIR=${1:-$DEFAULT_STATE_DIR}
[[ -f "$STATE_DIR/env.sh" ]] || die "no running test environment in $STATE_DIR; start it with tests/env/up.sh"
# shellcheck source=/dev/null
source "$STATE_DIR/env.sh"

work_dir=$(mktemp -d)
trap 'rm -rf "$work_dir"' EXIT
# crane reads credentials from $DOCKER_CONFIG/config.json; keep the user's file out of it.
export DOCKER_CONFIG="$work_dir/docker"
repository="check/artifact-$(openssl rand -hex 4)"
echo "registry check $(date -u +%FT%TZ)" >"$work_dir/payload.txt"

# Sends GET URL with the remaining arguments as curl options, and compares the HTTP status with
# EXPECTED. LABEL describes the options in messages, which must not show a password.
expect_status() {
  local expected=$1 label=$2 url=$3 status
  shift 3
  status=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$@" "$url") ||
    die "GET $url ($label) failed"
  [[ "$status" == "$expected" ]] || die "GET $url ($label) returned $status, expected $expected"
  echo "ok: GET $url ($label) returned $status"
}

# Pushes payload.txt as an artifact to HOST, lists it, deletes its manifest and checks that
# the tag is gone. The arrays named by ORAS_OPTIONS and CRANE_OPTIONS contain each tool's
# connection flags for that registry. Credentials come from $DOCKER_CONFIG, which both tools read.
push_list_delete() {
  local host=$1 reference digest
  local -n oras_options=$2 crane_options=$3
  reference="$host/$repository:v1"
  (cd "$work_dir" && oras push "${oras_options[@]}" "$reference" payload.txt >/dev/null)
  crane catalog "${crane_options[@]}" "$host" | grep -qxF "$repository" ||
    die "crane catalog of $host does not list $repository"
  digest=$(crane digest "${crane_options[@]}" "$reference")
  crane delete "${crane_options[@]}" "$host/$repository@$digest"
  if crane ls "${crane_options[@]}" "$host/$repository" 2>/dev/null | grep -qxF v1; then
    die "tag v1 of $host/$repository still exists after deleting $digest"
  fi
  echo "ok: $host: pushed, listed and deleted $repository@$digest"
}

# shellcheck disable=SC2034 # read through namerefs in push_list_delete
declare -a plain_http_oras=(--plain-http) plain_http_crane=(--insecure) \
  tls_oras=(--ca-file "$TLS_CA_FILE") tls_crane=()

echo "plain registry $PLAIN_REGISTRY"
expect_status 200 anonymous "http://$PLAIN_REGISTRY/v2/_catalog"
push_list_delete "$PLAIN_REGISTRY" plain_http_oras plain_http_crane

echo "auth registry $AUTH_REGISTRY"
expect_status 401 anonymous "http://$AUTH_REGISTRY/v2/_catalog"
expect_status 401 "wrong password" "http://$AUTH_REGISTRY/v2/_catalog" \
  -u "$AUTH_USERNAME:wrong-password"
expect_status 200 "generated password" "http://$AUTH_REGISTRY/v2/_catalog" \
  -u "$AUTH_USERNAME:$AUTH_PASSWORD"
if crane catalog --insecure "$AUTH_REGISTRY" >/dev/null 2>&1; then
  die "crane catalog of $AUTH_REGISTRY succeeded without credentials"
fi
echo "ok: crane catalog without credentials is rejected"
printf '%s' "$AUTH_PASSWORD" |
  crane auth login --insecure "$AUTH_REGISTRY" -u "$AUTH_USERNAME" --password-stdin 2>/dev/null
push_list_delete "$AUTH_REGISTRY" plain_http_oras plain_http_crane

echo "tls registry $TLS_REGISTRY"
expect_status 200 "registry CA" "https://$TLS_REGISTRY/v2/_catalog" --cacert "$TLS_CA_FILE"
if curl -sS --max-time 10 -o /dev/null "https://$TLS_REGISTRY/v2/" 2>/dev/null; then
  die "https://$TLS_REGISTRY verified without the registry CA"
fi
echo "ok: https://$TLS_REGISTRY is rejected without the registry CA"
# Go programs on Linux load their trusted roots from SSL_CERT_FILE when it is set.
SSL_CERT_FILE="$TLS_CA_FILE" push_list_delete "$TLS_REGISTRY" tls_oras tls_crane

echo "registry check passed"

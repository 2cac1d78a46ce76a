#!/usr/bin/env bash
# Checks that the test apiserver in STATE_DIR reports the built version and enforces RBAC. It
# creates a ServiceAccount whose Role grants only "get configmaps" in one new namespace, then
# checks that account's permissions with "kubectl auth can-i --as", which sends a
# SelfSubjectAccessReview. Exits non-zero when any result differs from the expected one.
#
# Usage: check-rbac.sh [STATE_DIR]   (default: <repo>/target/testenv)
set -euo pipefail

# shellcheck source=tests/env/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE_DIR=${1:-$DEFAULT_STATE_DIR}
KUBECONFIG_PATH="$STATE_DIR/kubeconfig"
[[ -f "$STATE_DIR/env.json" && -f "$KUBECONFIG_PATH" ]] ||
  die "no running test environment in $STATE_DIR; start it with tests/env/up.sh"

# kubectl built with the apiserver; the one on PATH may be outside the version skew policy.
KUBECTL="$STATE_DIR/bin/kubectl"
[[ -x "$KUBECTL" ]] || KUBECTL=$(command -v kubectl) || die "kubectl not found in $STATE_DIR/bin or on PATH"

kc() {
  "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"
}

failures=0

# Runs "kubectl auth can-i VERB RESOURCE" and compares its output with EXPECTED (yes or no).
expect_can_i() {
  local expected=$1 namespace=$2 subject=$3 verb=$4 resource=$5 result
  result=$(kc auth can-i "$verb" "$resource" -n "$namespace" ${subject:+--as="$subject"} 2>&1) || true
  if [[ "$result" == "$expected" ]]; then
    echo "ok: can-i $verb $resource -n $namespace as ${subject:-admin}: $result"
  else
    echo "FAILED: can-i $verb $resource -n $namespace as ${subject:-admin}: expected $expected, got: $result"
    failures=$((failures + 1))
  fi
}

version_json=$(kc get --raw /version)
git_version=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["gitVersion"])' <<<"$version_json")
expected_version=$(tool_version kube-apiserver)
if [[ "$git_version" == "$expected_version" ]]; then
  echo "ok: /version reports $git_version"
else
  echo "FAILED: /version reports $git_version, expected $expected_version"
  failures=$((failures + 1))
fi

namespace="rbac-check-$(openssl rand -hex 4)"
account=reader
subject="system:serviceaccount:$namespace:$account"

kc create namespace "$namespace" >/dev/null
kc create serviceaccount "$account" -n "$namespace" >/dev/null
kc create role configmap-getter --verb=get --resource=configmaps -n "$namespace" >/dev/null
kc create rolebinding configmap-getter --role=configmap-getter \
  --serviceaccount="$namespace:$account" -n "$namespace" >/dev/null

expect_can_i yes "$namespace" "$subject" get configmaps
expect_can_i no "$namespace" "$subject" list configmaps
expect_can_i no "$namespace" "$subject" list secrets
expect_can_i no "$namespace" "$subject" get secrets
expect_can_i no default "$subject" get configmaps
# The admin (group system:masters) may do anything, so "no" above comes from RBAC and not from
# a broken connection.
expect_can_i yes "$namespace" "" list secrets

# No namespace controller runs, so the namespace itself would stay Terminating; delete its
# objects first and leave the namespace to that state.
kc delete rolebinding,role configmap-getter -n "$namespace" >/dev/null
kc delete serviceaccount "$account" -n "$namespace" >/dev/null
kc delete namespace "$namespace" --wait=false >/dev/null

if ((failures > 0)); then
  echo "RBAC check failed: $failures unexpected results"
  exit 1
fi
echo "RBAC check passed"

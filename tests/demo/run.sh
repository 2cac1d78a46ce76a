#!/usr/bin/env bash
# The demo: builds what is needed, starts the local control plane and registries, seeds a real
# five-platform image into the password-protected registry, runs the controller, applies an
# ImageCopy that mirrors it to the plain registry, waits for Ready, and prints the result.
#
# Usage: tests/demo/run.sh [STATE_DIR]   (default: <repo>/target/testenv)
# The environment keeps running afterwards; stop it with tests/env/down.sh [STATE_DIR].
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE_DIR=${1:-$REPO_ROOT/target/testenv}
FIXTURES_DIR="$REPO_ROOT/target/fixtures"
NAMESPACE=demo
cd "$REPO_ROOT"

step() {
  printf '\n==> %s\n' "$*"
}

step "Building the test tools (cached after the first run) and pma2docker"
tests/env/build-tools.sh
cargo build --quiet
PMA2DOCKER="$REPO_ROOT/target/debug/pma2docker"

step "Starting etcd, kube-apiserver and three registries on 127.0.0.1"
tests/env/up.sh "$STATE_DIR" >/dev/null
# shellcheck source=/dev/null
source "$STATE_DIR/env.sh"

step "Building a real multi-arch image from Debian packages"
if [[ ! -f "$FIXTURES_DIR/fixtures.json" ]]; then
  python3 tests/fixtures/build_images.py "$FIXTURES_DIR.tmp" >/dev/null
  mv "$FIXTURES_DIR.tmp" "$FIXTURES_DIR"
fi
SOURCE="$AUTH_REGISTRY/demo/app:1.4"
TARGET="$PLAIN_REGISTRY/mirror/app:1.4"
printf '%s' "$AUTH_PASSWORD" | python3 tests/fixtures/push_layout.py \
  "$FIXTURES_DIR/multiarch-oci" "$SOURCE" --plain-http --username "$AUTH_USERNAME" --password-stdin

step "Installing the CRD and the pull Secret, and starting the controller"
"$PMA2DOCKER" crd | kubectl apply --server-side --force-conflicts -f - >/dev/null
kubectl wait --for=condition=Established crd/imagecopies.pma2docker.io --timeout=60s >/dev/null
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NAMESPACE" create secret docker-registry registry-creds \
  --docker-server="$AUTH_REGISTRY" --docker-username="$AUTH_USERNAME" \
  --docker-password="$AUTH_PASSWORD" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

CONTROLLER_LOG="$STATE_DIR/logs/demo-controller.log"
"$PMA2DOCKER" controller --metrics-address 127.0.0.1:0 \
  --plain-http "$PLAIN_REGISTRY,$AUTH_REGISTRY" >"$CONTROLLER_LOG" 2>&1 &
CONTROLLER_PID=$!
trap 'kill "$CONTROLLER_PID" 2>/dev/null || true' EXIT
echo "controller running (pid $CONTROLLER_PID, log $CONTROLLER_LOG)"

step "Applying an ImageCopy: $SOURCE -> $TARGET"
kubectl apply -f - <<YAML
apiVersion: pma2docker.io/v1alpha1
kind: ImageCopy
metadata:
  name: app
  namespace: $NAMESPACE
spec:
  source: $SOURCE
  target: $TARGET
  imagePullSecrets:
    - name: registry-creds
  interval: 1h
YAML

step "Waiting for Ready"
if ! kubectl -n "$NAMESPACE" wait --for=condition=Ready imagecopy/app --timeout=120s; then
  kubectl -n "$NAMESPACE" get imagecopy app -o yaml
  echo "controller log:" && tail -20 "$CONTROLLER_LOG"
  exit 1
fi

step "kubectl get imagecopies"
kubectl -n "$NAMESPACE" get imagecopies -o wide

step "Platforms found at the target, read back from $PLAIN_REGISTRY"
crane manifest --insecure "$TARGET" |
  python3 -c 'import json, sys
for entry in json.load(sys.stdin)["manifests"]:
    platform = entry["platform"]
    name = platform["os"] + "/" + platform["architecture"]
    if platform.get("variant"):
        name += "/" + platform["variant"]
    print("  %-16s %s" % (name, entry["digest"]))'
echo "  source digest (status): $(kubectl -n "$NAMESPACE" get imagecopy app -o jsonpath='{.status.sourceDigest}')"
echo "  target digest (crane):  $(crane digest --insecure "$TARGET")"

printf '\nThe environment is still running. Stop it with: tests/env/down.sh %s\n' "$STATE_DIR"

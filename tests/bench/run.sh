#!/usr/bin/env bash
# Benchmarks pma2docker against crane, regctl, skopeo and a curl pipe, and its controller, on
# 127.0.0.1. Prints the figures as Markdown and writes them to target/bench/results.md and
# results.json. See BENCHMARKS.md for what is measured and how.
#
# Usage: tests/bench/run.sh [--quick] [--sections LIST] [--binary PATH --revision REV]
#   --quick           2 runs per tool instead of 5, no 4 GiB layer, one controller round,
#                     a 30 s window at rest instead of 60 s
#   --sections LIST   comma-separated subset of copy,rss,recopy,controller (default: all)
#   --binary PATH     measure this pma2docker binary instead of building the work tree
#   --revision REV    the git revision PATH was built from, for the report
#
# Uses its own environment in target/bench-env, so it never touches the tests' target/testenv,
# and stops it at the end. Disk: about 4 GiB while it runs (12 GiB more with the 4 GiB layer),
# freed at the end except the cached fixtures in target/bench/fixtures (about 1.5 GiB).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ENV_DIR="$REPO_ROOT/target/bench-env"
WORK_DIR="$REPO_ROOT/target/bench"

bench_args=()
binary=""
revision=""
while (($# > 0)); do
  case "$1" in
    --quick) bench_args+=(--quick) ;;
    --sections)
      (($# >= 2)) || { echo "error: --sections needs a value such as copy,rss" >&2; exit 2; }
      bench_args+=(--sections "$2")
      shift
      ;;
    --binary | --revision)
      (($# >= 2)) || { echo "error: $1 needs a value" >&2; exit 2; }
      [[ "$1" == --binary ]] && binary=$(realpath "$2") || revision=$2
      shift
      ;;
    -h | --help)
      sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "error: unknown argument $1; see tests/bench/run.sh --help" >&2
      exit 2
      ;;
  esac
  shift
done

# skopeo and GNU time come from Debian, like the test environment's own tools.
if ! command -v skopeo >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: skopeo is missing; install it with: sudo apt-get install -y skopeo" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends skopeo >/dev/null
fi

cd "$REPO_ROOT"
if [[ -z "$binary" ]]; then
  cargo build --release --quiet
  binary="$REPO_ROOT/target/release/pma2docker"
  revision=$(git rev-parse --short=12 HEAD)
  if [[ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock)" ]]; then
    revision+=" with uncommitted changes in src/"
  fi
fi
mkdir -p "$WORK_DIR"

stop_environment() {
  tests/env/down.sh "$ENV_DIR" || true
  # The registries hold gigabytes of random layers; nothing in them is worth keeping.
  rm -rf "$ENV_DIR/registries" "$WORK_DIR/target-registry/storage"
}
trap stop_environment EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
tests/env/up.sh "$ENV_DIR" >/dev/null

python3 tests/bench/bench.py --env-dir "$ENV_DIR" --work "$WORK_DIR" \
  --binary "$binary" --revision "${revision:-unknown}" "${bench_args[@]}"

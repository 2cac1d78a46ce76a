#!/usr/bin/env bash
# Builds the test environment's tools from the pinned Go modules under tests/env/go/ and caches
# each binary as ${XDG_CACHE_HOME:-$HOME/.cache}/pma2docker/bin/<name>-<version>. A binary that
# is already there is not rebuilt, so Go is needed only on the first run for each version.
# Installs skopeo from Debian when it is missing.
#
# Usage: build-tools.sh [--link DIR] [NAME...]
#   --link DIR  also create DIR/<name> symlinks to the cached binaries
#   NAME...     build only these tools (default: all)
set -euo pipefail

# shellcheck source=tests/env/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

link_dir=""
names=()
while (($# > 0)); do
  case "$1" in
    --link)
      (($# >= 2)) || die "--link needs a directory"
      link_dir=$2
      shift 2
      ;;
    -h | --help)
      sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      names+=("$1")
      shift
      ;;
  esac
done
((${#names[@]} > 0)) || mapfile -t names < <(tool_names)

# Prints the -X flags that set the version a tool reports. Most projects set these in their
# release Makefiles; without them the binaries report a placeholder version.
version_ldflags() {
  local name=$1 version=$2 minor package flags=""
  case "$name" in
    kube-apiserver | kubectl)
      # Same variables as kube::version::ldflags in k8s.io/kubernetes hack/lib/version.sh.
      # /version and "kubectl version" read them, and Helm reads /version for kubeVersion checks.
      minor=$(cut -d. -f2 <<<"$version")
      for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $package.gitVersion=$version -X $package.gitMajor=1 -X $package.gitMinor=$minor"
        # The module zip carries no commit hash, so gitCommit is set empty rather than left at
        # its "$Format:%H$" placeholder.
        flags+=" -X $package.gitCommit= -X $package.gitTreeState=clean"
        flags+=" -X $package.buildDate=1970-01-01T00:00:00Z"
      done
      ;;
    registry) flags="-X github.com/distribution/distribution/v3/version.version=$version" ;;
    helm) flags="-X helm.sh/helm/v4/internal/version.version=$version" ;;
    crane) flags="-X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$version" ;;
    regctl) flags="-X github.com/regclient/regclient/internal/version.vcsTag=$version" ;;
  esac
  printf '%s\n' "$flags"
}

build_tags() {
  case "$1" in
    # The tags that k8s.io/kubernetes hack/lib/golang.sh passes for release builds.
    kube-apiserver | kubectl) echo "selinux,notest,grpcnotrace" ;;
  esac
}

build_tool() {
  local name=$1 version target module_dir package started tmp
  version=$(tool_version "$name")
  target="$TOOLS_CACHE_DIR/$name-$version"
  if [[ -x "$target" ]]; then
    return 0
  fi
  command -v go >/dev/null || die "$target is missing and building it needs Go 1.26 on PATH"

  module_dir="$GO_MODULES_DIR/$(tool_field "$name" 2)"
  package=$(tool_field "$name" 4)
  log "building $name $version from $package"
  started=$SECONDS
  # Build next to the target and rename, so that a concurrent run never reads a partial file.
  tmp="$target.tmp.$$"
  if ! (cd "$module_dir" && CGO_ENABLED=0 go build -mod=readonly -trimpath \
    -tags "$(build_tags "$name")" -ldflags "-s -w $(version_ldflags "$name" "$version")" \
    -o "$tmp" "$package"); then
    rm -f "$tmp"
    die "building $name $version failed; the go output above names the failing package"
  fi
  mv -f "$tmp" "$target"
  log "built $name $version in $((SECONDS - started)) s: $target"
}

# The official Go tarball installs here, and a non-login shell may not have it on PATH.
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  PATH="/usr/local/go/bin:$PATH"
fi

mkdir -p "$TOOLS_CACHE_DIR"
started=$SECONDS
for name in "${names[@]}"; do
  build_tool "$name"
done

ensure_apt_commands skopeo:skopeo

if [[ -n "$link_dir" ]]; then
  mkdir -p "$link_dir"
  for name in "${names[@]}"; do
    ln -sfn "$(tool_path "$name")" "$link_dir/$name"
  done
fi
log "tools ready in $((SECONDS - started)) s (cache: $TOOLS_CACHE_DIR)"

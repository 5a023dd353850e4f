#!/usr/bin/env bash
# Build a real Kubernetes API server, its etcd and a matching kubectl from Go modules into a cache
# outside the repository, keyed by the versions below, and reuse it once complete:
#   bin/kube-apiserver   k8s.io/kubernetes/cmd/kube-apiserver
#   bin/kubectl          k8s.io/kubernetes/cmd/kubectl (same release: no client/server skew)
#   bin/etcd             go.etcd.io/etcd/server/v3, at the version k8s.io/kubernetes requires
# The release matches the schemas the unit tests validate against (kubernetes-validate 1.37).
#
# k8s.io/kubernetes is not meant to be imported: its go.mod requires every k8s.io staging module
# at v0.0.0 and replaces it with ./staging/src/..., a path that is not in the published module.
# The build module below therefore carries its own replace lines, one per staging module, mapping
# it to the published version of the same release (v1.X.Y -> v0.X.Y).
#
# `build.sh --path` prints the cache directory without building, or exits 3 when it is not
# complete. Otherwise the last line printed is the cache directory.
# Environment: GO (default /usr/local/go/bin/go or go on PATH), PGPLATFORM_ENGINE_HOME (default
# ~/.cache/pgplatform), APISERVER_JOBS (go build -p, default 1: the build is long, not urgent).
set -euo pipefail

GO=${GO:-}
if [ -z "$GO" ]; then
  if [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; else GO=$(command -v go || true); fi
fi
[ -n "$GO" ] && [ -x "$GO" ] || { echo "apiserver: no Go toolchain (install Go >= 1.26 or set GO=)" >&2; exit 2; }
export GOFLAGS="${GOFLAGS:-} -mod=mod" GOTOOLCHAIN=local
jobs=${APISERVER_JOBS:-1}

KUBE_VERSION=1.37.2
STAGING_VERSION=v0.${KUBE_VERSION#1.}

key=$(printf '%s\n' "$("$GO" env GOVERSION)" "$KUBE_VERSION" | sha256sum | cut -c1-12)
home=${PGPLATFORM_ENGINE_HOME:-$HOME/.cache/pgplatform}
cache="$home/apiserver-$key"
if [ "${1:-}" = --path ]; then
  [ -f "$cache/.complete" ] || { echo "apiserver: not built (or incomplete) at $cache" >&2; exit 3; }
  echo "$cache"
  exit 0
fi
if [ -f "$cache/.complete" ]; then
  echo "apiserver: complete, reused"
  echo "$cache"
  exit 0
fi

started=$(date +%s)
src="$cache/src"
bin="$cache/bin"
mkdir -p "$src" "$bin"

# The release's own go.mod names the staging modules (its `=> ./staging/src/...` lines) and the
# etcd version it is tested with.
kube_mod=$("$GO" mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*#\1#p' "$kube_mod")
[ -n "$staging" ] || { echo "apiserver: no staging replace lines in $kube_mod" >&2; exit 1; }
etcd_version=$(sed -n 's#^[[:space:]]*go\.etcd\.io/etcd/server/v3 \(v[^[:space:]]*\).*#\1#p' "$kube_mod")
[ -n "$etcd_version" ] || { echo "apiserver: $kube_mod names no go.etcd.io/etcd/server/v3" >&2; exit 1; }

{
  echo "module pgplatform.local/apiserver"
  echo
  echo "go 1.26"
  echo
  echo "require k8s.io/kubernetes v$KUBE_VERSION"
  echo
  echo "replace ("
  for m in $staging; do echo "	$m => $m $STAGING_VERSION"; done
  echo ")"
} >"$src/go.mod"

cd "$src"
echo "apiserver: kubernetes v$KUBE_VERSION, staging modules $STAGING_VERSION ($(echo "$staging" | wc -l)), etcd $etcd_version"
"$GO" get "k8s.io/kubernetes/cmd/kube-apiserver@v$KUBE_VERSION" "k8s.io/kubernetes/cmd/kubectl@v$KUBE_VERSION" \
  "go.etcd.io/etcd/server/v3@$etcd_version"

ver="k8s.io/component-base/version"
minor=${KUBE_VERSION#1.}
minor=${minor%%.*}
ld="-s -w -X $ver.gitVersion=v$KUBE_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor -X $ver.gitTreeState=clean"
build() { nice -n 10 "$GO" build -p "$jobs" -trimpath "$@"; }
step() { # step NAME: build one binary, timed
  local t0
  t0=$(date +%s)
  echo "apiserver: $1: building"
  shift
  build "$@"
  echo "apiserver: done in $(($(date +%s) - t0)) s"
}
[ -x "$bin/etcd" ] || step etcd -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
[ -x "$bin/kube-apiserver" ] || step kube-apiserver -ldflags "$ld" -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
[ -x "$bin/kubectl" ] || step kubectl -ldflags "$ld" -o "$bin/kubectl" k8s.io/kubernetes/cmd/kubectl

"$bin/kube-apiserver" --version
"$bin/etcd" --version | head -1
"$bin/kubectl" version --client
printf 'kubernetes v%s\nstaging %s\netcd %s\n%s\n' "$KUBE_VERSION" "$STAGING_VERSION" "$etcd_version" \
  "$("$GO" env GOVERSION)" >"$cache/versions"
touch "$cache/.complete"
echo "apiserver: complete in $(($(date +%s) - started)) s"
echo "$cache"

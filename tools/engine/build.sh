#!/usr/bin/env bash
# Build the Pulumi engine from Go modules into a cache outside the repository, keyed by the
# versions below, and reuse it when it is already complete:
#   bin/pulumi                          the CLI (github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
#   bin/pulumi-language-python          the Python language host (tools/engine/langhost)
#   bin/pulumi-language-python-exec     the SDK's program runner, from the same sdk/v3 release
#   bin/pulumi-resource-kubernetes      github.com/pulumi/pulumi-kubernetes/provider/v4
#   bin/pulumi-resource-random          the Terraform random provider, bridged (tools/engine/random)
#   bin/pulumi-resource-postgresql      pulumi-postgresql's provider (a prebuilt binary, below)
#   bin/pulumi-resource-vault           pulumi-vault's provider (a prebuilt binary, below)
# The cache counts as complete only once every binary built: then `.complete` is written, which
# is what `make e2e` and CI look for. The last line printed is the cache directory;
# `build.sh --path` prints it without building, or exits 3 when the cache is not complete.
#
# pulumi-postgresql and pulumi-vault are not served as Go modules, so the cache takes their
# provider binaries from PULUMI_RESOURCE_POSTGRESQL and PULUMI_RESOURCE_VAULT (paths to the
# binaries of the versions below). Without them those two steps stop with a message, and the
# cache stays incomplete.
#
# Environment: GO (default /usr/local/go/bin/go or go on PATH), PGPLATFORM_ENGINE_HOME (default
# ~/.cache/pgplatform), ENGINE_JOBS (go build -p, default 1: the build is long, not urgent).
set -euo pipefail
set -a # every variable reaches the step shells (each step runs in a fresh bash)
repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/tools/engine"

GO=${GO:-}
if [ -z "$GO" ]; then
  if [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; else GO=$(command -v go || true); fi
fi
[ -n "$GO" ] && [ -x "$GO" ] || { echo "engine: no Go toolchain (install Go >= 1.26 or set GO=)" >&2; exit 2; }
export GOFLAGS="${GOFLAGS:-} -mod=mod" GOTOOLCHAIN=local
jobs=${ENGINE_JOBS:-1}

# --- versions -------------------------------------------------------------------------------
# requirements.txt pins these Python SDKs; the plugins below are the nearest builds of each.
expect_sdk() {
  grep -qx "$1==$2" "$repo/requirements.txt" || {
    echo "engine: requirements.txt no longer pins $1==$2; update the versions in $0" >&2
    exit 2
  }
}
expect_sdk pulumi 3.272.0
expect_sdk pulumi-kubernetes 4.34.2
expect_sdk pulumi-random 4.21.4
expect_sdk pulumi-postgresql 3.18.2
expect_sdk pulumi-vault 7.14.0

# The module proxy serves pkg/v3 v3.260.0 and v3.274.0+, not v3.270.0-v3.273.0: nearest above.
CLI_VERSION=3.274.0
# The only pulumi-kubernetes provider module version the proxy serves: the v4.25.0 tag commit.
K8S_MODULE=github.com/pulumi/pulumi-kubernetes/provider/v4
K8S_PSEUDO=v4.0.0-20260115033456-f47bc2d6f199
K8S_VERSION=4.25.0
# Random: the Terraform provider module (served) bridged with tools/engine/random.
BRIDGE=v3.137.0
TF_PLUGIN_SDK_FORK=v2.0.0-20260318212141-5525259d096b
RANDOM_TF_MODULE=github.com/terraform-providers/terraform-provider-random
RANDOM_TF=v1.3.2-0.20260824155315-e1092b0cfc07
RANDOM_VERSION=4.21.4
# pulumi-postgresql and pulumi-vault: prebuilt binaries of these versions (see below).
PG_VERSION=3.18.0
VAULT_VERSION=7.11.0

own_sources=$(cd "$here" && find langhost random -type f | LC_ALL=C sort | xargs sha256sum)
key=$(printf '%s\n' "$("$GO" env GOVERSION)" "$CLI_VERSION" "$K8S_PSEUDO" "$BRIDGE" \
  "$TF_PLUGIN_SDK_FORK" "$RANDOM_TF" "$RANDOM_VERSION" "$PG_VERSION" "$VAULT_VERSION" \
  "$own_sources" | sha256sum | cut -c1-12)
home=${PGPLATFORM_ENGINE_HOME:-$HOME/.cache/pgplatform}
cache="$home/engine-$key"
if [ "${1:-}" = --path ]; then # where the complete cache is, or exit 3
  [ -f "$cache/.complete" ] || { echo "engine: not built (or incomplete) at $cache" >&2; exit 3; }
  echo "$cache"
  exit 0
fi
mkdir -p "$cache/bin" "$cache/src" "$cache/logs"
bin="$cache/bin"

if [ -f "$cache/.complete" ]; then
  echo "engine: complete, reused"
  echo "$cache"
  exit 0
fi

started=$(date +%s)
build() { nice -n 10 "$GO" build -p "$jobs" -trimpath "$@"; }
step() { # step NAME OUTPUT-BINARY FUNCTION: run FUNCTION unless OUTPUT-BINARY exists, log and time it
  local name=$1 out=$2 fn=$3 t0
  if [ -x "$bin/$out" ]; then echo "engine: $name: built already"; return 0; fi
  t0=$(date +%s)
  echo "engine: $name: building (log: $cache/logs/$name.log)"
  # A fresh shell, so that errexit holds inside the step (this function runs inside conditions).
  if bash -euo pipefail -c "$(declare -f build minify prebuilt "$fn"); $fn" \
    >"$cache/logs/$name.log" 2>&1; then
    echo "engine: $name: ok in $(($(date +%s) - t0)) s"
    echo "$name $(($(date +%s) - t0))" >>"$cache/logs/times"
  else
    echo "engine: $name: FAILED after $(($(date +%s) - t0)) s; last lines of its log:" >&2
    tail -n 25 "$cache/logs/$name.log" >&2
    return 1
  fi
}

# The release mains embed a minified schema (their generate.go); same here.
minify() { python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2], "w"), separators=(",", ":"))' "$1" "$2"; }

# --- (a) CLI + language host + kubernetes + random ------------------------------------------
cli() {
  local src="$cache/src/cli"
  mkdir -p "$src/langhost"
  cp "$here/langhost/main.go" "$src/langhost/main.go"
  cat >"$src/go.mod" <<EOF
module pgplatform.local/engine/cli

go 1.26

// From pkg/go.mod of the release (its sdk/v3 => ../sdk replace is the published sdk/v3 here).
replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
EOF
  cd "$src"
  "$GO" get "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@v$CLI_VERSION" "github.com/pulumi/pulumi/sdk/v3@v$CLI_VERSION"
  build -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$CLI_VERSION" \
    -o "$bin/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
}
langhost() {
  local src="$cache/src/cli"
  cd "$src"
  build -ldflags "-s -w -X main.version=$CLI_VERSION" -o "$bin/pulumi-language-python" ./langhost
  local sdk
  sdk=$("$GO" list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)
  install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$bin/pulumi-language-python-exec"
}
kubernetes() {
  local src="$cache/src/kubernetes" mod
  mkdir -p "$src"
  cd "$src"
  printf 'module pgplatform.local/engine/kubernetes\n\ngo 1.26\n' >go.mod
  # Its ../sdk replace needs nothing here: the sdk/v4 version it requires is published.
  "$GO" mod edit -require="$K8S_MODULE@$K8S_PSEUDO"
  "$GO" mod download "$K8S_MODULE@$K8S_PSEUDO"
  mod=$("$GO" list -m -f '{{.Dir}}' "$K8S_MODULE")
  minify "$mod/cmd/pulumi-resource-kubernetes/schema.json" schema-embed.json
  minify "$mod/cmd/pulumi-resource-kubernetes/terraform-mapping.json" terraform-mapping-embed.json
  cat >main.go <<'EOF'
// Command pulumi-resource-kubernetes serves the Kubernetes provider with its embedded schema.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var schema []byte

//go:embed terraform-mapping-embed.json
var mapping []byte

func main() { provider.Serve("kubernetes", version.Version, schema, mapping) }
EOF
  "$GO" mod tidy
  build -ldflags "-s -w -X $K8S_MODULE/pkg/version.Version=$K8S_VERSION" -o "$bin/pulumi-resource-kubernetes" .
}
random() {
  local src="$cache/src/random"
  rm -rf "$src"
  mkdir -p "$src"
  cp -r "$here/random/." "$src/"
  cd "$src"
  printf 'module %s/shim\n\ngo 1.26\n' "$RANDOM_TF_MODULE" >shim/go.mod
  (cd shim && "$GO" mod edit -require="$RANDOM_TF_MODULE@$RANDOM_TF" && "$GO" mod tidy)
  cat >go.mod <<EOF
module pgplatform.local/engine/random

go 1.26

replace $RANDOM_TF_MODULE/shim => ./shim

replace github.com/hashicorp/terraform-plugin-sdk/v2 => github.com/pulumi/terraform-plugin-sdk/v2 $TF_PLUGIN_SDK_FORK
EOF
  "$GO" mod edit -require="github.com/pulumi/pulumi-terraform-bridge/v3@$BRIDGE" \
    -require="$RANDOM_TF_MODULE/shim@v0.0.0" -require="$RANDOM_TF_MODULE@$RANDOM_TF"
  echo '{}' >provider/schema.json
  echo '{}' >provider/bridge-metadata.json
  "$GO" mod tidy
  local ld="-s -w -X pgplatform.local/engine/random/bridged.Version=$RANDOM_VERSION"
  # Schema and bridge metadata come from the bridge's own generator, then get embedded.
  build -ldflags "$ld" -o "$src/tfgen-random" ./tfgen
  (cd provider && "$src/tfgen-random" schema --skip-docs --skip-examples --out .)
  build -ldflags "$ld" -o "$bin/pulumi-resource-random" ./provider
}

# --- (b) postgresql, (c) vault: prebuilt provider binaries ------------------------------------
# Neither provider is served as a Go module here (their provider modules replace the Terraform
# provider with a local ../upstream checkout, and the module proxy refuses both), so the cache
# takes a provider binary of the named version from PULUMI_RESOURCE_POSTGRESQL and
# PULUMI_RESOURCE_VAULT (for example the release binaries); this script does not build them.
prebuilt() { # prebuilt NAME VERSION VAR: install the binary VAR names, after checking it runs
  local name=$1 version=$2 file=${!3:-}
  if [ -z "$file" ] || [ ! -x "$file" ]; then
    echo "engine: set $3 to a pulumi-resource-$name $version binary (not served as a Go module)" >&2
    return 1
  fi
  # A provider only runs under an engine; all that is checked here is that it is a program.
  if [ "$(head -c 4 "$file" | tail -c 3)" != ELF ]; then
    echo "engine: $3=$file is not an ELF program" >&2
    return 1
  fi
  install -m 0755 "$file" "$bin/pulumi-resource-$name"
}
postgresql() { prebuilt postgresql "$PG_VERSION" PULUMI_RESOURCE_POSTGRESQL; }
vault() { prebuilt vault "$VAULT_VERSION" PULUMI_RESOURCE_VAULT; }

rung=none
if step cli pulumi cli && step langhost pulumi-language-python langhost &&
  step kubernetes pulumi-resource-kubernetes kubernetes && step random pulumi-resource-random random; then
  rung=a
  if step postgresql pulumi-resource-postgresql postgresql; then
    rung=b
    if step vault pulumi-resource-vault vault; then rung=c; fi
  fi
fi
echo "$rung" >"$cache/rung"
echo "engine: reached rung ($rung) of (a) CLI+language host+kubernetes+random, (b) +postgresql, (c) +vault" \
  "in $(($(date +%s) - started)) s; cache $(du -sh "$cache" | cut -f1)"
if [ "$rung" != c ]; then
  echo "engine: incomplete, make e2e will not run" >&2
  echo "$cache"
  exit 1
fi
date -u +%FT%TZ >"$cache/.complete"
echo "$cache"

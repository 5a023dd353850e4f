#!/usr/bin/env bash
# Build the Pulumi engine from Go modules into a cache outside the repository, keyed by the
# versions below, and reuse it when it is already complete:
#   bin/pulumi                          the CLI (github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
#   bin/pulumi-language-python          the Python language host (tools/engine/langhost)
#   bin/pulumi-language-python-exec     the SDK's program runner, from the same sdk/v3 release
#   bin/pulumi-resource-kubernetes      github.com/pulumi/pulumi-kubernetes/provider/v4
#   bin/pulumi-resource-random          the Terraform random provider, bridged (tools/engine/random)
#   bin/pulumi-resource-postgresql      pulumi-postgresql's provider (needs source checkouts)
#   bin/pulumi-resource-vault           pulumi-vault's provider (needs source checkouts)
# The cache counts as complete only once every binary built: then `.complete` is written, which
# is what `make e2e` and CI look for. The last line printed is the cache directory;
# `build.sh --path` prints it without building, or exits 3 when the cache is not complete.
#
# pulumi-postgresql and pulumi-vault are not published as Go modules (their provider modules
# replace the Terraform provider with a local ../upstream checkout), so they are built from git
# repositories given in these variables (a clone or a bare mirror holding the commits below):
#   PULUMI_POSTGRESQL_GIT, TERRAFORM_PROVIDER_POSTGRESQL_GIT, PULUMI_VAULT_GIT,
#   TERRAFORM_PROVIDER_VAULT_GIT
# Without them those two steps stop with a message, and the cache stays incomplete.
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
# pulumi-postgresql v3.18.0 (v3.18.1/2 are not in the sources at hand) and its upstream commit.
PG_TAG=v3.18.0
PG_UPSTREAM=ff936b9548c1076f498523a2bd116915ff977142
# pulumi-vault v7.11.0 (newest release in the sources at hand) and its upstream commit.
VAULT_TAG=v7.11.0
VAULT_UPSTREAM=fa0a334404e3d04e4364467f51c6a4b4751848fd

own_sources=$(cd "$here" && find langhost random -type f | LC_ALL=C sort | xargs sha256sum)
key=$(printf '%s\n' "$("$GO" env GOVERSION)" "$CLI_VERSION" "$K8S_PSEUDO" "$BRIDGE" \
  "$TF_PLUGIN_SDK_FORK" "$RANDOM_TF" "$RANDOM_VERSION" "$PG_TAG" "$PG_UPSTREAM" "$VAULT_TAG" \
  "$VAULT_UPSTREAM" "$own_sources" | sha256sum | cut -c1-12)
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
  if bash -euo pipefail -c "$(declare -f build minify need_git export_tree bridged_from_source "$fn"); $fn" \
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

# --- (b) postgresql, (c) vault: from source checkouts ------------------------------------------
need_git() { # need_git VAR URL: VAR names a git repository (clone or bare mirror) of URL
  local dir=${!1:-}
  if [ -z "$dir" ] || ! git -C "$dir" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    echo "engine: set $1 to a git clone of $2 (not published as a Go module)" >&2
    return 1
  fi
}
export_tree() { # export_tree GITDIR COMMIT DEST [PATH...]: files of COMMIT under DEST
  local gitdir commit=$2 dest=$3
  gitdir=$(git -C "$1" rev-parse --absolute-git-dir 2>/dev/null || echo "$1")
  shift 3
  mkdir -p "$dest"
  if git --git-dir="$gitdir" archive "$commit" "$@" 2>/dev/null | tar -x -C "$dest" 2>/dev/null; then
    return 0
  fi
  # A shallow mirror may lack large blobs: copy file by file and name what is absent.
  local meta mode type hash path
  git --git-dir="$gitdir" ls-tree -r --full-tree "$commit" -- "$@" |
    while IFS=$'\t' read -r meta path; do
      read -r mode type hash <<<"$meta"
      [ "$type" = blob ] || continue
      if git --git-dir="$gitdir" cat-file -e "$hash" 2>/dev/null; then
        mkdir -p "$dest/$(dirname "$path")"
        git --git-dir="$gitdir" cat-file blob "$hash" >"$dest/$path"
        [ "$mode" != 100755 ] || chmod +x "$dest/$path"
      else
        echo "engine: absent from the source: $path" >&2
      fi
    done
}
bridged_from_source() { # NAME TAG UPSTREAM-COMMIT GIT UPSTREAM-GIT MAIN-KIND
  local name=$1 tag=$2 up=$3 git=$4 upgit=$5 kind=$6 src="$cache/src/$1" version
  rm -rf "$src"
  export_tree "$git" "$tag" "$src" provider patches
  export_tree "$upgit" "$up" "$src/upstream"
  for patch in "$src"/patches/*.patch; do
    [ -e "$patch" ] && (cd "$src/upstream" && git apply "$patch")
  done
  version=${tag#v}
  local cmd="$src/provider/cmd/pulumi-resource-$name"
  mkdir -p "$src/provider/cmd/engine-main" "$src/provider/cmd/engine-tfgen"
  local module
  module=$(cd "$src/provider" && "$GO" list -m)
  if [ "$kind" = sdkv2 ]; then
    cat >"$src/provider/cmd/engine-main/main.go" <<EOF
// Command pulumi-resource-$name serves the bridged provider with its embedded schema.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"

	provider "$module"
	"$module/pkg/version"
)

//go:embed schema-embed.json
var schema []byte

func main() { tfbridge.Main("$name", version.Version, provider.Provider(), schema) }
EOF
  else
    cat >"$src/provider/cmd/engine-main/main.go" <<EOF
// Command pulumi-resource-$name serves the bridged (muxed) provider with its embedded schema.
package main

import (
	"context"
	_ "embed"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/pf/tfbridge"

	provider "$module"
)

//go:embed schema-embed.json
var schema []byte

func main() { tfbridge.MainWithMuxer(context.Background(), "$name", provider.Provider(), schema) }
EOF
  fi
  cd "$src/provider"
  "$GO" mod download
  local ld="-s -w -X $module/pkg/version.Version=$version"
  if [ ! -f "$cmd/schema.json" ]; then
    # The release's committed schema is not in the source: generate it with the bridge.
    if [ "$kind" = sdkv2 ]; then
      cat >cmd/engine-tfgen/main.go <<EOF
// Command engine-tfgen writes the provider's Pulumi schema.
package main

import (
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfgen"

	provider "$module"
	"$module/pkg/version"
)

func main() { tfgen.Main("$name", version.Version, provider.Provider()) }
EOF
    else
      cat >cmd/engine-tfgen/main.go <<EOF
// Command engine-tfgen writes the provider's Pulumi schema.
package main

import (
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/pf/tfgen"

	provider "$module"
)

func main() { tfgen.MainWithMuxer("$name", provider.Provider()) }
EOF
    fi
    build -ldflags "$ld" -o "$src/engine-tfgen" ./cmd/engine-tfgen
    mkdir -p "$src/generated"
    "$src/engine-tfgen" schema --skip-docs --skip-examples --out "$src/generated"
    cp "$src/generated/schema.json" "$cmd/schema.json"
  fi
  minify "$cmd/schema.json" cmd/engine-main/schema-embed.json
  build -ldflags "$ld" -o "$bin/pulumi-resource-$name" ./cmd/engine-main
}
postgresql() {
  need_git PULUMI_POSTGRESQL_GIT https://github.com/pulumi/pulumi-postgresql &&
    need_git TERRAFORM_PROVIDER_POSTGRESQL_GIT https://github.com/cyrilgdn/terraform-provider-postgresql &&
    bridged_from_source postgresql "$PG_TAG" "$PG_UPSTREAM" "$PULUMI_POSTGRESQL_GIT" \
      "$TERRAFORM_PROVIDER_POSTGRESQL_GIT" sdkv2
}
vault() {
  need_git PULUMI_VAULT_GIT https://github.com/pulumi/pulumi-vault &&
    need_git TERRAFORM_PROVIDER_VAULT_GIT https://github.com/hashicorp/terraform-provider-vault &&
    bridged_from_source vault "$VAULT_TAG" "$VAULT_UPSTREAM" "$PULUMI_VAULT_GIT" \
      "$TERRAFORM_PROVIDER_VAULT_GIT" muxed
}

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

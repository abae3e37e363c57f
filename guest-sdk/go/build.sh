#!/usr/bin/env bash
# Builds a Go pipe into a plumber component:
#
#   guest-sdk/go/build.sh <pipe-dir> <out.wasm>
#
# The three steps (`plumber build` will do the last two in Rust with the
# wit-component crate, the same way):
#   1. GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o core.wasm .
#      (a WASI preview 1 "reactor" core module; the SDK's glue exports
#      init/process/cabi_* and imports plumber:pipe/*)
#   2. wasm-tools component embed <wit> --world packed-pipe core.wasm -o embedded.wasm
#   3. wasm-tools component new embedded.wasm
#        --adapt wasi_snapshot_preview1=<reactor adapter> -o <out.wasm>
#
# The reactor adapter comes from the crates.io crate
# wasi-preview1-component-adapter-provider 48.x (fetched by any cargo build
# of the host), found under ${CARGO_HOME:-~/.cargo}/registry/src; set
# PLUMBER_WASI_ADAPTER to use another file. PLUMBER_WIT overrides the WIT
# directory (default: the repository's wit/). Needs go >= 1.24 and wasm-tools
# on PATH; GOFLAGS passes through to go build.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 <pipe-dir> <out.wasm>" >&2
  exit 2
fi
pipe_dir=$1
out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
wit=${PLUMBER_WIT:-$here/../../wit}

adapter=${PLUMBER_WASI_ADAPTER:-}
if [ -z "$adapter" ]; then
  adapter=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasi-preview1-component-adapter-provider-48.*/artefacts/wasi_snapshot_preview1.reactor.wasm 2>/dev/null \
    | sort -V | tail -n 1 || true)
fi
if [ -z "$adapter" ] || [ ! -f "$adapter" ]; then
  echo "build.sh: wasi_snapshot_preview1.reactor.wasm not found; fetch the crate" \
    "wasi-preview1-component-adapter-provider 48.x (e.g. build the host) or set PLUMBER_WASI_ADAPTER" >&2
  exit 1
fi
for tool in go wasm-tools; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool not found on PATH" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$pipe_dir" && GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o "$tmp/core.wasm" .)
wasm-tools component embed "$wit" --world packed-pipe "$tmp/core.wasm" -o "$tmp/embedded.wasm"
mkdir -p "$(dirname "$out")"
wasm-tools component new "$tmp/embedded.wasm" --adapt "wasi_snapshot_preview1=$adapter" -o "$out"

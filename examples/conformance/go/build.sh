#!/usr/bin/env bash
# Builds the Go conformance pipe into a component: build.sh <out.wasm>
#
# Runs guest-sdk/go/build.sh (go build -buildmode=c-shared for wasip1, then
# wasm-tools component embed + new with the WASI reactor adapter). Unlike the
# JS and Python pipes, the component imports WASI besides plumber:pipe/*:
# the Go runtime needs clocks and random bytes, and the adapter brings in
# wasi:filesystem (see guest-sdk/go/README.md); the host must grant them.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 <out.wasm>" >&2
  exit 2
fi
out=$(realpath -m -- "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)

start=$(date +%s%N)
"$root/guest-sdk/go/build.sh" "$here" "$out"
end=$(date +%s%N)
echo "built $out ($(stat -c %s "$out") bytes) in $(( (end - start) / 1000000 )) ms" >&2

#!/usr/bin/env bash
# Builds the JavaScript conformance pipe into a component: build.sh <out.wasm>
#
# Uses the toolchain pinned in guest-sdk/js/package.json (npm ci on first use).
# WASI stdio, random, clocks and http are left out, so the component imports
# only plumber:pipe/state, plumber:pipe/log and plumber:pipe/types.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 <out.wasm>" >&2
  exit 2
fi
out=$(realpath -m -- "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
bin=$("$root/guest-sdk/js/ensure-toolchain.sh")
mkdir -p "$(dirname "$out")"

start=$(date +%s%N)
# componentize-js maps its working directory into the component: app.js
# imports ../../../guest-sdk/js/plumber-pipe.js, so run it from the repo root.
cd "$root"
"$bin/componentize-js" "examples/conformance/js/app.js" \
  --wit wit --world-name stateful-pipe \
  -d stdio random clocks http fetch-event \
  -o "$out"
end=$(date +%s%N)
echo "built $out ($(stat -c %s "$out") bytes) in $(( (end - start) / 1000000 )) ms" >&2

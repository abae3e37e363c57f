#!/usr/bin/env bash
# Builds the Python aggregate-report into a component: build.sh <out.wasm>
# (componentize-py on world `aggregator` of wit/, WASI stubbed out so that the
# component imports only plumber:pipe/*).
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 <out.wasm>" >&2
  exit 2
fi
out=$(realpath -m -- "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
command -v componentize-py >/dev/null || { echo "componentize-py not found: pip3 install 'componentize-py==0.25.*'" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
cd "$here"
componentize-py -d "$root/wit" -w aggregator componentize app -p "$here" --stub-wasi -o "$out"

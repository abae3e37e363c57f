#!/usr/bin/env bash
# Builds the Python migrate-v2 pipe into a component: build.sh <out.wasm>
#
# 1. `componentize-py bindings` writes the Python bindings of the world to
#    ./bindings (gitignored). They are stubs (every call raises
#    NotImplementedError) for editors and type checkers; the componentize step
#    generates the real ones itself and must not see these on its path.
# 2. `componentize-py componentize app` snapshots app.py (with plumber_pipe.py
#    from guest-sdk/python) into a component. --stub-wasi replaces every WASI
#    import with a trap, so the component imports only plumber:pipe/*.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 <out.wasm>" >&2
  exit 2
fi
out=$(realpath -m -- "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
wit=$root/wit
sdk=$root/guest-sdk/python
command -v componentize-py >/dev/null || { echo "componentize-py not found: pip3 install 'componentize-py==0.25.*'" >&2; exit 1; }
mkdir -p "$(dirname "$out")"

start=$(date +%s%N)
rm -rf "$here/bindings"
componentize-py -d "$wit" -w migrating-pipe bindings "$here/bindings"
cd "$here"
componentize-py -d "$wit" -w migrating-pipe componentize app \
  -p "$here" -p "$sdk" \
  --stub-wasi -o "$out"
end=$(date +%s%N)
echo "built $out ($(stat -c %s "$out") bytes) in $(( (end - start) / 1000000 )) ms" >&2

#!/usr/bin/env bash
# Builds __NAME__ into a WebAssembly component: ./build.sh [out.wasm]   (default __NAME__.wasm)
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-__NAME__.wasm}
# Optional: type stubs of the world for editors and type checkers (not used by the build).
rm -rf bindings && componentize-py -d wit -w stateful-pipe bindings bindings
# The component; --stub-wasi: it imports only plumber:pipe/* (any WASI call traps).
componentize-py -d wit -w stateful-pipe componentize app -p . --stub-wasi -o "$out"

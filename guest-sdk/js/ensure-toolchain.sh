#!/usr/bin/env bash
# Installs the pinned JS toolchain (componentize-js, jco) into guest-sdk/js/node_modules
# from package-lock.json, unless the installed versions already match.
# Prints the directory of the toolchain's binaries.
set -euo pipefail
sdk=$(cd "$(dirname "$0")" && pwd)
cd "$sdk"
installed() {
  node -e '
    const fs = require("fs");
    const want = JSON.parse(fs.readFileSync("package.json", "utf8")).devDependencies;
    for (const [name, version] of Object.entries(want)) {
      const p = `node_modules/${name}/package.json`;
      if (!fs.existsSync(p) || JSON.parse(fs.readFileSync(p, "utf8")).version !== version) process.exit(1);
    }'
}
if ! installed; then
  echo "installing the JS toolchain in $sdk (npm ci)" >&2
  npm ci --no-audit --no-fund >&2
fi
echo "$sdk/node_modules/.bin"

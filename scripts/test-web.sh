#!/usr/bin/env bash
# The web client's tests on a fresh Debian machine (run as root): installs Chromium and the
# npm packages, builds the WebAssembly package (scripts/build-web.sh) and the sotto binary,
# then runs the Node tests against real `sotto serve` processes, the browser test
# (web/test/browser.mjs: the demo page, a CSP page) and the bundler checks
# (web/test/bundlers.mjs: the `npm pack` tarball in a Vite app and a webpack app predicting in
# Chromium, and a strict tsc of a typed example).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ ! -x /usr/bin/chromium ]; then
  apt-get update
  apt-get install -y chromium
fi

(cd web && npm ci --no-audit --no-fund)

bash scripts/build-web.sh

cargo build --release -p sotto
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export SOTTO_BIN="${SOTTO_BIN:-$TARGET_DIR/release/sotto}"

# The test files by name: `node --test web/test/` would also run every other .mjs file under
# a test/ directory (the harness, the browser test) as a test file.
node --test web/test/*.test.mjs

node web/test/browser.mjs
node web/test/bundlers.mjs

#!/usr/bin/env bash
# The README's run command: builds the demo page (the wasm client, scripts/build-web.sh; the
# first time this installs the wasm target and wasm-bindgen-cli), then runs `sotto demo`:
# P0, P1 and the helper on loopback WebSockets with the bundled network A, a few private
# predictions, the page's URL and a `sotto predict` line to try. Extra arguments go to
# `sotto demo` (e.g. --port 9000, --model models/cnn.onnx, --check).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-web.sh
exec cargo run --release -q -p sotto -- demo "$@"

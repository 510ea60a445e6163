#!/usr/bin/env bash
# Builds the WebAssembly client and the web/ package:
#   web/pkg/   wasm-bindgen output (--target web) that web/index.js imports
#   web/dist/  the demo page (web/demo/, when present), the package under dist/sotto/
#              (the page imports ./sotto/index.js) and samples.json (real MNIST test images)
# Respects CARGO_TARGET_DIR (default target/). Needs rustup, cargo and node.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac

rustup target add wasm32-unknown-unknown >/dev/null

# The wasm-bindgen CLI must be the version of the wasm-bindgen crate in Cargo.lock.
WB_VERSION="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
if [ -z "$WB_VERSION" ]; then
  echo "build-web: no wasm-bindgen in Cargo.lock" >&2
  exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $WB_VERSION" ]; then
  echo "build-web: installing wasm-bindgen-cli $WB_VERSION"
  # Not --locked: the CLI's own lock file names releases the registry may lack.
  cargo install wasm-bindgen-cli --version "$WB_VERSION"
fi

# A cdylib of sotto-client with the wasm feature (the crate itself stays an rlib for the
# native build). Size-tuned release settings apply to this build only.
CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
CARGO_PROFILE_RELEASE_LTO=true \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_PROFILE_RELEASE_PANIC=abort \
  cargo rustc --release --target wasm32-unknown-unknown -p sotto-client \
  --no-default-features --features wasm --crate-type cdylib
WASM_IN="$TARGET_DIR/wasm32-unknown-unknown/release/sotto_client.wasm"

rm -rf web/pkg
wasm-bindgen --target web --out-dir web/pkg "$WASM_IN"
WASM="web/pkg/sotto_client_bg.wasm"

# Instantiates web/pkg's module in Node (a smoke check of the wasm-bindgen glue).
wasm_loads() {
  node --input-type=module -e "
    import { readFileSync } from 'node:fs';
    const m = await import('$ROOT/web/pkg/sotto_client.js');
    m.initSync({ module: readFileSync('$ROOT/$WASM') });
  " >/dev/null 2>&1
}

# wasm-opt from the npm `binaryen` package (a devDependency of web/, installed by `npm ci`):
# Debian's binaryen is too old for this module (it writes one that no longer instantiates).
WASM_OPT="$ROOT/web/node_modules/.bin/wasm-opt"
if [ ! -x "$WASM_OPT" ]; then
  (cd web && npm ci --no-audit --no-fund)
fi
RAW0=$(wc -c <"$WASM")
cp "$WASM" "$WASM.orig"
if "$WASM_OPT" -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
  --strip-debug --strip-producers --converge \
  "$WASM" -o "$WASM.opt" && mv "$WASM.opt" "$WASM" && wasm_loads; then
  echo "build-web: wasm-opt -Oz ($("$WASM_OPT" --version)): $RAW0 -> $(wc -c <"$WASM") bytes"
else
  mv "$WASM.orig" "$WASM"
  echo "build-web: wasm-opt failed or gave a module that does not instantiate" >&2
  exit 1
fi
rm -f "$WASM.opt" "$WASM.orig"
wasm_loads || { echo "build-web: $WASM does not instantiate in Node" >&2; exit 1; }

rm -rf web/dist
mkdir -p web/dist/sotto
if [ -d web/demo ]; then
  cp -R web/demo/. web/dist/
fi
cp web/index.js web/node.js web/client.js web/index.d.ts web/package.json web/LICENSE web/dist/sotto/
mkdir -p web/dist/sotto/pkg
cp web/pkg/sotto_client.js web/pkg/sotto_client_bg.wasm web/dist/sotto/pkg/
node web/scripts/samples.mjs models web/dist/samples.json 12

RAW=$(wc -c <"$WASM")
GZ=$(gzip -9c "$WASM" | wc -c)
echo "build-web: $WASM: $RAW bytes, $GZ bytes gzipped"
echo "build-web: web/dist ready (serve it with: sotto serve --role p0 ... --web web/dist)"

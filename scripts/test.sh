#!/usr/bin/env bash
# Runs every test of sotto on a fresh Debian machine with Rust, Node and Python, installing
# what the tests need first. This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain parts"
rustup target add wasm32-unknown-unknown
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "sotto-core builds for the browser (wasm32-unknown-unknown)"
cargo build -p sotto-core --target wasm32-unknown-unknown

step "tests (release mode: the protocol tests run real cryptography)"
cargo test --workspace --release

step "benchmarks compile and run once each"
cargo bench --workspace --benches -- --test

step "the run command works"
cargo run --release -q -p local-demo -- --check

printf '\nall tests passed\n'

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

step "fuzz: frames, model files, ONNX files and comparison keys (20,000 cases each; crates/sotto-fuzz/README.md runs 10^6)"
cargo run --release -q -p sotto-fuzz -- --target all --cases 20000 --seed 1 --deep --out target/fuzz-out

step "benchmarks compile and run once each"
cargo bench --workspace --benches -- --test

step "TensorFlow pipeline in a fresh venv: train, export, and check sotto against the fresh export"
fresh="$(mktemp -d)"
rm -rf examples/tensorflow/.venv
bash examples/tensorflow/run.sh "$fresh"
SOTTO_MODELS_DIR="$fresh" cargo test --release -p sotto-model --test bundled
cargo run --release -q -p sotto -- eval --model "$fresh/network_a.onnx" --input "$fresh/mnist_test_images.npy" \
  --labels "$fresh/mnist_test_labels.npy" --reference "$fresh/network_a_tf_logits.npy" --limit 500
cargo run --release -q -p sotto -- inspect "$fresh/cnn.onnx"

step "the run command works: scripts/demo.sh builds the page and runs sotto demo (--check exits after its predictions)"
bash scripts/demo.sh --count 20 --check --port 0
cargo run --release -q -p local-demo -- --check

step "the Rust client example against a running demo, and a short sotto bench"
port=$((20000 + RANDOM % 20000))
cargo build --release -q -p sotto -p rust-client
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/release/sotto" demo --port "$port" --count 0 >/tmp/sotto-demo-$$.log 2>&1 &
demo_pid=$!
trap 'kill $demo_pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  grep -q "serving until Ctrl-C" /tmp/sotto-demo-$$.log && break
  sleep 0.1
done
"$target_dir/release/rust-client" "ws://127.0.0.1:$port" "ws://127.0.0.1:$((port + 1))"
kill $demo_pid; wait $demo_pid 2>/dev/null || true
trap - EXIT
"$target_dir/release/sotto" bench --batch 1,10 --concurrency 1,4 --requests 40 >/dev/null

step "web: wasm client, npm package, Node tests against real servers, headless Chromium"
bash scripts/test-web.sh

printf '\nall tests passed\n'

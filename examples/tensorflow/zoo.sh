#!/usr/bin/env bash
# Exports the Keras model zoo (small models with TensorFlow reference outputs, the importer's test
# fixtures) with tf2onnx; --large DIR also exports MobileNetV2 and ResNet50 (not for CI).
# Usage: bash examples/tensorflow/zoo.sh OUT_DIR [--large DIR] [--only name,name]
#        bash examples/tensorflow/zoo.sh --large DIR
# The committed fixtures: bash examples/tensorflow/zoo.sh tests/fixtures/zoo
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
args=()
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
  mkdir -p "$1"; args+=(--out "$(cd "$1" && pwd)"); shift
fi
while [ $# -gt 0 ]; do
  case "$1" in
    --large) mkdir -p "$2"; args+=(--large "$(cd "$2" && pwd)"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ ${#args[@]} -eq 0 ]; then
  echo "usage: bash examples/tensorflow/zoo.sh OUT_DIR [--large DIR] [--only a,b]" >&2
  exit 2
fi
cd "$here"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating the Python venv"
  python3 -m venv .venv
fi
echo "==> installing pinned Python packages"
.venv/bin/pip install -q -r requirements.txt
echo "==> exporting the zoo"
# PYTHONHASHSEED: tf2onnx's optimizers iterate over sets, which would reorder initializers run to run
PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python zoo.py "${args[@]}"
echo "==> checking"
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --out|--large) .venv/bin/python zoo_check.py "${args[$((i + 1))]}" ;;
  esac
done

#!/usr/bin/env bash
# The whole pipeline on the bundled samples, on CPU (called by `make demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

echo "== 1. compress the bundled samples into zstd shards"
$PY data/compress_data.py

echo "== 2. the mixture a training run would draw (policy: configs/sample_policy/demo.json)"
$PY utils/inspect_mixture.py --data data/pretrain_data --policy configs/sample_policy/demo.json --tokens 100000

#!/usr/bin/env bash
# quantd executor vs ONNX Runtime (CPU, onnxruntime-node) throughput and peak
# memory on the bundled Fashion-MNIST models.
#
#   bench/run_bench.sh [--threads N] [--batches "1 32"] [--models "a.onnx b.onnx"]
#                      [--bench-bin PATH] [--repeat R]
#
# For every model and batch size, each side runs in its own process
# (bench/quantd_bench and node bench/ort_bench.js) on identical pseudo-random
# inputs with the same intra-op thread count (default 1): warm-up runs, then
# timed runs for at least a second; the median time per batch is reported.
# With --repeat R each measurement is taken R times, sides alternating, and
# the best median is kept (the machine may be shared).
#
# Memory: each side's peak RSS (getrusage / process.resourceUsage maxRSS) and
# that peak minus the side's baseline, which the ratio column compares:
#   quantd baseline: maxRSS before the model is loaded (process + libraries)
#   ORT baseline:    maxRSS after require('onnxruntime-node'), before the
#                    session exists (node runtime + ORT add-on); the bare node
#                    process RSS is shown as well.
# The checksum column compares the sums of all outputs (same inputs, so they
# should agree to float rounding).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THREADS=1
BATCHES="1 32"
MODELS="models/fashion_cnn.onnx models/mobilenet_v2_fashion.onnx models/transformer_fashion.onnx"
BENCH_BIN="${QUANTD_BUILD_DIR:-$ROOT/build}/bin/quantd_bench"
REPEAT=1

while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --batches) BATCHES="$2"; shift 2 ;;
    --models) MODELS="$2"; shift 2 ;;
    --bench-bin) BENCH_BIN="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "run_bench.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

if [ ! -x "$BENCH_BIN" ]; then
  echo "run_bench.sh: $BENCH_BIN not found; build the quantd_bench target first (./quantd.sh bench does)" >&2
  exit 1
fi
if [ ! -f "$ROOT/tests/peer/node_modules/onnxruntime-node/package.json" ]; then
  echo "run_bench.sh: onnxruntime-node is not installed in tests/peer (./quantd.sh deps installs it)" >&2
  exit 1
fi

results="$(mktemp)"
trap 'rm -f "$results"' EXIT

cd "$ROOT"
echo "threads: $THREADS   cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)   cores: $(nproc)"
for model in $MODELS; do
  if [ ! -f "$model" ]; then
    echo "skipping $model: file not found"
    continue
  fi
  for batch in $BATCHES; do
    for _ in $(seq 1 "$REPEAT"); do
      "$BENCH_BIN" --model "$model" --batch "$batch" --threads "$THREADS" >>"$results" ||
        echo "{\"side\":\"quantd\",\"model\":\"$model\",\"batch\":$batch,\"error\":true}" >>"$results"
      node "$ROOT/bench/ort_bench.js" --model "$model" --batch "$batch" --threads "$THREADS" >>"$results" ||
        echo "{\"side\":\"ort\",\"model\":\"$model\",\"batch\":$batch,\"error\":true}" >>"$results"
    done
  done
done

node "$ROOT/bench/bench_table.js" "$results"

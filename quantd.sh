#!/usr/bin/env bash
# quantd developer entry point: deps | build | demo | test | bench.
# `./quantd.sh demo` and `./quantd.sh test` work on a fresh Debian 12 machine;
# each installs what is missing and builds first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_DIR="${QUANTD_BUILD_DIR:-$ROOT/build}"
ASAN_BUILD_DIR="${QUANTD_ASAN_BUILD_DIR:-$ROOT/build-asan}"
JOBS="${QUANTD_JOBS:-$(nproc)}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/quantd-ccache}"
# Paths below the checkout hash as relative ones, so worktrees share hits.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"

DEBIAN_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libonnx-dev libopencv-dev libeigen3-dev libdnnl-dev
  libboost-dev libboost-system-dev prometheus-cpp-dev libyaml-cpp-dev
  libgtest-dev libgmock-dev libsqlite3-dev libarchive-dev libssl-dev nlohmann-json3-dev
  libpq-dev postgresql openssl
  python3 python3-torch python3-numpy python3-onnx
  dataset-fashion-mnist libonnx-testdata opencv-doc
  clang libclang-rt-14-dev
  chromium
)
ORT_PEER_DIR="$ROOT/tests/peer"

log() { printf '[quantd.sh] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

cmd_deps() {
  local missing=()
  for package in "${DEBIAN_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$package")
    fi
  done
  # Node.js may come from another vendor's package that bundles npm (and
  # conflicts with Debian's npm); only a missing command needs installing.
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  if [ ! -f "$ORT_PEER_DIR/node_modules/onnxruntime-node/package.json" ]; then
    log "installing the ONNX Runtime test peer (npm onnxruntime-node, CPU only)"
    # --ignore-scripts: the package's install script only fetches GPU add-ons.
    (cd "$ORT_PEER_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  fi
}

configure() {
  local dir="$1"; shift
  cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
}

cmd_build() {
  configure "$BUILD_DIR"
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

# Starts quantd on its embedded defaults in the background; sets SERVER_PID.
start_demo_server() {
  local data_dir="$1" ready="$1/ready.json"
  rm -f "$ready"
  "$BUILD_DIR/bin/quantd" --data-dir "$data_dir" --ready-file "$ready" 2>"$data_dir/quantd.log" &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    [ -f "$ready" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$data_dir/quantd.log" >&2; return 1; }
    sleep 0.1
  done
  log "quantd did not start"; return 1
}

cmd_demo() {
  cmd_deps
  cmd_build
  local work="$ROOT/.quantd-data/demo" out="$ROOT/demo-out"
  mkdir -p "$work"
  rm -rf "$out"
  start_demo_server "$work"
  trap 'kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true' EXIT
  local server
  server="$(sed -n 's/.*"listen":"\([^"]*\)".*/\1/p' "$work/ready.json")"
  log "quantd is serving on $server (data in $work); quantizing the bundled Fashion-MNIST CNN"
  # 100 training images calibrate full quantization; the test set judges it.
  rm -rf "$work/calib"
  /usr/bin/python3 "$ROOT/models/export_fashion_samples.py" "$work/calib" 100 --split train >/dev/null
  local quantctl=("$BUILD_DIR/bin/quantctl" --server "$server")
  "${quantctl[@]}" submit --model "$ROOT/models/fashion_cnn.onnx" --config "$ROOT/configs/full_quant.yaml" \
    --calib "input=$work/calib" --wait --out "$out/full_quant"
  "${quantctl[@]}" submit --model "$ROOT/models/fashion_cnn.onnx" --config "$ROOT/configs/weight_quant_8bit.yaml" \
    --wait --out "$out/weight_quant_8bit"
  "${quantctl[@]}" submit --model "$ROOT/models/fashion_cnn.onnx" --config "$ROOT/configs/weight_quant_4bit.yaml" \
    --wait --out "$out/weight_quant_4bit"
  # Mixed bits: init_scale tuned so the output keeps cosine >= 0.995.
  "${quantctl[@]}" submit --model "$ROOT/models/fashion_cnn.onnx" --config "$ROOT/configs/mixed_bit_auto_tune.yaml" \
    --calib "input=$work/calib" --wait --out "$out/mixed_bit_auto_tune"
  log "evaluating in ONNX Runtime on the 10,000 Fashion-MNIST test images"
  for mode in full_quant weight_quant_8bit weight_quant_4bit mixed_bit_auto_tune; do
    node "$ORT_PEER_DIR/ort_eval.js" eval --model "$out/$mode/model.onnx" \
      --reference "$ROOT/models/fashion_cnn.onnx" --count 10000 |
      /usr/bin/python3 -c '
import json, sys, os
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
mode, ref, out = sys.argv[1], sys.argv[2], sys.argv[3]
fp32, quantized = r["reference_accuracy"] * 100, r["accuracy"] * 100
print(f"{mode:20s} fp32 top-1 {fp32:.2f}%  quantized top-1 {quantized:.2f}%  "
      f"size {os.path.getsize(ref) / 1024:.0f} KiB -> {os.path.getsize(out) / 1024:.0f} KiB")
' "$mode" "$ROOT/models/fashion_cnn.onnx" "$out/$mode/model.onnx"
  done
  log "artifacts (model.onnx, summary.json) are in $out"
}

cmd_test() {
  cmd_deps
  cmd_build
  log "running the test suite"
  (cd "$BUILD_DIR" && ctest --output-on-failure --timeout 900 -j "$JOBS")
  log "running the unit tests under AddressSanitizer and UBSan"
  configure "$ASAN_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUANTD_SANITIZE=ON
  cmake --build "$ASAN_BUILD_DIR" -j "$JOBS" --target quantd_unit_tests
  (cd "$ASAN_BUILD_DIR" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --output-on-failure -L unit -j "$JOBS")
  cmd_fuzz
}

# Each libFuzzer target runs for a bounded time from its seed corpus (plus
# every past regression). A crash or hang fails the run; the input is kept
# in fuzz/findings/ to be fixed and moved to fuzz/regressions/.
cmd_fuzz() {
  local seconds="${QUANTD_FUZZ_SECONDS:-30}" dir="$ROOT/build-fuzz" work
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DQUANTD_FUZZ=ON -DQUANTD_BUILD_TESTS=OFF >/dev/null
  cmake --build "$dir" -j "$JOBS" --target model_loader_fuzzer config_parser_fuzzer archive_reader_fuzzer
  work="$(mktemp -d)"
  for target in model_loader config_parser archive_reader; do
    mkdir -p "$work/$target" "$ROOT/fuzz/findings"
    cp "$ROOT/fuzz/corpus/$target/"* "$work/$target/"
    find "$ROOT/fuzz/regressions/$target" -type f ! -name '.*' -exec cp {} "$work/$target/" \;
    log "fuzzing $target for ${seconds}s"
    if ! (cd "$work" && "$dir/bin/${target}_fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
          -artifact_prefix="$ROOT/fuzz/findings/${target}-" "$work/$target" >"$work/$target.log" 2>&1); then
      tail -40 "$work/$target.log" >&2
      log "fuzzer $target found a failure; its input is in fuzz/findings/"
      return 1
    fi
  done
  rm -rf "$work"
}

# quantd's executor against ONNX Runtime on the bundled models; extra
# arguments go to bench/run_bench.sh (--threads N, --batches "1 32", ...).
cmd_bench() {
  cmd_deps
  configure "$BUILD_DIR"
  cmake --build "$BUILD_DIR" -j "$JOBS" --target quantd_bench
  "$ROOT/bench/run_bench.sh" --bench-bin "$BUILD_DIR/bin/quantd_bench" "$@"
}

usage() {
  cat <<USAGE
usage: ./quantd.sh COMMAND
  deps    install missing Debian packages and the npm ONNX Runtime test peer
  build   Release build with ccache: build/bin/{quantd,quantd-worker,quantctl}
  demo    deps + build, start quantd on its defaults, quantize the bundled model end to end
  test    deps + build, run the whole test suite (and the unit tests under ASan/UBSan, and the fuzzers)
  fuzz    run each libFuzzer target for QUANTD_FUZZ_SECONDS (default 30)
  bench   deps + build, compare throughput and peak memory with ONNX Runtime (bench/run_bench.sh)
USAGE
}

case "${1:-}" in
  deps) cmd_deps ;;
  build) cmd_build ;;
  demo) cmd_demo ;;
  test) cmd_test ;;
  fuzz) cmd_fuzz ;;
  bench) shift; cmd_bench "$@" ;;
  -h|--help|help|"") usage ;;
  *) usage; exit 2 ;;
esac

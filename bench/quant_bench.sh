#!/usr/bin/env bash
# Full (int8) quantization benchmark: accuracy, a PyTorch PTQ baseline,
# inference speed in ONNX Runtime, calibration speed and observer memory;
# mixed-bit weight quantization size and accuracy; dynamic quantization
# size, accuracy and latency.
#
#   bench/quant_bench.sh [--sections "1 2 3 4 5 6 7"] [--repeat R] [--keep DIR]
#
# Run from anywhere after ./quantd.sh build (needs build/bin/quantctl,
# onnxruntime-node in tests/peer, Debian's /usr/bin/python3 with torch, numpy
# and onnx, and the Fashion-MNIST IDX files).  All work happens in a fresh
# temporary folder that is removed at exit (--keep DIR copies it there first).
#
#   1 accuracy    fashion_cnn and mobilenet_v2_fashion quantized by
#                 `quantctl convert` (FULL_QUANT, 8 bits, bias_correction on)
#                 with MAX_MIN, KL and REMOVAL_OUTLIER on 100 train images
#                 (offset 0); fp32 and every int8 model evaluated in ONNX
#                 Runtime on the 10,000 t10k images; drop in points; best
#                 method per model.
#   2 baseline    bench/pytorch_ptq.py: the MobileNetV2-style module rebuilt
#                 in torch from the ONNX weights, FX graph mode PTQ (fbgemm
#                 and onednn qconfig mappings) on the same 100 train images,
#                 next to quantd's drops from section 1.
#   3 speed       int8 (MAX_MIN) vs fp32 fashion_cnn in ONNX Runtime, batch
#                 32, 1 thread, both in one process taking turns (median
#                 ms per batch); target speed-up >= 1.5x.
#   4 calibration `quantctl convert --threads 1` of fashion_cnn on 500 train
#                 images (bias_correction off), the `calibrate` stage time from
#                 summary.json, vs ONNX Runtime fp32 inference of the same 500
#                 images (batch 32, 1 thread, session.run only); R rounds
#                 in which ONNX Runtime and the conversions take turns; the
#                 verdict uses the median of the rounds' own ratios; targets
#                 MAX_MIN <= 1.5x, KL <= 2.5x.
#   5 memory      peak RSS (/usr/bin/time -f %M) of those conversions with 100
#                 vs 500 calibration images; target: 500 within 10% of 100.
#   6 mixed-bit   WEIGHT_QUANT bit_num 0 (init_scale 0.02, and auto_tune on
#                 100 train images) vs fixed 8-bit and 4-bit weights, same
#                 min_quant_weight_* settings: model bytes and top-1 on the
#                 t10k images in ONNX Runtime for every ACC_MODELS network;
#                 target for auto_tune: smaller than 8-bit, drop <= 1 point.
#   7 dynamic     DYNAMIC_QUANT of transformer_fashion in both operator forms
#                 (ORT_FUSED, the default, and STANDARD): file bytes against
#                 fp32 (target <= 30%), top-1 on the t10k images in ONNX
#                 Runtime (target: within 0.5 points), and median ms per
#                 batch against fp32 at batch 1 and 32, 1 thread, all models
#                 in one process taking turns.
#
# Prints numbers measured in this run and their ratios.  Exit status 0 unless
# something fails to run (a missed target is reported, not an error).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${QUANTD_BUILD_DIR:-$ROOT/build}"
QUANTCTL="$BUILD_DIR/bin/quantctl"
PY="${QUANTD_PYTHON:-/usr/bin/python3}"
SECTIONS="1 2 3 4 5 6 7"
REPEAT=3
KEEP=""
METHODS="MAX_MIN KL REMOVAL_OUTLIER"
ACC_MODELS="fashion_cnn mobilenet_v2_fashion"
TEST_COUNT=10000

while [ $# -gt 0 ]; do
  case "$1" in
    --sections) SECTIONS="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --keep) KEEP="$2"; shift 2 ;;
    -h|--help) sed -n '2,47p' "$0"; exit 0 ;;
    *) echo "quant_bench.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

die() { echo "quant_bench.sh: $*" >&2; exit 1; }

[ -x "$QUANTCTL" ] || die "$QUANTCTL not found; run ./quantd.sh build first"
[ -f "$ROOT/tests/peer/node_modules/onnxruntime-node/package.json" ] ||
  die "onnxruntime-node is not installed in tests/peer (./quantd.sh deps installs it)"
[ -x /usr/bin/time ] || die "/usr/bin/time is needed for peak RSS (Debian package 'time')"
case "$REPEAT" in ''|*[!0-9]*|0) die "--repeat needs a positive integer" ;; esac

WORK="$(mktemp -d "${TMPDIR:-/tmp}/quant_bench.XXXXXX")"
cleanup() {
  if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp -a "$WORK/." "$KEEP/" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$ROOT"

want() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }

# json FILE EXPR: evaluates the JavaScript expression EXPR with `d` = the
# JSON document in FILE (or, for a log, its last line) and prints the result.
json() {
  node -e '
    const text = require("fs").readFileSync(process.argv[1], "utf8").trim();
    let d;
    try { d = JSON.parse(text); } catch (e) { d = JSON.parse(text.slice(text.lastIndexOf("\n") + 1)); }
    const v = (new Function("d", "return (" + process.argv[2] + ");"))(d);
    if (v === undefined || v === null) process.exit(3);
    console.log(v);' "$1" "$2"
}

# calc EXPR: floating point arithmetic, printed as given by the expression.
calc() { node -e 'console.log((new Function("return (" + process.argv[1] + ");"))())' "$1"; }

# write_config FILE METHOD SIZE BIAS_CORRECTION CALIB_DIR
write_config() {
  cat >"$1" <<EOF
common_quant_param:
  quant_type: FULL_QUANT
  bit_num: 8
full_quant_param:
  activation_quant_method: $2
  bias_correction: $4
data_preprocess_param:
  calibrate_path: input:$5/
  calibrate_size: $3
  input_type: IMAGE
  image_to_format: GRAY
  normalize_mean: [0]
  normalize_std: [255]
EOF
}

# convert MODEL CONFIG OUT_DIR: quantctl convert --threads 1 under
# /usr/bin/time; leaves OUT_DIR/{model.onnx,summary.json,rss_kb,log}.
convert() {
  mkdir -p "$3"
  if ! /usr/bin/time -f %M -o "$3.rss" "$QUANTCTL" convert --model "$1" --config "$2" --out "$3" --threads 1 \
      >"$3.log" 2>&1; then
    tail -n 20 "$3.log" >&2
    die "quantctl convert --model $1 --config $2 failed"
  fi
  tail -n 1 "$3.rss" >"$3/rss_kb"
  mv "$3.log" "$3/log"
  rm -f "$3.rss"
}

# calib_seconds OUT_DIR: the `calibrate` stage time from summary.json.
calib_seconds() { json "$1/summary.json" 'd.timings.find((t) => t.stage === "calibrate").seconds'; }

# accuracy MODEL: top-1 on the t10k images in ONNX Runtime (1 thread).
accuracy() {
  local out="$WORK/eval.$$.json"
  node tests/peer/ort_eval.js eval --model "$1" --count "$TEST_COUNT" >"$out" || die "ort_eval.js eval --model $1 failed"
  json "$out" 'd.accuracy.toFixed(4)'
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {if (NR % 2) print v[(NR+1)/2]; else printf "%.6g\n", (v[NR/2]+v[NR/2+1])/2}'; }

# Calibration images: Fashion-MNIST train images 0..N-1 as PNG.
calib_dir() {
  local dir="$WORK/calib$1"
  if [ ! -d "$dir" ]; then
    "$PY" models/export_fashion_samples.py "$dir" "$1" --split train --offset 0 >/dev/null ||
      die "export_fashion_samples.py failed"
  fi
  echo "$dir"
}

declare -A ACC
# quantize_and_eval MODEL: fills ACC[MODEL:fp32] and ACC[MODEL:METHOD].
quantize_and_eval() {
  local name="$1" model="models/$1.onnx" method dir
  [ -n "${ACC[$name:fp32]:-}" ] && return 0
  dir="$(calib_dir 100)"
  ACC[$name:fp32]="$(accuracy "$model")"
  for method in $METHODS; do
    write_config "$WORK/$name.$method.yaml" "$method" 100 true "$dir"
    convert "$model" "$WORK/$name.$method.yaml" "$WORK/acc.$name.$method"
    ACC[$name:$method]="$(accuracy "$WORK/acc.$name.$method/model.onnx")"
  done
}

drop() { calc "(($1 - $2) * 100).toFixed(2)"; }

echo "quant_bench: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')  " \
     "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)  cores: $(nproc)"

if want 1; then
  echo
  echo "== 1. Accuracy: fp32 vs int8 (FULL_QUANT, bias correction) in ONNX Runtime =="
  echo "   calibration: 100 train images (offset 0); evaluation: $TEST_COUNT t10k images"
  printf '%-22s %-16s %8s %8s %11s\n' model method fp32 int8 "drop (pts)"
  for name in $ACC_MODELS; do
    quantize_and_eval "$name"
    best=""; best_acc=-1
    for method in $METHODS; do
      printf '%-22s %-16s %8s %8s %11s\n' "$name" "$method" "${ACC[$name:fp32]}" "${ACC[$name:$method]}" \
        "$(drop "${ACC[$name:fp32]}" "${ACC[$name:$method]}")"
      if [ "$(calc "${ACC[$name:$method]} > $best_acc")" = true ]; then
        best="$method"; best_acc="${ACC[$name:$method]}"
      elif [ "$(calc "${ACC[$name:$method]} === $best_acc")" = true ]; then
        best="$best/$method"
      fi
    done
    ACC[$name:best]="$best"
  done
  for name in $ACC_MODELS; do
    b="${ACC[$name:best]}"; b1="${b%%/*}"
    echo "best for $name: $b (int8 ${ACC[$name:$b1]}, drop $(drop "${ACC[$name:fp32]}" "${ACC[$name:$b1]}") points)"
  done
fi

if want 2; then
  echo
  echo "== 2. MobileNetV2-style: quantd vs PyTorch FX graph mode PTQ (same 100 train images) =="
  quantize_and_eval mobilenet_v2_fashion
  "$PY" bench/pytorch_ptq.py --calib-count 100 --calib-offset 0 --qconfig fbgemm,onednn --json \
    >"$WORK/torch.log" 2>"$WORK/torch.err" || { cat "$WORK/torch.err" >&2; die "bench/pytorch_ptq.py failed"; }
  torch_engine="$(json "$WORK/torch.log" 'd.engine')"
  printf '%-44s %-14s %8s %8s %11s\n' quantizer evaluated-in fp32 int8 "drop (pts)"
  for method in $METHODS; do
    printf '%-44s %-14s %8s %8s %11s\n' "quantd $method" "ONNX Runtime" "${ACC[mobilenet_v2_fashion:fp32]}" \
      "${ACC[mobilenet_v2_fashion:$method]}" \
      "$(drop "${ACC[mobilenet_v2_fashion:fp32]}" "${ACC[mobilenet_v2_fashion:$method]}")"
  done
  fp32_torch="$(json "$WORK/torch.log" 'd.fp32_accuracy.toFixed(4)')"
  n="$(json "$WORK/torch.log" 'd.int8.length')"
  for ((i = 0; i < n; i++)); do
    q="$(json "$WORK/torch.log" "d.int8[$i].qconfig")"
    a="$(json "$WORK/torch.log" "d.int8[$i].int8_accuracy.toFixed(4)")"
    printf '%-44s %-14s %8s %8s %11s\n' "PyTorch FX PTQ, $q qconfig" "torch $torch_engine" "$fp32_torch" "$a" \
      "$(drop "$fp32_torch" "$a")"
  done
  echo "torch fp32 module rebuilt from the ONNX weights: $fp32_torch (ONNX Runtime: ${ACC[mobilenet_v2_fashion:fp32]});" \
       "quantized engines in this torch: $(json "$WORK/torch.log" 'd.supported_engines.join(", ")')"
fi

if want 3 || want 4 || want 5; then
  dir100="$(calib_dir 100)"
  dir500="$(calib_dir 500)"
fi

if want 3; then
  echo
  echo "== 3. Inference speed in ONNX Runtime: fashion_cnn int8 (MAX_MIN) vs fp32, batch 32, 1 thread =="
  if [ ! -f "$WORK/acc.fashion_cnn.MAX_MIN/model.onnx" ]; then
    write_config "$WORK/fashion_cnn.MAX_MIN.yaml" MAX_MIN 100 true "$dir100"
    convert models/fashion_cnn.onnx "$WORK/fashion_cnn.MAX_MIN.yaml" "$WORK/acc.fashion_cnn.MAX_MIN"
  fi
  node bench/ort_speed.js --model models/fashion_cnn.onnx --model "$WORK/acc.fashion_cnn.MAX_MIN/model.onnx" \
    --batch 32 --threads 1 --rounds $((REPEAT * 2)) --iters 100 --warmup 20 >"$WORK/speed.json" ||
    die "ort_speed.js failed"
  fp32_ms="$(json "$WORK/speed.json" 'd.results[0].median_ms_per_batch')"
  int8_ms="$(json "$WORK/speed.json" 'd.results[1].median_ms_per_batch')"
  ratio="$(calc "($fp32_ms / $int8_ms).toFixed(2)")"
  printf '%-10s %14s %14s %14s\n' model "median ms/batch" "mean ms/batch" runs
  printf '%-10s %14s %14s %14s\n' fp32 "$fp32_ms" "$(json "$WORK/speed.json" 'd.results[0].mean_ms_per_batch')" \
    "$(json "$WORK/speed.json" 'd.results[0].runs')"
  printf '%-10s %14s %14s %14s\n' int8 "$int8_ms" "$(json "$WORK/speed.json" 'd.results[1].mean_ms_per_batch')" \
    "$(json "$WORK/speed.json" 'd.results[1].runs')"
  verdict="$(calc "$ratio >= 1.5 ? 'met' : 'MISSED'")"
  echo "speed-up int8 vs fp32: ${ratio}x  (target >= 1.5x: $verdict)"
fi

declare -A CAL_MS RSS_KB CAL_SECS RSS_LIST
# conv_once METHOD SIZE: one more conversion of fashion_cnn (bias correction
# off, --threads 1) into $WORK/cal.METHOD.SIZE.K; appends its calibrate stage
# seconds to CAL_SECS[METHOD:SIZE] and its peak RSS to RSS_LIST[METHOD:SIZE].
conv_once() {
  local method="$1" size="$2" dir k
  dir="$(calib_dir "$size")"
  [ -f "$WORK/cal.$method.$size.yaml" ] || write_config "$WORK/cal.$method.$size.yaml" "$method" "$size" false "$dir"
  k="$(($(echo "${CAL_SECS[$method:$size]:-}" | wc -w) + 1))"
  convert models/fashion_cnn.onnx "$WORK/cal.$method.$size.yaml" "$WORK/cal.$method.$size.$k"
  CAL_SECS[$method:$size]="${CAL_SECS[$method:$size]:-} $(calib_seconds "$WORK/cal.$method.$size.$k")"
  RSS_LIST[$method:$size]="${RSS_LIST[$method:$size]:-} $(cat "$WORK/cal.$method.$size.$k/rss_kb")"
}
# conv_runs METHOD SIZE: tops up to REPEAT conversions; sets CAL_MS[METHOD:SIZE]
# (median calibrate stage, ms) and RSS_KB[METHOD:SIZE] (median peak RSS).
conv_runs() {
  local method="$1" size="$2"
  while [ "$(echo "${CAL_SECS[$method:$size]:-}" | wc -w)" -lt "$REPEAT" ]; do conv_once "$method" "$size"; done
  CAL_MS[$method:$size]="$(calc "($(echo "${CAL_SECS[$method:$size]}" | median) * 1000).toFixed(2)")"
  RSS_KB[$method:$size]="$(echo "${RSS_LIST[$method:$size]}" | median)"
}

if want 4; then
  echo
  echo "== 4. Calibration speed: quantctl convert --threads 1, fashion_cnn, 500 train images, no bias correction =="
  # ONNX Runtime and the conversions take turns, round by round, so that a
  # change in machine load hits both sides of each round's ratio alike.
  declare -A PAIRED
  ort_list=""
  for ((k = 1; k <= REPEAT; k++)); do
    node bench/ort_speed.js --model models/fashion_cnn.onnx --count 500 --split train --offset 0 --batch 32 \
      --threads 1 --rounds 2 >"$WORK/ort500.$k.json" || die "ort_speed.js failed"
    ort_k="$(json "$WORK/ort500.$k.json" 'd.results[0].median_ms_per_pass')"
    ort_list="$ort_list $ort_k"
    for method in MAX_MIN KL; do
      conv_once "$method" 500
      last="$(echo "${CAL_SECS[$method:500]}" | awk '{print $NF}')"
      PAIRED[$method]="${PAIRED[$method]:-} $(calc "$last * 1000 / $ort_k")"
    done
  done
  ort_ms="$(echo "$ort_list" | median)"
  qd_ms="$("$QUANTCTL" bench --model models/fashion_cnn.onnx --batch 32 --threads 1 --iters 50 >"$WORK/qbench.json" &&
           json "$WORK/qbench.json" 'd.ms_per_batch')" || die "quantctl bench failed"
  printf '%-46s %10s %9s %9s %16s\n' "" "ms" "vs ORT" "paired" target
  printf '%-46s %10s %9s %9s %16s\n' "ORT fp32 inference, 500 images (session.run)" "$ort_ms" "1.00x" "" ""
  for method in MAX_MIN KL; do
    conv_runs "$method" 500
    ms="${CAL_MS[$method:500]}"
    r="$(calc "($ms / $ort_ms).toFixed(2)")"
    paired="$(calc "($(echo "${PAIRED[$method]}" | median)).toFixed(2)")"
    limit=1.5; [ "$method" = KL ] && limit=2.5
    printf '%-46s %10s %9s %9s %16s\n' "quantd calibrate stage, $method" "$ms" "${r}x" "${paired}x" \
      "$(calc "$paired <= $limit ? '<= ${limit}x met' : '<= ${limit}x MISSED'")"
  done
  est="$(calc "($qd_ms * 500 / 32).toFixed(2)")"
  printf '%-46s %10s %9s\n' "quantd executor alone (quantctl bench x 500/32)" "$est" "$(calc "($est / $ort_ms).toFixed(2)")x"
  echo "   medians of $REPEAT rounds (each: 2 ORT passes, then one conversion per method); 'vs ORT' divides the"
  echo "   medians, 'paired' is the median of each round's own ratio (the target's verdict); quantctl bench:"
  echo "   $qd_ms ms per batch of 32"
  echo "   split from the same conversions with 100 images (fixed = extrapolated to 0 images):"
  for method in MAX_MIN KL; do
    conv_runs "$method" 100
    per="$(calc "((${CAL_MS[$method:500]} - ${CAL_MS[$method:100]}) / 400).toFixed(4)")"
    fixed="$(calc "(${CAL_MS[$method:100]} - 100 * $per).toFixed(2)")"
    echo "   $method: 100 images ${CAL_MS[$method:100]} ms, 500 images ${CAL_MS[$method:500]} ms ->" \
         "fixed ${fixed} ms + ${per} ms/image (ORT: $(calc "($ort_ms / 500).toFixed(4)") ms/image)"
  done
fi

if want 5; then
  echo
  echo "== 5. Observer memory: peak RSS of quantctl convert --threads 1 (fashion_cnn, no bias correction) =="
  printf '%-10s %14s %14s %8s %12s\n' method "100 images KB" "500 images KB" ratio "target"
  for method in MAX_MIN KL; do
    conv_runs "$method" 100
    conv_runs "$method" 500
    ratio="$(calc "(${RSS_KB[$method:500]} / ${RSS_KB[$method:100]}).toFixed(3)")"
    printf '%-10s %14s %14s %8s %12s\n' "$method" "${RSS_KB[$method:100]}" "${RSS_KB[$method:500]}" "$ratio" \
      "$(calc "Math.abs($ratio - 1) <= 0.10 ? 'within 10% met' : 'within 10% MISSED'")"
  done
fi

# write_weight_config FILE BIT_NUM AUTO_TUNE CALIB_DIR: WEIGHT_QUANT with the
# settings of configs/weight_quant_8bit.yaml.
write_weight_config() {
  cat >"$1" <<EOF
common_quant_param:
  quant_type: WEIGHT_QUANT
  bit_num: $2
  min_quant_weight_size: 0
  min_quant_weight_channel: 16
mixed_bit_weight_quant_param:
  init_scale: 0.02
  auto_tune: $3
data_preprocess_param:
  calibrate_path: input:$4/
  input_type: IMAGE
  image_to_format: GRAY
  normalize_mean: [0]
  normalize_std: [255]
EOF
}

if want 6; then
  echo
  echo "== 6. Mixed-bit weight quantization (bit_num 0) vs fixed-bit weights, in ONNX Runtime =="
  echo "   auto_tune on 100 train images (offset 0), target output cosine 0.995; evaluation: $TEST_COUNT t10k images"
  dir="$(calib_dir 100)"
  printf '%-22s %-22s %9s %9s %8s %11s %s\n' model weights bytes "vs 8-bit" top-1 "drop (pts)" notes
  for name in $ACC_MODELS; do
    model="models/$name.onnx"
    fp32="${ACC[$name:fp32]:-$(accuracy "$model")}"
    declare -A MIXED_BYTES=() MIXED_ACC=()
    for variant in "8-bit:8:false" "4-bit:4:false" "mixed init_scale 0.02:0:false" "mixed auto_tune:0:true"; do
      label="${variant%%:*}"; rest="${variant#*:}"; bits="${rest%%:*}"; tune="${rest#*:}"
      tag="$(echo "$label" | tr ' .' '__')"
      write_weight_config "$WORK/$name.$tag.yaml" "$bits" "$tune" "$dir"
      convert "$model" "$WORK/$name.$tag.yaml" "$WORK/mixed.$name.$tag"
      MIXED_BYTES[$label]="$(stat -c %s "$WORK/mixed.$name.$tag/model.onnx")"
      MIXED_ACC[$label]="$(accuracy "$WORK/mixed.$name.$tag/model.onnx")"
      notes=""
      if [ "$bits" = 0 ]; then
        notes="$(json "$WORK/mixed.$name.$tag/summary.json" \
          '"init_scale " + d.weights.mixed_bit.init_scale.toFixed(4) + ", layers by bits " +
           d.weights.mixed_bit.bits_histogram.map((h) => h.bits + ":" + h.layers).join(" ") +
           (d.weights.mixed_bit.tuning ? ", output cosine " + d.weights.mixed_bit.tuning.output_cosine.toFixed(4) +
            " after " + d.weights.mixed_bit.tuning.trials.length + " trials" : "")')"
      fi
      printf '%-22s %-22s %9s %9s %8s %11s %s\n' "$name" "$label" "${MIXED_BYTES[$label]}" \
        "$(calc "(${MIXED_BYTES[$label]} / ${MIXED_BYTES[8-bit]}).toFixed(3)")" "${MIXED_ACC[$label]}" \
        "$(drop "$fp32" "${MIXED_ACC[$label]}")" "$notes"
    done
    a="mixed auto_tune"
    verdict="$(calc "${MIXED_BYTES[$a]} < ${MIXED_BYTES[8-bit]} && ($fp32 - ${MIXED_ACC[$a]}) * 100 <= 1 ? 'met' : 'MISSED'")"
    echo "$name: fp32 $fp32; auto_tune smaller than 8-bit with drop <= 1 point: $verdict"
  done
fi

if want 7; then
  echo
  echo "== 7. Dynamic quantization (DYNAMIC_QUANT, 8 bits) of transformer_fashion, in ONNX Runtime =="
  model=models/transformer_fashion.onnx
  fp32_bytes="$(stat -c %s "$model")"
  fp32="$(accuracy "$model")"
  for form in ORT_FUSED STANDARD; do
    printf 'common_quant_param:\n  quant_type: DYNAMIC_QUANT\n  bit_num: 8\ndynamic_quant_param:\n  operator_form: %s\n' \
      "$form" >"$WORK/dynamic.$form.yaml"
    convert "$model" "$WORK/dynamic.$form.yaml" "$WORK/dynamic.$form"
  done
  for batch in 1 32; do
    node bench/ort_speed.js --model "$model" --model "$WORK/dynamic.ORT_FUSED/model.onnx" \
      --model "$WORK/dynamic.STANDARD/model.onnx" --batch "$batch" --threads 1 --rounds $((REPEAT * 2)) \
      --iters 100 --warmup 20 >"$WORK/dynamic_speed.$batch.json" || die "ort_speed.js failed"
  done
  printf '%-10s %9s %8s %8s %11s %16s %16s\n' model bytes "vs fp32" top-1 "drop (pts)" "ms/batch b=1" "ms/batch b=32"
  speed() { json "$WORK/dynamic_speed.$1.json" "d.results[$2].median_ms_per_batch.toFixed(3)"; }
  printf '%-10s %9s %8s %8s %11s %16s %16s\n' fp32 "$fp32_bytes" "1.000" "$fp32" "" "$(speed 1 0)" "$(speed 32 0)"
  i=1
  for form in ORT_FUSED STANDARD; do
    out="$WORK/dynamic.$form/model.onnx"
    bytes="$(stat -c %s "$out")"
    acc="$(accuracy "$out")"
    printf '%-10s %9s %8s %8s %11s %16s %16s\n' "$form" "$bytes" "$(calc "($bytes / $fp32_bytes).toFixed(3)")" \
      "$acc" "$(drop "$fp32" "$acc")" "$(speed 1 $i) ($(calc "($(speed 1 0) / $(speed 1 $i)).toFixed(2)")x)" \
      "$(speed 32 $i) ($(calc "($(speed 32 0) / $(speed 32 $i)).toFixed(2)")x)"
    if [ "$form" = ORT_FUSED ]; then
      verdict="$(calc "$bytes <= 0.30 * $fp32_bytes && Math.abs($fp32 - $acc) * 100 <= 0.5 ? 'met' : 'MISSED'")"
      fused_line="ORT_FUSED: size <= 30% of fp32 and top-1 within 0.5 points: $verdict"
    fi
    i=$((i + 1))
  done
  echo "latency columns: median ms per batch (fp32 ms / dynamic ms in brackets, above 1 = faster than fp32)"
  echo "$fused_line"
fi

#!/usr/bin/python3
"""PyTorch's own post-training static quantization of the bundled
MobileNetV2-style Fashion-MNIST model, as a baseline for quantd.

Usage:
    /usr/bin/python3 bench/pytorch_ptq.py [--model models/mobilenet_v2_fashion.onnx]
        [--calib-count 100] [--calib-offset 0] [--qconfig fbgemm[,onednn,...]]
        [--engine auto|fbgemm|onednn|qnnpack] [--threads 2]
        [--data-dir DIR] [--json]

Steps:
  1. Rebuild the torch module class from models/train_mobilenet_v2_fashion.py
     (imported, not copied).  The ONNX export folded every BatchNorm into the
     convolution before it, so each BatchNorm2d is replaced by nn.Identity and
     each Conv2d gets the folded weight and bias read from the ONNX file's
     initializers (Conv nodes are matched to the module's convolutions in
     execution order, Gemm to the classifier; shapes, strides, groups and pads
     are checked).
  2. Evaluate that fp32 module on the 10,000 t10k images and compare with the
     model sidecar's fp32_test_accuracy (the value ONNX Runtime reproduces);
     a difference of more than --fp32-tolerance is an error.
  3. For each --qconfig backend: FX graph mode PTQ with prepare_fx and
     get_default_qconfig_mapping(BACKEND) (HistogramObserver activations,
     per-channel symmetric int8 weights), calibration on train images
     [offset, offset + count) in batches of 32 (pixel / 255, the same images
     quantd calibrates with), convert_fx, then evaluate the int8 module on
     the 10,000 t10k images.

The quantized kernels come from torch.backends.quantized.engine.  'auto'
picks fbgemm when this torch build has it and otherwise onednn, the other
x86 backend (Debian's python3-torch 1.13 is built without FBGEMM).  With
--qconfig fbgemm the observers use fbgemm's settings (activations with
reduce_range, i.e. 7-bit) whatever engine runs the kernels.

Prints a human-readable report; with --json the last line is one JSON object
with fp32_accuracy, reference_fp32_accuracy, engine, calib_count,
calib_offset, seconds and "int8": one {qconfig, engine, int8_accuracy,
drop_points, seconds} per --qconfig backend.  Exit status 1 on any error.
"""

import argparse
import copy
import json
import os
import sys
import time
import warnings

import numpy as np
import onnx
from onnx import numpy_helper
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Import the training modules without leaving __pycache__ in models/.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, "models"))
import fashion_common as fc  # noqa: E402
import train_mobilenet_v2_fashion as mnv2  # noqa: E402


def onnx_attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def build_from_onnx(onnx_path):
    """MobileNetV2Fashion with BatchNorms removed and the folded conv weights
    and biases of the ONNX model loaded."""
    model = mnv2.MobileNetV2Fashion()
    # Swap every BatchNorm2d for an identity: BN is already folded into the
    # convolution weights stored in the ONNX file.
    def strip_bn(module):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.Identity())
            else:
                strip_bn(child)
    strip_bn(model)

    graph = onnx.load(onnx_path).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    conv_nodes = [n for n in graph.node if n.op_type == "Conv"]
    gemm_nodes = [n for n in graph.node if n.op_type == "Gemm"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if len(conv_nodes) != len(convs) or len(gemm_nodes) != 1:
        raise SystemExit("error: %s has %d Conv / %d Gemm nodes, the module %d Conv2d / 1 Linear"
                         % (onnx_path, len(conv_nodes), len(gemm_nodes), len(convs)))

    # Graph nodes come in topological order, which for this straight-line
    # network is the order the module's convolutions are created and run.
    for node, conv in zip(conv_nodes, convs):
        w = inits[node.input[1]]
        b = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32)
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise SystemExit("error: %s weight %s does not fit %s" % (node.name, w.shape, tuple(conv.weight.shape)))
        checks = [("group", conv.groups, onnx_attr(node, "group", 1)),
                  ("strides", list(conv.stride), list(onnx_attr(node, "strides", [1, 1]))),
                  ("pads", list(conv.padding) * 2, list(onnx_attr(node, "pads", [0, 0, 0, 0])))]
        for what, mine, theirs in checks:
            if mine != theirs:
                raise SystemExit("error: %s %s %s != module %s" % (node.name, what, theirs, mine))
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.array(w, dtype=np.float32)))
            conv.bias = nn.Parameter(torch.from_numpy(np.array(b, dtype=np.float32)))

    gemm = gemm_nodes[0]
    w = inits[gemm.input[1]]
    b = inits[gemm.input[2]]
    if onnx_attr(gemm, "transB", 0) != 1:
        w = w.T
    if tuple(w.shape) != tuple(model.classifier.weight.shape):
        raise SystemExit("error: Gemm weight %s does not fit the classifier %s"
                         % (w.shape, tuple(model.classifier.weight.shape)))
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(np.array(w, dtype=np.float32)))
        model.classifier.bias.copy_(torch.from_numpy(np.array(b, dtype=np.float32)))
    return model.eval()


def pick_engine(wanted):
    supported = torch.backends.quantized.supported_engines
    if wanted == "auto":
        for candidate in ("fbgemm", "x86", "onednn", "qnnpack"):
            if candidate in supported:
                return candidate
        raise SystemExit("error: no quantized engine in this torch build (%s)" % supported)
    if wanted not in supported:
        raise SystemExit("error: quantized engine %s is not in this torch build (has: %s)"
                         % (wanted, ", ".join(supported)))
    return wanted


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "mobilenet_v2_fashion.onnx"))
    ap.add_argument("--data-dir", default=fc.default_data_dir())
    ap.add_argument("--calib-count", type=int, default=100)
    ap.add_argument("--calib-offset", type=int, default=0)
    ap.add_argument("--qconfig", default="fbgemm",
                    help="comma-separated backends whose default qconfig mapping (observers) to use, "
                         "each quantized and evaluated in turn: fbgemm, x86, onednn, qnnpack")
    ap.add_argument("--engine", default="auto", help="torch.backends.quantized.engine (auto: fbgemm if built in)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fp32-tolerance", type=float, default=0.0005,
                    help="allowed |torch fp32 accuracy - sidecar fp32_test_accuracy|")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args()

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    # The observers' deprecation notices (reduce_range) are not results.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\.quantization")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    engine = pick_engine(args.engine)
    for name in args.qconfig.split(","):
        if name not in ("fbgemm", "x86", "onednn", "qnnpack"):
            raise SystemExit("error: unknown --qconfig %s" % name)
    torch.backends.quantized.engine = engine
    timings = {}

    t = time.perf_counter()
    x_train, _ = fc.load_split(args.data_dir, "train")
    x_test, y_test = fc.load_split(args.data_dir, "test")
    if args.calib_offset < 0 or args.calib_count < 1 or args.calib_offset + args.calib_count > x_train.shape[0]:
        raise SystemExit("error: calibration range outside the train split")
    calib = x_train[args.calib_offset:args.calib_offset + args.calib_count]
    timings["load_data"] = time.perf_counter() - t

    model = build_from_onnx(args.model)
    t = time.perf_counter()
    fp32_acc = fc.evaluate(model, x_test, y_test)
    timings["eval_fp32"] = time.perf_counter() - t

    sidecar = os.path.splitext(args.model)[0] + ".json"
    reference = None
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            reference = json.load(f).get("fp32_test_accuracy")
    print("model:              %s" % os.path.relpath(args.model, ROOT))
    print("fp32 torch top-1:   %.4f  (ONNX sidecar: %s)" % (fp32_acc, "n/a" if reference is None else "%.4f" % reference))
    if reference is not None and abs(fp32_acc - reference) > args.fp32_tolerance:
        raise SystemExit("error: rebuilt torch module scores %.4f, the ONNX model %.4f: weights were not loaded right"
                         % (fp32_acc, reference))

    runs = []
    for name in args.qconfig.split(","):
        t = time.perf_counter()
        example = (calib[:1],)
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping(name), example_inputs=example)
        with torch.no_grad():
            for i in range(0, calib.shape[0], 32):
                prepared(calib[i:i + 32])
        quantized = convert_fx(prepared)
        prepare_seconds = time.perf_counter() - t
        t = time.perf_counter()
        int8_acc = fc.evaluate(quantized, x_test, y_test)
        eval_seconds = time.perf_counter() - t
        drop = (fp32_acc - int8_acc) * 100
        print("int8 torch top-1:   %.4f  (drop %.2f points)  FX graph mode PTQ, %s qconfig mapping, %s engine"
              % (int8_acc, drop, name, engine))
        runs.append({"qconfig": name, "engine": engine, "int8_accuracy": int8_acc, "drop_points": round(drop, 4),
                     "seconds": {"prepare_calibrate_convert": round(prepare_seconds, 3),
                                 "eval_int8": round(eval_seconds, 3)}})
    print("calibration:        %d train images (offset %d), pixel / 255" % (calib.shape[0], args.calib_offset))
    if args.json:
        print(json.dumps({
            "model": os.path.relpath(args.model, ROOT),
            "fp32_accuracy": fp32_acc,
            "reference_fp32_accuracy": reference,
            "calib_count": int(calib.shape[0]),
            "calib_offset": args.calib_offset,
            "engine": engine,
            "supported_engines": list(torch.backends.quantized.supported_engines),
            "seconds": {k: round(v, 3) for k, v in timings.items()},
            "int8": runs,
        }))

if __name__ == "__main__":
    main()

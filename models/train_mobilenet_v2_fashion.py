#!/usr/bin/python3
"""Train the MobileNetV2-style Fashion-MNIST model shipped as
models/mobilenet_v2_fashion.onnx.

Usage:
    /usr/bin/python3 models/train_mobilenet_v2_fashion.py [--data-dir DIR]
        [--out-dir DIR] [--epochs N] [--seed S]
        [--checkpoint PATH [--stop-after N]]

Data: the Fashion-MNIST IDX files, read directly (see fashion_common.py);
default directory /usr/share/datasets/fashion-mnist, overridable with
--data-dir or QUANTD_FASHION_MNIST_DIR.

Model contract (same as fashion_cnn.onnx):
  * input  : float32 "input", shape [N, 1, 28, 28] (N dynamic), pixel / 255.0,
             no other preprocessing
  * output : float32 "logits", shape [N, 10] (N dynamic), unnormalized scores

Architecture (BN = BatchNorm, folded into the preceding conv at export):
  stem   Conv 3x3 (1->16, stride 1, pad 1) + BN + ReLU6          16 x 28 x 28
  inverted-residual blocks (expand t, output channels c, stride s):
           t  c   s
    1      2  24  2                                              24 x 14 x 14
    2      4  24  1   (+ residual)                               24 x 14 x 14
    3      4  32  1                                              32 x 14 x 14
    4      4  32  1   (+ residual)                               32 x 14 x 14
    5      4  64  2                                              64 x  7 x  7
    6      4  64  1   (+ residual)                               64 x  7 x  7
    7      4  64  1   (+ residual)                               64 x  7 x  7
    each block: Conv 1x1 (expand) + BN + ReLU6,
                depthwise Conv 3x3 (groups = channels, stride s) + BN + ReLU6,
                Conv 1x1 (project) + BN, then Add of the block input when
                s == 1 and the channel counts match
  head   Conv 1x1 (64->128) + BN + ReLU6, global average pool,
         Flatten, Linear(128->10)

In ONNX (opset 13) this is Conv / Clip(0, 6) / Add / GlobalAveragePool /
Flatten / Gemm; there is no BatchNormalization node.

Training: SGD (momentum 0.9, nesterov, weight decay 1e-4 on conv/linear
weights) with a one-epoch linear warm-up and per-step cosine decay, batch 128,
light augmentation (random 28x28 crop of the image zero-padded by 2 pixels,
random horizontal mirror), 8 epochs, fixed seeds, deterministic algorithms,
2 CPU threads, channels-last memory format (about twice as fast on CPU as
NCHW for the depthwise/BN layers).  With --checkpoint the run can be split
into several invocations (--stop-after N stops after epoch N); a resumed run
gives the same result as an uninterrupted one.

Outputs (in --out-dir, default: the directory holding this script):
  mobilenet_v2_fashion.onnx  opset 13, dynamic batch axis, BN folded
  mobilenet_v2_fashion.json  metadata: input/output names, fp32 test
                             accuracy, opset
"""

import argparse
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_common as fc  # noqa: E402

OPSET = 13
MAX_MODEL_BYTES = 2 << 20
ONNX_NAME = "mobilenet_v2_fashion.onnx"
JSON_NAME = "mobilenet_v2_fashion.json"

# (expand ratio, output channels, stride) per inverted-residual block.
BLOCKS = [
    (2, 24, 2),
    (4, 24, 1),
    (4, 32, 1),
    (4, 32, 1),
    (4, 64, 2),
    (4, 64, 1),
    (4, 64, 1),
]
STEM_CHANNELS = 16
HEAD_CHANNELS = 128


def conv_bn(cin, cout, k, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, expand, stride):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn(cin, hidden, 1),                                  # expand
            conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),  # depthwise
            conv_bn(hidden, cout, 1, act=False),                      # project
        )

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_residual else y


class MobileNetV2Fashion(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        layers = [conv_bn(1, STEM_CHANNELS, 3)]
        cin = STEM_CHANNELS
        for expand, cout, stride in BLOCKS:
            layers.append(InvertedResidual(cin, cout, expand, stride))
            cin = cout
        layers.append(conv_bn(cin, HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of every residual block so each block starts
        # as the identity (faster, more stable early training).
        for m in self.features:
            if isinstance(m, InvertedResidual) and m.use_residual:
                nn.init.zeros_(m.block[2][1].weight)

    def forward(self, x):
        x = self.features(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=fc.default_data_dir())
    ap.add_argument("--out-dir", default=here)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--checkpoint", default=None,
                    help="resume from / save per-epoch state to this file")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="with --checkpoint: stop after this many epochs in total")
    ap.add_argument("--bench-steps", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    fc.set_determinism(args.seed)
    t0 = time.time()
    x_train, y_train = fc.load_split(args.data_dir, "train")
    x_test, y_test = fc.load_split(args.data_dir, "test")
    print("loaded %d train / %d test images" % (x_train.shape[0], x_test.shape[0]))

    model = MobileNetV2Fashion()
    print("parameters: %d" % sum(p.numel() for p in model.parameters()))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, args.weight_decay), lr=args.lr,
                          momentum=0.9, nesterov=True)
    steps_per_epoch = (x_train.shape[0] + args.batch - 1) // args.batch
    schedule = fc.WarmupCosine(opt, args.lr, total=steps_per_epoch * args.epochs,
                               warmup=steps_per_epoch)
    gen = torch.Generator().manual_seed(args.seed)

    def augment(xb, g):
        if not args.no_augment:
            xb = fc.random_crop_flip(xb, g)
        return xb.contiguous(memory_format=torch.channels_last)

    if args.bench_steps:
        n = args.bench_steps * args.batch
        tb = time.time()
        fc.train_epoch(model, opt, x_train[:n], y_train[:n], args.batch, gen,
                       augment=augment, step_hook=schedule)
        dt = time.time() - tb
        print("bench: %.3fs/step, %.0fs/epoch" % (dt / args.bench_steps, dt / args.bench_steps * steps_per_epoch))
        return

    result = fc.fit(model, opt, x_train, y_train, x_test, y_test, args.epochs, args.batch,
                    gen, schedule=schedule, augment=augment, checkpoint=args.checkpoint,
                    stop_after=args.stop_after, t0=t0)
    if result is None:
        return
    test_acc, train_seconds = result
    print("training time: %.0fs" % train_seconds)

    os.makedirs(args.out_dir, exist_ok=True)
    model = model.to(memory_format=torch.contiguous_format)
    onnx_path = os.path.join(args.out_dir, ONNX_NAME)
    json_path = os.path.join(args.out_dir, JSON_NAME)
    size = fc.export_onnx(model, onnx_path, OPSET, MAX_MODEL_BYTES)
    hist = fc.check_onnx(onnx_path,
                         required_ops=("Conv", "Clip", "Add", "GlobalAveragePool", "Gemm"),
                         forbidden_ops=("BatchNormalization",))
    if hist is not None:
        print("ops: %s" % hist)
    fc.check_onnx_matches(model, onnx_path, x_test[:256])
    fc.write_meta(json_path, test_acc, OPSET, "models/train_mobilenet_v2_fashion.py")

    print("wrote %s (%d bytes) and %s" % (onnx_path, size, json_path))
    print("test accuracy: %.4f" % test_acc)


if __name__ == "__main__":
    main()

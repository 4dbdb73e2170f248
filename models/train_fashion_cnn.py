#!/usr/bin/python3
"""Train the small Fashion-MNIST CNN shipped as models/fashion_cnn.onnx.

Usage:
    /usr/bin/python3 models/train_fashion_cnn.py [--data-dir DIR] [--out-dir DIR]
                                                 [--epochs N] [--seed S]

Data: the four Fashion-MNIST IDX files (train/t10k images and labels, gzip
compressed) are read directly with gzip + numpy (see fashion_common.py).  The
default directory is /usr/share/datasets/fashion-mnist; it can be overridden
with --data-dir or the QUANTD_FASHION_MNIST_DIR environment variable.

Model contract (what every consumer of fashion_cnn.onnx must follow):
  * input  : float32 tensor named "input", shape [N, 1, 28, 28] (N dynamic)
  * values : raw pixel / 255.0, i.e. in [0, 1].  NO mean/std normalization
             or any other preprocessing is applied.
  * output : float32 tensor named "logits", shape [N, 10] (N dynamic),
             unnormalized class scores (no softmax); argmax = predicted class.

Architecture:
  Conv(1->32, 3x3, pad 1) + ReLU + MaxPool 2
  Conv(32->64, 3x3, pad 1) + ReLU + MaxPool 2
  Conv(64->64, 3x3, pad 1) + ReLU + MaxPool 2   -> 64 x 3 x 3
  Flatten -> Linear(576->128) + ReLU -> Linear(128->10)

Training: Adam (lr 2e-3; x0.3 for the next-to-last epoch, x0.1 for the last
epoch), batch 128, 5 epochs, fixed seeds, deterministic algorithms, 2 CPU
threads.  Takes about 2.5 minutes on 2 idle CPU cores and reaches >= 90% top-1
test accuracy.

Outputs (in --out-dir, default: the directory holding this script):
  fashion_cnn.onnx  exported with torch.onnx.export, opset 13, dynamic batch
                    axis on input and output, constant folding enabled
  fashion_cnn.json  metadata: input/output names, fp32 test accuracy, opset
"""

import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_common as fc  # noqa: E402
from fashion_common import evaluate, load_split, set_determinism  # noqa: E402

OPSET = 13
MAX_MODEL_BYTES = 1 << 20


class FashionCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 3 * 3, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 32 x 14 x 14
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 64 x 7 x 7
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # 64 x 3 x 3
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=fc.default_data_dir())
    ap.add_argument("--out-dir", default=here)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=20240601)
    args = ap.parse_args()

    set_determinism(args.seed)
    t0 = time.time()
    x_train, y_train = load_split(args.data_dir, "train")
    x_test, y_test = load_split(args.data_dir, "test")
    print("loaded %d train / %d test images" % (x_train.shape[0], x_test.shape[0]))

    model = FashionCNN()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        # Step decay: full rate, then 1/3 and 1/10 for the final two epochs.
        scale = 1.0
        if epoch == args.epochs - 1 and args.epochs > 1:
            scale = 0.1
        elif epoch == args.epochs - 2 and args.epochs > 2:
            scale = 0.3
        for g in opt.param_groups:
            g["lr"] = args.lr * scale
        train_loss = fc.train_epoch(model, opt, x_train, y_train, args.batch, gen)
        acc = evaluate(model, x_test, y_test)
        print("epoch %d: train loss %.4f, test accuracy %.4f (%.0fs)"
              % (epoch + 1, train_loss, acc, time.time() - t0))
        sys.stdout.flush()

    model.eval()
    test_acc = evaluate(model, x_test, y_test)

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "fashion_cnn.onnx")
    json_path = os.path.join(args.out_dir, "fashion_cnn.json")
    size = fc.export_onnx(model, onnx_path, OPSET, MAX_MODEL_BYTES)
    fc.check_onnx(onnx_path)
    fc.write_meta(json_path, test_acc, OPSET, "models/train_fashion_cnn.py")

    print("wrote %s (%d bytes) and %s" % (onnx_path, size, json_path))
    print("test accuracy: %.4f" % test_acc)


if __name__ == "__main__":
    main()

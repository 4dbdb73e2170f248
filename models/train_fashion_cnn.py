#!/usr/bin/python3
"""Train the small Fashion-MNIST CNN shipped as models/fashion_cnn.onnx.

Usage:
    /usr/bin/python3 models/train_fashion_cnn.py [--data-dir DIR] [--out-dir DIR]
                                                 [--epochs N] [--seed S]

Data: the four Fashion-MNIST IDX files (train/t10k images and labels, gzip
compressed) are read directly with gzip + numpy.  The default directory is
/usr/share/datasets/fashion-mnist; it can be overridden with --data-dir or the
QUANTD_FASHION_MNIST_DIR environment variable.

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
import gzip
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_MODEL_BYTES = 1 << 20


def read_idx(path):
    """Read a gzip-compressed IDX file (unsigned byte data) into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError("%s: not an IDX file" % path)
    if data[2] != 0x08:
        raise ValueError("%s: unsupported IDX element type 0x%02x" % (path, data[2]))
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise ValueError("%s: size mismatch" % path)
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=offset).reshape(dims)


def load_split(data_dir, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, "%s-images-idx3-ubyte.gz" % prefix))
    labels = read_idx(os.path.join(data_dir, "%s-labels-idx1-ubyte.gz" % prefix))
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError("unexpected %s split shapes %s / %s" % (split, images.shape, labels.shape))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # [N,1,28,28]
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


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


def set_determinism(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception as e:  # pragma: no cover - depends on the torch build
        print("warning: deterministic algorithms unavailable: %s" % e, file=sys.stderr)
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


@torch.no_grad()
def evaluate(model, x, y, batch=1000):
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        pred = model(x[i:i + batch]).argmax(dim=1)
        correct += int((pred == y[i:i + batch]).sum())
    return correct / x.shape[0]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("QUANTD_FASHION_MNIST_DIR", DEFAULT_DATA_DIR))
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
    n = x_train.shape[0]
    for epoch in range(args.epochs):
        # Step decay: full rate, then 1/3 and 1/10 for the final two epochs.
        scale = 1.0
        if epoch == args.epochs - 1 and args.epochs > 1:
            scale = 0.1
        elif epoch == args.epochs - 2 and args.epochs > 2:
            scale = 0.3
        for g in opt.param_groups:
            g["lr"] = args.lr * scale
        model.train()
        perm = torch.randperm(n, generator=gen)
        total_loss = 0.0
        for i in range(0, n, args.batch):
            idx = perm[i:i + args.batch]
            opt.zero_grad()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total_loss += float(loss) * idx.shape[0]
        acc = evaluate(model, x_test, y_test)
        print("epoch %d: train loss %.4f, test accuracy %.4f (%.0fs)"
              % (epoch + 1, total_loss / n, acc, time.time() - t0))
        sys.stdout.flush()

    model.eval()
    test_acc = evaluate(model, x_test, y_test)

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "fashion_cnn.onnx")
    json_path = os.path.join(args.out_dir, "fashion_cnn.json")
    dummy = torch.zeros(1, 1, 28, 28, dtype=torch.float32)
    torch.onnx.export(
        model, dummy, onnx_path,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
        export_params=True,
    )
    size = os.path.getsize(onnx_path)
    if size >= MAX_MODEL_BYTES:
        raise SystemExit("exported model is %d bytes, expected < %d" % (size, MAX_MODEL_BYTES))

    try:
        import onnx
        onnx.checker.check_model(onnx.load(onnx_path))
    except ImportError:
        print("warning: onnx package not available, model not checked", file=sys.stderr)

    meta = {
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "fp32_test_accuracy": round(test_acc, 4),
        "opset": OPSET,
        "trained_by": "models/train_fashion_cnn.py",
    }
    with open(json_path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    print("wrote %s (%d bytes) and %s" % (onnx_path, size, json_path))
    print("test accuracy: %.4f" % test_acc)


if __name__ == "__main__":
    main()

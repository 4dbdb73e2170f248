"""Shared code for the Fashion-MNIST model trainers in this directory.

Used by train_fashion_cnn.py, train_mobilenet_v2_fashion.py and
train_transformer_fashion.py.  Everything here is deterministic given the
seeds passed in; nothing is read from the network.

Data: the four Fashion-MNIST IDX files (train/t10k images and labels, gzip
compressed) are read directly with gzip + numpy from DEFAULT_DATA_DIR, or from
the directory named by the QUANTD_FASHION_MNIST_DIR environment variable, or
from --data-dir.

Model contract shared by every exported model:
  * input  : float32 tensor named "input", shape [N, 1, 28, 28] (N dynamic),
             raw pixel / 255.0 (no mean/std normalization)
  * output : float32 tensor named "logits", shape [N, 10] (N dynamic),
             unnormalized class scores; argmax = predicted class
"""

import gzip
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def default_data_dir():
    return os.environ.get("QUANTD_FASHION_MNIST_DIR", DEFAULT_DATA_DIR)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

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
    """Return (x, y): x float32 [N,1,28,28] = pixel/255, y int64 [N]."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(os.path.join(data_dir, "%s-images-idx3-ubyte.gz" % prefix))
    labels = read_idx(os.path.join(data_dir, "%s-labels-idx1-ubyte.gz" % prefix))
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError("unexpected %s split shapes %s / %s" % (split, images.shape, labels.shape))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # [N,1,28,28]
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def random_crop_flip(x, gen, pad=2, flip=True):
    """Light augmentation for a batch [B,1,H,W]: zero-pad by `pad` pixels and
    take a random HxW crop per image, then mirror half of the images
    horizontally.  All randomness comes from the torch.Generator `gen`."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)[None, :])[:, :, None]  # [B,H,1]
    cols = ox[:, None] + torch.arange(w)[None, :]                 # [B,W]
    if flip:
        mirror = torch.rand(b, generator=gen) < 0.5
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    cols = cols[:, None, :]                                       # [B,1,W]
    bidx = torch.arange(b)[:, None, None]
    out = xp[:, 0][bidx, rows, cols]                              # [B,H,W]
    return out.unsqueeze(1).contiguous() if c == 1 else out


# ---------------------------------------------------------------------------
# Determinism, evaluation, training
# ---------------------------------------------------------------------------

def set_determinism(seed, threads=2):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception as e:  # pragma: no cover - depends on the torch build
        print("warning: deterministic algorithms unavailable: %s" % e, file=sys.stderr)
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


@torch.no_grad()
def evaluate(model, x, y, batch=1000):
    """Top-1 accuracy of `model` (put in eval mode) on x / y."""
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        pred = model(x[i:i + batch]).argmax(dim=1)
        correct += int((pred == y[i:i + batch]).sum())
    return correct / x.shape[0]


def train_epoch(model, opt, x, y, batch, gen, augment=None, step_hook=None,
                clip_grad_norm=None, label_smoothing=0.0):
    """One pass over (x, y) in the order of torch.randperm(N, generator=gen).

    augment(xb, gen) -> xb is applied to every batch when given; step_hook()
    is called before every optimizer step (per-step LR schedules).  Returns
    the mean training loss."""
    model.train()
    n = x.shape[0]
    perm = torch.randperm(n, generator=gen)
    total_loss = 0.0
    for i in range(0, n, batch):
        idx = perm[i:i + batch]
        xb = x[idx]
        if augment is not None:
            xb = augment(xb, gen)
        if step_hook is not None:
            step_hook()
        opt.zero_grad()
        if label_smoothing:
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=label_smoothing)
        else:
            loss = F.cross_entropy(model(xb), y[idx])
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        opt.step()
        total_loss += float(loss) * idx.shape[0]
    return total_loss / n


class WarmupCosine:
    """Per-step learning rate: linear warm-up over `warmup` steps to `base_lr`,
    then cosine decay to `base_lr * final_scale` at step `total`."""

    def __init__(self, opt, base_lr, total, warmup=0, final_scale=0.0):
        self.opt = opt
        self.base_lr = base_lr
        self.total = max(1, total)
        self.warmup = warmup
        self.final_scale = final_scale
        self.step_count = 0

    def lr_at(self, step):
        if self.warmup and step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        scale = self.final_scale + (1.0 - self.final_scale) * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.base_lr * scale

    def __call__(self):
        lr = self.lr_at(self.step_count)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.step_count += 1

    def state_dict(self):
        return {"step_count": self.step_count}

    def load_state_dict(self, state):
        self.step_count = state["step_count"]


def fit(model, opt, x_train, y_train, x_test, y_test, epochs, batch, gen,
        schedule=None, augment=None, checkpoint=None, stop_after=None,
        clip_grad_norm=None, label_smoothing=0.0, t0=None):
    """Train for `epochs` epochs with per-epoch test-accuracy logging.

    checkpoint: optional path.  If it exists, training resumes from it (model,
    optimizer, schedule, data-order generator and global torch RNG state are
    restored, so a resumed run is bit-identical to an uninterrupted one).
    After every epoch the state is written there.
    stop_after: stop (returning None) once this many epochs are done in total,
    so long runs can be split into several shorter invocations.
    Returns (test_accuracy, training_seconds) when all epochs are done."""
    if t0 is None:
        t0 = time.time()
    start_epoch = 0
    train_seconds = 0.0
    if checkpoint and os.path.exists(checkpoint):
        state = torch.load(checkpoint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = state["epoch"]
        train_seconds = state["train_seconds"]
        print("resumed from %s after epoch %d" % (checkpoint, start_epoch))
    for epoch in range(start_epoch, epochs):
        te = time.time()
        loss = train_epoch(model, opt, x_train, y_train, batch, gen, augment=augment,
                           step_hook=schedule, clip_grad_norm=clip_grad_norm,
                           label_smoothing=label_smoothing)
        train_seconds += time.time() - te
        acc = evaluate(model, x_test, y_test)
        print("epoch %d: train loss %.4f, test accuracy %.4f (train %.0fs, wall %.0fs)"
              % (epoch + 1, loss, acc, train_seconds, time.time() - t0))
        sys.stdout.flush()
        if checkpoint:
            tmp = checkpoint + ".tmp"
            torch.save({
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "schedule": schedule.state_dict() if schedule is not None else None,
                "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "train_seconds": train_seconds,
            }, tmp)
            os.replace(tmp, checkpoint)
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < epochs:
            print("stopping after epoch %d of %d; rerun to resume" % (epoch + 1, epochs))
            return None
    return evaluate(model, x_test, y_test), train_seconds


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------

def export_onnx(model, path, opset, max_bytes):
    """Export `model` (eval mode, constant folding, dynamic batch axis) with
    input "input" [N,1,28,28] and output "logits" [N,10].  Returns the size."""
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28, dtype=torch.float32)
    torch.onnx.export(
        model, dummy, path,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
        export_params=True,
    )
    size = os.path.getsize(path)
    if size >= max_bytes:
        raise SystemExit("exported model is %d bytes, expected < %d" % (size, max_bytes))
    return size


def check_onnx(path, required_ops=(), forbidden_ops=()):
    """Run onnx.checker on the file; return its op-type histogram (or None
    when the onnx package is missing).  Fails if an op in required_ops is
    absent or an op in forbidden_ops is present."""
    try:
        import onnx
    except ImportError:
        print("warning: onnx package not available, model not checked", file=sys.stderr)
        return None
    m = onnx.load(path)
    onnx.checker.check_model(m)
    hist = {}
    for node in m.graph.node:
        hist[node.op_type] = hist.get(node.op_type, 0) + 1
    missing = [op for op in required_ops if op not in hist]
    present = [op for op in forbidden_ops if op in hist]
    if missing or present:
        raise SystemExit("%s: unexpected graph (missing ops %s, forbidden ops present %s)"
                         % (path, missing, present))
    return dict(sorted(hist.items()))


@torch.no_grad()
def check_onnx_matches(model, path, x, atol=1e-4):
    """If onnxruntime is importable, compare its logits with torch's on x
    (run with two different batch sizes); otherwise do nothing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    model.eval()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for xb in (x[:1], x):
        ref = model(xb).numpy()
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: xb.numpy()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    if worst > atol:
        raise SystemExit("%s: ONNX Runtime output differs from torch by %g" % (path, worst))
    return worst


def write_meta(path, test_acc, opset, trained_by):
    meta = {
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "fp32_test_accuracy": round(test_acc, 4),
        "opset": opset,
        "trained_by": trained_by,
    }
    with open(path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

#!/usr/bin/python3
"""Train the small transformer-encoder Fashion-MNIST model shipped as
models/transformer_fashion.onnx.

Usage:
    /usr/bin/python3 models/train_transformer_fashion.py [--data-dir DIR]
        [--out-dir DIR] [--epochs N] [--seed S]
        [--checkpoint PATH [--stop-after N]]

Data: the Fashion-MNIST IDX files, read directly (see fashion_common.py);
default directory /usr/share/datasets/fashion-mnist, overridable with
--data-dir or QUANTD_FASHION_MNIST_DIR.

Model contract (same as fashion_cnn.onnx):
  * input  : float32 "input", shape [N, 1, 28, 28] (N dynamic), pixel / 255.0,
             no other preprocessing
  * output : float32 "logits", shape [N, 10] (N dynamic), unnormalized scores

Architecture (ViT-style, pre-LayerNorm):
  patching     [N,1,28,28] -Reshape-> [N,4,7,4,7] -Transpose-> [N,4,4,7,7]
               -Reshape-> [N,16,49]: 16 non-overlapping 7x7 patches in
               row-major order (the batch size is read from the input shape,
               so any N works)
  embedding    Linear(49->128) per patch, a learnable class token is
               prepended (-> 17 tokens) and a learnable positional
               embedding [17,128] added
  2 x encoder  x = x + Attn(LayerNorm(x));  x = x + FFN(LayerNorm(x))
               Attn: 4 heads of 32, separate q/k/v Linear(128->128),
                     softmax(q k^T / sqrt(32)) v with plain MatMul/Softmax,
                     heads merged, Linear(128->128)
               FFN:  Linear(128->512), GELU (exact, erf), Linear(512->128)
               (the usual 4x expansion)
  head         class token -> LayerNorm -> Linear(128->10)
  dropout      none (0 during training and at export)

In ONNX (opset 17) this is MatMul / Add / Mul / Div / Softmax / Transpose /
Reshape / LayerNormalization / Erf / Gemm (head) plus Shape / Gather /
Unsqueeze / Concat / Slice / Expand for the dynamic batch dimension.

Training: AdamW (lr 2e-3, weight decay 0.05 on matrices only), linear warm-up
for one epoch then per-step cosine decay, 24 epochs, batch 128, gradient-norm
clipping at 1.0, light augmentation (random 28x28 crop of the image
zero-padded by 2 pixels, random horizontal mirror), fixed seeds,
deterministic algorithms, 2 CPU threads.  During training the Linear layers
run as 1x1 convolutions (see Linear below: same weights, about 7x faster with
Debian's torch); the reported accuracy is measured with plain matmuls, i.e.
on the model as exported.  With --checkpoint the run can be split into several
invocations (--stop-after N stops after epoch N); a resumed run gives the
same result as an uninterrupted one.

Outputs (in --out-dir, default: the directory holding this script):
  transformer_fashion.onnx  opset 17, dynamic batch axis
  transformer_fashion.json  metadata: input/output names, fp32 test
                            accuracy, opset
"""

import argparse
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_common as fc  # noqa: E402

OPSET = 17
MAX_MODEL_BYTES = 2 << 20
ONNX_NAME = "transformer_fashion.onnx"
JSON_NAME = "transformer_fashion.json"

IMAGE = 28
PATCH = 7
GRID = IMAGE // PATCH            # 4 patches per side
NUM_PATCHES = GRID * GRID        # 16
PATCH_DIM = PATCH * PATCH        # 49
D_MODEL = 128
HEADS = 4
HEAD_DIM = D_MODEL // HEADS      # 32
FFN_DIM = 512
LAYERS = 2
TOKENS = NUM_PATCHES + 1         # class token + patches


class Linear(nn.Linear):
    """nn.Linear that can compute its matmul as a 1x1 convolution.

    Debian's torch does dense matmuls with the reference (netlib) BLAS, which
    on this CPU is about 7x slower than the oneDNN convolution kernels.  With
    `conv_matmul` set (training and the per-epoch test accuracy) a [B,T,D]
    input is viewed, without copying, as a channels-last [1,D,B*T,1] image
    and multiplied by the weight as a 1x1 Conv2d; the result is the same up
    to float rounding.  With it cleared (final accuracy, ONNX export) this is
    plain F.linear, i.e. MatMul + Add in ONNX."""

    conv_matmul = False

    def forward(self, x):
        if not self.conv_matmul:
            return F.linear(x, self.weight, self.bias)
        shape = x.shape
        x4 = x.reshape(1, -1, 1, shape[-1]).permute(0, 3, 1, 2)   # [1,D,M,1]
        y = F.conv2d(x4, self.weight[:, :, None, None], self.bias)
        return y.permute(0, 2, 3, 1).reshape(shape[:-1] + (self.out_features,))


def set_conv_matmul(model, enabled):
    for m in model.modules():
        if isinstance(m, Linear):
            m.conv_matmul = enabled


class SelfAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.head_dim = d // heads
        self.q = Linear(d, d)
        self.k = Linear(d, d)
        self.v = Linear(d, d)
        self.out = Linear(d, d)

    def split_heads(self, x, b):
        # [B,T,D] -> [B,H,T,Dh]
        return x.reshape(b, TOKENS, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        b = x.shape[0]
        q = self.split_heads(self.q(x), b)
        k = self.split_heads(self.k(x), b)
        v = self.split_heads(self.v(x), b)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)  # [B,H,T,T]
        attn = torch.softmax(scores, dim=-1)
        y = torch.matmul(attn, v)                                                # [B,H,T,Dh]
        y = y.transpose(1, 2).reshape(b, TOKENS, self.heads * self.head_dim)
        return self.out(y)


class EncoderLayer(nn.Module):
    def __init__(self, d, heads, ffn, dropout=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = Linear(d, ffn)
        self.fc2 = Linear(ffn, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.norm1(x)))
        h = self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x)))))
        return x + self.drop(h)


class TransformerFashion(nn.Module):
    def __init__(self, num_classes=10, dropout=0.0):
        super().__init__()
        self.patch_embed = Linear(PATCH_DIM, D_MODEL)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D_MODEL))
        self.pos_embed = nn.Parameter(torch.zeros(1, TOKENS, D_MODEL))
        self.layers = nn.ModuleList([EncoderLayer(D_MODEL, HEADS, FFN_DIM, dropout)
                                     for _ in range(LAYERS)])
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = Linear(D_MODEL, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        b = x.shape[0]
        # [B,1,28,28] -> [B,4,7,4,7] -> [B,4,4,7,7] -> [B,16,49]
        p = x.reshape(b, GRID, PATCH, GRID, PATCH).permute(0, 1, 3, 2, 4)
        p = p.reshape(b, NUM_PATCHES, PATCH_DIM)
        tokens = self.patch_embed(p)                                   # [B,16,128]
        # expand_as (rather than expand(b, 1, D)) keeps the exported shape
        # computation to Shape/Slice/Expand, without Equal/Where/ConstantOfShape.
        cls = self.cls_token.expand_as(tokens[:, :1])                  # [B,1,128]
        h = torch.cat([cls, tokens], dim=1) + self.pos_embed           # [B,17,128]
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h[:, 0]))


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.dim() == 2 and not name.endswith("_embed") and not name.endswith("_token"):
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=fc.default_data_dir())
    ap.add_argument("--out-dir", default=here)
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
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

    model = TransformerFashion()
    print("parameters: %d" % sum(p.numel() for p in model.parameters()))
    set_conv_matmul(model, True)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    steps_per_epoch = (x_train.shape[0] + args.batch - 1) // args.batch
    schedule = fc.WarmupCosine(opt, args.lr, total=steps_per_epoch * args.epochs,
                               warmup=steps_per_epoch)
    gen = torch.Generator().manual_seed(args.seed)
    augment = None if args.no_augment else fc.random_crop_flip

    if args.bench_steps:
        n = args.bench_steps * args.batch
        tb = time.time()
        fc.train_epoch(model, opt, x_train[:n], y_train[:n], args.batch, gen,
                       augment=augment, step_hook=schedule, clip_grad_norm=1.0)
        dt = time.time() - tb
        print("bench: %.3fs/step, %.0fs/epoch" % (dt / args.bench_steps, dt / args.bench_steps * steps_per_epoch))
        return

    result = fc.fit(model, opt, x_train, y_train, x_test, y_test, args.epochs, args.batch,
                    gen, schedule=schedule, augment=augment, checkpoint=args.checkpoint,
                    stop_after=args.stop_after, clip_grad_norm=1.0, t0=t0)
    if result is None:
        return
    _, train_seconds = result
    print("training time: %.0fs" % train_seconds)
    # Reported accuracy: the model exactly as exported (F.linear matmuls).
    set_conv_matmul(model, False)
    test_acc = fc.evaluate(model, x_test, y_test)

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, ONNX_NAME)
    json_path = os.path.join(args.out_dir, JSON_NAME)
    size = fc.export_onnx(model, onnx_path, OPSET, MAX_MODEL_BYTES)
    hist = fc.check_onnx(onnx_path,
                         required_ops=("MatMul", "Softmax", "Transpose", "Reshape",
                                       "LayerNormalization", "Erf", "Div"))
    if hist is not None:
        print("ops: %s" % hist)
    fc.check_onnx_matches(model, onnx_path, x_test[:256])
    fc.write_meta(json_path, test_acc, OPSET, "models/train_transformer_fashion.py")

    print("wrote %s (%d bytes) and %s" % (onnx_path, size, json_path))
    print("test accuracy: %.4f" % test_acc)


if __name__ == "__main__":
    main()

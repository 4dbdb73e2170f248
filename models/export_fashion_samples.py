#!/usr/bin/python3
"""Write Fashion-MNIST images as 28x28 8-bit grayscale PNG files.

Usage:
    /usr/bin/python3 models/export_fashion_samples.py OUT_DIR [N]
        [--split train|test] [--offset K] [--data-dir DIR]

Writes images K .. K+N-1 of the chosen split (default: test, N=100, K=0) to
OUT_DIR/00000.png, OUT_DIR/00001.png, ... (numbered from 0 within OUT_DIR)
plus OUT_DIR/labels.txt with one class label (0-9) per line, in file order.
The PNGs hold the raw pixel values; consumers feeding fashion_cnn.onnx must
divide by 255 (see models/train_fashion_cnn.py).

Only numpy and the standard library (gzip, zlib) are needed.  The data
directory defaults to /usr/share/datasets/fashion-mnist and can be overridden
with --data-dir or the QUANTD_FASHION_MNIST_DIR environment variable.
"""

import argparse
import gzip
import os
import struct
import sys
import zlib

import numpy as np

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("%s: not an unsigned-byte IDX file" % path)
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise ValueError("%s: size mismatch" % path)
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=offset).reshape(dims)


def _chunk(tag, payload):
    body = tag + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_png_gray8(img):
    """Encode a 2-D uint8 array as a grayscale, 8-bit, non-interlaced PNG."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim != 2:
        raise ValueError("expected a 2-D image")
    h, w = img.shape
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # depth 8, gray, deflate, filter 0, no interlace
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))  # filter type 0 per row
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("count", nargs="?", type=int, default=100)
    ap.add_argument("--split", choices=["train", "test"], default="test")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--data-dir", default=os.environ.get("QUANTD_FASHION_MNIST_DIR", DEFAULT_DATA_DIR))
    args = ap.parse_args()

    prefix = "train" if args.split == "train" else "t10k"
    images = read_idx(os.path.join(args.data_dir, "%s-images-idx3-ubyte.gz" % prefix))
    labels = read_idx(os.path.join(args.data_dir, "%s-labels-idx1-ubyte.gz" % prefix))
    total = images.shape[0]
    if args.count < 0 or args.offset < 0 or args.offset + args.count > total:
        sys.exit("error: range [%d, %d) outside the %s split (%d images)"
                 % (args.offset, args.offset + args.count, args.split, total))

    os.makedirs(args.out_dir, exist_ok=True)
    lines = []
    for i in range(args.count):
        k = args.offset + i
        with open(os.path.join(args.out_dir, "%05d.png" % i), "wb") as f:
            f.write(encode_png_gray8(images[k]))
        lines.append("%d\n" % int(labels[k]))
    with open(os.path.join(args.out_dir, "labels.txt"), "w") as f:
        f.writelines(lines)
    print("wrote %d %s images (offset %d) to %s" % (args.count, args.split, args.offset, args.out_dir))


if __name__ == "__main__":
    main()

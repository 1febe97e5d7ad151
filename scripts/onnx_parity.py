#!/usr/bin/env python3
"""Checks an ONNX export (`trainer export RUN --format onnx`) against the smk runtime.

    scripts/onnx_parity.py MODEL.onnx IMAGES.idx[.gz] LABELS.idx[.gz] RUNTIME_PREDICTIONS.txt [--require-ort]

RUNTIME_PREDICTIONS.txt is what `runtime eval FILE.smk --images ... --labels ... --predictions
PRED.txt` writes for the same run exported as .smk: one predicted class per line ("unknown" when
task inference refused an image). The script runs the ONNX checker (full_check), then ONNX
Runtime on every image (pixels / 255 as float32, [N, C, H, W]), and compares top-1 predictions
image by image. It prints both accuracies and the number of disagreements, and exits 1 if any
prediction differs (none is allowed), 2 on bad input.

Without onnxruntime only the checker runs (exit 0 if it passes), unless --require-ort.
Needs numpy and onnx (pip install numpy onnx onnxruntime).
"""

import argparse
import gzip
import sys

import numpy as np
import onnx

BATCH = 1000


def read_idx(path):
    """An IDX file (raw or gzip) of unsigned bytes as a numpy array."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    if data[2] != 0x08:
        raise ValueError(f"{path}: element type 0x{data[2]:02x}, only unsigned bytes (0x08) are read")
    ndims = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndims)]
    body = data[4 + 4 * ndims :]
    if len(body) != int(np.prod(dims)):
        raise ValueError(f"{path}: {len(body)} bytes of data for dims {dims}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_predictions(path):
    """One class per line; "unknown" as -1."""
    with open(path) as f:
        return np.array([-1 if l.strip() == "unknown" else int(l) for l in f if l.strip()], dtype=np.int64)


def input_shape(model):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the .onnx file")
    p.add_argument("images", help="IDX images (e.g. data/t10k-images-idx3-ubyte.gz)")
    p.add_argument("labels", help="IDX labels")
    p.add_argument("predictions", help="`runtime eval --predictions` output for the same run's .smk")
    p.add_argument("--require-ort", action="store_true", help="fail (exit 2) when onnxruntime is missing")
    a = p.parse_args()

    try:
        model = onnx.load(a.model)
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # a parse error (protobuf's DecodeError), ValidationError, InferenceError, OSError
        print(f"error: {a.model}: the ONNX checker refuses it: {e}", file=sys.stderr)
        return 1
    print(f"{a.model}: onnx checker (full_check) passed; IR {model.ir_version}, opset "
          + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import))
    try:
        import onnxruntime as ort
    except ImportError as e:
        if a.require_ort:
            print(f"error: onnxruntime is required (--require-ort) but cannot be imported: {e}", file=sys.stderr)
            return 2
        print(f"onnxruntime cannot be imported ({e}): only the checker ran")
        return 0

    try:
        images = read_idx(a.images)
        labels = read_idx(a.labels).astype(np.int64)
        runtime = read_predictions(a.predictions)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(images)
    if len(labels) != n or len(runtime) != n:
        print(f"error: {n} images, {len(labels)} labels, {len(runtime)} runtime predictions", file=sys.stderr)
        return 2
    shape = input_shape(model)
    per_image = int(np.prod(shape[1:]))
    if images[0].size != per_image:
        print(f"error: images of {images[0].size} pixels, the model takes {shape[1:]}", file=sys.stderr)
        return 2
    x = images.reshape([n] + shape[1:]).astype(np.float32) / np.float32(255.0)

    session = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    onnx_pred = np.concatenate(
        [session.run(None, {name: x[i : i + BATCH]})[0].argmax(axis=1) for i in range(0, n, BATCH)]
    )
    differ = np.nonzero(onnx_pred != runtime)[0]
    print(f"images {n}")
    print(f"onnxruntime accuracy {100.0 * np.mean(onnx_pred == labels):.2f}%")
    print(f"smk runtime accuracy {100.0 * np.mean(runtime == labels):.2f}%")
    print(f"top-1 disagreements  {len(differ)}")
    if len(differ):
        shown = ", ".join(f"#{i}: onnx {onnx_pred[i]} runtime {runtime[i]}" for i in differ[:10])
        print(f"first: {shown}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

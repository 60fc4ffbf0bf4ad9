#!/usr/bin/env python3
"""Compute reference inputs/outputs for a model.

Usage: reference.py --model PATH --out CASEDIR [--input-shape NAME=d,d,d ...]
                    [--seed N] [--dist normal|uniform]

Writes CASEDIR/inputs.npz (one float32 array per model input, keyed by input
name) and CASEDIR/expected.npz (one array per model output, keyed by output
name), both uncompressed (np.savez).  Inputs are seeded random: N(0,1) with
--dist normal (default) or U[0,1) with --dist uniform.  Each input is drawn in
the model's input order from one generator seeded with --seed.

.onnx models run on onnxruntime (CPUExecutionProvider, graph optimisations
disabled); .tflite models run on the ai-edge-litert Interpreter (inputs keep the
model's own layout, i.e. NHWC).
"""
import argparse
import os
import sys

import numpy as np


def parse_shapes(items):
    shapes = {}
    for item in items or []:
        name, _, dims = item.rpartition("=")
        if not name or not dims:
            raise SystemExit(f"reference.py: bad --input-shape {item!r} (want NAME=d,d,...)")
        shapes[name] = tuple(int(d) for d in dims.split(","))
    return shapes


def resolve_shape(name, model_shape, overrides):
    if name in overrides:
        shape = overrides[name]
        if len(shape) != len(model_shape):
            raise SystemExit(f"reference.py: --input-shape {name} has rank {len(shape)}, "
                             f"model input has rank {len(model_shape)}")
        for want, got in zip(model_shape, shape):
            if isinstance(want, int) and want > 0 and want != got:
                raise SystemExit(f"reference.py: --input-shape {name}={shape} conflicts "
                                 f"with model shape {model_shape}")
        return shape
    if any(not isinstance(d, int) or d <= 0 for d in model_shape):
        raise SystemExit(f"reference.py: input {name!r} has free dims {model_shape}; "
                         f"pass --input-shape {name}=d,d,...")
    return tuple(model_shape)


def draw(rng, shape, dist):
    if dist == "uniform":
        return rng.random(shape, dtype=np.float32)
    return rng.standard_normal(shape, dtype=np.float32)


def run_onnx(path, overrides, rng, dist, optimize=False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    # Quantized models are referenced as users run them: with the default optimisations,
    # which fuse QDQ groups into ONNX Runtime's integer kernels.
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inputs = {}
    for i in sess.get_inputs():
        if i.type != "tensor(float)":
            raise SystemExit(f"reference.py: input {i.name} has type {i.type}, only float supported")
        inputs[i.name] = draw(rng, resolve_shape(i.name, i.shape, overrides), dist)
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, inputs)
    return inputs, dict(zip(names, outs))


def run_tflite(path, overrides, rng, dist):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    # Prefer the plain builtin kernels (no XNNPACK delegate); models with
    # MediaPipe custom ops (Convolution2DTransposeBias) only run with the
    # default delegate, which implements them.
    try:
        it = Interpreter(model_path=path, num_threads=2,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
    except RuntimeError:
        it = Interpreter(model_path=path, num_threads=2)
    details = it.get_input_details()
    resized = False
    for d in details:
        if d["name"] in overrides:
            shape = resolve_shape(d["name"], [int(x) for x in d["shape_signature"]], overrides)
            it.resize_tensor_input(d["index"], list(shape))
            resized = True
    it.allocate_tensors()
    if resized:
        details = it.get_input_details()
    inputs = {}
    for d in details:
        if d["dtype"] != np.float32:
            raise SystemExit(f"reference.py: input {d['name']} has dtype {d['dtype']}, only float32 supported")
        x = draw(rng, tuple(int(v) for v in d["shape"]), dist)
        inputs[d["name"]] = x
        it.set_tensor(d["index"], x)
    it.invoke()
    outputs = {}
    for d in it.get_output_details():
        outputs[d["name"]] = np.array(it.get_tensor(d["index"]))
    return inputs, outputs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--input-shape", action="append", metavar="NAME=d,d,...",
                    help="concrete shape for an input with free dims (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dist", choices=("normal", "uniform"), default="normal")
    ap.add_argument("--ort-optimize", action="store_true",
                    help="run ONNX Runtime with its default graph optimisations")
    args = ap.parse_args()

    overrides = parse_shapes(args.input_shape)
    rng = np.random.default_rng(args.seed)
    ext = os.path.splitext(args.model)[1].lower()
    if ext == ".onnx":
        inputs, outputs = run_onnx(args.model, overrides, rng, args.dist, args.ort_optimize)
    elif ext == ".tflite":
        inputs, outputs = run_tflite(args.model, overrides, rng, args.dist)
    else:
        raise SystemExit(f"reference.py: unknown model type {args.model}")
    unknown = set(overrides) - set(inputs)
    if unknown:
        raise SystemExit(f"reference.py: --input-shape for unknown inputs {sorted(unknown)}; "
                         f"model inputs are {sorted(inputs)}")
    for name, arr in outputs.items():
        if not np.all(np.isfinite(arr)):
            raise SystemExit(f"reference.py: output {name} of {args.model} is not finite")

    os.makedirs(args.out, exist_ok=True)
    for fname, arrays in (("inputs.npz", inputs), ("expected.npz", outputs)):
        dst = os.path.join(args.out, fname)
        tmp = dst + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, dst)
    desc = lambda d: ", ".join(f"{k}{list(v.shape)}" for k, v in d.items())
    rng_desc = ", ".join(f"{k} [{v.min():.4g}, {v.max():.4g}]" for k, v in outputs.items())
    print(f"reference: {os.path.basename(args.model)}: in {desc(inputs)} -> out {desc(outputs)}; "
          f"ranges {rng_desc}")


if __name__ == "__main__":
    sys.exit(main())

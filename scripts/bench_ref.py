#!/usr/bin/env python3
"""Time a model in ONNX Runtime (.onnx) or LiteRT (.tflite); print JSON latency stats.

Used by `shadownet bench --reference`. The runtimes get the settings a user gets by
default, with the thread count pinned: ONNX Runtime with graph optimisation level ALL,
sequential execution, intra_op_num_threads=N and inter_op_num_threads=1; LiteRT's
Interpreter with num_threads=N (its default XNNPACK delegate included).
Inputs are N(0,1) float32 of the given (or the model's own) shapes.
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np


def parse_shapes(items):
    out = {}
    for s in items:
        name, _, dims = s.partition("=")
        if not name or not dims:
            raise SystemExit(f"bench_ref.py: --input-shape '{s}' must look like NAME=1,3,224,224")
        out[name] = tuple(int(d) for d in dims.split(","))
    return out


def resolve(name, shape, overrides):
    if name in overrides:
        return overrides[name]
    dims = []
    for d in shape:
        if not isinstance(d, int) or d < 0:
            raise SystemExit(f"bench_ref.py: input {name} has free dimensions {shape}; pass --input-shape")
        dims.append(d)
    return tuple(dims)


def onnx_runner(path, threads, overrides, rng):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        if i.type != "tensor(float)":
            raise SystemExit(f"bench_ref.py: input {i.name} has type {i.type}, only float supported")
        feeds[i.name] = rng.standard_normal(resolve(i.name, i.shape, overrides), dtype=np.float32)
    names = [o.name for o in sess.get_outputs()]
    return (lambda: sess.run(names, feeds)), "onnxruntime", ort.__version__


def tflite_runner(path, threads, overrides, rng):
    from ai_edge_litert.interpreter import Interpreter
    import importlib.metadata as md
    it = Interpreter(model_path=path, num_threads=threads)
    for d in it.get_input_details():
        if d["name"] in overrides:
            it.resize_tensor_input(d["index"], list(overrides[d["name"]]))
    it.allocate_tensors()
    for d in it.get_input_details():
        if d["dtype"] != np.float32:
            raise SystemExit(f"bench_ref.py: input {d['name']} has dtype {d['dtype']}, only float32 supported")
        it.set_tensor(d["index"], rng.standard_normal(tuple(int(v) for v in d["shape"]), dtype=np.float32))
    outs = it.get_output_details()

    def run():
        it.invoke()
        return [it.get_tensor(d["index"]) for d in outs]

    return run, "litert", md.version("ai-edge-litert")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-shape", action="append", default=[])
    a = ap.parse_args()
    if a.runs < 1:
        raise SystemExit("bench_ref.py: --runs must be at least 1")
    rng = np.random.default_rng(a.seed)
    overrides = parse_shapes(a.input_shape)
    with open(a.model, "rb") as f:
        head = f.read(8)
    make = tflite_runner if head[4:8] == b"TFL3" else onnx_runner
    run, runtime, version = make(a.model, max(1, a.threads), overrides, rng)
    for _ in range(a.warmup):
        run()
    samples = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) * 1e3)
    json.dump({
        "runtime": runtime,
        "version": version,
        "threads": a.threads,
        "runs": a.runs,
        "warmup": a.warmup,
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "mean_ms": statistics.fmean(samples),
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()

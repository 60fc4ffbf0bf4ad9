#!/usr/bin/env python3
"""ONNX Runtime intermediate outputs for `shadownet trace --reference onnxruntime`.

usage: trace_ref.py MODEL.onnx OUT.npz NAMES.txt NAME=INPUT.npy [NAME=INPUT.npy ...]

NAMES.txt lists the value names to capture, one a line. Every name that some node of the
ONNX graph produces is added as an extra graph output; the others are skipped. The model
runs once with graph optimizations disabled (so intermediate values keep their meaning)
and OUT.npz holds, as float32, array `v<i>` for the i-th line of NAMES.txt that was
captured.
"""
import sys

import numpy as np


def main(argv):
    if len(argv) < 4:
        sys.stderr.write(__doc__)
        return 2
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        sys.stderr.write(f"trace_ref.py needs the onnx and onnxruntime packages: {e}\n")
        return 3
    model_path, out_path, names_path = argv[1], argv[2], argv[3]
    with open(names_path, encoding="utf-8") as f:
        names = [line.rstrip("\n") for line in f]
    feeds = {}
    for arg in argv[4:]:
        name, _, path = arg.partition("=")
        feeds[name] = np.load(path)

    model = onnx.load(model_path)
    g = model.graph
    produced = {o for n in g.node for o in n.output if o}
    existing = {o.name for o in g.output}
    wanted = [(i, n) for i, n in enumerate(names) if n in produced]
    for _, n in wanted:
        if n not in existing:
            # Type and shape are left for ONNX Runtime to infer.
            g.output.append(onnx.ValueInfoProto(name=n))
            existing.add(n)

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    feed = {}
    for inp in sess.get_inputs():
        if inp.name not in feeds:
            sys.stderr.write(f"trace_ref.py: no input given for '{inp.name}'\n")
            return 2
        x = feeds[inp.name]
        want = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
                "tensor(int8)": np.int8, "tensor(bool)": np.bool_}.get(inp.type, np.float32)
        feed[inp.name] = np.ascontiguousarray(x.astype(want))
    out_names = [n for _, n in wanted]
    values = sess.run(out_names, feed)
    arrays = {}
    for (i, _), v in zip(wanted, values):
        v = np.asarray(v)
        if v.dtype.kind in "fiub":
            arrays[f"v{i}"] = np.ascontiguousarray(v.astype(np.float32))
    np.savez(out_path, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

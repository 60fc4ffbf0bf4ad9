#!/usr/bin/env python3
"""Write a small full-integer (int8) TFLite model without TensorFlow.

Usage: make_tflite_int8.py OUT.tflite

No pip wheel we use ships a full-integer TFLite model, and TensorFlow's converter is too
heavy for the test budget, so the flatbuffer is written here with the schema bindings that
ai-edge-litert itself ships. The float network is built first and run on LiteRT over 8
seeded calibration inputs (keeping every intermediate tensor) to get each activation's
range; the int8 model then gets asymmetric int8 activations, per-channel symmetric int8
conv / depthwise weights, per-tensor fully-connected weights and int32 biases, the way
TFLite's converter quantizes. Float32 input and output (QUANTIZE first, DEQUANTIZE last).

Ops: QUANTIZE, CONV_2D (fused RELU6 / RELU / none), DEPTHWISE_CONV_2D (stride 2, RELU),
ADD (fused RELU), MUL, PAD (filled with the zero point), MAX_POOL_2D, AVERAGE_POOL_2D (SAME padding, so border windows
average 4 or 6 values), CONCATENATION, RESIZE_NEAREST_NEIGHBOR, LOGISTIC, RESHAPE,
FULLY_CONNECTED, DEQUANTIZE. Outputs: the logits and the logistic map (2048 values).
"""
import os
import sys

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as s
from ai_edge_litert.interpreter import Interpreter, OpResolverType

B = s.BuiltinOperator
O = s.BuiltinOptions
RNG = np.random.default_rng(42)
H = W = 16


def conv_w(o, kh, kw, i):
    return (RNG.standard_normal((o, kh, kw, i)) * np.sqrt(2.0 / (kh * kw * i))).astype(np.float32)


# The float network: (name, op, inputs, attrs). Weights are random but fixed.
WEIGHTS = {
    "c1_w": conv_w(8, 3, 3, 3), "c1_b": RNG.standard_normal(8).astype(np.float32) * 0.1,
    "dw_w": conv_w(1, 3, 3, 8)[:, :, :, :] * 3, "dw_b": RNG.standard_normal(8).astype(np.float32) * 0.1,
    "c2_w": conv_w(16, 1, 1, 8), "c2_b": RNG.standard_normal(16).astype(np.float32) * 0.1,
    "c3_w": conv_w(16, 1, 1, 8), "c3_b": RNG.standard_normal(16).astype(np.float32) * 0.1,
    "fc_w": (RNG.standard_normal((10, 8 * 8 * 32)) * 0.05).astype(np.float32),
    "fc_b": RNG.standard_normal(10).astype(np.float32) * 0.1,
}
# The depthwise weight has layout [1, kh, kw, C].
WEIGHTS["dw_w"] = (RNG.standard_normal((1, 3, 3, 8)) * 0.4).astype(np.float32)

GRAPH = [
    ("a", B.CONV_2D, ["x", "c1_w", "c1_b"], dict(stride=1, act=3)),
    ("b", B.DEPTHWISE_CONV_2D, ["a", "dw_w", "dw_b"], dict(stride=2, act=1)),
    ("c", B.CONV_2D, ["b", "c2_w", "c2_b"], dict(stride=1, act=0)),
    ("d", B.CONV_2D, ["b", "c3_w", "c3_b"], dict(stride=1, act=1)),
    ("e", B.ADD, ["c", "d"], dict(act=1)),
    ("m", B.MUL, ["e", "c"], dict(act=0)),
    ("mp", B.PAD, ["m", "pads"], {}),
    ("f", B.MAX_POOL_2D, ["mp"], dict(k=2, stride=2)),
    ("g", B.AVERAGE_POOL_2D, ["f"], dict(k=3, stride=1)),
    ("h", B.CONCATENATION, ["f", "g"], dict(axis=3)),
    ("r", B.RESIZE_NEAREST_NEIGHBOR, ["h", "size"], {}),
    ("l", B.LOGISTIC, ["r"], {}),
    ("flat", B.RESHAPE, ["l", "shape"], {}),
    ("logits", B.FULLY_CONNECTED, ["flat", "fc_w", "fc_b"], {}),
]
INTS = {"size": np.array([8, 8], np.int32), "shape": np.array([1, 8 * 8 * 32], np.int32),
        "pads": np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32)}
SHAPES = {"x": [1, H, W, 3], "a": [1, 16, 16, 8], "b": [1, 8, 8, 8], "c": [1, 8, 8, 16],
          "d": [1, 8, 8, 16], "e": [1, 8, 8, 16], "m": [1, 8, 8, 16], "mp": [1, 10, 10, 16],
          "f": [1, 5, 5, 16],
          "g": [1, 5, 5, 16], "h": [1, 5, 5, 32], "r": [1, 8, 8, 32], "l": [1, 8, 8, 32],
          "flat": [1, 8 * 8 * 32], "logits": [1, 10]}
# Ops whose int8 output must carry their input's quantization (TFLite requires it).
SAME_AS_INPUT = {"mp": "m", "f": "m", "g": "f", "h": "f", "r": "h", "flat": "l"}


def options(op, attrs):
    if op == B.CONV_2D:
        o = s.Conv2DOptionsT()
        o.padding, o.strideW, o.strideH = s.Padding.SAME, attrs["stride"], attrs["stride"]
        o.fusedActivationFunction = attrs["act"]
        o.dilationWFactor = o.dilationHFactor = 1
        return O.Conv2DOptions, o
    if op == B.DEPTHWISE_CONV_2D:
        o = s.DepthwiseConv2DOptionsT()
        o.padding, o.strideW, o.strideH = s.Padding.SAME, attrs["stride"], attrs["stride"]
        o.depthMultiplier, o.fusedActivationFunction = 1, attrs["act"]
        o.dilationWFactor = o.dilationHFactor = 1
        return O.DepthwiseConv2DOptions, o
    if op in (B.MAX_POOL_2D, B.AVERAGE_POOL_2D):
        o = s.Pool2DOptionsT()
        o.padding = s.Padding.VALID if op == B.MAX_POOL_2D else s.Padding.SAME
        o.strideW = o.strideH = attrs["stride"]
        o.filterWidth = o.filterHeight = attrs["k"]
        return O.Pool2DOptions, o
    if op == B.ADD:
        o = s.AddOptionsT()
        o.fusedActivationFunction = attrs["act"]
        return O.AddOptions, o
    if op == B.MUL:
        o = s.MulOptionsT()
        o.fusedActivationFunction = attrs["act"]
        return O.MulOptions, o
    if op == B.CONCATENATION:
        o = s.ConcatenationOptionsT()
        o.axis = attrs["axis"]
        return O.ConcatenationOptions, o
    if op == B.RESIZE_NEAREST_NEIGHBOR:
        return O.ResizeNearestNeighborOptions, s.ResizeNearestNeighborOptionsT()
    if op == B.RESHAPE:
        o = s.ReshapeOptionsT()
        o.newShape = [1, 8 * 8 * 32]
        return O.ReshapeOptions, o
    if op == B.FULLY_CONNECTED:
        return O.FullyConnectedOptions, s.FullyConnectedOptionsT()
    return O.NONE, None


class Builder:
    def __init__(self):
        self.tensors, self.buffers, self.index = [], [s.BufferT()], {}

    def tensor(self, name, shape, ty, data=None, quant=None):
        t = s.TensorT()
        t.name, t.shape, t.type = name.encode(), list(shape), ty
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        else:
            t.buffer = 0
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale = [float(v) for v in np.atleast_1d(quant[0])]
            q.zeroPoint = [int(v) for v in np.atleast_1d(quant[1])]
            q.quantizedDimension = quant[2] if len(quant) > 2 else 0
            t.quantization = q
        self.tensors.append(t)
        self.index[name] = len(self.tensors) - 1
        return self.index[name]

    def finish(self, ops, inputs, outputs, path):
        codes, ops_t = [], []
        for op, ins, outs, (ot, opts) in ops:
            if op not in codes:
                codes.append(op)
            o = s.OperatorT()
            o.opcodeIndex = codes.index(op)
            o.inputs = [self.index[i] for i in ins]
            o.outputs = [self.index[i] for i in outs]
            o.builtinOptionsType, o.builtinOptions = ot, opts
            ops_t.append(o)
        m = s.ModelT()
        m.version = 3
        m.operatorCodes = []
        for c in codes:
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = c, min(c, 127), 1
            m.operatorCodes.append(oc)
        sg = s.SubGraphT()
        sg.tensors, sg.operators = self.tensors, ops_t
        sg.inputs = [self.index[i] for i in inputs]
        sg.outputs = [self.index[i] for i in outputs]
        m.subgraphs, m.buffers = [sg], self.buffers
        fb = flatbuffers.Builder(1 << 20)
        fb.Finish(m.Pack(fb), file_identifier=b"TFL3")
        with open(path, "wb") as f:
            f.write(fb.Output())


def float_model(path):
    b = Builder()
    b.tensor("x", SHAPES["x"], s.TensorType.FLOAT32)
    for k, v in WEIGHTS.items():
        b.tensor(k, v.shape, s.TensorType.FLOAT32, v)
    for k, v in INTS.items():
        b.tensor(k, v.shape, s.TensorType.INT32, v)
    ops = []
    for name, op, ins, attrs in GRAPH:
        b.tensor(name, SHAPES[name], s.TensorType.FLOAT32)
        ops.append((op, ins, [name], options(op, attrs)))
    b.finish(ops, ["x"], ["logits"], path)


def calibrate(path, count=8):
    it = Interpreter(model_path=path, experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    idx = {d["name"]: d["index"] for d in it.get_tensor_details()}
    lo, hi = {}, {}
    rng = np.random.default_rng(1)
    for _ in range(count):
        x = rng.random(SHAPES["x"], dtype=np.float32)
        it.set_tensor(idx["x"], x)
        it.invoke()
        for n in ["x"] + [g[0] for g in GRAPH]:
            v = it.get_tensor(idx[n])
            lo[n] = min(lo.get(n, 0.0), float(v.min()))
            hi[n] = max(hi.get(n, 0.0), float(v.max()))
    return lo, hi


def act_q(lo, hi):
    # TFLite's asymmetric int8: the range always contains 0.
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-6) / 255.0
    zp = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return np.float32(scale), zp


def int8_model(path, lo, hi):
    q = {n: act_q(lo[n], hi[n]) for n in lo}
    q["l"] = (np.float32(1.0 / 256), -128)  # LOGISTIC's fixed int8 output
    for n, src in SAME_AS_INPUT.items():
        q[n] = q[src]
    b = Builder()
    b.tensor("x", SHAPES["x"], s.TensorType.FLOAT32)
    b.tensor("xq", SHAPES["x"], s.TensorType.INT8, quant=q["x"])
    for k, v in INTS.items():
        b.tensor(k, v.shape, s.TensorType.INT32, v)
    ops = [(B.QUANTIZE, ["x"], ["xq"], (O.NONE, None))]
    rename = {"x": "xq"}
    for name, op, ins, attrs in GRAPH:
        ins = [rename.get(i, i) for i in ins]
        if op in (B.CONV_2D, B.DEPTHWISE_CONV_2D, B.FULLY_CONNECTED):
            w, bias = WEIGHTS[ins[1]], WEIGHTS[ins[2]]
            axis = 3 if op == B.DEPTHWISE_CONV_2D else 0
            if op == B.FULLY_CONNECTED:
                ws = np.array([np.abs(w).max() / 127.0], np.float32)
                wq = np.clip(np.round(w / ws[0]), -127, 127).astype(np.int8)
                per = ws
            else:
                red = tuple(a for a in range(4) if a != axis)
                ws = (np.abs(w).max(axis=red) / 127.0).astype(np.float32)
                shape = [1, 1, 1, 1]
                shape[axis] = -1
                wq = np.clip(np.round(w / ws.reshape(shape)), -127, 127).astype(np.int8)
                per = ws
            in_scale = q[ins[0] if ins[0] != "xq" else "x"][0]
            bs = (in_scale * per).astype(np.float32)
            bq = np.round(bias / bs).astype(np.int32)
            b.tensor(ins[1], w.shape, s.TensorType.INT8, wq,
                     quant=(per, np.zeros(len(per), np.int64), axis))
            b.tensor(ins[2], bias.shape, s.TensorType.INT32, bq,
                     quant=(bs, np.zeros(len(bs), np.int64), 0))
        b.tensor(name, SHAPES[name], s.TensorType.INT8, quant=q[name])
        ops.append((op, ins, [name], options(op, attrs)))
    b.tensor("out", SHAPES["logits"], s.TensorType.FLOAT32)
    ops.append((B.DEQUANTIZE, ["logits"], ["out"], (O.NONE, None)))
    # A second, wide output (the logistic map) checks 2048 values, not only 10 logits.
    b.tensor("map", SHAPES["l"], s.TensorType.FLOAT32)
    ops.append((B.DEQUANTIZE, ["l"], ["map"], (O.NONE, None)))
    b.finish(ops, ["x"], ["out", "map"], path)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = sys.argv[1]
    tmp = out + ".float.tflite"
    float_model(tmp)
    lo, hi = calibrate(tmp)
    os.remove(tmp)
    part = out + ".tmp"
    int8_model(part, lo, hi)
    # LiteRT must accept what we wrote.
    it = Interpreter(model_path=part)
    it.allocate_tensors()
    os.replace(part, out)
    print(f"make_tflite_int8: {os.path.basename(out)} ({os.path.getsize(out)} bytes)",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Quantize float ONNX models to int8 with ONNX Runtime's own tool.

Usage: quantize_models.py MODELS_DIR NAME[:INPUT=d,d,d,d] ...

For each NAME, reads MODELS_DIR/NAME.onnx and writes MODELS_DIR/NAME_int8_qdq.onnx
(QDQ format, int8 activations and weights) and MODELS_DIR/NAME_int8_qop.onnx (QOperator
format, uint8 activations, int8 weights: QLinearConv, QGemm, QLinearAdd, ...). Weights are
quantized per output channel. Calibration: 8 seeded N(0,1) inputs, the distribution the
reference cases use. The float model is first run through
onnxruntime.quantization.quant_pre_process (BatchNorm folded into Conv, shapes inferred),
as ONNX Runtime's documentation recommends; models below opset 13 are converted to 13,
the first opset whose DequantizeLinear takes per-channel scales.

Also writes MODELS_DIR/integer_ops.onnx, a small graph of the integer ops the tool does
not produce (ConvInteger, MatMulInteger, QLinearMatMul).
"""
import logging
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process


class Reader(CalibrationDataReader):
    def __init__(self, name, shape, count=8, seed=1):
        rng = np.random.default_rng(seed)
        self.batches = iter([{name: rng.standard_normal(shape, dtype=np.float32)}
                             for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


def quantize(models, spec):
    name, _, shape_spec = spec.partition(":")
    model = onnx.load(os.path.join(models, name + ".onnx"))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if shape_spec:
        iname, _, d = shape_spec.partition("=")
        if iname != inp.name:
            raise SystemExit(f"quantize_models: {name} has input {inp.name}, not {iname}")
        shape = tuple(int(v) for v in d.split(","))
        for dim, v in zip(dims, shape):
            dim.ClearField("dim_param")
            dim.dim_value = v
    else:
        shape = tuple(d.dim_value for d in dims)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        model = version_converter.convert_version(model, 13)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "float.onnx")
        pre = os.path.join(tmp, "pre.onnx")
        onnx.save(model, src)
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        for fmt, qfmt, act in (("qdq", QuantFormat.QDQ, QuantType.QInt8),
                               ("qop", QuantFormat.QOperator, QuantType.QUInt8)):
            dst = os.path.join(models, f"{name}_int8_{fmt}.onnx")
            part = dst + ".tmp.onnx"
            quantize_static(pre, part, Reader(inp.name, shape), quant_format=qfmt,
                            per_channel=True, activation_type=act,
                            weight_type=QuantType.QInt8)
            os.replace(part, dst)
            print(f"quantize_models: {os.path.basename(dst)} ({os.path.getsize(dst)} bytes)",
                  file=sys.stderr)


def integer_ops_model(path):
    """The integer ops quantize_static does not write: ConvInteger and MatMulInteger
    (int32 accumulators, as dynamic quantization uses them) and QLinearMatMul."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (4, 3, 3, 3), dtype=np.int8)
    b = rng.integers(-127, 128, (144, 10), dtype=np.int8)
    init = [numpy_helper.from_array(v, n) for n, v in [
        ("w", w), ("b", b),
        ("s_x", np.array(0.02, np.float32)), ("z_x", np.array(128, np.uint8)),
        ("s_acc", np.array(0.02 * 0.004, np.float32)),
        ("s_h", np.array(0.05, np.float32)), ("z_h", np.array(120, np.uint8)),
        ("s_b", np.array(0.01, np.float32)), ("z_b", np.array(0, np.int8)),
        ("s_y", np.array(0.25, np.float32)), ("z_y", np.array(128, np.uint8)),
        ("flat", np.array([1, 144], np.int64)),
    ]]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["xq"]),
        helper.make_node("ConvInteger", ["xq", "w", "z_x"], ["acc"], pads=[0, 0, 0, 0]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["accf", "s_acc"], ["conv"]),
        helper.make_node("Reshape", ["conv", "flat"], ["h"]),
        helper.make_node("QuantizeLinear", ["h", "s_h", "z_h"], ["hq"]),
        helper.make_node("QLinearMatMul", ["hq", "s_h", "z_h", "b", "s_b", "z_b", "s_y", "z_y"],
                         ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s_y", "z_y"], ["qlinear"]),
        helper.make_node("MatMulInteger", ["hq", "b", "z_h"], ["macc"]),
        helper.make_node("Cast", ["macc"], ["matmul_integer"], to=TensorProto.FLOAT),
    ]
    g = helper.make_graph(
        nodes, "integer_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
         for n, s in [("conv", [1, 4, 6, 6]), ("qlinear", [1, 10]),
                      ("matmul_integer", [1, 10])]],
        init)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, path)
    print(f"quantize_models: {os.path.basename(path)}", file=sys.stderr)


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    logging.disable(logging.WARNING)
    for spec in sys.argv[2:]:
        quantize(sys.argv[1], spec)
    integer_ops_model(os.path.join(sys.argv[1], "integer_ops.onnx"))


if __name__ == "__main__":
    sys.exit(main())

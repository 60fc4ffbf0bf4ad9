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


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    logging.disable(logging.WARNING)
    for spec in sys.argv[2:]:
        quantize(sys.argv[1], spec)


if __name__ == "__main__":
    sys.exit(main())

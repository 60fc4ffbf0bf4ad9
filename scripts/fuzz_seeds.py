"""Writes the small seed models of the fuzz corpus (crates/fuzz/corpus/onnx): a few ops
each, so that mutations reach deep into the importer quickly. Regenerate with
`.venv/bin/python scripts/fuzz_seeds.py`; the outputs are committed (a few KB)."""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "crates", "fuzz", "corpus", "onnx")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)


def init(name, *shape):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def save(name, nodes, inits, inp, outp, opset=13):
    g = helper.make_graph(nodes, name, inp, outp, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(out, name + ".onnx"))


x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
save("conv_relu_gemm", [
    helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["c"], ["r"]),
    helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
    helper.make_node("Flatten", ["p"], ["f"]),
    helper.make_node("Gemm", ["f", "g", "gb"], ["y"], transB=1),
    helper.make_node("Softmax", ["y"], ["s"], axis=1),
], [init("w", 4, 3, 3, 3), init("b", 4), init("g", 5, 64), init("gb", 5)], [x],
    [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 5])])
save("dw_bn_add_concat", [
    helper.make_node("Conv", ["x", "w"], ["c"], group=3, pads=[1, 1, 1, 1]),
    helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"]),
    helper.make_node("Add", ["n", "x"], ["a"]),
    helper.make_node("Concat", ["a", "x"], ["k"], axis=1),
    helper.make_node("GlobalAveragePool", ["k"], ["y"]),
], [init("w", 3, 1, 3, 3), init("s", 3), init("bb", 3), init("m", 3),
    numpy_helper.from_array(np.abs(rng.standard_normal(3)).astype(np.float32) + 0.5, "v")],
    [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 1, 1])])
save("resize_transpose_reshape", [
    helper.make_node("Resize", ["x", "", "sc"], ["r"], mode="nearest"),
    helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
    helper.make_node("Reshape", ["t", "sh"], ["y"]),
], [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
    numpy_helper.from_array(np.array([1, -1], np.int64), "sh")],
    [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 768])])
print("fuzz seeds written to", out)

#!/usr/bin/env python3
"""Generate the five ShadowNet paper models as ONNX files with seeded random weights.

Usage: paper_models.py OUTDIR [--only NAME ...] [--no-check]

Models (all float32, NCHW, batch 1, single input named ``input``):
  mobilenet_v1.onnx  MobileNet-v1 (alpha=1), 224x224x3, 1000-class logits
  resnet44.onnx      CIFAR ResNet-44  (6n+2, n=7),  32x32x3, 10-class softmax
  resnet404.onnx     CIFAR ResNet-404 (6n+2, n=67), 32x32x3, 10-class softmax
  minivgg.onnx       CIFAR MiniVGG, 32x32x3, 10-class softmax
  yolov4_tiny.onnx   YOLOv4-tiny (darknet cfg structure), 416x416x3,
                     two heads output_13 [1,255,13,13] / output_26 [1,255,26,26]

Weights are He-initialised; BatchNormalization nodes are kept as separate nodes
(random gamma/beta/mean/var) so the importer's BN folding is exercised.  The
last BN of every residual branch gets a small gamma (~1/sqrt(num_blocks)) so
activations stay of order one through ResNet-404.  After writing, every model is
run with onnxruntime on a N(0,1) input and checked for sane outputs.

Only onnx + numpy are needed to generate; onnxruntime is needed for the check.
"""
import argparse
import os
import sys
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8  # opset 13 era; loadable by every onnxruntime >= 1.10


class Builder:
    def __init__(self, name, seed):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.counter = {}

    def _uid(self, prefix):
        i = self.counter.get(prefix, 0)
        self.counter[prefix] = i + 1
        return f"{prefix}_{i}"

    def init(self, name, arr):
        arr = np.ascontiguousarray(arr)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op, inputs, n_out=1, name=None, **attrs):
        name = name or self._uid(op.lower())
        outs = [name] if n_out == 1 else [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    # --- layers -----------------------------------------------------------
    def conv(self, x, cin, cout, k, stride=1, pads=None, group=1, bias=False,
             gain=2.0, name=None):
        name = name or self._uid("conv")
        if pads is None:
            p = k // 2
            pads = [p, p, p, p]
        fan_in = (cin // group) * k * k
        w = self.rng.normal(0.0, np.sqrt(gain / fan_in), size=(cout, cin // group, k, k))
        ins = [x, self.init(name + ".weight", w.astype(np.float32))]
        if bias:
            b = self.rng.normal(0.0, 0.05, size=(cout,))
            ins.append(self.init(name + ".bias", b.astype(np.float32)))
        return self.node("Conv", ins, name=name, kernel_shape=[k, k],
                         strides=[stride, stride], pads=list(pads),
                         dilations=[1, 1], group=group)

    def bn(self, x, c, gamma_scale=1.0, name=None):
        name = name or self._uid("bn")
        r = self.rng
        gamma = r.uniform(0.7, 1.3, size=c) * gamma_scale
        beta = r.normal(0.0, 0.1, size=c)
        mean = r.normal(0.0, 0.1, size=c)
        var = r.uniform(0.6, 1.6, size=c)
        ins = [x] + [self.init(f"{name}.{k}", v.astype(np.float32)) for k, v in
                     (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var))]
        return self.node("BatchNormalization", ins, name=name, epsilon=1e-3, momentum=0.99)

    def relu(self, x):
        return self.node("Relu", [x])

    def leaky(self, x, alpha=0.1):
        return self.node("LeakyRelu", [x], alpha=alpha)

    def maxpool(self, x, k=2, s=2):
        return self.node("MaxPool", [x], kernel_shape=[k, k], strides=[s, s], pads=[0, 0, 0, 0])

    def gemm(self, x, cin, cout, gain=2.0, name=None):
        name = name or self._uid("gemm")
        w = self.rng.normal(0.0, np.sqrt(gain / cin), size=(cout, cin))
        b = self.rng.normal(0.0, 0.05, size=(cout,))
        return self.node("Gemm", [x, self.init(name + ".weight", w.astype(np.float32)),
                                  self.init(name + ".bias", b.astype(np.float32))],
                         name=name, alpha=1.0, beta=1.0, transB=1)

    def const_i64(self, name, values):
        return self.init(name, np.asarray(values, dtype=np.int64))

    def build(self, input_shape, outputs, doc):
        """outputs: list of (tensor_name, output_name, shape)."""
        nodes = list(self.nodes)
        outs = []
        for tname, oname, shape in outputs:
            nodes.append(helper.make_node("Identity", [tname], [oname], name=oname + "_identity"))
            outs.append(helper.make_tensor_value_info(oname, TensorProto.FLOAT, shape))
        graph = helper.make_graph(
            nodes, self.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
            outs, initializer=self.inits)
        model = helper.make_model(graph, producer_name="shadownet-paper-models",
                                  producer_version="1",
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        model.doc_string = doc
        onnx.checker.check_model(model, full_check=True)
        return model


def mobilenet_v1():
    b = Builder("mobilenet_v1", seed=1001)
    same_s2 = [0, 0, 1, 1]  # TF "SAME" padding for k3/s2 on even inputs
    x = b.relu(b.bn(b.conv("input", 3, 32, 3, stride=2, pads=same_s2), 32))
    cin = 32
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
    for cout, s in cfg:
        pads = same_s2 if s == 2 else [1, 1, 1, 1]
        x = b.relu(b.bn(b.conv(x, cin, cin, 3, stride=s, pads=pads, group=cin), cin))
        x = b.relu(b.bn(b.conv(x, cin, cout, 1), cout))
        cin = cout
    x = b.node("GlobalAveragePool", [x])
    x = b.conv(x, 1024, 1000, 1, bias=True, gain=1.0, name="classifier")
    x = b.node("Flatten", [x], axis=1)
    return b.build([1, 3, 224, 224], [(x, "output", [1, 1000])],
                   "MobileNet-v1 alpha=1, 224x224, 1000-class logits, random weights")


def resnet_cifar(depth, seed):
    assert (depth - 2) % 6 == 0
    n = (depth - 2) // 6
    b = Builder(f"resnet{depth}", seed=seed)
    res_gamma = 1.0 / np.sqrt(3 * n)
    x = b.relu(b.bn(b.conv("input", 3, 16, 3, bias=True), 16))
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for blk in range(n):
            stride = 2 if (stage > 0 and blk == 0) else 1
            y = b.relu(b.bn(b.conv(x, cin, cout, 3, stride=stride, bias=True), cout))
            y = b.bn(b.conv(y, cout, cout, 3, bias=True), cout, gamma_scale=res_gamma)
            if stride != 1 or cin != cout:
                # 1x1 projection shortcut (Keras resnet_v1 style), with bias, no BN
                sc = b.conv(x, cin, cout, 1, stride=stride, pads=[0, 0, 0, 0], bias=True, gain=1.0)
            else:
                sc = x
            x = b.relu(b.node("Add", [sc, y]))
            cin = cout
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    x = b.gemm(x, 64, 10, gain=1.0, name="fc")
    x = b.node("Softmax", [x], axis=-1)
    return b.build([1, 3, 32, 32], [(x, "output", [1, 10])],
                   f"CIFAR ResNet-{depth} (n={n}), 10-class softmax, random weights")


def minivgg():
    b = Builder("minivgg", seed=3003)
    x = "input"
    cin = 3
    for c in (32, 64):
        for _ in range(2):
            x = b.bn(b.relu(b.conv(x, cin, c, 3, bias=True)), c)
            cin = c
        x = b.maxpool(x)
    x = b.node("Flatten", [x], axis=1)             # [1, 64*8*8]
    x = b.relu(b.gemm(x, 64 * 8 * 8, 512, name="fc1"))
    # 1-D BatchNorm: view [1,512] as [1,512,1,1], normalise, flatten back.
    x = b.node("Reshape", [x, b.const_i64("bn1d_shape", [1, 512, 1, 1])])
    x = b.bn(x, 512, name="fc1_bn")
    x = b.node("Flatten", [x], axis=1)
    x = b.gemm(x, 512, 10, gain=1.0, name="fc2")
    x = b.node("Softmax", [x], axis=-1)
    return b.build([1, 3, 32, 32], [(x, "output", [1, 10])],
                   "CIFAR MiniVGG, 10-class softmax, random weights")


def yolov4_tiny():
    """Follows darknet's yolov4-tiny.cfg layer by layer (layer indices in comments)."""
    b = Builder("yolov4_tiny", seed=4004)

    def cbl(x, cin, cout, k, stride=1):
        return b.leaky(b.bn(b.conv(x, cin, cout, k, stride=stride), cout))

    def half(x, c):  # route groups=2 group_id=1 -> second half of the channels
        split = b.const_i64(b._uid("split_sizes"), [c // 2, c // 2])
        return b.node("Split", [x, split], n_out=2, axis=1)[1]

    def concat(*xs):
        return b.node("Concat", list(xs), axis=1)

    x = cbl("input", 3, 32, 3, stride=2)           # 0  208x208x32
    x = cbl(x, 32, 64, 3, stride=2)                # 1  104x104x64
    feats = None
    cin = 64
    for c in (64, 128, 256):
        a = cbl(x, cin, c, 3)                      # 2 / 10 / 18
        r = half(a, c)                             # 3 / 11 / 19
        p = cbl(r, c // 2, c // 2, 3)              # 4 / 12 / 20
        q = cbl(p, c // 2, c // 2, 3)              # 5 / 13 / 21
        t = concat(q, p)                           # 6 / 14 / 22
        u = cbl(t, c, c, 1)                        # 7 / 15 / 23
        feats = u
        v = concat(a, u)                           # 8 / 16 / 24
        x = b.maxpool(v)                           # 9 / 17 / 25
        cin = 2 * c
    x = cbl(x, 512, 512, 3)                        # 26 13x13x512
    x27 = cbl(x, 512, 256, 1)                      # 27
    x = cbl(x27, 256, 512, 3)                      # 28
    head13 = b.conv(x, 512, 255, 1, bias=True, gain=1.0, name="head13")  # 29 linear
    x = cbl(x27, 256, 128, 1)                      # 31 route -4, 32 conv
    scales = b.init("upsample_scales", np.array([1, 1, 2, 2], dtype=np.float32))
    x = b.node("Resize", [x, "", scales], mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # 33
    x = concat(x, feats)                           # 34 route -1,23 -> 384
    x = cbl(x, 384, 256, 3)                        # 35
    head26 = b.conv(x, 256, 255, 1, bias=True, gain=1.0, name="head26")  # 36 linear
    return b.build([1, 3, 416, 416],
                   [(head13, "output_13", [1, 255, 13, 13]),
                    (head26, "output_26", [1, 255, 26, 26])],
                   "YOLOv4-tiny 416x416, 80 classes (255 = 3*(5+80)), random weights")


MODELS = {
    "mobilenet_v1": (mobilenet_v1, True),
    "resnet44": (lambda: resnet_cifar(44, seed=2044), True),
    "resnet404": (lambda: resnet_cifar(404, seed=2404), True),
    "minivgg": (minivgg, True),
    "yolov4_tiny": (yolov4_tiny, False),
}


def check(name, path, is_classifier):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    seed = zlib.crc32(name.encode())
    x = np.random.default_rng(seed).standard_normal(inp.shape).astype(np.float32)
    outs = sess.run(None, {inp.name: x})
    parts = []
    for o, arr in zip(sess.get_outputs(), outs):
        if not np.all(np.isfinite(arr)):
            raise SystemExit(f"{name}: output {o.name} has non-finite values")
        amax = float(np.max(np.abs(arr)))
        if not (1e-2 <= amax <= 1e3):
            raise SystemExit(f"{name}: output {o.name} max|x|={amax:.3g} outside [1e-2, 1e3]")
        if is_classifier and float(arr.max() - arr.min()) <= 1e-6 * max(amax, 1e-30):
            raise SystemExit(f"{name}: output {o.name} is (nearly) constant")
        parts.append(f"{o.name}{list(arr.shape)} range [{arr.min():.4g}, {arr.max():.4g}] "
                     f"std {arr.std():.3g}")
    return "; ".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--only", nargs="*", choices=sorted(MODELS))
    ap.add_argument("--no-check", action="store_true", help="skip the onnxruntime sanity check")
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    for name in args.only or list(MODELS):
        fn, is_classifier = MODELS[name]
        model = fn()
        path = os.path.join(args.outdir, name + ".onnx")
        tmp = path + ".tmp"
        onnx.save_model(model, tmp)
        nparams = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        summary = "" if args.no_check else check(name, tmp, is_classifier)
        os.replace(tmp, path)
        print(f"{name}: {nparams/1e6:.3f}M params, {len(model.graph.node)} nodes, "
              f"{os.path.getsize(path)/1e6:.1f} MB; {summary}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

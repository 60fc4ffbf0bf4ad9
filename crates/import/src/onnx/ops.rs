//! Mapping of ONNX nodes (opsets 7–21) onto IR ops, including the attribute-to-input
//! moves between opsets and the folding of shape sub-graphs.
use shadownet_ir::{
    broadcast_shapes, numel, Activation, BinaryOp, Conv, ConvTranspose, CoordMode, NearestRound,
    Op, PadMode, Pool, ReduceOp, Resize, ResizeMode,
};

use super::proto::{AttributeProto, NodeProto};
use super::tensor::{self, CTensor, Data};
use super::{Importer, Val};
use crate::{Error, Result};

/// Newest opset of the default domain the importer follows; ops are listed from opset 7
/// (or their first opset), the oldest the importer follows.
pub const OPSET_MAX: i64 = 21;

/// Every default-domain op the importer maps, with the opsets (first, last) it maps it
/// for. Nodes whose op is not listed are refused before mapping, so this table is the
/// importer's coverage by construction (docs/ops.md is generated from it).
pub(crate) const ONNX_OPS: &[(&str, i64, i64)] = &[
    ("Abs", 7, OPSET_MAX),
    ("Add", 7, OPSET_MAX),
    ("And", 7, OPSET_MAX),
    ("AveragePool", 7, OPSET_MAX),
    ("BatchNormalization", 7, OPSET_MAX),
    ("Cast", 7, OPSET_MAX),
    ("CastLike", 15, OPSET_MAX),
    ("Ceil", 7, OPSET_MAX),
    ("Clip", 7, OPSET_MAX),
    ("Concat", 7, OPSET_MAX),
    ("Constant", 7, OPSET_MAX),
    ("ConstantOfShape", 9, OPSET_MAX),
    ("Conv", 7, OPSET_MAX),
    ("ConvInteger", 10, OPSET_MAX),
    ("ConvTranspose", 7, OPSET_MAX),
    ("Cos", 7, OPSET_MAX),
    ("DepthToSpace", 7, OPSET_MAX),
    ("DequantizeLinear", 10, OPSET_MAX),
    ("Div", 7, OPSET_MAX),
    ("Dropout", 7, OPSET_MAX),
    ("Elu", 7, OPSET_MAX),
    ("Equal", 7, OPSET_MAX),
    ("Erf", 9, OPSET_MAX),
    ("Exp", 7, OPSET_MAX),
    ("Expand", 8, OPSET_MAX),
    ("Flatten", 7, OPSET_MAX),
    ("Floor", 7, OPSET_MAX),
    ("Gather", 7, OPSET_MAX),
    ("Gelu", 20, OPSET_MAX),
    ("Gemm", 7, OPSET_MAX),
    ("GlobalAveragePool", 7, OPSET_MAX),
    ("GlobalMaxPool", 7, OPSET_MAX),
    ("Greater", 7, OPSET_MAX),
    ("GreaterOrEqual", 12, OPSET_MAX),
    ("HardSigmoid", 7, OPSET_MAX),
    ("HardSwish", 14, OPSET_MAX),
    ("Identity", 7, OPSET_MAX),
    ("InstanceNormalization", 7, OPSET_MAX),
    ("LayerNormalization", 17, OPSET_MAX),
    ("LeakyRelu", 7, OPSET_MAX),
    ("Less", 7, OPSET_MAX),
    ("LessOrEqual", 12, OPSET_MAX),
    ("Log", 7, OPSET_MAX),
    ("LogSoftmax", 7, OPSET_MAX),
    ("MatMul", 7, OPSET_MAX),
    ("MatMulInteger", 10, OPSET_MAX),
    ("Max", 7, OPSET_MAX),
    ("MaxPool", 7, OPSET_MAX),
    ("Mean", 7, OPSET_MAX),
    ("Min", 7, OPSET_MAX),
    ("Mish", 18, OPSET_MAX),
    ("Mul", 7, OPSET_MAX),
    ("Neg", 7, OPSET_MAX),
    ("Not", 7, OPSET_MAX),
    ("Or", 7, OPSET_MAX),
    ("PRelu", 7, OPSET_MAX),
    ("Pad", 7, OPSET_MAX),
    ("Pow", 7, OPSET_MAX),
    ("QLinearConv", 10, OPSET_MAX),
    ("QLinearMatMul", 10, OPSET_MAX),
    ("QuantizeLinear", 10, OPSET_MAX),
    ("Range", 11, OPSET_MAX),
    ("Reciprocal", 7, OPSET_MAX),
    ("ReduceL2", 7, OPSET_MAX),
    ("ReduceMax", 7, OPSET_MAX),
    ("ReduceMean", 7, OPSET_MAX),
    ("ReduceMin", 7, OPSET_MAX),
    ("ReduceProd", 7, OPSET_MAX),
    ("ReduceSum", 7, OPSET_MAX),
    ("ReduceSumSquare", 7, OPSET_MAX),
    ("Relu", 7, OPSET_MAX),
    ("Reshape", 7, OPSET_MAX),
    ("Resize", 10, OPSET_MAX),
    ("Round", 11, OPSET_MAX),
    ("Selu", 7, OPSET_MAX),
    ("Shape", 7, OPSET_MAX),
    ("Sigmoid", 7, OPSET_MAX),
    ("Sin", 7, OPSET_MAX),
    ("Size", 7, OPSET_MAX),
    ("Slice", 7, OPSET_MAX),
    ("Softmax", 7, OPSET_MAX),
    ("Softplus", 7, OPSET_MAX),
    ("SpaceToDepth", 7, OPSET_MAX),
    ("Split", 7, OPSET_MAX),
    ("Sqrt", 7, OPSET_MAX),
    ("Squeeze", 7, OPSET_MAX),
    ("Sub", 7, OPSET_MAX),
    ("Sum", 7, OPSET_MAX),
    ("Tanh", 7, OPSET_MAX),
    ("Tile", 7, OPSET_MAX),
    ("Transpose", 7, OPSET_MAX),
    ("Unsqueeze", 7, OPSET_MAX),
    ("Upsample", 7, 9),
    ("Where", 9, OPSET_MAX),
    ("Xor", 7, OPSET_MAX),
];

pub(crate) fn is_mapped(domain: &str, op: &str) -> bool {
    match domain {
        "" | "ai.onnx" => ONNX_OPS.iter().any(|&(o, _, _)| o == op),
        "com.microsoft" => CONTRIB.contains(&op),
        _ => false,
    }
}

/// The error of an op listed as mapped whose mapping is missing: a bug the coverage
/// test catches, never a user-facing state.
pub(crate) const NOT_MAPPED: &str = "listed as supported but has no mapping";

/// ONNX Runtime contrib ops (domain com.microsoft) the importer maps: those its
/// quantization tool writes in QOperator format.
pub(crate) const CONTRIB: &[&str] = &[
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QLinearSoftmax",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
];

pub(crate) struct Ctx<'a> {
    pub name: String,
    pub p: &'a NodeProto,
    pub ins: Vec<Option<Val>>,
    pub opset: i64,
}

impl Ctx<'_> {
    pub(crate) fn op(&self) -> &str {
        self.p.op_type()
    }

    pub(crate) fn attr(&self, k: &str) -> Option<&AttributeProto> {
        self.p.attribute.iter().find(|a| a.name() == k)
    }

    pub(crate) fn i(&self, k: &str, d: i64) -> i64 {
        self.attr(k).map(|a| a.i()).unwrap_or(d)
    }

    pub(crate) fn f(&self, k: &str, d: f32) -> f32 {
        self.attr(k).map(|a| a.f()).unwrap_or(d)
    }

    pub(crate) fn ints(&self, k: &str) -> Option<Vec<i64>> {
        self.attr(k).map(|a| a.ints.clone())
    }

    pub(crate) fn s(&self, k: &str, d: &str) -> String {
        self.attr(k)
            .map(|a| String::from_utf8_lossy(a.s()).into_owned())
            .unwrap_or_else(|| d.to_string())
    }

    pub(crate) fn opt(&self, i: usize) -> Option<&Val> {
        self.ins.get(i).and_then(Option::as_ref)
    }

    pub(crate) fn input(&self, i: usize) -> Result<Val> {
        self.opt(i)
            .cloned()
            .ok_or_else(|| self.invalid(format!("{} needs input {i}", self.op())))
    }

    pub(crate) fn out(&self, i: usize) -> Result<String> {
        self.p
            .output
            .get(i)
            .filter(|s| !s.is_empty())
            .cloned()
            .ok_or_else(|| self.invalid(format!("{} needs output {i}", self.op())))
    }

    pub(crate) fn unsup(&self, detail: impl Into<String>) -> Error {
        Error::Unsupported {
            node: self.name.clone(),
            op: self.op().to_string(),
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid(&self, what: impl Into<String>) -> Error {
        Error::Invalid {
            node: self.name.clone(),
            what: what.into(),
        }
    }

    pub(crate) fn axis(&self, a: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        let v = if a < 0 { a + r } else { a };
        if v < 0 || v >= r {
            return Err(self.invalid(format!("axis {a} out of range for rank {rank}")));
        }
        Ok(v as usize)
    }

    pub(crate) fn axes(&self, axes: &[i64], rank: usize) -> Result<Vec<usize>> {
        let mut v = Vec::with_capacity(axes.len());
        for &a in axes {
            v.push(self.axis(a, rank)?);
        }
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    pub(crate) fn usize_of(&self, v: i64, what: &str) -> Result<usize> {
        usize::try_from(v).map_err(|_| self.invalid(format!("{what} {v} must not be negative")))
    }
}

fn act_of(op: &str, c: &Ctx) -> Option<Activation> {
    Some(match op {
        "Relu" => Activation::Relu,
        "Sigmoid" => Activation::Sigmoid,
        "Tanh" => Activation::Tanh,
        "HardSigmoid" => Activation::HardSigmoid {
            alpha: c.f("alpha", 0.2),
            beta: c.f("beta", 0.5),
        },
        "HardSwish" => Activation::HardSwish,
        "Mish" => Activation::Mish,
        "Elu" => Activation::Elu {
            alpha: c.f("alpha", 1.0),
        },
        "Selu" => Activation::Selu {
            alpha: c.f("alpha", 1.673_263_2),
            gamma: c.f("gamma", 1.050_701),
        },
        "LeakyRelu" => Activation::LeakyRelu {
            alpha: c.f("alpha", 0.01),
        },
        "Softplus" => Activation::Softplus,
        "Gelu" => Activation::Gelu,
        "Erf" => Activation::Erf,
        "Sqrt" => Activation::Sqrt,
        "Neg" => Activation::Neg,
        "Exp" => Activation::Exp,
        "Log" => Activation::Log,
        "Abs" => Activation::Abs,
        "Reciprocal" => Activation::Reciprocal,
        "Floor" => Activation::Floor,
        "Ceil" => Activation::Ceil,
        "Round" => Activation::Round,
        "Sin" => Activation::Sin,
        "Cos" => Activation::Cos,
        _ => return None,
    })
}

fn binary_of(op: &str) -> Option<BinaryOp> {
    Some(match op {
        "Add" | "Sum" => BinaryOp::Add,
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "Div" => BinaryOp::Div,
        "Pow" => BinaryOp::Pow,
        "Max" => BinaryOp::Max,
        "Min" => BinaryOp::Min,
        _ => return None,
    })
}

/// Window geometry of Conv/ConvTranspose/pooling, lifted to two spatial axes.
pub(crate) struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub pads: [usize; 4],
}

impl Importer<'_> {
    fn alias(&mut self, c: &Ctx, v: Val) -> Result<()> {
        let out = c.out(0)?;
        self.vals.insert(out, v);
        Ok(())
    }

    pub(crate) fn emit1(&mut self, c: &Ctx, op: Op, ins: &[Val]) -> Result<Val> {
        let out = c.out(0)?;
        let mut r = self.emit(&c.name, op, ins, &[out])?;
        r.pop().ok_or_else(|| c.invalid("op produced no output"))
    }

    /// An intermediate step of a node that maps onto several IR ops.
    pub(crate) fn step(&mut self, c: &Ctx, op: Op, ins: &[Val]) -> Result<Val> {
        let base =
            c.p.output
                .first()
                .cloned()
                .unwrap_or_else(|| c.name.clone());
        let out = self.fresh(&base);
        let name = self.fresh(&c.name);
        let mut r = self.emit(&name, op, ins, &[out])?;
        r.pop().ok_or_else(|| c.invalid("op produced no output"))
    }

    fn reshape_step(&mut self, c: &Ctx, x: Val, shape: Vec<usize>) -> Result<Val> {
        if self.shape(&x) == shape {
            return Ok(x);
        }
        self.step(c, Op::Reshape { shape }, &[x])
    }

    fn const_input(&self, c: &Ctx, i: usize, what: &str) -> Result<Option<CTensor>> {
        match c.opt(i) {
            None => Ok(None),
            Some(Val::Const { t, .. }) => Ok(Some((**t).clone())),
            Some(Val::Act(_)) => Err(c.unsup(format!("{what} (input {i}) must be a constant"))),
        }
    }

    /// Integer list from an attribute (older opsets) or a constant input (newer ones).
    fn ints_from(&self, c: &Ctx, attr: &str, input: usize) -> Result<Option<Vec<i64>>> {
        if let Some(v) = c.ints(attr) {
            return Ok(Some(v));
        }
        Ok(self.const_input(c, input, attr)?.map(|t| t.ints()))
    }

    pub(crate) fn map_node(&mut self, c: &Ctx) -> Result<()> {
        let op = c.op().to_string();
        if let Some(a) = act_of(&op, c) {
            if op == "Gelu" && c.s("approximate", "none") != "none" {
                return Err(c.unsup("approximate='tanh'"));
            }
            let x = c.input(0)?;
            self.emit1(c, Op::Act(a), &[x])?;
            return Ok(());
        }
        match op.as_str() {
            "Constant" => self.constant(c),
            "Identity" | "Dropout" => {
                let x = c.input(0)?;
                self.alias(c, x)
            }
            "Cast" | "CastLike" => self.cast(c),
            "Shape" => {
                let x = c.input(0)?;
                let s: Vec<i64> = self.shape(&x).iter().map(|&d| d as i64).collect();
                let r = s.len() as i64;
                let norm = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (a, b) = (norm(c.i("start", 0)), norm(c.i("end", r)));
                let v = s[a..b.max(a)].to_vec();
                self.konst_out(c, CTensor::ints_of(vec![v.len()], v))
            }
            "Size" => {
                let x = c.input(0)?;
                let n = numel(&self.shape(&x)) as i64;
                self.konst_out(c, CTensor::ints_of(vec![], vec![n]))
            }
            "ConstantOfShape" => {
                let s = self
                    .const_input(c, 0, "shape")?
                    .ok_or_else(|| c.invalid("missing shape"))?;
                let mut shape = Vec::new();
                for d in s.ints() {
                    shape.push(c.usize_of(d, "dimension")?);
                }
                let n = shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .filter(|&n| n <= tensor::MAX_CONST_ELEMS)
                    .ok_or_else(|| c.invalid(format!("shape {shape:?} too large")))?;
                let value = match c.attr("value").and_then(|a| a.t.as_ref()) {
                    Some(t) => tensor::from_proto(t, self.base_dir)?,
                    None => CTensor {
                        shape: vec![1],
                        data: Data::F(vec![0.0]),
                    },
                };
                let data = match value.data {
                    Data::F(v) => Data::F(vec![v.first().copied().unwrap_or(0.0); n]),
                    Data::I(v) => Data::I(vec![v.first().copied().unwrap_or(0); n]),
                };
                self.konst_out(c, CTensor { shape, data })
            }
            "Range" => self.range(c),
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or"
            | "Xor" | "Not" | "Where" => self.logic(c),
            "Conv" | "MatMul" | "Gemm" if self.fuse_qdq(c)? => Ok(()),
            "Conv" => self.conv(c),
            "ConvTranspose" => self.conv_transpose(c),
            "MaxPool" | "AveragePool" => self.pool(c),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = c.input(0)?;
                let o = if op == "GlobalAveragePool" {
                    Op::GlobalAvgPool
                } else {
                    Op::GlobalMaxPool
                };
                self.emit1(c, o, &[x])?;
                Ok(())
            }
            "Gemm" => self.gemm(c),
            "MatMul" => {
                let (a, b) = (c.input(0)?, c.input(1)?);
                self.emit1(c, Op::MatMul, &[a, b])?;
                Ok(())
            }
            "BatchNormalization" => {
                let mut ins = Vec::new();
                for i in 0..5 {
                    ins.push(c.input(i)?);
                }
                let epsilon = c.f("epsilon", 1e-5);
                self.emit1(c, Op::BatchNorm { epsilon }, &ins)?;
                Ok(())
            }
            "InstanceNormalization" => {
                let ins = [c.input(0)?, c.input(1)?, c.input(2)?];
                self.emit1(
                    c,
                    Op::InstanceNorm {
                        epsilon: c.f("epsilon", 1e-5),
                    },
                    &ins,
                )?;
                Ok(())
            }
            "LayerNormalization" => {
                let x = c.input(0)?;
                let axis = c.axis(c.i("axis", -1), self.shape(&x).len())?;
                let mut ins = vec![x, c.input(1)?];
                if let Some(b) = c.opt(2) {
                    ins.push(b.clone());
                }
                self.emit1(
                    c,
                    Op::LayerNorm {
                        axis,
                        epsilon: c.f("epsilon", 1e-5),
                    },
                    &ins,
                )?;
                Ok(())
            }
            "Clip" => {
                let (min, max) = if c.opset < 11 {
                    (c.f("min", f32::NEG_INFINITY), c.f("max", f32::INFINITY))
                } else {
                    let lo = self.const_input(c, 1, "min")?;
                    let hi = self.const_input(c, 2, "max")?;
                    let first = |t: Option<CTensor>, d: f32| {
                        t.and_then(|t| t.floats().first().copied()).unwrap_or(d)
                    };
                    (first(lo, f32::NEG_INFINITY), first(hi, f32::INFINITY))
                };
                let x = c.input(0)?;
                let a = if min == 0.0 && max == f32::INFINITY {
                    Activation::Relu
                } else {
                    Activation::Clip { min, max }
                };
                self.emit1(c, Op::Act(a), &[x])?;
                Ok(())
            }
            "PRelu" => {
                let x = c.input(0)?;
                let mut slope = c.input(1)?;
                let (xs, ss) = (self.shape(&x), self.shape(&slope));
                // A per-channel slope [C] must line up with axis 1 of NCHW; plain numpy
                // broadcasting would align it with the last axis instead.
                if ss.len() == 1
                    && xs.len() >= 3
                    && ss[0] == xs[1]
                    && broadcast_shapes(&xs, &ss).as_ref() != Some(&xs)
                {
                    let mut s = vec![ss[0]];
                    s.extend(std::iter::repeat_n(1, xs.len() - 2));
                    slope = self.reshape_step(c, slope, s)?;
                }
                self.emit1(c, Op::Binary(BinaryOp::PRelu), &[x, slope])?;
                Ok(())
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" => {
                self.variadic(c)
            }
            "Softmax" | "LogSoftmax" => self.softmax(c),
            "Concat" => {
                let ins: Vec<Val> = c.ins.iter().flatten().cloned().collect();
                let first = ins
                    .first()
                    .ok_or_else(|| c.invalid("Concat without inputs"))?;
                let axis = c.axis(c.i("axis", 0), self.shape(first).len())?;
                self.emit1(c, Op::Concat { axis }, &ins)?;
                Ok(())
            }
            "Split" => self.split(c),
            "Slice" => self.slice(c),
            "Gather" => {
                let x = c.input(0)?;
                let xs = self.shape(&x);
                let axis = c.axis(c.i("axis", 0), xs.len())?;
                let idx = self
                    .const_input(c, 1, "indices")?
                    .ok_or_else(|| c.invalid("missing indices"))?;
                let mut indices = Vec::with_capacity(idx.len());
                for i in idx.ints() {
                    let d = xs[axis] as i64;
                    let v = if i < 0 { i + d } else { i };
                    if v < 0 || v >= d {
                        return Err(
                            c.invalid(format!("index {i} out of range for axis of size {d}"))
                        );
                    }
                    indices.push(v as usize);
                }
                self.emit1(
                    c,
                    Op::Gather {
                        axis,
                        indices,
                        indices_shape: idx.shape.clone(),
                    },
                    &[x],
                )?;
                Ok(())
            }
            "Reshape" => {
                let x = c.input(0)?;
                let xs = self.shape(&x);
                let spec = match self.ints_from(c, "shape", 1)? {
                    Some(s) => s,
                    None => return Err(c.invalid("missing shape")),
                };
                let allow_zero = c.i("allowzero", 0) != 0;
                let shape = self.resolve_reshape(c, &xs, &spec, allow_zero)?;
                self.emit1(c, Op::Reshape { shape }, &[x])?;
                Ok(())
            }
            "Flatten" => {
                let x = c.input(0)?;
                let xs = self.shape(&x);
                let a = c.i("axis", 1);
                let axis = if a == xs.len() as i64 {
                    xs.len()
                } else {
                    c.axis(a, xs.len())?
                };
                let shape = vec![xs[..axis].iter().product(), xs[axis..].iter().product()];
                self.emit1(c, Op::Reshape { shape }, &[x])?;
                Ok(())
            }
            "Squeeze" | "Unsqueeze" => self.squeeze(c),
            "Transpose" => {
                let x = c.input(0)?;
                let r = self.shape(&x).len();
                let perm = match c.ints("perm") {
                    Some(p) => {
                        let mut v = Vec::with_capacity(p.len());
                        for a in p {
                            v.push(c.usize_of(a, "perm entry")?);
                        }
                        v
                    }
                    None => (0..r).rev().collect(),
                };
                self.emit1(c, Op::Transpose { perm }, &[x])?;
                Ok(())
            }
            "Expand" => {
                let x = c.input(0)?;
                let s = self
                    .const_input(c, 1, "shape")?
                    .ok_or_else(|| c.invalid("missing shape"))?;
                let mut target = Vec::new();
                for d in s.ints() {
                    target.push(c.usize_of(d, "dimension")?);
                }
                let xs = self.shape(&x);
                let shape = broadcast_shapes(&xs, &target)
                    .filter(|s| checked_numel(s).is_some())
                    .ok_or_else(|| c.invalid(format!("cannot expand {xs:?} to {target:?}")))?;
                self.emit1(c, Op::Expand { shape }, &[x])?;
                Ok(())
            }
            "Tile" => {
                let x = c.input(0)?;
                let r = self
                    .const_input(c, 1, "repeats")?
                    .ok_or_else(|| c.invalid("missing repeats"))?;
                let mut repeats = Vec::new();
                for d in r.ints() {
                    repeats.push(c.usize_of(d, "repeat")?);
                }
                let xs = self.shape(&x);
                let out: Vec<usize> = xs
                    .iter()
                    .zip(&repeats)
                    .map(|(&a, &b)| a.saturating_mul(b))
                    .collect();
                if repeats.len() != xs.len() || checked_numel(&out).is_none() {
                    return Err(c.invalid(format!("cannot tile {xs:?} by {repeats:?}")));
                }
                self.emit1(c, Op::Tile { repeats }, &[x])?;
                Ok(())
            }
            "Pad" => self.pad(c),
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd"
            | "ReduceSumSquare" | "ReduceL2" => self.reduce(c),
            "Resize" | "Upsample" => self.resize(c),
            "DepthToSpace" | "SpaceToDepth" => {
                let x = c.input(0)?;
                let block = c.usize_of(c.i("blocksize", 0), "blocksize")?;
                let o = if op == "DepthToSpace" {
                    Op::DepthToSpace {
                        block,
                        crd: c.s("mode", "DCR") == "CRD",
                    }
                } else {
                    Op::SpaceToDepth { block }
                };
                self.emit1(c, o, &[x])?;
                Ok(())
            }
            "DequantizeLinear" => self.dequantize_linear(c),
            "QuantizeLinear" => self.quantize_linear(c),
            "QLinearConv" => self.qlinear_conv(c),
            "QLinearMatMul" => self.qlinear_matmul(c),
            "ConvInteger" => self.conv_integer(c),
            "MatMulInteger" => self.matmul_integer(c),
            "QGemm" => self.qgemm(c),
            "QLinearAdd" => self.qlinear_binary(c, BinaryOp::Add),
            "QLinearMul" => self.qlinear_binary(c, BinaryOp::Mul),
            "QLinearGlobalAveragePool" => {
                let op = self.qlinear_unary_op(c)?;
                self.qlinear_via_float(c, op, 3)
            }
            "QLinearSoftmax" | "QLinearSigmoid" | "QLinearLeakyRelu" => {
                let op = self.qlinear_unary_op(c)?;
                self.qlinear_via_float(c, op, 3)
            }
            _ => Err(c.unsup(NOT_MAPPED)),
        }
    }

    pub(crate) fn konst_out(&mut self, c: &Ctx, t: CTensor) -> Result<()> {
        let out = c.out(0)?;
        self.set_const(&out, t);
        Ok(())
    }

    fn constant(&mut self, c: &Ctx) -> Result<()> {
        let a =
            c.p.attribute
                .first()
                .ok_or_else(|| c.invalid("Constant without a value attribute"))?;
        let t = match a.name() {
            "value" => {
                let t =
                    a.t.as_ref()
                        .ok_or_else(|| c.invalid("value is not a tensor"))?;
                if let Some(o) = c.p.output.first() {
                    self.elem.insert(o.clone(), t.data_type());
                }
                tensor::from_proto(t, self.base_dir)?
            }
            "value_float" => CTensor {
                shape: vec![],
                data: Data::F(vec![a.f()]),
            },
            "value_floats" => CTensor {
                shape: vec![a.floats.len()],
                data: Data::F(a.floats.clone()),
            },
            "value_int" => CTensor::ints_of(vec![], vec![a.i()]),
            "value_ints" => CTensor::ints_of(vec![a.ints.len()], a.ints.clone()),
            other => return Err(c.unsup(format!("Constant with attribute '{other}'"))),
        };
        self.konst_out(c, t)
    }

    fn cast(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let to = if c.op() == "CastLike" {
            match c.opt(1) {
                Some(Val::Const { t, .. }) if !t.is_float() => tensor::INT64,
                _ => tensor::FLOAT,
            }
        } else {
            c.i("to", tensor::FLOAT as i64) as i32
        };
        let float = tensor::is_float_type(to);
        match &x {
            Val::Const { t, .. } => {
                let data = if float {
                    Data::F(t.floats())
                } else if to == tensor::BOOL {
                    Data::I(t.f64s().iter().map(|&v| (v != 0.0) as i64).collect())
                } else {
                    Data::I(t.ints())
                };
                self.konst_out(
                    c,
                    CTensor {
                        shape: t.shape.clone(),
                        data,
                    },
                )
            }
            Val::Act(_) if float => self.alias(c, x),
            Val::Act(_) => Err(c.unsup(format!(
                "cast of a computed tensor to {}; only float tensors flow through the graph",
                tensor::type_name(to)
            ))),
        }
    }

    fn range(&mut self, c: &Ctx) -> Result<()> {
        let mut v = Vec::new();
        for (i, w) in ["start", "limit", "delta"].iter().enumerate() {
            v.push(
                self.const_input(c, i, w)?
                    .ok_or_else(|| c.invalid(format!("missing {w}")))?,
            );
        }
        let all_int = v.iter().all(|t| !t.is_float());
        let f: Vec<f64> = v
            .iter()
            .map(|t| t.f64s().first().copied().unwrap_or(0.0))
            .collect();
        let (start, limit, delta) = (f[0], f[1], f[2]);
        if delta == 0.0 {
            return Err(c.invalid("Range with delta 0"));
        }
        let n = ((limit - start) / delta).ceil().max(0.0);
        if n > tensor::MAX_CONST_ELEMS as f64 {
            return Err(c.invalid("Range too long"));
        }
        let n = n as usize;
        let data = if all_int {
            Data::I((0..n).map(|k| (start + k as f64 * delta) as i64).collect())
        } else {
            Data::F((0..n).map(|k| (start + k as f64 * delta) as f32).collect())
        };
        self.konst_out(
            c,
            CTensor {
                shape: vec![n],
                data,
            },
        )
    }

    /// Comparison and selection ops, which only appear in shape arithmetic; they are
    /// folded and refused on computed tensors.
    fn logic(&mut self, c: &Ctx) -> Result<()> {
        let mut ts = Vec::new();
        for (i, v) in c.ins.iter().enumerate() {
            match v {
                Some(Val::Const { t, .. }) => ts.push((**t).clone()),
                _ => {
                    return Err(c.unsup(format!(
                        "input {i} is computed at run time; only constant inputs are folded"
                    )))
                }
            }
        }
        let Some(first) = ts.first() else {
            return Err(c.invalid(format!("{} without inputs", c.op())));
        };
        let mut out = first.shape.clone();
        for t in &ts[1..] {
            out = broadcast_shapes(&out, &t.shape)
                .ok_or_else(|| c.invalid("operands do not broadcast"))?;
        }
        let n = numel(&out);
        let expanded: Vec<Vec<f64>> = ts
            .iter()
            .map(|t| {
                let e = tensor::fold(
                    &Op::Expand { shape: out.clone() },
                    &[t],
                    std::slice::from_ref(&out),
                );
                e.and_then(|mut v| v.pop())
                    .map(|t| t.f64s())
                    .unwrap_or_default()
            })
            .collect();
        if expanded.iter().any(|e| e.len() != n) {
            return Err(c.invalid("operands do not broadcast"));
        }
        let b = |x: bool| x as i64 as f64;
        let res: Vec<f64> = (0..n)
            .map(|k| {
                let a = expanded[0][k];
                let y = expanded.get(1).map(|e| e[k]).unwrap_or(0.0);
                match c.op() {
                    "Equal" => b(a == y),
                    "Less" => b(a < y),
                    "Greater" => b(a > y),
                    "LessOrEqual" => b(a <= y),
                    "GreaterOrEqual" => b(a >= y),
                    "And" => b(a != 0.0 && y != 0.0),
                    "Or" => b(a != 0.0 || y != 0.0),
                    "Xor" => b((a != 0.0) != (y != 0.0)),
                    "Not" => b(a == 0.0),
                    _ => {
                        if a != 0.0 {
                            y
                        } else {
                            expanded.get(2).map(|e| e[k]).unwrap_or(0.0)
                        }
                    }
                }
            })
            .collect();
        let float = c.op() == "Where"
            && (ts.get(1).is_some_and(CTensor::is_float)
                || ts.get(2).is_some_and(CTensor::is_float));
        let data = if float {
            Data::F(res.iter().map(|&v| v as f32).collect())
        } else {
            Data::I(res.iter().map(|&v| v as i64).collect())
        };
        self.konst_out(c, CTensor { shape: out, data })
    }

    fn resolve_reshape(
        &self,
        c: &Ctx,
        xs: &[usize],
        spec: &[i64],
        allow_zero: bool,
    ) -> Result<Vec<usize>> {
        let mut shape = Vec::with_capacity(spec.len());
        let mut infer = None;
        for (k, &d) in spec.iter().enumerate() {
            match d {
                -1 if infer.is_none() => {
                    infer = Some(k);
                    shape.push(1);
                }
                0 if !allow_zero => shape.push(*xs.get(k).ok_or_else(|| {
                    c.invalid(format!(
                        "shape {spec:?} copies dimension {k} the input lacks"
                    ))
                })?),
                d if d >= 0 => shape.push(d as usize),
                _ => return Err(c.invalid(format!("invalid target shape {spec:?}"))),
            }
        }
        if let Some(k) = infer {
            let known = checked_numel(&shape)
                .ok_or_else(|| c.invalid(format!("target shape {spec:?} too large")))?;
            let total = numel(xs);
            if total.checked_rem(known).is_none_or(|r| r != 0) {
                return Err(c.invalid(format!("cannot reshape {xs:?} to {spec:?}")));
            }
            shape[k] = total / known;
        }
        if checked_numel(&shape) != Some(numel(xs)) {
            return Err(c.invalid(format!("cannot reshape {xs:?} to {spec:?}")));
        }
        Ok(shape)
    }

    fn squeeze(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let xs = self.shape(&x);
        let axes = self.ints_from(c, "axes", 1)?;
        let shape = if c.op() == "Squeeze" {
            let axes = match axes {
                Some(a) => c.axes(&a, xs.len())?,
                None => (0..xs.len()).filter(|&k| xs[k] == 1).collect(),
            };
            if let Some(&a) = axes.iter().find(|&&a| xs[a] != 1) {
                return Err(c.invalid(format!("cannot squeeze axis {a} of size {}", xs[a])));
            }
            xs.iter()
                .enumerate()
                .filter(|(k, _)| !axes.contains(k))
                .map(|(_, &d)| d)
                .collect()
        } else {
            let axes = axes.ok_or_else(|| c.invalid("Unsqueeze without axes"))?;
            let r = xs.len() + axes.len();
            let axes = c.axes(&axes, r)?;
            let mut it = xs.iter();
            let mut s = Vec::with_capacity(r);
            for k in 0..r {
                if axes.contains(&k) {
                    s.push(1);
                } else {
                    s.push(*it.next().ok_or_else(|| c.invalid("repeated axes"))?);
                }
            }
            s
        };
        self.emit1(c, Op::Reshape { shape }, &[x])?;
        Ok(())
    }

    fn variadic(&mut self, c: &Ctx) -> Result<()> {
        let ins: Vec<Val> = c.ins.iter().flatten().cloned().collect();
        let op = c.op();
        if ins.is_empty() {
            return Err(c.invalid("no inputs"));
        }
        let bop = binary_of(op).unwrap_or(BinaryOp::Add);
        if ins.len() == 1 {
            return self.alias(c, ins[0].clone());
        }
        let last = ins.len() - 1;
        let mut acc = ins[0].clone();
        for (k, v) in ins.iter().enumerate().skip(1) {
            let ops = [acc, v.clone()];
            acc = if k == last && op != "Mean" {
                self.emit1(c, Op::Binary(bop), &ops)?
            } else {
                self.step(c, Op::Binary(bop), &ops)?
            };
        }
        if op == "Mean" {
            let s = self.konst(
                &c.name,
                CTensor::from_tensor(shadownet_ir::Tensor::scalar(1.0 / ins.len() as f32)),
            );
            self.emit1(c, Op::Binary(BinaryOp::Mul), &[acc, s])?;
        }
        Ok(())
    }

    fn softmax(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let xs = self.shape(&x);
        let log = c.op() == "LogSoftmax";
        let mk = |axis| {
            if log {
                Op::LogSoftmax { axis }
            } else {
                Op::Softmax { axis }
            }
        };
        if c.opset >= 13 {
            let axis = c.axis(c.i("axis", -1), xs.len())?;
            self.emit1(c, mk(axis), &[x])?;
            return Ok(());
        }
        // Before opset 13 the input is coerced to 2-D at `axis` and normalised per row.
        let axis = c.axis(c.i("axis", 1), xs.len())?;
        if axis + 1 == xs.len() {
            self.emit1(c, mk(axis), &[x])?;
            return Ok(());
        }
        let flat = vec![xs[..axis].iter().product(), xs[axis..].iter().product()];
        let y = self.reshape_step(c, x, flat)?;
        let y = self.step(c, mk(1), &[y])?;
        self.emit1(c, Op::Reshape { shape: xs }, &[y])?;
        Ok(())
    }

    fn split(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let xs = self.shape(&x);
        let axis = c.axis(c.i("axis", 0), xs.len())?;
        let d = xs[axis];
        let sizes = match self.ints_from(c, "split", 1)? {
            Some(s) => {
                let mut v = Vec::new();
                for a in s {
                    v.push(c.usize_of(a, "split size")?);
                }
                v
            }
            None => {
                let n = c.i("num_outputs", c.p.output.len() as i64).max(1) as usize;
                // Uneven splits (opset 18) make the last chunk the short one.
                let chunk = d.div_ceil(n);
                (0..n)
                    .map(|k| chunk.min(d.saturating_sub(k * chunk)))
                    .collect()
            }
        };
        if sizes.iter().try_fold(0usize, |a, &b| a.checked_add(b)) != Some(d) {
            return Err(c.invalid(format!("split sizes {sizes:?} do not add up to {d}")));
        }
        let outs: Vec<String> = (0..sizes.len())
            .map(|k| match c.p.output.get(k) {
                Some(s) if !s.is_empty() => s.clone(),
                _ => format!("{}:{k}", c.name),
            })
            .collect();
        self.emit(&c.name, Op::Split { axis, sizes }, &[x], &outs)?;
        Ok(())
    }

    fn slice(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let xs = self.shape(&x);
        let (starts, ends, axes, steps) = if c.opset < 10 {
            (c.ints("starts"), c.ints("ends"), c.ints("axes"), None)
        } else {
            let g = |i, w| self.const_input(c, i, w).map(|t| t.map(|t| t.ints()));
            (
                g(1, "starts")?,
                g(2, "ends")?,
                g(3, "axes")?,
                g(4, "steps")?,
            )
        };
        let starts = starts.ok_or_else(|| c.invalid("missing starts"))?;
        let ends = ends.ok_or_else(|| c.invalid("missing ends"))?;
        let n = starts.len();
        let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; n]);
        if ends.len() != n || axes.len() != n || steps.len() != n {
            return Err(c.invalid("starts, ends, axes and steps differ in length"));
        }
        let (mut o_axes, mut o_starts, mut o_steps, mut counts) = (vec![], vec![], vec![], vec![]);
        for k in 0..n {
            let a = c.axis(axes[k], xs.len())?;
            let d = xs[a] as i128;
            let step = steps[k] as i128;
            if step == 0 {
                return Err(c.invalid("slice step 0"));
            }
            if d == 0 {
                o_axes.push(a);
                o_starts.push(0);
                o_steps.push(steps[k]);
                counts.push(0);
                continue;
            }
            let fix = |v: i64| {
                let v = v as i128;
                if v < 0 {
                    v + d
                } else {
                    v
                }
            };
            let (s, e) = (fix(starts[k]), fix(ends[k]));
            let (s, e) = if step > 0 {
                (s.clamp(0, d), e.clamp(0, d))
            } else {
                (s.clamp(0, d - 1), e.clamp(-1, d - 1))
            };
            let count = if step > 0 {
                (e - s + step - 1).div_euclid(step).max(0)
            } else {
                (s - e + (-step) - 1).div_euclid(-step).max(0)
            };
            o_axes.push(a);
            o_starts.push(if count == 0 { 0 } else { s as usize });
            o_steps.push(steps[k]);
            counts.push(count as usize);
        }
        self.emit1(
            c,
            Op::Slice {
                axes: o_axes,
                starts: o_starts,
                steps: o_steps,
                counts,
            },
            &[x],
        )?;
        Ok(())
    }

    fn pad(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let xs = self.shape(&x);
        let r = xs.len();
        let (raw, value) = if c.opset < 11 {
            (
                c.ints("pads").or_else(|| c.ints("paddings")),
                c.f("value", 0.0),
            )
        } else {
            let p = self.const_input(c, 1, "pads")?.map(|t| t.ints());
            let v = self
                .const_input(c, 2, "constant_value")?
                .and_then(|t| t.floats().first().copied())
                .unwrap_or(0.0);
            (p, v)
        };
        let raw = raw.ok_or_else(|| c.invalid("missing pads"))?;
        let axes = match self.const_input(c, 3, "axes")? {
            Some(a) => c.axes(&a.ints(), r)?,
            None => (0..r).collect(),
        };
        if raw.len() != 2 * axes.len() {
            return Err(c.invalid(format!("{} pads for {} axes", raw.len(), axes.len())));
        }
        if raw.iter().any(|&p| p < 0) {
            return Err(c.unsup("negative pads (cropping)"));
        }
        if raw.iter().any(|&p| p > 1 << 20) {
            return Err(c.invalid(format!("pads {raw:?} too large")));
        }
        let mut pads = vec![(0usize, 0usize); r];
        for (k, &a) in axes.iter().enumerate() {
            pads[a] = (raw[k] as usize, raw[k + axes.len()] as usize);
        }
        let mode = match c.s("mode", "constant").as_str() {
            "constant" => PadMode::Constant,
            "reflect" => PadMode::Reflect,
            "edge" => PadMode::Edge,
            m => return Err(c.unsup(format!("mode '{m}'"))),
        };
        self.emit1(c, Op::Pad { pads, mode, value }, &[x])?;
        Ok(())
    }

    fn reduce(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let xs = self.shape(&x);
        let op = match c.op() {
            "ReduceMean" => ReduceOp::Mean,
            "ReduceSum" => ReduceOp::Sum,
            "ReduceMax" => ReduceOp::Max,
            "ReduceMin" => ReduceOp::Min,
            "ReduceProd" => ReduceOp::Prod,
            "ReduceSumSquare" => ReduceOp::SumSquare,
            _ => ReduceOp::L2,
        };
        let axes = self.ints_from(c, "axes", 1)?.unwrap_or_default();
        if axes.is_empty() && c.i("noop_with_empty_axes", 0) != 0 {
            return self.alias(c, x);
        }
        let axes = if axes.is_empty() {
            (0..xs.len()).collect()
        } else {
            c.axes(&axes, xs.len())?
        };
        let keepdims = c.i("keepdims", 1) != 0;
        self.emit1(c, Op::Reduce { op, axes, keepdims }, &[x])?;
        Ok(())
    }

    /// Resolves kernel/stride/dilation/pads (explicit or auto_pad) for `nsp` spatial axes
    /// (1 or 2), lifted to two axes with a leading unit axis for 1-D.
    pub(crate) fn window(
        &self,
        c: &Ctx,
        in_sp: &[usize],
        kernel: &[usize],
        pool: bool,
    ) -> Result<Window> {
        let nsp = in_sp.len();
        let get = |k: &str| -> Result<Vec<usize>> {
            match c.ints(k) {
                Some(v) if v.len() == nsp => v.iter().map(|&a| c.usize_of(a, k)).collect(),
                Some(v) => Err(c.invalid(format!(
                    "{k} has {} entries for {nsp} spatial axes",
                    v.len()
                ))),
                None => Ok(vec![1; nsp]),
            }
        };
        let (stride, dilation) = (get("strides")?, get("dilations")?);
        // Zero or absurd window sizes would only overflow the window arithmetic downstream.
        let sane = |v: &[usize]| v.iter().all(|&d| (1..=1 << 20).contains(&d));
        if !sane(&stride) || !sane(&dilation) || !sane(kernel) {
            return Err(c.invalid(format!(
                "kernel {kernel:?}, strides {stride:?} and dilations {dilation:?} must be between 1 and 2^20"
            )));
        }
        let mut pads = match c.ints("pads") {
            Some(p) if p.len() == 2 * nsp => {
                if p.iter().any(|&v| v < 0) {
                    return Err(c.unsup("negative pads"));
                }
                p.iter().map(|&v| v as usize).collect::<Vec<_>>()
            }
            Some(p) => {
                return Err(c.invalid(format!(
                    "pads has {} entries for {nsp} spatial axes",
                    p.len()
                )))
            }
            None => vec![0; 2 * nsp],
        };
        if pads.iter().any(|&p| p > 1 << 20) {
            return Err(c.invalid(format!("pads {pads:?} too large")));
        }
        match c.s("auto_pad", "NOTSET").as_str() {
            "NOTSET" => {}
            "VALID" => pads = vec![0; 2 * nsp],
            m @ ("SAME_UPPER" | "SAME_LOWER") => {
                for a in 0..nsp {
                    if stride[a] == 0 {
                        return Err(c.invalid("stride 0"));
                    }
                    let out = in_sp[a].div_ceil(stride[a]);
                    // ONNX Runtime sizes SAME padding of pools without the dilation (unlike
                    // Conv); matching it keeps the output shapes identical.
                    let dil = if pool { 1 } else { dilation[a] };
                    let eff = dil * (kernel[a].max(1) - 1) + 1;
                    let total = ((out.max(1) - 1) * stride[a] + eff).saturating_sub(in_sp[a]);
                    let small = total / 2;
                    let (b, e) = if m == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    pads[a] = b;
                    pads[a + nsp] = e;
                }
            }
            m => return Err(c.unsup(format!("auto_pad '{m}'"))),
        }
        Ok(if nsp == 1 {
            Window {
                kernel: [1, kernel[0]],
                stride: [1, stride[0]],
                dilation: [1, dilation[0]],
                pads: [0, pads[0], 0, pads[1]],
            }
        } else {
            Window {
                kernel: [kernel[0], kernel[1]],
                stride: [stride[0], stride[1]],
                dilation: [dilation[0], dilation[1]],
                pads: [pads[0], pads[1], pads[2], pads[3]],
            }
        })
    }

    /// Lifts a 3-D [N, C, L] tensor to [N, C, 1, L] so 1-D windows run as 2-D ones.
    fn lift(&mut self, c: &Ctx, x: Val) -> Result<Val> {
        let s = self.shape(&x);
        if s.len() != 3 {
            return Ok(x);
        }
        self.reshape_step(c, x, vec![s[0], s[1], 1, s[2]])
    }

    /// Emits `op` into the node's output, undoing a 1-D lift afterwards when needed.
    fn emit_spatial(&mut self, c: &Ctx, op: Op, ins: &[Val], one_d: bool) -> Result<()> {
        if !one_d {
            self.emit1(c, op, ins)?;
            return Ok(());
        }
        let y = self.step(c, op, ins)?;
        let s = self.shape(&y);
        self.emit1(
            c,
            Op::Reshape {
                shape: vec![s[0], s[1], s[3]],
            },
            &[y],
        )?;
        Ok(())
    }

    fn spatial_rank(&self, c: &Ctx, xs: &[usize]) -> Result<bool> {
        match xs.len() {
            3 => Ok(true),
            4 => Ok(false),
            r if r > 4 => Err(c.unsup(format!(
                "{}-D spatial input; only 1-D and 2-D are supported",
                r - 2
            ))),
            _ => Err(c.invalid(format!("input of shape {xs:?} has no spatial axes"))),
        }
    }

    fn conv(&mut self, c: &Ctx) -> Result<()> {
        let (x, w) = (c.input(0)?, c.input(1)?);
        let (xs, ws) = (self.shape(&x), self.shape(&w));
        let one_d = self.spatial_rank(c, &xs)?;
        if ws.len() != xs.len() {
            return Err(c.invalid(format!("weight of shape {ws:?} for input {xs:?}")));
        }
        let win = self.window(c, &xs[2..], &ws[2..], false)?;
        let groups = c.usize_of(c.i("group", 1), "group")?;
        let (x, w) = (self.lift(c, x)?, self.lift(c, w)?);
        let mut ins = vec![x, w];
        if let Some(b) = c.opt(2) {
            ins.push(b.clone());
        }
        let op = Op::Conv(Conv {
            kernel: win.kernel,
            stride: win.stride,
            dilation: win.dilation,
            pads: win.pads,
            groups,
        });
        self.emit_spatial(c, op, &ins, one_d)
    }

    fn conv_transpose(&mut self, c: &Ctx) -> Result<()> {
        let (x, w) = (c.input(0)?, c.input(1)?);
        let (xs, ws) = (self.shape(&x), self.shape(&w));
        let one_d = self.spatial_rank(c, &xs)?;
        if ws.len() != xs.len() {
            return Err(c.invalid(format!("weight of shape {ws:?} for input {xs:?}")));
        }
        let nsp = xs.len() - 2;
        let mut win = self.window(c, &xs[2..], &ws[2..], false)?;
        let mut out_pad = [0usize; 2];
        if let Some(op) = c.ints("output_padding") {
            for (k, &v) in op.iter().enumerate().take(nsp) {
                out_pad[k + 2 - nsp] = c.usize_of(v, "output_padding")?.min(1 << 20);
            }
        }
        let auto = c.s("auto_pad", "NOTSET");
        let out_shape = c
            .ints("output_shape")
            .map(|v| v[v.len().saturating_sub(nsp)..].to_vec());
        // The window() SAME padding is the forward-conv one; transposed conv derives its
        // crop from the requested output size instead.
        let target: Option<Vec<i64>> = match (&out_shape, auto.as_str()) {
            (Some(s), _) => Some(s.clone()),
            (None, "SAME_UPPER" | "SAME_LOWER") => Some(
                (0..nsp)
                    .map(|a| (xs[2 + a] * win.stride[a + 2 - nsp]) as i64)
                    .collect(),
            ),
            _ => None,
        };
        if let Some(t) = target {
            for a in 0..nsp {
                let k = a + 2 - nsp;
                let full = (win.stride[k] * (xs[2 + a].max(1) - 1)
                    + out_pad[k]
                    + (win.kernel[k].max(1) - 1) * win.dilation[k]
                    + 1) as i64;
                let total = full - t.get(a).copied().unwrap_or(full);
                if total < 0 {
                    out_pad[k] += (-total) as usize;
                    win.pads[k] = 0;
                    win.pads[k + 2] = 0;
                    continue;
                }
                let total = total as usize;
                let (b, e) = if auto == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
                win.pads[k] = b;
                win.pads[k + 2] = e;
            }
        }
        let groups = c.usize_of(c.i("group", 1), "group")?;
        let (x, w) = (self.lift(c, x)?, self.lift(c, w)?);
        let mut ins = vec![x, w];
        if let Some(b) = c.opt(2) {
            ins.push(b.clone());
        }
        let op = Op::ConvTranspose(ConvTranspose {
            kernel: win.kernel,
            stride: win.stride,
            dilation: win.dilation,
            pads: win.pads,
            output_padding: out_pad,
            groups,
        });
        self.emit_spatial(c, op, &ins, one_d)
    }

    fn pool(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let xs = self.shape(&x);
        if c.p.output.get(1).is_some_and(|s| !s.is_empty()) {
            return Err(c.unsup("the Indices output"));
        }
        let one_d = self.spatial_rank(c, &xs)?;
        let kernel: Vec<usize> = match c.ints("kernel_shape") {
            Some(k) => k
                .iter()
                .map(|&v| c.usize_of(v, "kernel size"))
                .collect::<Result<_>>()?,
            None => return Err(c.invalid("missing kernel_shape")),
        };
        let win = self.window(c, &xs[2..], &kernel, true)?;
        let mut extra_end = [0usize; 2];
        let in_hw: [usize; 2] = if one_d { [1, xs[2]] } else { [xs[2], xs[3]] };
        if c.i("ceil_mode", 0) != 0 {
            for a in 0..2 {
                let eff = win.dilation[a] * (win.kernel[a].max(1) - 1) + 1;
                let padded = in_hw[a] + win.pads[a] + win.pads[a + 2];
                if padded < eff || win.stride[a] == 0 {
                    continue;
                }
                let mut out = (padded - eff).div_ceil(win.stride[a]) + 1;
                // The last window must start inside the input or its leading padding.
                if (out - 1) * win.stride[a] >= in_hw[a] + win.pads[a] {
                    out -= 1;
                }
                extra_end[a] = ((out - 1) * win.stride[a] + eff).saturating_sub(padded);
            }
        }
        let pool = Pool {
            kernel: win.kernel,
            stride: win.stride,
            dilation: win.dilation,
            pads: win.pads,
            extra_end,
            count_include_pad: c.i("count_include_pad", 0) != 0,
        };
        let op = if c.op() == "MaxPool" {
            Op::MaxPool(pool)
        } else {
            Op::AvgPool(pool)
        };
        let x = self.lift(c, x)?;
        self.emit_spatial(c, op, &[x], one_d)
    }

    fn gemm(&mut self, c: &Ctx) -> Result<()> {
        let (a, b) = (c.input(0)?, c.input(1)?);
        let alpha = c.f("alpha", 1.0);
        let beta = c.f("beta", 1.0);
        let (ta, tb) = (c.i("transA", 0) != 0, c.i("transB", 0) != 0);
        if self.shape(&a).len() != 2 || self.shape(&b).len() != 2 {
            return Err(c.invalid("Gemm operands must be 2-D"));
        }
        let t2 = Op::Transpose { perm: vec![1, 0] };
        let a = if ta {
            self.step(c, t2.clone(), &[a])?
        } else {
            a
        };
        let (b, scaled) = match &b {
            // Constant weights are transposed and scaled once here, so the graph keeps a
            // plain dense layer with a [K, N] weight.
            Val::Const { t, .. } => {
                let bt = if tb {
                    let s = vec![t.shape[1], t.shape[0]];
                    tensor::fold(&t2, &[t], std::slice::from_ref(&s))
                        .and_then(|mut v| v.pop())
                        .ok_or_else(|| c.invalid("cannot transpose B"))?
                } else {
                    (**t).clone()
                };
                let mut w = CTensor::from_tensor(bt.to_tensor());
                if alpha != 1.0 {
                    if let Data::F(v) = &mut w.data {
                        v.iter_mut().for_each(|x| *x *= alpha);
                    }
                }
                (self.konst(&format!("{}/weight", c.name), w), true)
            }
            _ => (if tb { self.step(c, t2, &[b])? } else { b }, alpha == 1.0),
        };
        let bias = c.opt(2).cloned();
        let last_mm = bias.is_none() && scaled;
        let mut y = if last_mm {
            self.emit1(c, Op::MatMul, &[a, b])?
        } else {
            self.step(c, Op::MatMul, &[a, b])?
        };
        if !scaled {
            let s = self.konst(
                &c.name,
                CTensor::from_tensor(shadownet_ir::Tensor::scalar(alpha)),
            );
            y = if bias.is_none() {
                self.emit1(c, Op::Binary(BinaryOp::Mul), &[y, s])?
            } else {
                self.step(c, Op::Binary(BinaryOp::Mul), &[y, s])?
            };
        }
        if let Some(bv) = bias {
            let bv = match (&bv, beta) {
                (_, 1.0) => bv,
                (Val::Const { t, .. }, _) => {
                    let mut t = CTensor::from_tensor(t.to_tensor());
                    if let Data::F(v) = &mut t.data {
                        v.iter_mut().for_each(|x| *x *= beta);
                    }
                    self.konst(&format!("{}/bias", c.name), t)
                }
                _ => {
                    let s = self.konst(
                        &c.name,
                        CTensor::from_tensor(shadownet_ir::Tensor::scalar(beta)),
                    );
                    self.step(c, Op::Binary(BinaryOp::Mul), &[bv, s])?
                }
            };
            self.emit1(c, Op::Binary(BinaryOp::Add), &[y, bv])?;
        }
        Ok(())
    }

    fn resize(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let xs = self.shape(&x);
        let r = xs.len();
        let upsample = c.op() == "Upsample";
        let mode = c.s("mode", "nearest");
        let (scales, sizes) = if upsample && c.opset < 9 {
            (c.attr("scales").map(|a| a.floats.clone()), None)
        } else if upsample || c.opset < 11 {
            (self.const_input(c, 1, "scales")?.map(|t| t.floats()), None)
        } else {
            let s = self
                .const_input(c, 2, "scales")?
                .map(|t| t.floats())
                .filter(|v| !v.is_empty());
            let z = self
                .const_input(c, 3, "sizes")?
                .map(|t| t.ints())
                .filter(|v| !v.is_empty());
            (s, z)
        };
        if c.i("antialias", 0) != 0 {
            return Err(c.unsup("antialias"));
        }
        if c.s("keep_aspect_ratio_policy", "stretch") != "stretch" {
            return Err(c.unsup("keep_aspect_ratio_policy other than stretch"));
        }
        let axes = match c.ints("axes") {
            Some(a) => c.axes(&a, r)?,
            None => (0..r).collect(),
        };
        let mut out_shape = xs.clone();
        let mut sc = vec![1.0f32; r];
        match (scales, sizes) {
            (_, Some(z)) => {
                if z.len() != axes.len() {
                    return Err(c.invalid("sizes length differs from the rank"));
                }
                for (k, &a) in axes.iter().enumerate() {
                    out_shape[a] = c.usize_of(z[k], "size")?;
                    sc[a] = out_shape[a] as f32 / xs[a].max(1) as f32;
                }
            }
            (Some(s), None) => {
                if s.len() != axes.len() {
                    return Err(c.invalid("scales length differs from the rank"));
                }
                for (k, &a) in axes.iter().enumerate() {
                    if s[k].is_nan() || s[k] <= 0.0 {
                        return Err(c.invalid(format!("scale {} must be positive", s[k])));
                    }
                    sc[a] = s[k];
                    out_shape[a] = (xs[a] as f64 * s[k] as f64).floor() as usize;
                }
            }
            (None, None) => return Err(c.invalid("neither scales nor sizes given")),
        }
        let legacy = upsample || c.opset < 11;
        let coord = if legacy {
            CoordMode::Asymmetric
        } else {
            match c.s("coordinate_transformation_mode", "half_pixel").as_str() {
                "half_pixel" => CoordMode::HalfPixel,
                "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
                "align_corners" => CoordMode::AlignCorners,
                "asymmetric" => CoordMode::Asymmetric,
                "tf_half_pixel_for_nn" => CoordMode::TfHalfPixelForNn,
                m => return Err(c.unsup(format!("coordinate_transformation_mode '{m}'"))),
            }
        };
        let rmode = match mode.as_str() {
            "nearest" => ResizeMode::Nearest(if legacy {
                // Upsample and opset-10 Resize truncate the source coordinate.
                NearestRound::Floor
            } else {
                match c.s("nearest_mode", "round_prefer_floor").as_str() {
                    "round_prefer_floor" => NearestRound::RoundPreferFloor,
                    "round_prefer_ceil" => NearestRound::RoundPreferCeil,
                    "floor" => NearestRound::Floor,
                    "ceil" => NearestRound::Ceil,
                    m => return Err(c.unsup(format!("nearest_mode '{m}'"))),
                }
            }),
            "linear" | "bilinear" => ResizeMode::Linear,
            m => return Err(c.unsup(format!("mode '{m}'"))),
        };
        if checked_numel(&out_shape).is_none() {
            return Err(c.invalid(format!("output shape {out_shape:?} too large")));
        }
        if out_shape == xs && sc.iter().all(|&s| s == 1.0) {
            return self.alias(c, x);
        }
        let op = Op::Resize(Resize {
            mode: rmode,
            coord,
            out_shape,
            scales: sc,
        });
        self.emit1(c, op, &[x])?;
        Ok(())
    }
}

/// Element count, or None past 2^40 elements: far beyond any real activation, and small
/// enough that the shape arithmetic downstream cannot overflow.
fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= 1 << 40)
}

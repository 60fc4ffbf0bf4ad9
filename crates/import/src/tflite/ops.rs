//! Translation of TFLite operators into IR nodes. BuiltinOperator codes, option field
//! ids and enum values follow the official schema.
use shadownet_ir::{
    Activation, BinaryOp, Conv, ConvTranspose, CoordMode, NearestRound, Op, PadMode, Pool,
    ReduceOp, Resize, ResizeMode, Tensor, ValueId,
};

use super::reader::{ttype, OperatorDef, Table};
use super::{permute, same_pads, Entry, Importer, Konst, AXIS_TO_NCHW};
use crate::Result;

pub(crate) mod code {
    pub const ADD: i32 = 0;
    pub const AVERAGE_POOL_2D: i32 = 1;
    pub const CONCATENATION: i32 = 2;
    pub const CONV_2D: i32 = 3;
    pub const DEPTHWISE_CONV_2D: i32 = 4;
    pub const DEPTH_TO_SPACE: i32 = 5;
    pub const DEQUANTIZE: i32 = 6;
    pub const FLOOR: i32 = 8;
    pub const FULLY_CONNECTED: i32 = 9;
    pub const LOGISTIC: i32 = 14;
    pub const MAX_POOL_2D: i32 = 17;
    pub const MUL: i32 = 18;
    pub const RELU: i32 = 19;
    pub const RELU_N1_TO_1: i32 = 20;
    pub const RELU6: i32 = 21;
    pub const RESHAPE: i32 = 22;
    pub const RESIZE_BILINEAR: i32 = 23;
    pub const SOFTMAX: i32 = 25;
    pub const SPACE_TO_DEPTH: i32 = 26;
    pub const TANH: i32 = 28;
    pub const CUSTOM: i32 = 32;
    pub const PAD: i32 = 34;
    pub const GATHER: i32 = 36;
    pub const TRANSPOSE: i32 = 39;
    pub const MEAN: i32 = 40;
    pub const SUB: i32 = 41;
    pub const DIV: i32 = 42;
    pub const SQUEEZE: i32 = 43;
    pub const STRIDED_SLICE: i32 = 45;
    pub const EXP: i32 = 47;
    pub const SPLIT: i32 = 49;
    pub const LOG_SOFTMAX: i32 = 50;
    pub const CAST: i32 = 53;
    pub const PRELU: i32 = 54;
    pub const MAXIMUM: i32 = 55;
    pub const MINIMUM: i32 = 57;
    pub const NEG: i32 = 59;
    pub const PADV2: i32 = 60;
    pub const SLICE: i32 = 65;
    pub const SIN: i32 = 66;
    pub const TRANSPOSE_CONV: i32 = 67;
    pub const EXPAND_DIMS: i32 = 70;
    pub const LOG: i32 = 73;
    pub const SUM: i32 = 74;
    pub const SQRT: i32 = 75;
    pub const RSQRT: i32 = 76;
    pub const POW: i32 = 78;
    pub const REDUCE_MAX: i32 = 82;
    pub const REDUCE_MIN: i32 = 89;
    pub const SQUARE: i32 = 92;
    pub const RESIZE_NEAREST_NEIGHBOR: i32 = 97;
    pub const LEAKY_RELU: i32 = 98;
    pub const SQUARED_DIFFERENCE: i32 = 99;
    pub const MIRROR_PAD: i32 = 100;
    pub const ABS: i32 = 101;
    pub const SPLIT_V: i32 = 102;
    pub const CEIL: i32 = 104;
    pub const COS: i32 = 108;
    pub const ELU: i32 = 111;
    pub const HARD_SWISH: i32 = 117;
    pub const QUANTIZE: i32 = 114;
    pub const DENSIFY: i32 = 124;
    pub const GELU: i32 = 150;
}

/// Every builtin the importer maps. Operators whose builtin is not listed are refused
/// before translation, so this list is the importer's coverage by construction
/// (docs/ops.md is generated from it).
pub(crate) const BUILTINS: &[i32] = &[
    code::ADD,
    code::AVERAGE_POOL_2D,
    code::CONCATENATION,
    code::CONV_2D,
    code::DEPTHWISE_CONV_2D,
    code::DEPTH_TO_SPACE,
    code::DEQUANTIZE,
    code::FLOOR,
    code::FULLY_CONNECTED,
    code::LOGISTIC,
    code::MAX_POOL_2D,
    code::MUL,
    code::RELU,
    code::RELU_N1_TO_1,
    code::RELU6,
    code::RESHAPE,
    code::RESIZE_BILINEAR,
    code::SOFTMAX,
    code::SPACE_TO_DEPTH,
    code::TANH,
    code::PAD,
    code::GATHER,
    code::TRANSPOSE,
    code::MEAN,
    code::SUB,
    code::DIV,
    code::SQUEEZE,
    code::STRIDED_SLICE,
    code::EXP,
    code::SPLIT,
    code::LOG_SOFTMAX,
    code::CAST,
    code::PRELU,
    code::MAXIMUM,
    code::MINIMUM,
    code::NEG,
    code::PADV2,
    code::SLICE,
    code::SIN,
    code::TRANSPOSE_CONV,
    code::EXPAND_DIMS,
    code::LOG,
    code::SUM,
    code::SQRT,
    code::RSQRT,
    code::POW,
    code::REDUCE_MAX,
    code::REDUCE_MIN,
    code::SQUARE,
    code::RESIZE_NEAREST_NEIGHBOR,
    code::LEAKY_RELU,
    code::SQUARED_DIFFERENCE,
    code::MIRROR_PAD,
    code::ABS,
    code::SPLIT_V,
    code::CEIL,
    code::COS,
    code::ELU,
    code::HARD_SWISH,
    code::QUANTIZE,
    code::DENSIFY,
    code::GELU,
];

/// Custom operators the importer maps (MediaPipe's).
pub(crate) const CUSTOM_OPS: &[&str] = &["Convolution2DTransposeBias"];

/// The error of an operator listed as mapped whose translation is missing: a bug the
/// coverage test catches.
pub(crate) const NOT_MAPPED: &str = "listed as supported but has no mapping";

pub(crate) fn is_mapped(builtin: i32, custom: Option<&str>) -> bool {
    if builtin == code::CUSTOM {
        return custom.is_some_and(|c| CUSTOM_OPS.contains(&c));
    }
    BUILTINS.contains(&builtin)
}

/// Padding enum of the schema.
const PADDING_VALID: i8 = 1;

/// TRANSPOSE_CONV (inputs: output_shape, weights, input, bias) and MediaPipe's
/// Convolution2DTransposeBias (input, weights, bias) share the [O, kh, kw, I] filter.
struct Deconv {
    x: i32,
    w: i32,
    bias: Option<i32>,
    /// NHWC output shape when the model gives it.
    out_shape: Option<Vec<i64>>,
    valid: bool,
    stride: [usize; 2],
    act: Option<Activation>,
}

/// Reads option fields, falling back to the schema defaults when the table is absent.
pub(crate) struct Opts<'a>(pub Option<Table<'a>>);

impl Opts<'_> {
    pub(crate) fn i8(&self, id: usize, d: i8) -> Result<i8> {
        self.0.map_or(Ok(d), |t| t.i8(id, d))
    }
    pub(crate) fn i32(&self, id: usize, d: i32) -> Result<i32> {
        self.0.map_or(Ok(d), |t| t.i32(id, d))
    }
    pub(crate) fn f32(&self, id: usize, d: f32) -> Result<f32> {
        self.0.map_or(Ok(d), |t| t.f32(id, d))
    }
    pub(crate) fn bool(&self, id: usize) -> Result<bool> {
        self.0.map_or(Ok(false), |t| t.bool(id))
    }
    pub(crate) fn i32s(&self, id: usize) -> Result<Option<Vec<i32>>> {
        self.0.map_or(Ok(None), |t| t.i32s(id))
    }
}

impl Importer<'_, '_> {
    /// ActivationFunctionType: NONE 0, RELU 1, RELU_N1_TO_1 2, RELU6 3, TANH 4, SIGN_BIT 5.
    pub(crate) fn fused(&self, a: i8) -> Result<Option<Activation>> {
        Ok(match a {
            0 => None,
            1 => Some(Activation::Relu),
            2 => Some(Activation::Clip {
                min: -1.0,
                max: 1.0,
            }),
            3 => Some(Activation::Clip { min: 0.0, max: 6.0 }),
            4 => Some(Activation::Tanh),
            a => return Err(self.unsupported(format!("fused activation {a}"))),
        })
    }

    pub(crate) fn input(&self, op: &OperatorDef, k: usize) -> Result<i32> {
        match op.inputs.get(k) {
            Some(&t) if t >= 0 => Ok(t),
            _ => Err(self.invalid(format!("missing input {k}"))),
        }
    }

    pub(crate) fn opt_input(&self, op: &OperatorDef, k: usize) -> Option<i32> {
        op.inputs.get(k).copied().filter(|&t| t >= 0)
    }

    pub(crate) fn output(&self, op: &OperatorDef) -> Result<i32> {
        op.outputs
            .first()
            .copied()
            .ok_or_else(|| self.invalid("no output"))
    }

    pub(crate) fn axis(&self, a: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        let v = if a < 0 { a + r } else { a };
        if v < 0 || v >= r.max(1) {
            return Err(self.invalid(format!("axis {a} out of range for rank {rank}")));
        }
        Ok(v as usize)
    }

    fn add_tensor(&mut self, name: String, shape: Vec<usize>, data: Vec<f32>) -> Result<ValueId> {
        Ok(self.g.add_const(name, Tensor::new(shape, data)?))
    }

    fn unary(&mut self, act: Activation, op: &OperatorDef) -> Result<()> {
        let (x, nchw) = self.any(self.input(op, 0)?)?;
        self.emit(Op::Act(act), vec![x], self.output(op)?, nchw, None)?;
        Ok(())
    }

    /// Elementwise ops broadcast NHWC-style; with a 4-D result every operand is brought
    /// to NCHW so the result stays NCHW.
    pub(crate) fn binary_ids(&mut self, a: i32, b: i32) -> Result<(ValueId, ValueId, bool)> {
        let (ra, rb) = (self.rank(a)?, self.rank(b)?);
        if ra.max(rb) == 4 {
            Ok((self.nchw(a)?, self.nchw(b)?, true))
        } else {
            Ok((self.plain(a)?, self.plain(b)?, false))
        }
    }

    fn binary(&mut self, bop: BinaryOp, op: &OperatorDef, act: Option<Activation>) -> Result<()> {
        let (a, b) = (self.input(op, 0)?, self.input(op, 1)?);
        let (ia, ib, nchw) = self.binary_ids(a, b)?;
        self.emit(Op::Binary(bop), vec![ia, ib], self.output(op)?, nchw, act)?;
        Ok(())
    }

    /// Stride and padding of the windowed ops, whose options all start with padding 0,
    /// stride_w 1, stride_h 2.
    pub(crate) fn window(
        &self,
        o: &Opts,
        xs: &[usize],
        k: [usize; 2],
        d: [usize; 2],
    ) -> Result<([usize; 2], [usize; 4])> {
        let stride = [o.i32(2, 1)?.max(1) as usize, o.i32(1, 1)?.max(1) as usize];
        let pads = if o.i8(0, 0)? == PADDING_VALID {
            [0; 4]
        } else {
            let (t, b) = same_pads(xs[2], k[0], stride[0], d[0]);
            let (l, r) = same_pads(xs[3], k[1], stride[1], d[1]);
            [t, l, b, r]
        };
        Ok((stride, pads))
    }

    /// A Conv2D or DepthwiseConv2D's attributes from its options and filter `w` (OHWI, or
    /// [1, kh, kw, C*m] for depthwise) over an NCHW input of shape `xs`: the conv, the
    /// filter in OIHW order, and the index of the fused-activation option. The float and
    /// the integer conv share it.
    pub(crate) fn conv_layout(
        &self,
        o: &Opts,
        xs: &[usize],
        w: &Konst,
        depthwise: bool,
    ) -> Result<(Conv, Vec<usize>, Vec<f32>, usize)> {
        if w.shape.len() != 4 {
            return Err(self.invalid(format!("filter of shape {:?}", w.shape)));
        }
        let (kh, kw) = (w.shape[1], w.shape[2]);
        // Conv2DOptions: padding 0, stride_w 1, stride_h 2, fused_activation 3, dilation_w 4,
        // dilation_h 5. DepthwiseConv2DOptions: padding 0, stride_w 1, stride_h 2,
        // depth_multiplier 3, fused_activation 4, dilation_w 5, dilation_h 6.
        let (act_id, dw_id, dh_id) = if depthwise { (4, 5, 6) } else { (3, 4, 5) };
        let dilation = [
            o.i32(dh_id, 1)?.max(1) as usize,
            o.i32(dw_id, 1)?.max(1) as usize,
        ];
        let (stride, pads) = self.window(o, xs, [kh, kw], dilation)?;
        let c = xs[1];
        let (wshape, wdata, groups) = if depthwise {
            // [1, kh, kw, C*m] -> [C*m, 1, kh, kw]
            let (s, d) = permute(&w.shape, &w.data, &[3, 0, 1, 2]);
            if c == 0 || s[0] % c != 0 {
                return Err(
                    self.invalid(format!("depthwise filter {:?} for {c} channels", w.shape))
                );
            }
            (s, d, c)
        } else {
            let i = w.shape[3];
            if i == 0 || !c.is_multiple_of(i) {
                return Err(self.invalid(format!("filter {:?} for {c} input channels", w.shape)));
            }
            let (s, d) = permute(&w.shape, &w.data, &[0, 3, 1, 2]);
            (s, d, c / i)
        };
        let conv = Conv {
            kernel: [kh, kw],
            stride,
            dilation,
            pads,
            groups,
        };
        Ok((conv, wshape, wdata, act_id))
    }

    fn conv(&mut self, op: &OperatorDef, depthwise: bool) -> Result<()> {
        let o = Opts(op.options);
        let x = self.nchw(self.input(op, 0)?)?;
        let xs = self.g.shape(x).to_vec();
        let wt = self.input(op, 1)?;
        let w = self.konst(wt)?;
        let (conv, wshape, wdata, act_id) = self.conv_layout(&o, &xs, &w, depthwise)?;
        let name = format!("{}/oihw", self.tensor(wt)?.name);
        let mut inputs = vec![x, self.add_tensor(name, wshape, wdata)?];
        if let Some(b) = self.opt_input(op, 2) {
            inputs.push(self.plain(b)?);
        }
        let act = self.fused(o.i8(act_id, 0)?)?;
        self.emit(Op::Conv(conv), inputs, self.output(op)?, true, act)?;
        Ok(())
    }

    fn transpose_conv(&mut self, op: &OperatorDef, d: Deconv) -> Result<()> {
        let Deconv {
            x: x_t,
            w: w_t,
            bias,
            out_shape,
            valid,
            stride,
            act,
        } = d;
        let x = self.nchw(x_t)?;
        let xs = self.g.shape(x).to_vec();
        let w = self.konst(w_t)?;
        if w.shape.len() != 4 || w.shape[3] != xs[1] {
            return Err(self.invalid(format!("filter {:?} for input {xs:?}", w.shape)));
        }
        let k = [w.shape[1], w.shape[2]];
        let mut pads = [0usize; 4];
        let mut output_padding = [0usize; 2];
        for a in 0..2 {
            let full = (xs[2 + a].max(1) - 1) * stride[a] + k[a];
            let out = match &out_shape {
                Some(s) if s.len() == 4 => s[1 + a].max(0) as usize,
                Some(s) => return Err(self.invalid(format!("output shape {s:?}"))),
                None if valid => full,
                None => xs[2 + a] * stride[a],
            };
            if out > full {
                output_padding[a] = out - full;
            } else {
                let total = full - out;
                // SAME puts the odd pixel at the end like the forward conv; VALID crops the end only.
                let before = if valid { 0 } else { total / 2 };
                pads[a] = before;
                pads[a + 2] = total - before;
            }
        }
        let (ws, wd) = permute(&w.shape, &w.data, &[3, 0, 1, 2]);
        let name = format!("{}/iohw", self.tensor(w_t)?.name);
        let mut inputs = vec![x, self.add_tensor(name, ws, wd)?];
        if let Some(b) = bias {
            inputs.push(self.plain(b)?);
        }
        let ct = ConvTranspose {
            kernel: k,
            stride,
            dilation: [1, 1],
            pads,
            output_padding,
            groups: 1,
        };
        self.emit(Op::ConvTranspose(ct), inputs, self.output(op)?, true, act)?;
        Ok(())
    }

    pub(crate) fn pool(&mut self, op: &OperatorDef, max: bool) -> Result<()> {
        let o = Opts(op.options);
        let x = self.nchw(self.input(op, 0)?)?;
        let xs = self.g.shape(x).to_vec();
        // Pool2DOptions: padding 0, stride_w 1, stride_h 2, filter_width 3, filter_height 4,
        // fused_activation 5.
        let kernel = [o.i32(4, 1)?.max(1) as usize, o.i32(3, 1)?.max(1) as usize];
        let (stride, pads) = self.window(&o, &xs, kernel, [1, 1])?;
        let p = Pool {
            kernel,
            stride,
            dilation: [1, 1],
            pads,
            extra_end: [0, 0],
            // TF averages over the valid part of the window only.
            count_include_pad: false,
        };
        let act = self.fused(o.i8(5, 0)?)?;
        let op_ir = if max { Op::MaxPool(p) } else { Op::AvgPool(p) };
        self.emit(op_ir, vec![x], self.output(op)?, true, act)?;
        Ok(())
    }

    fn fully_connected(&mut self, op: &OperatorDef) -> Result<()> {
        let o = Opts(op.options);
        // FullyConnectedOptions: fused_activation 0, weights_format 1, keep_num_dims 2.
        if o.i8(1, 0)? != 0 {
            return Err(self.unsupported("shuffled weights format"));
        }
        let xt = self.input(op, 0)?;
        let w = self.konst(self.input(op, 1)?)?;
        if w.shape.len() != 2 {
            return Err(self.invalid(format!("weights of shape {:?}", w.shape)));
        }
        let k = w.shape[1];
        let mut x = self.plain(xt)?;
        let xs = self.g.shape(x).to_vec();
        let total: usize = xs.iter().product();
        let keep = o.bool(2)?;
        if k == 0 || !total.is_multiple_of(k) {
            return Err(self.invalid(format!("input {xs:?} for weights {:?}", w.shape)));
        }
        if !keep && xs != [total / k, k] {
            let name = format!("{}/flat", self.tensor(xt)?.name);
            x = self.node_out(
                &name,
                Op::Reshape {
                    shape: vec![total / k, k],
                },
                vec![x],
            )?;
        }
        let (ws, wd) = permute(&w.shape, &w.data, &[1, 0]);
        let wname = format!("{}/kn", self.tensor(self.input(op, 1)?)?.name);
        let wid = self.add_tensor(wname, ws, wd)?;
        let act = self.fused(o.i8(0, 0)?)?;
        let out = self.output(op)?;
        match self.opt_input(op, 2) {
            Some(b) => {
                let name = self.out_name(out, false)?;
                let mm = self.node_out(&format!("{name}/matmul"), Op::MatMul, vec![x, wid])?;
                let bid = self.plain(b)?;
                self.emit(Op::Binary(BinaryOp::Add), vec![mm, bid], out, false, act)?;
            }
            None => {
                self.emit(Op::MatMul, vec![x, wid], out, false, act)?;
            }
        }
        Ok(())
    }

    pub(crate) fn reshape_to(&mut self, op: &OperatorDef, shape: Vec<usize>) -> Result<()> {
        let x = self.plain(self.input(op, 0)?)?;
        self.emit(
            Op::Reshape { shape },
            vec![x],
            self.output(op)?,
            false,
            None,
        )?;
        Ok(())
    }

    pub(crate) fn reshape(&mut self, op: &OperatorDef) -> Result<()> {
        let xt = self.input(op, 0)?;
        let total: usize = self.shape(xt)?.iter().product();
        let spec: Vec<i64> = match self.opt_input(op, 1) {
            Some(s) if self.is_const(s)? => self.ints(s)?,
            Some(_) => {
                // A computed shape only survives when the file already knows the result.
                let t = self.tensor(self.output(op)?)?;
                if t.signature
                    .as_ref()
                    .is_some_and(|s| s.iter().any(|&d| d < 0))
                {
                    return Err(self.unsupported("shape computed at run time"));
                }
                t.shape.iter().map(|&d| d as i64).collect()
            }
            None => Opts(op.options)
                .i32s(0)?
                .unwrap_or_default()
                .iter()
                .map(|&d| d as i64)
                .collect(),
        };
        let known = spec
            .iter()
            .filter(|&&d| d >= 0)
            .try_fold(1usize, |a, &d| a.checked_mul(d as usize))
            .ok_or_else(|| self.invalid(format!("shape {spec:?} overflows")))?;
        let mut shape = Vec::with_capacity(spec.len());
        for &d in &spec {
            if d >= 0 {
                shape.push(d as usize);
            } else if known > 0 && total.is_multiple_of(known) {
                shape.push(total / known);
            } else {
                return Err(self.invalid(format!("cannot reshape {total} elements to {spec:?}")));
            }
        }
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(total) {
            return Err(self.invalid(format!("cannot reshape {total} elements to {spec:?}")));
        }
        self.reshape_to(op, shape)
    }

    fn reduce(&mut self, op: &OperatorDef, rop: ReduceOp) -> Result<()> {
        let xt = self.input(op, 0)?;
        let rank = self.rank(xt)?;
        let mut axes = self
            .ints(self.input(op, 1)?)?
            .into_iter()
            .map(|a| self.axis(a, rank))
            .collect::<Result<Vec<_>>>()?;
        axes.sort_unstable();
        axes.dedup();
        // ReducerOptions: keep_dims 0.
        let keepdims = Opts(op.options).bool(0)?;
        let out = self.output(op)?;
        if rank == 4 {
            let remaining: Vec<usize> = (0..4).filter(|a| !axes.contains(a)).collect();
            let mapped: Vec<usize> = remaining.iter().map(|&a| AXIS_TO_NCHW[a]).collect();
            let order_kept = mapped.windows(2).all(|w| w[0] < w[1]);
            if keepdims || order_kept {
                let x = self.nchw(xt)?;
                let ax: Vec<usize> = axes.iter().map(|&a| AXIS_TO_NCHW[a]).collect();
                let r = Op::Reduce {
                    op: rop,
                    axes: ax,
                    keepdims,
                };
                self.emit(r, vec![x], out, keepdims, None)?;
                return Ok(());
            }
        }
        let x = self.plain(xt)?;
        self.emit(
            Op::Reduce {
                op: rop,
                axes,
                keepdims,
            },
            vec![x],
            out,
            false,
            None,
        )?;
        Ok(())
    }

    pub(crate) fn concat(&mut self, op: &OperatorDef) -> Result<()> {
        let o = Opts(op.options);
        // ConcatenationOptions: axis 0, fused_activation 1.
        let ins: Vec<i32> = op.inputs.iter().copied().filter(|&t| t >= 0).collect();
        let first = *ins.first().ok_or_else(|| self.invalid("no inputs"))?;
        let rank = self.rank(first)?;
        let axis = self.axis(o.i32(0, 0)? as i64, rank)?;
        let act = self.fused(o.i8(1, 0)?)?;
        let (ids, axis, nchw) = if rank == 4 {
            let ids = ins
                .iter()
                .map(|&t| self.nchw(t))
                .collect::<Result<Vec<_>>>()?;
            (ids, AXIS_TO_NCHW[axis], true)
        } else {
            let ids = ins
                .iter()
                .map(|&t| self.plain(t))
                .collect::<Result<Vec<_>>>()?;
            (ids, axis, false)
        };
        self.emit(Op::Concat { axis }, ids, self.output(op)?, nchw, act)?;
        Ok(())
    }

    fn pad(&mut self, op: &OperatorDef, mode: PadMode, value_input: bool) -> Result<()> {
        let value = match self.opt_input(op, 2) {
            Some(v) if value_input => self.konst(v)?.data.first().copied().unwrap_or(0.0),
            _ => 0.0,
        };
        self.pad_with(op, mode, value)
    }

    /// PAD with an explicit fill value (integer PAD fills with the zero point).
    pub(crate) fn pad_with(&mut self, op: &OperatorDef, mode: PadMode, value: f32) -> Result<()> {
        let xt = self.input(op, 0)?;
        let rank = self.rank(xt)?;
        let p = self.ints(self.input(op, 1)?)?;
        if p.len() != 2 * rank || p.iter().any(|&v| v < 0) {
            return Err(self.invalid(format!("paddings {p:?} for rank {rank}")));
        }
        let mut pads: Vec<(usize, usize)> = p
            .chunks_exact(2)
            .map(|c| (c[0] as usize, c[1] as usize))
            .collect();
        let (x, nchw) = if rank == 4 {
            pads = NHWC_PERM.iter().map(|&a| pads[a]).collect();
            (self.nchw(xt)?, true)
        } else {
            (self.plain(xt)?, false)
        };
        self.emit(
            Op::Pad { pads, mode, value },
            vec![x],
            self.output(op)?,
            nchw,
            None,
        )?;
        Ok(())
    }

    pub(crate) fn resize(&mut self, op: &OperatorDef, bilinear: bool) -> Result<()> {
        let o = Opts(op.options);
        let x = self.nchw(self.input(op, 0)?)?;
        let xs = self.g.shape(x).to_vec();
        let size = self.ints(self.input(op, 1)?)?;
        if size.len() != 2 || size.iter().any(|&v| v <= 0) {
            return Err(self.invalid(format!("size {size:?}")));
        }
        // ResizeBilinearOptions: align_corners 2, half_pixel_centers 3 (0 and 1 are
        // deprecated). ResizeNearestNeighborOptions: align_corners 0, half_pixel_centers 1.
        let (align, half) = if bilinear {
            (o.bool(2)?, o.bool(3)?)
        } else {
            (o.bool(0)?, o.bool(1)?)
        };
        let out_shape = vec![xs[0], xs[1], size[0] as usize, size[1] as usize];
        let scales = out_shape
            .iter()
            .zip(&xs)
            .map(|(&o, &i)| o as f32 / i.max(1) as f32)
            .collect();
        let (mode, coord) = match (bilinear, align, half) {
            (true, true, _) => (ResizeMode::Linear, CoordMode::AlignCorners),
            (true, false, true) => (ResizeMode::Linear, CoordMode::HalfPixel),
            (true, false, false) => (ResizeMode::Linear, CoordMode::Asymmetric),
            // TF rounds half away from zero (round()) with align_corners and floors otherwise.
            (false, true, _) => (
                ResizeMode::Nearest(NearestRound::RoundPreferCeil),
                CoordMode::AlignCorners,
            ),
            (false, false, true) => (
                ResizeMode::Nearest(NearestRound::Floor),
                CoordMode::TfHalfPixelForNn,
            ),
            (false, false, false) => (
                ResizeMode::Nearest(NearestRound::Floor),
                CoordMode::Asymmetric,
            ),
        };
        let r = Resize {
            mode,
            coord,
            out_shape,
            scales,
        };
        self.emit(Op::Resize(r), vec![x], self.output(op)?, true, None)?;
        Ok(())
    }

    /// Slices described per TFLite axis; 4-D inputs stay NCHW unless axes are dropped.
    fn slice_axes(
        &mut self,
        op: &OperatorDef,
        xt: i32,
        starts: Vec<usize>,
        steps: Vec<i64>,
        counts: Vec<usize>,
        drop: Vec<usize>,
    ) -> Result<()> {
        let xs = self.shape(xt)?;
        let rank = xs.len();
        let out = self.output(op)?;
        let axes: Vec<usize> = (0..rank).collect();
        if rank == 4 && drop.is_empty() {
            let x = self.nchw(xt)?;
            let mut s = vec![0; 4];
            let mut st = vec![1; 4];
            let mut c = vec![0; 4];
            for a in 0..4 {
                let m = AXIS_TO_NCHW[a];
                s[m] = starts[a];
                st[m] = steps[a];
                c[m] = counts[a];
            }
            let sl = Op::Slice {
                axes,
                starts: s,
                steps: st,
                counts: c,
            };
            self.emit(sl, vec![x], out, true, None)?;
            return Ok(());
        }
        let x = self.plain(xt)?;
        let sl = Op::Slice {
            axes,
            starts,
            steps,
            counts: counts.clone(),
        };
        if drop.is_empty() {
            self.emit(sl, vec![x], out, false, None)?;
        } else {
            let name = format!("{}/slice", self.out_name(out, false)?);
            let y = self.node_out(&name, sl, vec![x])?;
            let shape = counts
                .iter()
                .enumerate()
                .filter(|(a, _)| !drop.contains(a))
                .map(|(_, &c)| c)
                .collect();
            self.emit(Op::Reshape { shape }, vec![y], out, false, None)?;
        }
        Ok(())
    }

    fn strided_slice(&mut self, op: &OperatorDef) -> Result<()> {
        let o = Opts(op.options);
        // StridedSliceOptions: begin_mask 0, end_mask 1, ellipsis_mask 2, new_axis_mask 3,
        // shrink_axis_mask 4, offset 5.
        let (bm, em, ell, nam, sm) = (
            o.i32(0, 0)?,
            o.i32(1, 0)?,
            o.i32(2, 0)?,
            o.i32(3, 0)?,
            o.i32(4, 0)?,
        );
        if ell != 0 || nam != 0 || o.bool(5)? {
            return Err(self.unsupported("ellipsis, new-axis or offset masks"));
        }
        let xt = self.input(op, 0)?;
        let xs = self.shape(xt)?;
        let begin = self.ints(self.input(op, 1)?)?;
        let end = self.ints(self.input(op, 2)?)?;
        let strides = match self.opt_input(op, 3) {
            Some(s) => self.ints(s)?,
            None => vec![1; begin.len()],
        };
        let (mut starts, mut steps, mut counts, mut drop) = (vec![], vec![], vec![], vec![]);
        for (a, &dim) in xs.iter().enumerate() {
            let d = dim as i64;
            let bit = |m: i32| a < 32 && (m >> a) & 1 == 1;
            if a >= begin.len() {
                starts.push(0);
                steps.push(1);
                counts.push(dim);
                continue;
            }
            let s = strides.get(a).copied().unwrap_or(1);
            if s == 0 {
                return Err(self.invalid("zero stride"));
            }
            let norm = |v: i64| if v < 0 { v + d } else { v };
            if bit(sm) {
                let b = norm(begin[a]);
                if b < 0 || b >= d {
                    return Err(
                        self.invalid(format!("index {} out of range for axis {a}", begin[a]))
                    );
                }
                starts.push(b as usize);
                steps.push(1);
                counts.push(1);
                drop.push(a);
                continue;
            }
            let (lo, hi) = if s > 0 { (0, d) } else { (-1, d - 1) };
            let b = if bit(bm) {
                if s > 0 {
                    0
                } else {
                    d - 1
                }
            } else {
                norm(begin[a]).clamp(lo, hi)
            };
            let e = if bit(em) {
                if s > 0 {
                    d
                } else {
                    -1
                }
            } else {
                norm(end.get(a).copied().unwrap_or(d)).clamp(lo, hi)
            };
            let n = if s > 0 {
                (e - b + s - 1) / s
            } else {
                (b - e + (-s) - 1) / (-s)
            };
            let n = n.max(0) as usize;
            starts.push(if n == 0 { 0 } else { b as usize });
            steps.push(s);
            counts.push(n);
        }
        self.slice_axes(op, xt, starts, steps, counts, drop)
    }

    fn slice(&mut self, op: &OperatorDef) -> Result<()> {
        let xt = self.input(op, 0)?;
        let xs = self.shape(xt)?;
        let begin = self.ints(self.input(op, 1)?)?;
        let size = self.ints(self.input(op, 2)?)?;
        if begin.len() != xs.len() || size.len() != xs.len() {
            return Err(self.invalid("begin and size per axis"));
        }
        let mut counts = vec![];
        for a in 0..xs.len() {
            let d = xs[a] as i64;
            if begin[a] < 0 || begin[a] > d {
                return Err(self.invalid(format!("slice {begin:?}+{size:?} of {xs:?}")));
            }
            let c = if size[a] < 0 { d - begin[a] } else { size[a] };
            if c > d - begin[a] {
                return Err(self.invalid(format!("slice {begin:?}+{size:?} of {xs:?}")));
            }
            counts.push(c as usize);
        }
        let starts = begin.iter().map(|&b| b as usize).collect();
        self.slice_axes(op, xt, starts, vec![1; xs.len()], counts, vec![])
    }

    fn split(
        &mut self,
        op: &OperatorDef,
        xt: i32,
        axis_t: i32,
        sizes: Option<Vec<i64>>,
    ) -> Result<()> {
        let xs = self.shape(xt)?;
        let rank = xs.len();
        let axis = self.axis(
            *self
                .ints(axis_t)?
                .first()
                .ok_or_else(|| self.invalid("empty axis"))?,
            rank,
        )?;
        let n = op.outputs.len();
        let dim = xs[axis];
        let sizes: Vec<usize> = match sizes {
            Some(s) => {
                let known = s
                    .iter()
                    .filter(|&&v| v >= 0)
                    .fold(0i64, |a, &v| a.saturating_add(v));
                s.iter()
                    .map(|&v| {
                        if v < 0 {
                            (dim as i64 - known).max(0) as usize
                        } else {
                            v as usize
                        }
                    })
                    .collect()
            }
            None => {
                if n == 0 || dim % n != 0 {
                    return Err(self.invalid(format!("{dim} does not split into {n}")));
                }
                vec![dim / n; n]
            }
        };
        let (x, axis, nchw) = if rank == 4 {
            (self.nchw(xt)?, AXIS_TO_NCHW[axis], true)
        } else {
            (self.plain(xt)?, axis, false)
        };
        let outs = op.outputs.clone();
        self.emit_multi(Op::Split { axis, sizes }, vec![x], &outs, nchw)
    }

    fn gather(&mut self, op: &OperatorDef) -> Result<()> {
        let o = Opts(op.options);
        // GatherOptions: axis 0, batch_dims 1.
        if o.i32(1, 0)? != 0 {
            return Err(self.unsupported("batch_dims"));
        }
        let xt = self.input(op, 0)?;
        let xs = self.shape(xt)?;
        let axis = self.axis(o.i32(0, 0)? as i64, xs.len())?;
        let it = self.input(op, 1)?;
        let ik = self.konst(it)?;
        let dim = xs[axis] as i64;
        let indices = self
            .ints(it)?
            .iter()
            .map(|&i| {
                let v = if i < 0 { i + dim } else { i };
                if v < 0 || v >= dim {
                    Err(self.invalid(format!("index {i} out of range {dim}")))
                } else {
                    Ok(v as usize)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let (x, axis, nchw) = if xs.len() == 4 && ik.shape.len() == 1 {
            (self.nchw(xt)?, AXIS_TO_NCHW[axis], true)
        } else {
            (self.plain(xt)?, axis, false)
        };
        let g = Op::Gather {
            axis,
            indices,
            indices_shape: ik.shape,
        };
        self.emit(g, vec![x], self.output(op)?, nchw, None)?;
        Ok(())
    }

    fn softmax(&mut self, op: &OperatorDef, log: bool) -> Result<()> {
        let xt = self.input(op, 0)?;
        let (mut x, nchw) = self.any(xt)?;
        let rank = self.g.shape(x).len();
        let out = self.output(op)?;
        // SoftmaxOptions: beta 0.
        let beta = if log {
            1.0
        } else {
            Opts(op.options).f32(0, 1.0)?
        };
        if beta != 1.0 {
            let name = self.out_name(out, nchw)?;
            let b = self.add_tensor(format!("{name}/beta"), vec![], vec![beta])?;
            x = self.node_out(
                &format!("{name}/scaled"),
                Op::Binary(BinaryOp::Mul),
                vec![x, b],
            )?;
        }
        let axis = if nchw { 1 } else { rank.saturating_sub(1) };
        let s = if log {
            Op::LogSoftmax { axis }
        } else {
            Op::Softmax { axis }
        };
        self.emit(s, vec![x], out, nchw, None)?;
        Ok(())
    }

    fn fold_const(&mut self, op: &OperatorDef) -> Result<bool> {
        let xt = self.input(op, 0)?;
        if let Entry::Const(k) = self.entry(xt)? {
            let out = self.output(op)?;
            let ints = if self.tensor(out)?.ty == ttype::FLOAT32 {
                None
            } else {
                k.ints.clone()
            };
            self.set_const(out, Konst { ints, ..k })?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// NCHW axis k takes the padding of NHWC axis NHWC_PERM[k].
const NHWC_PERM: [usize; 4] = [0, 3, 1, 2];

pub(crate) fn translate(imp: &mut Importer, builtin: i32, op: &OperatorDef) -> Result<()> {
    use code::*;
    let o = Opts(op.options);
    match builtin {
        CONV_2D => imp.conv(op, false),
        DEPTHWISE_CONV_2D => imp.conv(op, true),
        TRANSPOSE_CONV => {
            // TransposeConvOptions: padding 0, stride_w 1, stride_h 2, fused_activation 3.
            let shape = imp.ints(imp.input(op, 0)?)?;
            let (w, x, b) = (imp.input(op, 1)?, imp.input(op, 2)?, imp.opt_input(op, 3));
            let stride = [o.i32(2, 1)?.max(1) as usize, o.i32(1, 1)?.max(1) as usize];
            let act = imp.fused(o.i8(3, 0)?)?;
            let d = Deconv {
                x,
                w,
                bias: b,
                out_shape: Some(shape),
                valid: o.i8(0, 0)? == PADDING_VALID,
                stride,
                act,
            };
            imp.transpose_conv(op, d)
        }
        FULLY_CONNECTED => imp.fully_connected(op),
        // AddOptions/SubOptions/MulOptions/DivOptions: fused_activation 0.
        ADD => imp.binary(BinaryOp::Add, op, imp.fused(o.i8(0, 0)?)?),
        SUB => imp.binary(BinaryOp::Sub, op, imp.fused(o.i8(0, 0)?)?),
        MUL => imp.binary(BinaryOp::Mul, op, imp.fused(o.i8(0, 0)?)?),
        DIV => imp.binary(BinaryOp::Div, op, imp.fused(o.i8(0, 0)?)?),
        POW => imp.binary(BinaryOp::Pow, op, None),
        MAXIMUM => imp.binary(BinaryOp::Max, op, None),
        MINIMUM => imp.binary(BinaryOp::Min, op, None),
        PRELU => imp.binary(BinaryOp::PRelu, op, None),
        SQUARED_DIFFERENCE => {
            let (a, b) = (imp.input(op, 0)?, imp.input(op, 1)?);
            let (ia, ib, nchw) = imp.binary_ids(a, b)?;
            let out = imp.output(op)?;
            let name = imp.out_name(out, nchw)?;
            let d = imp.node_out(
                &format!("{name}/diff"),
                Op::Binary(BinaryOp::Sub),
                vec![ia, ib],
            )?;
            imp.emit(Op::Binary(BinaryOp::Mul), vec![d, d], out, nchw, None)?;
            Ok(())
        }
        SQUARE => {
            let (x, nchw) = imp.any(imp.input(op, 0)?)?;
            imp.emit(
                Op::Binary(BinaryOp::Mul),
                vec![x, x],
                imp.output(op)?,
                nchw,
                None,
            )?;
            Ok(())
        }
        RELU => imp.unary(Activation::Relu, op),
        RELU6 => imp.unary(Activation::Clip { min: 0.0, max: 6.0 }, op),
        RELU_N1_TO_1 => imp.unary(
            Activation::Clip {
                min: -1.0,
                max: 1.0,
            },
            op,
        ),
        // LeakyReluOptions: alpha 0.
        LEAKY_RELU => imp.unary(
            Activation::LeakyRelu {
                alpha: o.f32(0, 0.0)?,
            },
            op,
        ),
        LOGISTIC => imp.unary(Activation::Sigmoid, op),
        TANH => imp.unary(Activation::Tanh, op),
        HARD_SWISH => imp.unary(Activation::HardSwish, op),
        ELU => imp.unary(Activation::Elu { alpha: 1.0 }, op),
        // GeluOptions: approximate 0. The tanh approximation differs from erf-GELU by < 1e-3.
        GELU => imp.unary(Activation::Gelu, op),
        EXP => imp.unary(Activation::Exp, op),
        LOG => imp.unary(Activation::Log, op),
        SQRT => imp.unary(Activation::Sqrt, op),
        NEG => imp.unary(Activation::Neg, op),
        ABS => imp.unary(Activation::Abs, op),
        FLOOR => imp.unary(Activation::Floor, op),
        CEIL => imp.unary(Activation::Ceil, op),
        SIN => imp.unary(Activation::Sin, op),
        COS => imp.unary(Activation::Cos, op),
        RSQRT => {
            let (x, nchw) = imp.any(imp.input(op, 0)?)?;
            let out = imp.output(op)?;
            let name = imp.out_name(out, nchw)?;
            let s = imp.node_out(&format!("{name}/sqrt"), Op::Act(Activation::Sqrt), vec![x])?;
            imp.emit(Op::Act(Activation::Reciprocal), vec![s], out, nchw, None)?;
            Ok(())
        }
        SOFTMAX => imp.softmax(op, false),
        LOG_SOFTMAX => imp.softmax(op, true),
        MAX_POOL_2D => imp.pool(op, true),
        AVERAGE_POOL_2D => imp.pool(op, false),
        MEAN => imp.reduce(op, ReduceOp::Mean),
        SUM => imp.reduce(op, ReduceOp::Sum),
        REDUCE_MAX => imp.reduce(op, ReduceOp::Max),
        REDUCE_MIN => imp.reduce(op, ReduceOp::Min),
        RESHAPE => imp.reshape(op),
        SQUEEZE => {
            let xs = imp.shape(imp.input(op, 0)?)?;
            // SqueezeOptions: squeeze_dims 0.
            let dims = o
                .i32s(0)?
                .unwrap_or_default()
                .iter()
                .map(|&a| imp.axis(a as i64, xs.len()))
                .collect::<Result<Vec<_>>>()?;
            let shape = xs
                .iter()
                .enumerate()
                .filter(|&(a, &d)| !(d == 1 && (dims.is_empty() || dims.contains(&a))))
                .map(|(_, &d)| d)
                .collect();
            imp.reshape_to(op, shape)
        }
        EXPAND_DIMS => {
            let mut xs = imp.shape(imp.input(op, 0)?)?;
            let a = *imp
                .ints(imp.input(op, 1)?)?
                .first()
                .ok_or_else(|| imp.invalid("empty axis"))?;
            let a = imp.axis(a, xs.len() + 1)?;
            xs.insert(a, 1);
            imp.reshape_to(op, xs)
        }
        CONCATENATION => imp.concat(op),
        PAD => imp.pad(op, PadMode::Constant, false),
        PADV2 => imp.pad(op, PadMode::Constant, true),
        MIRROR_PAD => match o.i8(0, 0)? {
            // MirrorPadOptions: mode 0 (REFLECT 0, SYMMETRIC 1).
            0 => imp.pad(op, PadMode::Reflect, false),
            _ => Err(imp.unsupported("SYMMETRIC mirror padding")),
        },
        RESIZE_BILINEAR => imp.resize(op, true),
        RESIZE_NEAREST_NEIGHBOR => imp.resize(op, false),
        // Sparse constants are expanded when loaded, so DENSIFY only forwards a constant.
        DENSIFY => {
            if imp.fold_const(op)? {
                return Ok(());
            }
            Err(imp.invalid("DENSIFY of a tensor computed at run time"))
        }
        DEQUANTIZE | CAST => {
            let xt = imp.input(op, 0)?;
            if imp.fold_const(op)? {
                return Ok(());
            }
            let out = imp.output(op)?;
            let (ti, to) = (imp.tensor(xt)?.ty, imp.tensor(out)?.ty);
            if ti != ttype::FLOAT32 || to != ttype::FLOAT32 {
                return Err(imp.unsupported(format!(
                    "{} activations to {}",
                    ttype::name(ti),
                    ttype::name(to)
                )));
            }
            let (x, nchw) = imp.any(xt)?;
            imp.emit(Op::Identity, vec![x], out, nchw, None)?;
            Ok(())
        }
        TRANSPOSE => {
            let xt = imp.input(op, 0)?;
            let rank = imp.rank(xt)?;
            let perm = imp
                .ints(imp.input(op, 1)?)?
                .iter()
                .map(|&a| imp.axis(a, rank))
                .collect::<Result<Vec<_>>>()?;
            let x = imp.plain(xt)?;
            imp.emit(
                Op::Transpose { perm },
                vec![x],
                imp.output(op)?,
                false,
                None,
            )?;
            Ok(())
        }
        STRIDED_SLICE => imp.strided_slice(op),
        SLICE => imp.slice(op),
        SPLIT => {
            let (a, x) = (imp.input(op, 0)?, imp.input(op, 1)?);
            imp.split(op, x, a, None)
        }
        SPLIT_V => {
            let (x, s, a) = (imp.input(op, 0)?, imp.input(op, 1)?, imp.input(op, 2)?);
            let sizes = imp.ints(s)?;
            imp.split(op, x, a, Some(sizes))
        }
        GATHER => imp.gather(op),
        DEPTH_TO_SPACE | SPACE_TO_DEPTH => {
            // DepthToSpaceOptions / SpaceToDepthOptions: block_size 0.
            let block = o.i32(0, 0)?;
            if block <= 0 {
                return Err(imp.invalid(format!("block size {block}")));
            }
            let x = imp.nchw(imp.input(op, 0)?)?;
            let block = block as usize;
            // TF's channel order (block row, block column, channel) is ONNX's DCR.
            let d = if builtin == DEPTH_TO_SPACE {
                Op::DepthToSpace { block, crd: false }
            } else {
                Op::SpaceToDepth { block }
            };
            imp.emit(d, vec![x], imp.output(op)?, true, None)?;
            Ok(())
        }
        CUSTOM if imp.op_name == "Convolution2DTransposeBias" => {
            // MediaPipe stores TfLiteTransposeConvParams raw: padding (1 SAME, 2 VALID),
            // stride_width, stride_height, each a native (little-endian) i32.
            let raw = op.custom_options.unwrap_or(&[]);
            let word = |k: usize| {
                raw.get(4 * k..4 * k + 4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            };
            let (Some(pad), Some(sw), Some(sh)) = (word(0), word(1), word(2)) else {
                return Err(imp.invalid("custom options shorter than TfLiteTransposeConvParams"));
            };
            let (x, w, b) = (imp.input(op, 0)?, imp.input(op, 1)?, imp.opt_input(op, 2));
            let stride = [sh.max(1) as usize, sw.max(1) as usize];
            let d = Deconv {
                x,
                w,
                bias: b,
                out_shape: None,
                valid: pad == 2,
                stride,
                act: None,
            };
            imp.transpose_conv(op, d)
        }
        // Only meaningful on integers (quant::translate); reaching here means a float input.
        QUANTIZE => Err(imp.unsupported("QUANTIZE of a float tensor to a float tensor")),
        _ => Err(imp.unsupported(NOT_MAPPED)),
    }
}

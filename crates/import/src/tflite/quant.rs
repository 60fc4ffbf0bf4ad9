//! Full-integer TFLite operators (int8 / uint8 activations), mapped onto the IR's
//! integer ops with LiteRT's arithmetic (`QFlavor::Tflite`: gemmlowp fixed-point
//! multipliers, rounding half away from zero). Operators that only move integers around
//! (reshape, concatenation, max pooling, nearest resize) run as the plain IR op on the
//! integer values, which LiteRT allows only when input and output share one quantization;
//! that is checked, never assumed.
use shadownet_ir::{Activation, BinaryOp, Op, Pool, QBinary, QFlavor, QLinear, QOutput, QParam};

use super::ops::{code, Opts};
use super::reader::{ttype, OperatorDef};
use super::{permute, Importer};
use crate::Result;

impl Importer<'_, '_> {
    /// Whether an operator reads or writes integer activations (not constants).
    pub(crate) fn reads_or_writes_integers(&self, op: &OperatorDef) -> Result<bool> {
        for &t in op.inputs.iter().chain(&op.outputs).filter(|&&t| t >= 0) {
            let td = self.tensor(t)?;
            if td.data.is_none() && matches!(td.ty, ttype::INT8 | ttype::UINT8 | ttype::INT16) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Per-tensor quantization of an integer activation, and its type's range.
    fn act_q(&self, t: i32) -> Result<(QParam, (i32, i32))> {
        let td = self.tensor(t)?;
        let range = match td.ty {
            ttype::INT8 => (-128, 127),
            ttype::UINT8 => (0, 255),
            ty => {
                return Err(self.unsupported(format!(
                    "{} activation '{}'; only int8 and uint8 are supported",
                    ttype::name(ty),
                    td.name
                )))
            }
        };
        let q = td
            .quant
            .as_ref()
            .filter(|q| q.scale.len() == 1)
            .ok_or_else(|| {
                self.unsupported(format!(
                    "integer activation '{}' without one (per-tensor) scale",
                    td.name
                ))
            })?;
        let zero = q.zero_point.first().copied().unwrap_or(0);
        let zero = i32::try_from(zero)
            .ok()
            .filter(|z| (range.0..=range.1).contains(z))
            .ok_or_else(|| self.invalid(format!("zero point {zero} of '{}'", td.name)))?;
        if !(q.scale[0].is_finite() && q.scale[0] > 0.0) {
            return Err(self.invalid(format!("scale {} of '{}'", q.scale[0], td.name)));
        }
        Ok((
            QParam {
                scale: q.scale[0],
                zero_point: zero,
            },
            range,
        ))
    }

    /// LiteRT's CalculateActivationRangeQuantized: the fused activation as an integer clamp.
    fn act_range(&self, fused: i8, y: QParam, (lo, hi): (i32, i32)) -> Result<(i32, i32)> {
        // TfLiteRound: half away from zero.
        let q = |f: f32| y.zero_point + (f / y.scale).round() as i32;
        Ok(match fused {
            0 => (lo, hi),
            1 => (lo.max(q(0.0)), hi),
            2 => (lo.max(q(-1.0)), hi.min(q(1.0))),
            3 => (lo.max(q(0.0)), hi.min(q(6.0))),
            a => return Err(self.unsupported(format!("fused activation {a} on integers"))),
        })
    }

    fn same_quant(&self, a: i32, b: i32) -> Result<QParam> {
        let (qa, ra) = self.act_q(a)?;
        let (qb, rb) = self.act_q(b)?;
        if qa != qb || ra != rb {
            return Err(self.unsupported(format!(
                "'{}' and '{}' are quantized differently ({qa:?} vs {qb:?}); requantizing moves are not supported",
                self.tensor(a)?.name,
                self.tensor(b)?.name
            )));
        }
        Ok(qa)
    }

    /// Integer weights, per-channel scales and zero points of a constant filter.
    fn weights(&self, t: i32, channel_dim: usize) -> Result<(super::Konst, Vec<f32>, Vec<i32>)> {
        let k = self.konst_raw(t)?;
        let td = self.tensor(t)?;
        if !matches!(td.ty, ttype::INT8 | ttype::UINT8) || k.ints.is_none() {
            return Err(self.unsupported(format!(
                "{} weights '{}' next to integer activations",
                ttype::name(td.ty),
                td.name
            )));
        }
        let q = td
            .quant
            .as_ref()
            .ok_or_else(|| self.invalid(format!("weights '{}' lack a quantization", td.name)))?;
        let channels = k.shape.get(channel_dim).copied().unwrap_or(0);
        if q.scale.len() != 1 && (q.scale.len() != channels || q.dim as usize != channel_dim) {
            return Err(self.unsupported(format!(
                "weights '{}' quantized along dimension {} ({} scales for {channels} channels)",
                td.name,
                q.dim,
                q.scale.len()
            )));
        }
        let mut zero: Vec<i32> = q.zero_point.iter().map(|&z| z as i32).collect();
        if zero.is_empty() {
            zero.push(0);
        }
        if zero.len() != 1 && zero.len() != q.scale.len() {
            return Err(self.invalid(format!("zero points of '{}'", td.name)));
        }
        Ok((k, q.scale.clone(), zero))
    }

    fn bias(&self, op: &OperatorDef, k: usize, channels: usize) -> Result<Vec<i32>> {
        let Some(t) = self.opt_input(op, k) else {
            return Ok(Vec::new());
        };
        let b = self.konst_raw(t)?;
        let ints = b
            .ints
            .ok_or_else(|| self.unsupported("a float bias on integer activations"))?;
        if ints.len() != channels {
            return Err(self.invalid(format!("{} biases for {channels} channels", ints.len())));
        }
        ints.into_iter()
            .map(|v| i32::try_from(v).map_err(|_| self.invalid(format!("bias {v}"))))
            .collect()
    }

    fn qconv(&mut self, op: &OperatorDef, depthwise: bool) -> Result<()> {
        let o = Opts(op.options);
        let xt = self.input(op, 0)?;
        let (xq, _) = self.act_q(xt)?;
        let out = self.output(op)?;
        let (yq, range) = self.act_q(out)?;
        let x = self.nchw(xt)?;
        let xs = self.g.shape(x).to_vec();
        // Filters: conv [O, kh, kw, I] per-channel on 0; depthwise [1, kh, kw, O] on 3.
        let wt = self.input(op, 1)?;
        let (w, wscale, wzero) = self.weights(wt, if depthwise { 3 } else { 0 })?;
        let (conv, wshape, wdata, act_id) = self.conv_layout(&o, &xs, &w, depthwise)?;
        let bias = self.bias(op, 2, wshape[0])?;
        let (min, max) = self.act_range(o.i8(act_id, 0)?, yq, range)?;
        let q = QLinear {
            x: xq,
            w_scale: wscale,
            w_zero: wzero,
            bias,
            alpha: 1.0,
            out: QOutput::Quantized { y: yq, min, max },
            flavor: QFlavor::Tflite,
        };
        let name = format!("{}/oihw", self.tensor(wt)?.name);
        let wid = self
            .g
            .add_const(name, shadownet_ir::Tensor::new(wshape, wdata)?);
        self.emit(Op::QConv { conv, q }, vec![x, wid], out, true, None)?;
        Ok(())
    }

    fn qfully_connected(&mut self, op: &OperatorDef) -> Result<()> {
        let o = Opts(op.options);
        // FullyConnectedOptions: fused_activation 0, weights_format 1, keep_num_dims 2.
        if o.i8(1, 0)? != 0 {
            return Err(self.unsupported("shuffled weights format"));
        }
        let xt = self.input(op, 0)?;
        let (xq, _) = self.act_q(xt)?;
        let out = self.output(op)?;
        let (yq, range) = self.act_q(out)?;
        let wt = self.input(op, 1)?;
        let (w, wscale, wzero) = self.weights(wt, 0)?;
        if w.shape.len() != 2 {
            return Err(self.invalid(format!("weights of shape {:?}", w.shape)));
        }
        let (n, k) = (w.shape[0], w.shape[1]);
        let mut x = self.plain(xt)?;
        let xs = self.g.shape(x).to_vec();
        let total: usize = xs.iter().product();
        if k == 0 || !total.is_multiple_of(k) {
            return Err(self.invalid(format!("input {xs:?} for weights {:?}", w.shape)));
        }
        if o.bool(2)? && xs.len() != 2 {
            return Err(self.unsupported("keep_num_dims on integer activations"));
        }
        if xs != [total / k, k] {
            let name = format!("{}/flat", self.tensor(xt)?.name);
            x = self.node_out(
                &name,
                Op::Reshape {
                    shape: vec![total / k, k],
                },
                vec![x],
            )?;
        }
        let bias = self.bias(op, 2, n)?;
        let (min, max) = self.act_range(o.i8(0, 0)?, yq, range)?;
        let (ws, wd) = permute(&w.shape, &w.data, &[1, 0]);
        let wid = self.g.add_const(
            format!("{}/kn", self.tensor(wt)?.name),
            shadownet_ir::Tensor::new(ws, wd)?,
        );
        let q = QLinear {
            x: xq,
            w_scale: wscale,
            w_zero: wzero,
            bias,
            alpha: 1.0,
            out: QOutput::Quantized { y: yq, min, max },
            flavor: QFlavor::Tflite,
        };
        self.emit(Op::QMatMul(q), vec![x, wid], out, false, None)?;
        Ok(())
    }

    fn qbinary(&mut self, op: &OperatorDef, bop: BinaryOp) -> Result<()> {
        let (a, b) = (self.input(op, 0)?, self.input(op, 1)?);
        if self.is_const(a)? || self.is_const(b)? {
            return Err(self.unsupported("a constant operand of an integer ADD / MUL"));
        }
        let (qa, _) = self.act_q(a)?;
        let (qb, _) = self.act_q(b)?;
        let out = self.output(op)?;
        let (y, range) = self.act_q(out)?;
        let (min, max) = self.act_range(Opts(op.options).i8(0, 0)?, y, range)?;
        let (ia, ib, nchw) = self.binary_ids(a, b)?;
        let qb = QBinary {
            op: bop,
            a: qa,
            b: qb,
            y,
            min,
            max,
            flavor: QFlavor::Tflite,
        };
        self.emit(Op::QBinary(qb), vec![ia, ib], out, nchw, None)?;
        Ok(())
    }

    /// Integer max / average pooling: the same windows as the float op on the integer
    /// values; the average is then rounded half away from zero as LiteRT's integer
    /// division with a half-count offset does (the f32 quotient of two integers this
    /// small is exact enough to round identically), and clamped to the fused activation.
    fn qpool(&mut self, op: &OperatorDef, max: bool) -> Result<()> {
        let o = Opts(op.options);
        let xt = self.input(op, 0)?;
        let out = self.output(op)?;
        let y = self.same_quant(xt, out)?;
        let (_, range) = self.act_q(out)?;
        let x = self.nchw(xt)?;
        let xs = self.g.shape(x).to_vec();
        let kernel = [o.i32(4, 1)?.max(1) as usize, o.i32(3, 1)?.max(1) as usize];
        let (stride, pads) = self.window(&o, &xs, kernel, [1, 1])?;
        let p = Pool {
            kernel,
            stride,
            dilation: [1, 1],
            pads,
            extra_end: [0, 0],
            count_include_pad: false,
        };
        let (min, hi) = self.act_range(o.i8(5, 0)?, y, range)?;
        let name = self.out_name(out, true)?;
        let pooled = if max {
            self.node_out(&format!("{name}/pool"), Op::MaxPool(p), vec![x])?
        } else {
            self.node_out(&format!("{name}/pool"), Op::AvgPool(p), vec![x])?
        };
        // Scale 1, zero point 0: round half away from zero, then clamp.
        let round = Op::Quantize {
            q: QParam {
                scale: 1.0,
                zero_point: 0,
            },
            min,
            max: hi,
            flavor: QFlavor::Tflite,
        };
        self.emit(round, vec![pooled], out, true, None)?;
        Ok(())
    }

    /// Integer ops LiteRT evaluates through a lookup table built in float (dequantize,
    /// the function, quantize): the same three steps here.
    fn qvia_float(&mut self, op: &OperatorDef, f: Activation) -> Result<()> {
        let xt = self.input(op, 0)?;
        let out = self.output(op)?;
        let (xq, _) = self.act_q(xt)?;
        let (y, (min, max)) = self.act_q(out)?;
        let (x, nchw) = self.any(xt)?;
        let name = self.out_name(out, nchw)?;
        let d = self.node_out(&format!("{name}/dequantized"), Op::Dequantize(xq), vec![x])?;
        let v = self.node_out(&format!("{name}/float"), Op::Act(f), vec![d])?;
        let q = Op::Quantize {
            q: y,
            min,
            max,
            flavor: QFlavor::Tflite,
        };
        self.emit(q, vec![v], out, nchw, None)?;
        Ok(())
    }
}

/// The builtins mapped on int8 / uint8 activations (docs/ops.md lists them from here).
pub(crate) const INTEGER_BUILTINS: &[i32] = &[
    code::QUANTIZE,
    code::DEQUANTIZE,
    code::CONV_2D,
    code::DEPTHWISE_CONV_2D,
    code::FULLY_CONNECTED,
    code::ADD,
    code::MUL,
    code::MAX_POOL_2D,
    code::AVERAGE_POOL_2D,
    code::LOGISTIC,
    code::TANH,
    code::CONCATENATION,
    code::RESHAPE,
    code::SQUEEZE,
    code::EXPAND_DIMS,
    code::RESIZE_NEAREST_NEIGHBOR,
    code::PAD,
    code::PADV2,
];

/// Operators with integer activations. Anything else on integers is refused by name
/// rather than run with float semantics on integer values.
pub(crate) fn translate(imp: &mut Importer, builtin: i32, op: &OperatorDef) -> Result<()> {
    use code::*;
    if !INTEGER_BUILTINS.contains(&builtin) {
        return Err(imp.unsupported("on int8/uint8 activations"));
    }
    match builtin {
        QUANTIZE => {
            let xt = imp.input(op, 0)?;
            let out = imp.output(op)?;
            if imp.tensor(xt)?.ty != ttype::FLOAT32 {
                return Err(imp.unsupported("requantizing integers to integers"));
            }
            let (q, (min, max)) = imp.act_q(out)?;
            let (x, nchw) = imp.any(xt)?;
            let op_ir = Op::Quantize {
                q,
                min,
                max,
                flavor: QFlavor::Tflite,
            };
            imp.emit(op_ir, vec![x], out, nchw, None)?;
            Ok(())
        }
        DEQUANTIZE => {
            let xt = imp.input(op, 0)?;
            let out = imp.output(op)?;
            if imp.tensor(out)?.ty != ttype::FLOAT32 {
                return Err(imp.unsupported("DEQUANTIZE to a non-float type"));
            }
            let (q, _) = imp.act_q(xt)?;
            let (x, nchw) = imp.any(xt)?;
            imp.emit(Op::Dequantize(q), vec![x], out, nchw, None)?;
            Ok(())
        }
        CONV_2D => imp.qconv(op, false),
        DEPTHWISE_CONV_2D => imp.qconv(op, true),
        FULLY_CONNECTED => imp.qfully_connected(op),
        ADD => imp.qbinary(op, BinaryOp::Add),
        MUL => imp.qbinary(op, BinaryOp::Mul),
        MAX_POOL_2D => imp.qpool(op, true),
        AVERAGE_POOL_2D => imp.qpool(op, false),
        LOGISTIC => imp.qvia_float(op, Activation::Sigmoid),
        TANH => imp.qvia_float(op, Activation::Tanh),
        CONCATENATION => {
            let out = imp.output(op)?;
            for &t in op.inputs.iter().filter(|&&t| t >= 0) {
                imp.same_quant(t, out)?;
            }
            if Opts(op.options).i8(1, 0)? != 0 {
                return Err(imp.unsupported("a fused activation on an integer concatenation"));
            }
            imp.concat(op)
        }
        // LiteRT pads integers with the output's zero point (PAD) or the given constant,
        // whose stored integer is the fill (PADV2).
        PAD | PADV2 => {
            let y = imp.same_quant(imp.input(op, 0)?, imp.output(op)?)?;
            let fill = match imp.opt_input(op, 2) {
                Some(v) if builtin == PADV2 => {
                    let k = imp.konst_raw(v)?;
                    match k.ints.as_deref() {
                        Some([f, ..]) => *f as f32,
                        _ => return Err(imp.invalid("PADV2 fill value on integers")),
                    }
                }
                _ => y.zero_point as f32,
            };
            imp.pad_with(op, shadownet_ir::PadMode::Constant, fill)
        }
        RESHAPE | SQUEEZE | EXPAND_DIMS | RESIZE_NEAREST_NEIGHBOR => {
            imp.same_quant(imp.input(op, 0)?, imp.output(op)?)?;
            super::ops::translate(imp, builtin, op)
        }
        _ => Err(imp.unsupported(super::ops::NOT_MAPPED)),
    }
}

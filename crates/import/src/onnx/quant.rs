//! Quantized ONNX: QuantizeLinear / DequantizeLinear on activations, the QOperator ops
//! (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger and ONNX Runtime's
//! com.microsoft QGemm, QLinearAdd, QLinearMul, QLinearGlobalAveragePool, QLinearSoftmax,
//! ...), and QDQ groups `DequantizeLinear -> Conv/MatMul/Gemm -> QuantizeLinear` fused into
//! the same integer ops ONNX Runtime fuses them into.
//!
//! Integer conv / matmul / add / mul become IR integer ops computing in i32 with ONNX
//! Runtime's requantisation (`QFlavor::Onnx`). Ops ONNX Runtime evaluates through a lookup
//! table or in float (softmax, pooling averages, sigmoid) become Dequantize -> float op ->
//! Quantize, which is how those tables are built.
use shadownet_ir::{Activation, BinaryOp, Conv, Op, QBinary, QFlavor, QLinear, QOutput, QParam};

use super::ops::Ctx;
use super::tensor::{self, CTensor, Data};
use super::{Importer, Val};
use crate::Result;

/// A DequantizeLinear output: where its integers come from and how they were scaled.
#[derive(Clone, Debug)]
pub(crate) struct Dq {
    pub src: Val,
    pub scale: Vec<f32>,
    pub zero: Vec<i32>,
    /// The quantized axis of per-axis parameters (normalised).
    pub axis: usize,
}

/// Saturation range of an integer element type.
pub(crate) fn type_range(t: i32) -> Option<(i32, i32)> {
    Some(match t {
        tensor::UINT8 => (0, 255),
        tensor::INT8 => (-128, 127),
        tensor::UINT16 => (0, 65535),
        tensor::INT16 => (-32768, 32767),
        tensor::INT32 => (i32::MIN, i32::MAX),
        _ => return None,
    })
}

fn ints_i32(c: &Ctx, t: &CTensor, what: &str) -> Result<Vec<i32>> {
    t.ints()
        .into_iter()
        .map(|v| i32::try_from(v).map_err(|_| c.invalid(format!("{what} {v} exceeds int32"))))
        .collect()
}

/// Integer constants as the f32 tensor the IR carries (exact for 8- and 16-bit values).
fn as_float_ints(t: &CTensor) -> CTensor {
    CTensor {
        shape: t.shape.clone(),
        data: Data::F(t.floats()),
    }
}

impl Importer<'_> {
    fn konst_at(&self, c: &Ctx, i: usize, what: &str) -> Result<CTensor> {
        match c.opt(i) {
            Some(Val::Const { t, .. }) => Ok((**t).clone()),
            Some(Val::Act(_)) => Err(c.unsup(format!("{what} (input {i}) must be a constant"))),
            None => Err(c.invalid(format!("missing {what} (input {i})"))),
        }
    }

    /// Element type of a named constant input (initializers and Constant outputs).
    fn elem_of(&self, c: &Ctx, i: usize) -> Option<i32> {
        c.p.input.get(i).and_then(|n| self.elem.get(n)).copied()
    }

    /// Per-tensor scale and zero point from inputs `si`, `zi`, and the zero point's range.
    fn qparam(&self, c: &Ctx, si: usize, zi: usize) -> Result<(QParam, (i32, i32))> {
        let s = self.konst_at(c, si, "scale")?.floats();
        if s.len() != 1 {
            return Err(c.unsup(format!(
                "{} scales on an activation; only per-tensor activation quantization is supported",
                s.len()
            )));
        }
        let (zero, range) = match c.opt(zi) {
            None => (0, (0, 255)),
            Some(_) => {
                let z = ints_i32(c, &self.konst_at(c, zi, "zero point")?, "zero point")?;
                if z.len() != 1 {
                    return Err(c.unsup("per-axis zero points on an activation"));
                }
                let t = self.elem_of(c, zi).unwrap_or(tensor::UINT8);
                let r = type_range(t).ok_or_else(|| {
                    c.unsup(format!("zero point of type {}", tensor::type_name(t)))
                })?;
                if !(r.0..=r.1).contains(&z[0]) {
                    return Err(c.invalid(format!(
                        "zero point {} outside its type's range {r:?}",
                        z[0]
                    )));
                }
                (z[0], r)
            }
        };
        if !(s[0].is_finite() && s[0] > 0.0) {
            return Err(c.invalid(format!("scale {} must be positive", s[0])));
        }
        Ok((
            QParam {
                scale: s[0],
                zero_point: zero,
            },
            range,
        ))
    }

    /// Weight scales and zero points (per tensor, or per output channel of `channels`).
    fn wparams(
        &self,
        c: &Ctx,
        si: usize,
        zi: usize,
        channels: usize,
    ) -> Result<(Vec<f32>, Vec<i32>)> {
        let s = self.konst_at(c, si, "weight scale")?.floats();
        let z = match c.opt(zi) {
            Some(_) => ints_i32(c, &self.konst_at(c, zi, "weight zero point")?, "zero point")?,
            None => vec![0],
        };
        let fits = |n: usize| n == 1 || n == channels;
        if !fits(s.len()) || !fits(z.len()) {
            return Err(c.invalid(format!(
                "{} weight scales and {} zero points for {channels} output channels",
                s.len(),
                z.len()
            )));
        }
        Ok((s, z))
    }

    pub(crate) fn quantize_linear(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let (q, (min, max)) = self.qparam(c, 1, 2)?;
        let op = Op::Quantize {
            q,
            min,
            max,
            flavor: QFlavor::Onnx,
        };
        let out = c.out(0)?;
        self.emit(&c.name, op, &[x], std::slice::from_ref(&out))?;
        // Downstream integer ops look up the type of what they read.
        let t = self.elem_of(c, 2).unwrap_or(tensor::UINT8);
        self.elem.insert(out, t);
        Ok(())
    }

    pub(crate) fn dequantize_linear(&mut self, c: &Ctx) -> Result<()> {
        if c.i("block_size", 0) != 0 {
            return Err(c.unsup("blocked quantization"));
        }
        let x = c.input(0)?;
        let out = c.out(0)?;
        let scale = self.konst_at(c, 1, "scale")?.floats();
        let zero = match c.opt(2) {
            Some(_) => ints_i32(c, &self.konst_at(c, 2, "zero point")?, "zero point")?,
            None => vec![0],
        };
        let rank = self.shape(&x).len();
        let axis = if rank == 0 {
            0
        } else {
            c.axis(c.i("axis", 1), rank)?
        };
        self.dq.insert(
            out.clone(),
            Dq {
                src: x.clone(),
                scale: scale.clone(),
                zero: zero.clone(),
                axis,
            },
        );
        if let Val::Const { t, .. } = &x {
            let q = (**t).clone();
            return self.dequantize_const(c, q, &scale, &zero);
        }
        if scale.len() != 1 || zero.len() != 1 {
            return Err(c.unsup("per-axis dequantization of a computed tensor"));
        }
        let q = QParam {
            scale: scale[0],
            zero_point: zero[0],
        };
        self.emit(&c.name, Op::Dequantize(q), &[x], &[out])?;
        Ok(())
    }

    fn dequantize_const(&mut self, c: &Ctx, q: CTensor, s: &[f32], z: &[i32]) -> Result<()> {
        let qv = q.f64s();
        let per_axis = s.len() > 1;
        // Elements of one channel along the quantized axis are contiguous runs of `inner`.
        let inner = if per_axis {
            let a = c.axis(c.i("axis", 1), q.shape.len())?;
            if q.shape[a] != s.len() {
                return Err(c.invalid("scale length differs from the quantized axis"));
            }
            q.shape[a + 1..].iter().product::<usize>()
        } else {
            1
        };
        let data = qv
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                let ch = if per_axis { (k / inner) % s.len() } else { 0 };
                let zero = z.get(ch).or(z.first()).copied().unwrap_or(0) as f64;
                // ONNX Runtime: float(q - zero_point) * scale, in f32.
                (v - zero) as f32 * s.get(ch).copied().unwrap_or(1.0)
            })
            .collect();
        self.konst_out(
            c,
            CTensor {
                shape: q.shape,
                data: Data::F(data),
            },
        )
    }

    /// The conv geometry of a (Q)Conv node whose input `xi` and weights `wi` are 4-D.
    fn qconv_geometry(&self, c: &Ctx, xs: &[usize], ws: &[usize]) -> Result<Conv> {
        if xs.len() != 4 || ws.len() != 4 {
            return Err(c.unsup(format!(
                "quantized convolution of input {xs:?} with weights {ws:?}; only 2-D is supported"
            )));
        }
        let win = self.window(c, &xs[2..], &ws[2..], false)?;
        Ok(Conv {
            kernel: win.kernel,
            stride: win.stride,
            dilation: win.dilation,
            pads: win.pads,
            groups: c.usize_of(c.i("group", 1), "group")?,
        })
    }

    /// QLinearConv: x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias.
    pub(crate) fn qlinear_conv(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let w = self.konst_at(c, 3, "weights")?;
        let (xq, _) = self.qparam(c, 1, 2)?;
        let (wscale, wzero) = self.wparams(c, 4, 5, w.shape.first().copied().unwrap_or(0))?;
        let (y, (min, max)) = self.qparam(c, 6, 7)?;
        let bias = match c.opt(8) {
            Some(_) => ints_i32(c, &self.konst_at(c, 8, "bias")?, "bias")?,
            None => Vec::new(),
        };
        let conv = self.qconv_geometry(c, &self.shape(&x), &w.shape)?;
        let q = QLinear {
            x: xq,
            w_scale: wscale,
            w_zero: wzero,
            bias,
            alpha: 1.0,
            out: QOutput::Quantized { y, min, max },
            flavor: QFlavor::Onnx,
        };
        let wv = self.konst(&format!("{}/weight", c.name), as_float_ints(&w));
        self.emit1(c, Op::QConv { conv, q }, &[x, wv])?;
        Ok(())
    }

    /// ConvInteger: x, w, x_zp, w_zp; int32 accumulators out.
    pub(crate) fn conv_integer(&mut self, c: &Ctx) -> Result<()> {
        let x = c.input(0)?;
        let w = self.konst_at(c, 1, "weights")?;
        let xz = match c.opt(2) {
            Some(_) => ints_i32(c, &self.konst_at(c, 2, "x zero point")?, "zero point")?,
            None => vec![0],
        };
        if xz.len() != 1 {
            return Err(c.unsup("per-axis input zero points"));
        }
        let o = w.shape.first().copied().unwrap_or(0);
        let wz = match c.opt(3) {
            Some(_) => ints_i32(c, &self.konst_at(c, 3, "w zero point")?, "zero point")?,
            None => vec![0],
        };
        if !(wz.len() == 1 || wz.len() == o) {
            return Err(c.invalid("weight zero points per output channel or one"));
        }
        let conv = self.qconv_geometry(c, &self.shape(&x), &w.shape)?;
        let q = QLinear {
            x: QParam {
                scale: 1.0,
                zero_point: xz[0],
            },
            w_scale: vec![1.0],
            w_zero: wz,
            bias: Vec::new(),
            alpha: 1.0,
            out: QOutput::Accumulator,
            flavor: QFlavor::Onnx,
        };
        let wv = self.konst(&format!("{}/weight", c.name), as_float_ints(&w));
        self.emit1(c, Op::QConv { conv, q }, &[x, wv])?;
        Ok(())
    }

    /// A [K, N] integer weight matrix from a constant, transposed when `trans`.
    fn kn_weights(&mut self, c: &Ctx, w: &CTensor, trans: bool) -> Result<Val> {
        if w.shape.len() != 2 {
            return Err(c.unsup(format!(
                "quantized matmul with weights of shape {:?}; only 2-D constant weights are supported",
                w.shape
            )));
        }
        let w = if trans {
            let s = vec![w.shape[1], w.shape[0]];
            tensor::fold(
                &Op::Transpose { perm: vec![1, 0] },
                &[w],
                std::slice::from_ref(&s),
            )
            .and_then(|mut v| v.pop())
            .ok_or_else(|| c.invalid("cannot transpose the weights"))?
        } else {
            w.clone()
        };
        Ok(self.konst(&format!("{}/weight", c.name), as_float_ints(&w)))
    }

    /// QLinearMatMul: a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp.
    pub(crate) fn qlinear_matmul(&mut self, c: &Ctx) -> Result<()> {
        let a = c.input(0)?;
        let b = self.konst_at(c, 3, "B")?;
        let (xq, _) = self.qparam(c, 1, 2)?;
        let n = b.shape.get(1).copied().unwrap_or(0);
        let (wscale, wzero) = self.wparams(c, 4, 5, n)?;
        let (y, (min, max)) = self.qparam(c, 6, 7)?;
        let bv = self.kn_weights(c, &b, false)?;
        let q = QLinear {
            x: xq,
            w_scale: wscale,
            w_zero: wzero,
            bias: Vec::new(),
            alpha: 1.0,
            out: QOutput::Quantized { y, min, max },
            flavor: QFlavor::Onnx,
        };
        self.emit1(c, Op::QMatMul(q), &[a, bv])?;
        Ok(())
    }

    /// MatMulInteger: a, b, a_zp, b_zp; int32 accumulators out.
    pub(crate) fn matmul_integer(&mut self, c: &Ctx) -> Result<()> {
        let a = c.input(0)?;
        let b = self.konst_at(c, 1, "B")?;
        let az = match c.opt(2) {
            Some(_) => ints_i32(c, &self.konst_at(c, 2, "a zero point")?, "zero point")?,
            None => vec![0],
        };
        if az.len() != 1 {
            return Err(c.unsup("per-row input zero points"));
        }
        let n = b.shape.get(1).copied().unwrap_or(0);
        let bz = match c.opt(3) {
            Some(_) => ints_i32(c, &self.konst_at(c, 3, "b zero point")?, "zero point")?,
            None => vec![0],
        };
        if !(bz.len() == 1 || bz.len() == n) {
            return Err(c.invalid("B zero points per column or one"));
        }
        let bv = self.kn_weights(c, &b, false)?;
        let q = QLinear {
            x: QParam {
                scale: 1.0,
                zero_point: az[0],
            },
            w_scale: vec![1.0],
            w_zero: bz,
            bias: Vec::new(),
            alpha: 1.0,
            out: QOutput::Accumulator,
            flavor: QFlavor::Onnx,
        };
        self.emit1(c, Op::QMatMul(q), &[a, bv])?;
        Ok(())
    }

    /// com.microsoft QGemm: a, a_scale, a_zp, b, b_scale, b_zp, c (int32 bias), y_scale,
    /// y_zp (without them the output is real-valued).
    pub(crate) fn qgemm(&mut self, c: &Ctx) -> Result<()> {
        let a = c.input(0)?;
        if c.i("transA", 0) != 0 {
            return Err(c.unsup("transA"));
        }
        let b = self.konst_at(c, 3, "B")?;
        let tb = c.i("transB", 0) != 0;
        let (xq, _) = self.qparam(c, 1, 2)?;
        let n = if tb { b.shape.first() } else { b.shape.get(1) }
            .copied()
            .unwrap_or(0);
        let (wscale, wzero) = self.wparams(c, 4, 5, n)?;
        let bias = match c.opt(6) {
            Some(_) => {
                let t = self.konst_at(c, 6, "C")?;
                if t.len() != n {
                    return Err(c.unsup("a C input other than one int32 bias per column"));
                }
                ints_i32(c, &t, "bias")?
            }
            None => Vec::new(),
        };
        let out = match c.opt(7) {
            Some(_) => {
                let (y, (min, max)) = self.qparam(c, 7, 8)?;
                QOutput::Quantized { y, min, max }
            }
            None => QOutput::Real,
        };
        let bv = self.kn_weights(c, &b, tb)?;
        let q = QLinear {
            x: xq,
            w_scale: wscale,
            w_zero: wzero,
            bias,
            alpha: c.f("alpha", 1.0),
            out,
            flavor: QFlavor::Onnx,
        };
        self.emit1(c, Op::QMatMul(q), &[a, bv])?;
        Ok(())
    }

    /// com.microsoft QLinearAdd / QLinearMul: a, a_scale, a_zp, b, b_scale, b_zp, c_scale, c_zp.
    pub(crate) fn qlinear_binary(&mut self, c: &Ctx, op: BinaryOp) -> Result<()> {
        let (a, b) = (c.input(0)?, c.input(3)?);
        let (pa, _) = self.qparam(c, 1, 2)?;
        let (pb, _) = self.qparam(c, 4, 5)?;
        let (y, (min, max)) = self.qparam(c, 6, 7)?;
        let a = self.float_ints(c, a)?;
        let b = self.float_ints(c, b)?;
        let qb = QBinary {
            op,
            a: pa,
            b: pb,
            y,
            min,
            max,
            flavor: QFlavor::Onnx,
        };
        self.emit1(c, Op::QBinary(qb), &[a, b])?;
        Ok(())
    }

    /// Integer constants read by an IR op must be f32 constants of the same values.
    fn float_ints(&mut self, c: &Ctx, v: Val) -> Result<Val> {
        Ok(match &v {
            Val::Const { t, .. } if !t.is_float() => {
                let t = as_float_ints(t);
                self.konst(&format!("{}/ints", c.name), t)
            }
            _ => v,
        })
    }

    /// Quantized ops evaluated through a float function: x (input 0) with its scale and
    /// zero point at 1, 2 and the output's at `yi`, `yi + 1`.
    pub(crate) fn qlinear_via_float(&mut self, c: &Ctx, op: Op, yi: usize) -> Result<()> {
        let x = c.input(0)?;
        let (xq, _) = self.qparam(c, 1, 2)?;
        let (y, (min, max)) = self.qparam(c, yi, yi + 1)?;
        let d = self.step(c, Op::Dequantize(xq), &[x])?;
        let f = self.step(c, op, &[d])?;
        self.emit1(
            c,
            Op::Quantize {
                q: y,
                min,
                max,
                flavor: QFlavor::Onnx,
            },
            &[f],
        )?;
        Ok(())
    }

    /// The float op of a com.microsoft QLinear* unary op, with its attributes resolved.
    pub(crate) fn qlinear_unary_op(&self, c: &Ctx) -> Result<Op> {
        let x = c.input(0)?;
        let rank = self.shape(&x).len();
        Ok(match c.op() {
            "QLinearGlobalAveragePool" => {
                if c.i("channels_last", 0) != 0 {
                    return Err(c.unsup("channels_last"));
                }
                Op::GlobalAvgPool
            }
            "QLinearSoftmax" => {
                // opset < 13 semantics (coerce to 2-D) only differ for axis != last.
                let axis = c.axis(c.i("axis", -1), rank)?;
                if c.i("opset", 13) < 13 && axis + 1 != rank {
                    return Err(c.unsup("QLinearSoftmax of opset < 13 over a non-last axis"));
                }
                Op::Softmax { axis }
            }
            "QLinearSigmoid" => Op::Act(Activation::Sigmoid),
            "QLinearLeakyRelu" => Op::Act(Activation::LeakyRelu {
                alpha: c.f("alpha", 0.01),
            }),
            other => return Err(c.unsup(format!("{other} is not a unary quantized op"))),
        })
    }

    /// QDQ: `DequantizeLinear(x) -> Conv | MatMul | Gemm (weights and bias from constant
    /// DequantizeLinear) -> QuantizeLinear` becomes one integer op, as ONNX Runtime fuses it.
    /// Returns false (nothing emitted) when the node is not such a group.
    pub(crate) fn fuse_qdq(&mut self, c: &Ctx) -> Result<bool> {
        let op = c.op();
        let input = |k: usize| c.p.input.get(k).filter(|s| !s.is_empty());
        let Some(dx) = input(0).and_then(|n| self.dq.get(n)).cloned() else {
            return Ok(false);
        };
        let Some(dw) = input(1).and_then(|n| self.dq.get(n)).cloned() else {
            return Ok(false);
        };
        let db = match input(2) {
            Some(n) => match self.dq.get(n) {
                Some(d) => Some(d.clone()),
                None => return Ok(false),
            },
            None => None,
        };
        let (Val::Act(_), Val::Const { t: w, .. }) = (&dx.src, &dw.src) else {
            return Ok(false);
        };
        if dx.scale.len() != 1 || dx.zero.len() != 1 {
            return Ok(false);
        }
        let bias = match &db {
            Some(Dq {
                src: Val::Const { t, .. },
                zero,
                ..
            }) if zero.iter().all(|&z| z == 0) => Some(ints_i32(c, t, "bias")?),
            Some(_) => return Ok(false),
            None => None,
        };
        // The output must feed exactly one QuantizeLinear and nothing else.
        let out = c.out(0)?;
        if self.graph_outputs.contains(&out) {
            return Ok(false);
        }
        let Some(&[qi]) = self.consumers.get(&out).map(Vec::as_slice) else {
            return Ok(false);
        };
        let qn = &self.nodes[qi];
        if qn.op_type() != "QuantizeLinear" || !matches!(qn.domain(), "" | "ai.onnx") {
            return Ok(false);
        }
        let qctx = Ctx {
            name: c.name.clone(),
            p: qn,
            ins: qn.input.iter().map(|i| self.vals.get(i).cloned()).collect(),
            opset: c.opset,
        };
        let Ok((y, (min, max))) = self.qparam(&qctx, 1, 2) else {
            return Ok(false);
        };
        let x = QParam {
            scale: dx.scale[0],
            zero_point: dx.zero[0],
        };
        let (w, trans) = match op {
            "Conv" => ((**w).clone(), false),
            "MatMul" => ((**w).clone(), false),
            _ => {
                if c.i("transA", 0) != 0 || c.f("beta", 1.0) != 1.0 {
                    return Ok(false);
                }
                ((**w).clone(), c.i("transB", 0) != 0)
            }
        };
        let channels = match (op, trans) {
            ("Conv", _) | (_, true) => w.shape.first().copied().unwrap_or(0),
            _ => w.shape.get(1).copied().unwrap_or(0),
        };
        let fits = |n: usize| n == 1 || n == channels;
        if !fits(dw.scale.len()) || !fits(dw.zero.len()) {
            return Ok(false);
        }
        // Per-channel weights must be quantized along the output channels.
        let out_axis = match (op, trans) {
            ("Conv", _) | (_, true) => 0,
            _ => 1,
        };
        if (dw.scale.len() > 1 || dw.zero.len() > 1) && dw.axis != out_axis {
            return Ok(false);
        }
        let q = QLinear {
            x,
            w_scale: dw.scale.clone(),
            w_zero: dw.zero.clone(),
            bias: bias.unwrap_or_default(),
            alpha: if op == "Gemm" { c.f("alpha", 1.0) } else { 1.0 },
            out: QOutput::Quantized { y, min, max },
            flavor: QFlavor::Onnx,
        };
        let qout = qn
            .output
            .first()
            .filter(|s| !s.is_empty())
            .cloned()
            .ok_or_else(|| c.invalid("QuantizeLinear without an output"))?;
        let ir_op = if op == "Conv" {
            let xs = self.shape(&dx.src);
            if xs.len() != 4 || w.shape.len() != 4 {
                return Ok(false);
            }
            Op::QConv {
                conv: self.qconv_geometry(c, &xs, &w.shape)?,
                q,
            }
        } else {
            if w.shape.len() != 2 {
                return Ok(false);
            }
            Op::QMatMul(q)
        };
        let wv = if op == "Conv" {
            self.konst(&format!("{}/weight", c.name), as_float_ints(&w))
        } else {
            self.kn_weights(c, &w, trans)?
        };
        self.emit(&c.name, ir_op, &[dx.src.clone(), wv], &[qout])?;
        if let Some(t) = qn.input.get(2).and_then(|n| self.elem.get(n)).copied() {
            self.elem.insert(qn.output[0].clone(), t);
        }
        self.skip.insert(qi);
        Ok(true)
    }
}

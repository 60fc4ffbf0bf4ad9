//! Integer kernels for quantized models. Tensors carry exact integer values in f32 (see
//! `shadownet_ir::QParam`); these kernels read them back as integers, accumulate in i32
//! and requantise the way the engine that defined the model does (`QFlavor`), so a
//! quantized model gives the integers its reference engine gives, not a float
//! approximation of them.
use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::{BinaryOp, Conv, QBinary, QFlavor, QLinear, QOutput, QParam, Tensor};

/// TFLite's QuantizeMultiplier: `real ≈ multiplier · 2^(shift − 31)` with the multiplier
/// a Q31 value in [2^30, 2^31), computed in f64 like the reference.
pub fn quantize_multiplier(real: f64) -> (i32, i32) {
    if real == 0.0 || !real.is_finite() {
        return (0, 0);
    }
    let (q, mut shift) = libm::frexp(real);
    let mut q_fixed = libm::round(q * (1i64 << 31) as f64) as i64;
    if q_fixed == 1i64 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        shift = 0;
        q_fixed = 0;
    }
    // Left shifts past 30 would overflow any accumulator; the reference refuses such
    // scales, here they saturate.
    if shift > 30 {
        shift = 30;
        q_fixed = i32::MAX as i64;
    }
    (q_fixed as i32, shift)
}

/// gemmlowp's SaturatingRoundingDoublingHighMul.
fn rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 {
        1i64 << 30
    } else {
        1 - (1i64 << 30)
    };
    // Division (truncating toward zero), not a shift: that is the reference's rounding.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp's RoundingDivideByPOT: x / 2^e rounded half away from zero.
fn rounding_divide_by_pot(x: i32, e: i32) -> i32 {
    if e <= 0 {
        return x;
    }
    let e = e.min(31);
    let mask = ((1i64 << e) - 1) as i32;
    let rem = x & mask;
    let threshold = (mask >> 1) + (x < 0) as i32;
    (x >> e) + (rem > threshold) as i32
}

/// TFLite's MultiplyByQuantizedMultiplier (the default, double-rounding form).
pub fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left = shift.max(0);
    let right = (-shift).max(0);
    rounding_divide_by_pot(
        rounding_doubling_high_mul(x.wrapping_mul(1 << left.min(30)), multiplier),
        right,
    )
}

/// Bound of the values `round_half_even_small` is exact for.
const SMALL: f32 = 4_194_304.0;

/// Round half to even for |v| <= 2^22 (requantised values are clamped far inside that):
/// adding and removing 1.5·2^23 leaves no fraction bits, so the FPU's default rounding
/// mode does the rounding, as MLAS's own magic-number conversion does. Vectorises.
#[inline]
pub fn round_half_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

fn pick<T: Copy>(v: &[T], c: usize) -> T {
    if v.len() == 1 {
        v[0]
    } else {
        v[c]
    }
}

/// Requantisation of one op, prepared once per call for every output channel.
pub enum Requant {
    Onnx {
        scale: Vec<f32>,
        lo: f32,
        hi: f32,
        zero: i32,
    },
    Tflite {
        mult: Vec<i32>,
        shift: Vec<i32>,
        zero: i32,
        min: i32,
        max: i32,
    },
    Accumulator,
    Real(Vec<f32>),
}

impl Requant {
    pub fn new(q: &QLinear, channels: usize) -> Self {
        let per = |c: usize| pick(&q.w_scale, c);
        match (&q.out, q.flavor) {
            (QOutput::Accumulator, _) => Requant::Accumulator,
            (QOutput::Real, _) => Requant::Real(
                (0..channels)
                    .map(|c| q.x.scale * per(c) * q.alpha)
                    .collect(),
            ),
            (QOutput::Quantized { y, min, max }, QFlavor::Onnx) => Requant::Onnx {
                // MLAS: output_scale = x_scale * w_scale / y_scale, in f32, in that order.
                scale: (0..channels)
                    .map(|c| {
                        let s = q.x.scale * per(c);
                        let s = if q.alpha == 1.0 { s } else { s * q.alpha };
                        s / y.scale
                    })
                    .collect(),
                lo: (*min as i64 - y.zero_point as i64) as f32,
                hi: (*max as i64 - y.zero_point as i64) as f32,
                zero: y.zero_point,
            },
            (QOutput::Quantized { y, min, max }, QFlavor::Tflite) => {
                let (mult, shift) = (0..channels)
                    .map(|c| {
                        quantize_multiplier(
                            q.x.scale as f64 * per(c) as f64 * q.alpha as f64 / y.scale as f64,
                        )
                    })
                    .unzip();
                Requant::Tflite {
                    mult,
                    shift,
                    zero: y.zero_point,
                    min: *min,
                    max: *max,
                }
            }
        }
    }

    /// `out[j] = apply(c, acc[j] + fix)` for a run of one channel's accumulators, written
    /// as plain loops per variant so they vectorise.
    pub fn apply_row(&self, c: usize, acc: &[i32], fix: i32, out: &mut [f32]) {
        match self {
            Requant::Onnx {
                scale,
                lo,
                hi,
                zero,
            } => {
                let (s, lo, hi, z) = (scale[c], *lo, *hi, *zero as f32);
                if lo >= -SMALL && hi <= SMALL {
                    for (o, &a) in out.iter_mut().zip(acc) {
                        let v = (a.wrapping_add(fix) as f32 * s).max(lo).min(hi);
                        *o = round_half_even_small(v) + z;
                    }
                } else {
                    for (o, &a) in out.iter_mut().zip(acc) {
                        *o = self.apply(c, a.wrapping_add(fix));
                    }
                }
            }
            _ => {
                for (o, &a) in out.iter_mut().zip(acc) {
                    *o = self.apply(c, a.wrapping_add(fix));
                }
            }
        }
    }

    /// The output value of accumulator `acc` of channel `c`.
    #[inline]
    pub fn apply(&self, c: usize, acc: i32) -> f32 {
        match self {
            Requant::Onnx {
                scale,
                lo,
                hi,
                zero,
            } => {
                // MLAS clamps to the zero-point-adjusted range, then rounds half to even.
                let v = (acc as f32 * scale[c]).max(*lo).min(*hi);
                if v.abs() <= SMALL {
                    round_half_even_small(v) + *zero as f32
                } else {
                    // Only wide (16/32-bit) output types get here.
                    (libm::rintf(v) as i64 + *zero as i64) as f32
                }
            }
            Requant::Tflite {
                mult,
                shift,
                zero,
                min,
                max,
            } => multiply_by_quantized_multiplier(acc, mult[c], shift[c])
                .saturating_add(*zero)
                .clamp(*min, *max) as f32,
            Requant::Accumulator => acc as f32,
            Requant::Real(s) => acc as f32 * s[c],
        }
    }
}

/// `round(x / scale) + zero_point`, saturated.
pub fn quantize(x: &Tensor, q: QParam, min: i32, max: i32, flavor: QFlavor) -> Tensor {
    let zp = q.zero_point as i64;
    let (lo, hi) = ((min as i64 - zp) as f32, (max as i64 - zp) as f32);
    let data = x
        .data
        .iter()
        .map(|&v| {
            let r = v / q.scale;
            match flavor {
                // MLAS clamps before converting (NaN becomes the low bound there too).
                QFlavor::Onnx => {
                    let c = if r.is_nan() { lo } else { r.max(lo).min(hi) };
                    (libm::rintf(c) as i64 + zp).clamp(min as i64, max as i64) as f32
                }
                // TFLite: static_cast<int32>(round(v / scale)) + zero_point, then clamp.
                QFlavor::Tflite => {
                    let r = libm::roundf(r);
                    let i = if r.is_nan() {
                        0
                    } else {
                        r.clamp(i32::MIN as f32, i32::MAX as f32) as i32
                    };
                    i.saturating_add(q.zero_point).clamp(min, max) as f32
                }
            }
        })
        .collect();
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

/// `scale * (q - zero_point)`.
pub fn dequantize(x: &Tensor, q: QParam) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data: x
            .data
            .iter()
            .map(|&v| (v as i64 - q.zero_point as i64) as f32 * q.scale)
            .collect(),
    }
}

/// Weights minus their zero points, as i16 rows of `k` (one row per output channel).
pub fn centred_weights(w: &Tensor, q: &QLinear, rows: usize) -> Vec<i16> {
    let k = w.len().checked_div(rows).unwrap_or(0);
    w.data
        .iter()
        .enumerate()
        .map(|(i, &v)| (v as i32).wrapping_sub(pick(&q.w_zero, i / k.max(1))) as i16)
        .collect()
}

/// acc[o][p] = bias[o] + Σ_k w[o][k] · col[k][p] over rows o of `w` (k each), in i32
/// with the wrap-around the reference engines' i32 accumulators have.
fn igemm(w: &[i16], k: usize, col: &[i16], p: usize, bias: &[i32], o0: usize, acc: &mut [i32]) {
    for (r, row) in acc.chunks_mut(p).enumerate() {
        let b = bias.get(o0 + r).copied().unwrap_or(0);
        row.fill(b);
        let wr = &w[r * k..(r + 1) * k];
        for (kk, &wv) in wr.iter().enumerate() {
            if wv == 0 {
                continue;
            }
            let wv = wv as i32;
            for (a, &x) in row.iter_mut().zip(&col[kk * p..(kk + 1) * p]) {
                *a = a.wrapping_add(wv * x as i32);
            }
        }
    }
}

/// Integer convolution (portable): im2col of `x − x_zero` (so padding contributes 0, as
/// padding with the zero point does), an i32 GEMM, then requantisation per channel.
pub fn qconv2d(x: &Tensor, w: &Tensor, c: &Conv, q: &QLinear, out_shape: &[usize]) -> Tensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (o, cg) = (w.shape[0], w.shape[1]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let g = c.groups;
    let og = o / g;
    let k = cg * c.kernel[0] * c.kernel[1];
    let p = oh * ow;
    let wq = centred_weights(w, q, o);
    let req = Requant::new(q, o);
    let zx = q.x.zero_point as f32;
    let xs: Vec<f32> = x.data.iter().map(|&v| v - zx).collect();
    let mut out = vec![0f32; n * o * p];
    let mut colf = vec![0f32; k * p];
    let mut col = vec![0i16; k * p];
    let mut acc = vec![0i32; og * p];
    for b in 0..n {
        for gi in 0..g {
            let xg = &xs[(b * cin + gi * cg) * h * wd..(b * cin + (gi + 1) * cg) * h * wd];
            crate::conv::im2col(xg, [h, wd], c, [oh, ow], 0, p, &mut colf);
            for (d, &s) in col.iter_mut().zip(&colf) {
                *d = s as i16;
            }
            let o0 = gi * og;
            igemm(
                &wq[o0 * k..(o0 + og) * k],
                k,
                &col,
                p,
                &q.bias,
                o0,
                &mut acc,
            );
            let dst = &mut out[(b * o + o0) * p..(b * o + o0 + og) * p];
            for (r, (drow, arow)) in dst.chunks_mut(p).zip(acc.chunks(p)).enumerate() {
                for (d, &a) in drow.iter_mut().zip(arow) {
                    *d = req.apply(o0 + r, a);
                }
            }
        }
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// Integer matmul of `a` [.., M, K] by a constant `b` [K, N] (portable).
pub fn qmatmul(a: &Tensor, b: &Tensor, q: &QLinear, out_shape: &[usize]) -> Tensor {
    let (kd, nd) = (b.shape[0], b.shape[1]);
    let m = a.len().checked_div(kd).unwrap_or(0);
    let za = q.x.zero_point;
    let req = Requant::new(q, nd);
    // Columns of b are the output channels: centre and transpose them to rows.
    let mut bt = vec![0i16; nd * kd];
    for kk in 0..kd {
        for j in 0..nd {
            bt[j * kd + kk] = (b.data[kk * nd + j] as i32).wrapping_sub(pick(&q.w_zero, j)) as i16;
        }
    }
    let mut out = vec![0f32; m * nd];
    for i in 0..m {
        let row: Vec<i32> = a.data[i * kd..(i + 1) * kd]
            .iter()
            .map(|&v| (v as i32).wrapping_sub(za))
            .collect();
        for j in 0..nd {
            let mut acc = q.bias.get(j).copied().unwrap_or(0);
            for (x, &wv) in row.iter().zip(&bt[j * kd..(j + 1) * kd]) {
                acc = acc.wrapping_add(x.wrapping_mul(wv as i32));
            }
            out[i * nd + j] = req.apply(j, acc);
        }
    }
    Tensor {
        shape: out_shape.to_vec(),
        data: out,
    }
}

/// Quantized Add / Mul with numpy broadcasting.
pub fn qbinary(a: &Tensor, b: &Tensor, p: &QBinary, out_shape: &[usize]) -> Tensor {
    let ea;
    let a = if a.shape == out_shape {
        a
    } else {
        ea = crate::layout::expand(a, out_shape);
        &ea
    };
    let eb;
    let b = if b.shape == out_shape {
        b
    } else {
        eb = crate::layout::expand(b, out_shape);
        &eb
    };
    let (za, zb, zy) = (p.a.zero_point, p.b.zero_point, p.y.zero_point);
    let (min, max) = (p.min, p.max);
    // One monomorphised loop per arithmetic, so each compiles to a tight loop.
    let zip = |f: &dyn Fn(i32, i32) -> i32| -> Vec<f32> {
        a.data
            .iter()
            .zip(&b.data)
            .map(|(&x, &y)| f(x as i32, y as i32).clamp(min, max) as f32)
            .collect()
    };
    let data = match (p.flavor, p.op) {
        // MLAS's QLinearAdd / QLinearMul reference loops: dequantise in f32, combine,
        // divide by the output scale, round half to even (clamping first, to the
        // zero-point-adjusted range, gives the same integers and keeps the rounding exact).
        (QFlavor::Onnx, op) => {
            let (sa, sb, sy) = (p.a.scale, p.b.scale, p.y.scale);
            let lo = (min as i64 - zy as i64) as f32;
            let hi = (max as i64 - zy as i64) as f32;
            let small = lo >= -SMALL && hi <= SMALL;
            let mul = op == BinaryOp::Mul;
            a.data
                .iter()
                .zip(&b.data)
                .map(|(&x, &y)| {
                    let va = sa * (x as i64 - za as i64) as f32;
                    let vb = sb * (y as i64 - zb as i64) as f32;
                    let v = if mul { va * vb } else { va + vb };
                    let r = (v / sy).max(lo).min(hi);
                    let r = if small {
                        round_half_even_small(r)
                    } else {
                        libm::rintf(r)
                    };
                    (r as i64 + zy as i64).clamp(min as i64, max as i64) as f32
                })
                .collect()
        }
        // TFLite int8 MUL: one multiplier for sa·sb/sy on the integer product.
        (QFlavor::Tflite, BinaryOp::Mul) => {
            let (m, s) =
                quantize_multiplier(p.a.scale as f64 * p.b.scale as f64 / p.y.scale as f64);
            zip(&|x, y| {
                let p = x.wrapping_sub(za).wrapping_mul(y.wrapping_sub(zb));
                multiply_by_quantized_multiplier(p, m, s).saturating_add(zy)
            })
        }
        // TFLite int8 ADD: inputs shifted left by 20 bits, each rescaled to twice the
        // larger input scale, summed, then rescaled to the output.
        (QFlavor::Tflite, _) => {
            let left = 20;
            let twice_max = 2.0 * (p.a.scale as f64).max(p.b.scale as f64);
            let (ma, sa) = quantize_multiplier(p.a.scale as f64 / twice_max);
            let (mb, sb) = quantize_multiplier(p.b.scale as f64 / twice_max);
            let (my, sy) =
                quantize_multiplier(twice_max / ((1i64 << left) as f64 * p.y.scale as f64));
            zip(&|x, y| {
                let a = multiply_by_quantized_multiplier(x.wrapping_sub(za) << left, ma, sa);
                let b = multiply_by_quantized_multiplier(y.wrapping_sub(zb) << left, mb, sb);
                multiply_by_quantized_multiplier(a.wrapping_add(b), my, sy).saturating_add(zy)
            })
        }
    };
    Tensor {
        shape: out_shape.to_vec(),
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tflite_multiplier_matches_reference_values() {
        // QuantizeMultiplier(0.5) = (2^30, 0); (0.25) = (2^30, -1); (1.5) = (3·2^29, 1).
        assert_eq!(quantize_multiplier(0.5), (1 << 30, 0));
        assert_eq!(quantize_multiplier(0.25), (1 << 30, -1));
        assert_eq!(quantize_multiplier(1.5), (3 << 29, 1));
        let (m, s) = quantize_multiplier(0.5);
        // With shift 0 only the doubling high multiply rounds, and it rounds halves
        // upward (gemmlowp's nudge makes -1.5 truncate to -1).
        assert_eq!(multiply_by_quantized_multiplier(3, m, s), 2);
        assert_eq!(multiply_by_quantized_multiplier(-3, m, s), -1);
        // 5 · 0.25 rounds twice (2.5 -> 3, then 1.5 -> 2): the reference's double rounding.
        assert_eq!(multiply_by_quantized_multiplier(5, m, s - 1), 2);
        let (m, s) = quantize_multiplier(0.003);
        for x in [-100_000, -3333, 0, 1, 12_345, 99_999] {
            let want = libm::round(x as f64 * 0.003) as i32;
            assert!((multiply_by_quantized_multiplier(x, m, s) - want).abs() <= 1);
        }
    }

    #[test]
    fn rounding_divide_is_half_away_from_zero() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3);
        assert_eq!(rounding_divide_by_pot(-5, 1), -3);
        assert_eq!(rounding_divide_by_pot(4, 1), 2);
        assert_eq!(rounding_divide_by_pot(-7, 2), -2);
    }

    #[test]
    fn onnx_quantize_rounds_half_to_even_and_saturates() {
        let x = Tensor::new(vec![5], vec![0.5, 1.5, 2.5, -300.0, 1e9]).unwrap();
        let q = QParam {
            scale: 1.0,
            zero_point: 0,
        };
        let y = quantize(&x, q, -128, 127, QFlavor::Onnx);
        assert_eq!(y.data, vec![0.0, 2.0, 2.0, -128.0, 127.0]);
        let y = quantize(&x, q, -128, 127, QFlavor::Tflite);
        assert_eq!(y.data, vec![1.0, 2.0, 3.0, -128.0, 127.0]);
    }

    #[test]
    fn extreme_zero_points_saturate_instead_of_overflowing() {
        let x = Tensor::new(vec![3], vec![-1e30, 0.0, 1e30]).unwrap();
        for zp in [i32::MIN, -1, i32::MAX] {
            let q = QParam {
                scale: 1.0,
                zero_point: zp,
            };
            for flavor in [QFlavor::Onnx, QFlavor::Tflite] {
                let y = quantize(&x, q, i32::MIN, i32::MAX, flavor);
                assert!(y.data.iter().all(|v| v.is_finite()));
            }
            let d = dequantize(&Tensor::new(vec![1], vec![2e9]).unwrap(), q);
            assert!(d.data[0].is_finite());
            let b = QBinary {
                op: BinaryOp::Add,
                a: q,
                b: q,
                y: q,
                min: -128,
                max: 127,
                flavor: QFlavor::Tflite,
            };
            let t = Tensor::new(vec![2], vec![127.0, -128.0]).unwrap();
            let y = qbinary(&t, &t, &b, &[2]);
            assert!(y.data.iter().all(|v| (-128.0..=127.0).contains(v)));
        }
    }
}

//! The hardened scheme's exact layers (docs/schemes.md, "hardened").
//!
//! Masking: the real input x is quantised with a scale σ chosen per inference
//! (σ = max|x| / (2^(b−1) − 1), so nothing ever clips), its channels are put in the
//! layer's secret public order, and a one-time mask r, uniform over Z/2^64, is added:
//! x̃ = x_q + r. Any single x̃ is independent of x.
//!
//! The accelerator returns T' = Wq ⋆ x̃ over Z/2^64. The core subtracts the precomputed
//! correction Wq ⋆ r and reads T = T' − Wq ⋆ r as a signed integer: the exact Wq ⋆ x_q,
//! whose size the conversion bounded (|T| ≤ bound < 2^60), so it never wraps.
//!
//! Integrity (Freivalds over the prime field F_p, p = 2^61 − 1): with u secret and uniform
//! over the public output channels (from the pool entry, with the folded vector
//! f = uᵀWq precomputed there) and v = a ⊗ b uniform over output rows and columns (drawn
//! for this inference), the core checks
//!     Σ_o u_o Σ_{row,col} a_row b_col T[o, row, col]  ==  Σ_k f_k G_k,
//!     G_k = Σ_{row,col} a_row b_col x_q[window(row, col), k]
//! in one pass over x_q (made while masking) and one over T (made while restoring). Any
//! T ≠ Wq ⋆ x_q with |T| ≤ bound differs from it by less than p in every entry, so is a
//! nonzero matrix over F_p, and the check (a polynomial of degree 3 in u, a, b) passes it
//! with probability ≤ 3/p < 2^-59. The range check and the comparison form one verdict
//! that is reported only after the whole pass: a tampered correction must not let the
//! host learn anything about T from which check failed, or when.
// Index loops here walk several arrays laid out by one geometry; iterators would hide
// which index is which.
#![allow(clippy::needless_range_loop)]
use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::{Activation, IntTensor, RingTensor, Tensor};

use shadownet_kernels::conv::valid_range;

use crate::crypto::Keystream;
use crate::error::TeeError;
use crate::field::{self, Dot};
use crate::format::{ExactLayer, LinearKind};

/// Keystream domains (the ChaCha8 nonce's upper word) of the one-time masks and of the
/// pool's corrections.
pub const DOMAIN_MASK: u32 = 1;
pub const DOMAIN_CORRECTION: u32 = 2;
pub const DOMAIN_CHECK: u32 = 3;

/// The shapes of one exact layer, in its public layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Geometry {
    /// Conv (`transposed: false`, weights [M, C/g, kh, kw]) or ConvTranspose
    /// (`transposed: true`, weights [C, M/g, kh, kw]) on NCHW.
    Conv {
        transposed: bool,
        n: usize,
        c: usize,
        hw: [usize; 2],
        m: usize,
        ohw: [usize; 2],
        groups: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        pads: [usize; 2],
    },
    /// x [rows, k] · W [k, m].
    Dense { rows: usize, k: usize, m: usize },
}

impl Geometry {
    /// From a public layer's kind and shapes (already checked against each other by
    /// `format::validate_public`).
    pub fn new(kind: &LinearKind, input: &[usize], weight: &[usize], output: &[usize]) -> Self {
        match kind {
            LinearKind::Conv(cv) => Geometry::Conv {
                transposed: false,
                n: input[0],
                c: input[1],
                hw: [input[2], input[3]],
                m: weight[0],
                ohw: [output[2], output[3]],
                groups: cv.groups,
                kernel: cv.kernel,
                stride: cv.stride,
                dilation: cv.dilation,
                pads: [cv.pads[0], cv.pads[1]],
            },
            LinearKind::ConvTranspose(cv) => Geometry::Conv {
                transposed: true,
                n: input[0],
                c: input[1],
                hw: [input[2], input[3]],
                m: output[1],
                ohw: [output[2], output[3]],
                groups: cv.groups,
                kernel: cv.kernel,
                stride: cv.stride,
                dilation: cv.dilation,
                pads: [cv.pads[0], cv.pads[1]],
            },
            LinearKind::MatMul => Geometry::Dense {
                rows: input[..input.len().saturating_sub(1)].iter().product(),
                k: weight[0],
                m: weight[1],
            },
        }
    }

    /// Public output channels.
    pub fn m(&self) -> usize {
        match *self {
            Geometry::Conv { m, .. } | Geometry::Dense { m, .. } => m,
        }
    }

    /// Length of the folded vector f and of G: input channels × kernel taps.
    pub fn k_total(&self) -> usize {
        match *self {
            Geometry::Conv { c, kernel, .. } => c * kernel[0] * kernel[1],
            Geometry::Dense { k, .. } => k,
        }
    }

    /// (rows, cols) of the check vector v = a ⊗ b over output positions.
    pub fn check_dims(&self) -> (usize, usize) {
        match *self {
            Geometry::Conv { n, ohw, .. } => (n * ohw[0], ohw[1]),
            Geometry::Dense { rows, .. } => (rows, 1),
        }
    }
}

/// The online half of one layer's check vectors: a over output rows, b over columns.
pub struct CheckVectors {
    pub a: Vec<u64>,
    pub b: Vec<u64>,
}

impl CheckVectors {
    pub fn draw(g: &Geometry, ks: &mut Keystream) -> Self {
        let (rows, cols) = g.check_dims();
        CheckVectors {
            a: field_elements(ks, rows),
            b: field_elements(ks, cols),
        }
    }
}

/// `n` uniform elements of F_p (rejection sampling on 61-bit words).
pub fn field_elements(ks: &mut Keystream, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u64; 64];
    while out.len() < n {
        ks.fill_words(&mut buf);
        out.extend(
            buf.iter()
                .map(|w| w >> 3)
                .filter(|&v| v < field::P)
                .take(n - out.len()),
        );
    }
    out
}

/// f = uᵀ·Wq over F_p: for every input channel and kernel tap, Σ over the public output
/// channels reading it of u_o · Wq.
pub fn fold(g: &Geometry, w: &IntTensor, u: &[u64]) -> Vec<u64> {
    let mut f = vec![0u64; g.k_total()];
    match *g {
        Geometry::Conv {
            transposed: false,
            c,
            m,
            groups,
            kernel,
            ..
        } => {
            let (cg, og, taps) = (c / groups, m / groups, kernel[0] * kernel[1]);
            let per = cg * taps;
            for gi in 0..groups {
                let dst = &mut f[gi * per..(gi + 1) * per];
                let mut acc = vec![Dot::default(); per];
                for o in gi * og..(gi + 1) * og {
                    let row = &w.data[o * per..(o + 1) * per];
                    for (a, &wv) in acc.iter_mut().zip(row) {
                        a.add(u[o], field::from_i64(wv as i64));
                    }
                }
                for (d, a) in dst.iter_mut().zip(&acc) {
                    *d = a.value();
                }
            }
        }
        Geometry::Conv {
            transposed: true,
            c,
            m,
            groups,
            kernel,
            ..
        } => {
            let (cg, og, taps) = (c / groups, m / groups, kernel[0] * kernel[1]);
            for ci in 0..c {
                let gi = ci / cg;
                for t in 0..taps {
                    let mut d = Dot::default();
                    for oo in 0..og {
                        let wv = w.data[(ci * og + oo) * taps + t];
                        d.add(u[gi * og + oo], field::from_i64(wv as i64));
                    }
                    f[ci * taps + t] = d.value();
                }
            }
        }
        Geometry::Dense { k, m, .. } => {
            for (kk, fk) in f.iter_mut().enumerate().take(k) {
                let mut d = Dot::default();
                for (o, &wv) in w.data[kk * m..(kk + 1) * m].iter().enumerate() {
                    d.add(u[o], field::from_i64(wv as i64));
                }
                *fk = d.value();
            }
        }
    }
    f
}

/// Output row `oy` that input row `iy` feeds through kernel row `ky` of a conv, if any.
#[inline]
fn conv_out_index(
    i: usize,
    k: usize,
    stride: usize,
    dil: usize,
    pad: usize,
    out: usize,
) -> Option<usize> {
    let num = (i + pad).checked_sub(k * dil)?;
    (num % stride == 0 && num / stride < out).then_some(num / stride)
}

/// Output index a transposed conv writes from input `i` through tap `k`, if inside.
#[inline]
fn convt_out_index(
    i: usize,
    k: usize,
    stride: usize,
    dil: usize,
    pad: usize,
    out: usize,
) -> Option<usize> {
    let o = (i * stride + k * dil).checked_sub(pad)?;
    (o < out).then_some(o)
}

/// A layer's input after masking: what goes to the accelerator, the check's G, and σ.
pub struct Masked {
    pub x: RingTensor,
    pub g: Vec<u64>,
    pub scale: f32,
}

/// 1.5·2^52: adding it to an f64 below 2^51 in magnitude rounds to the nearest integer
/// (ties to even), which then sits in the low mantissa bits. No rounding instruction is
/// needed, so the loop vectorises on any target.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

#[inline(always)]
fn round_i64(v: f64) -> i64 {
    ((v + ROUND_MAGIC).to_bits() as i64).wrapping_sub(ROUND_MAGIC.to_bits() as i64)
}

/// A signed value with |v| < 2^61 as an element of F_p, without a branch.
#[inline(always)]
fn to_field(v: i64) -> u64 {
    (v + ((v >> 63) & field::P as i64)) as u64
}

/// Σ aᵢ·bᵢ mod p over reduced elements: 32 products (each < 2^122) summed exactly in
/// u128, then folded; a tight loop with no per-element bookkeeping.
pub fn dot_p(a: &[u64], b: &[u64]) -> u64 {
    let mut total = 0u64;
    for (ca, cb) in a.chunks(32).zip(b.chunks(32)) {
        let mut acc = 0u128;
        for (&x, &y) in ca.iter().zip(cb) {
            acc += x as u128 * y as u128;
        }
        total = field::add(total, field::reduce(acc));
    }
    total
}

/// Quantises, reorders and masks the real input `x` of an exact layer (see the module
/// docs), accumulating G for the check in the same pass.
pub fn mask_input(
    layer: &ExactLayer,
    geo: &Geometry,
    public_in: &[usize],
    x: &Tensor,
    mask_key: &[u8; 32],
    stream: u64,
    chk: &CheckVectors,
) -> Result<Masked, TeeError> {
    let n = x.data.len();
    if field_count(public_in) != Some(n) {
        return Err(TeeError::CorruptSecret);
    }
    // σ from the largest magnitude: a NaN or infinity cannot be represented at all.
    let mut peak = 0f32;
    let mut finite = true;
    for &v in &x.data {
        finite &= v.is_finite();
        peak = peak.max(v.abs());
    }
    if !finite {
        return Err(TeeError::OutOfRange);
    }
    let levels = ((1u64 << (layer.act_bits - 1)) - 1) as i64;
    let scale = if peak > 0.0 {
        peak as f64 / levels as f64
    } else {
        1.0
    };
    let inv = 1.0 / scale;
    // |v·inv| ≤ levels by the choice of σ; the clamp only absorbs the rounding of inv.
    let quant = |v: f32| round_i64(v as f64 * inv).clamp(-levels, levels);
    let mut out = vec![0u64; n];
    Keystream::new(mask_key, stream, DOMAIN_MASK).fill_words(&mut out);
    let mut g = vec![0u64; geo.k_total()];
    match *geo {
        Geometry::Conv {
            transposed,
            n: batch,
            c,
            hw: [h, w],
            ohw: [oh, ow],
            kernel: [kh, kw],
            stride: [sh, sw],
            dilation: [dh, dw],
            pads: [pt, pl],
            ..
        } => {
            let plane = h * w;
            let mut qf = vec![0u64; plane];
            let mut gathered = vec![0u64; ow];
            let mut rsum = vec![0u64; kw];
            let mut acc = vec![0u64; kh * kw];
            for b in 0..batch {
                for ch in 0..c {
                    let src = layer.in_perm.get(ch).map_or(ch, |&p| p as usize);
                    let xin = &x.data[(b * c + src) * plane..(b * c + src + 1) * plane];
                    let dst = &mut out[(b * c + ch) * plane..(b * c + ch + 1) * plane];
                    for ((d, f), &v) in dst.iter_mut().zip(qf.iter_mut()).zip(xin) {
                        let q = quant(v);
                        *d = d.wrapping_add(q as u64);
                        *f = to_field(q);
                    }
                    acc.iter_mut().for_each(|a| *a = 0);
                    for iy in 0..h {
                        let row = &qf[iy * w..(iy + 1) * w];
                        // Σ_col b_col·x over the columns kernel column kx reads: the same
                        // for every kernel row, so made once per input row.
                        for (kx, rs) in rsum.iter_mut().enumerate() {
                            *rs = if transposed {
                                let mut s = 0u64;
                                for (ix, &xv) in row.iter().enumerate() {
                                    if let Some(ox) = convt_out_index(ix, kx, sw, dw, pl, ow) {
                                        s = field::add(s, field::mul(chk.b[ox], xv));
                                    }
                                }
                                s
                            } else {
                                let off = (kx * dw) as isize - pl as isize;
                                let (lo, hi) = valid_range(0, ow, sw, off, w);
                                if sw == 1 {
                                    let first = (lo as isize + off) as usize;
                                    dot_p(&chk.b[lo..hi], &row[first..first + (hi - lo)])
                                } else {
                                    for (gv, ox) in gathered.iter_mut().zip(lo..hi) {
                                        *gv = row[((ox * sw) as isize + off) as usize];
                                    }
                                    dot_p(&chk.b[lo..hi], &gathered[..hi - lo])
                                }
                            };
                        }
                        for ky in 0..kh {
                            let oy = if transposed {
                                convt_out_index(iy, ky, sh, dh, pt, oh)
                            } else {
                                conv_out_index(iy, ky, sh, dh, pt, oh)
                            };
                            let Some(oy) = oy else { continue };
                            let a = chk.a[b * oh + oy];
                            for (kx, &rs) in rsum.iter().enumerate() {
                                let t = &mut acc[ky * kw + kx];
                                *t = field::add(*t, field::mul(a, rs));
                            }
                        }
                    }
                    for (t, &a) in acc.iter().enumerate() {
                        let k = ch * kh * kw + t;
                        g[k] = field::add(g[k], a);
                    }
                }
            }
        }
        Geometry::Dense { rows, k, .. } => {
            for r in 0..rows {
                let xin = &x.data[r * k..(r + 1) * k];
                let dst = &mut out[r * k..(r + 1) * k];
                let a = chk.a[r];
                for (kk, (d, gk)) in dst.iter_mut().zip(g.iter_mut()).enumerate() {
                    let src = layer.in_perm.get(kk).map_or(kk, |&p| p as usize);
                    let q = quant(xin[src]);
                    *d = d.wrapping_add(q as u64);
                    *gk = field::add(*gk, field::mul(a, to_field(q)));
                }
            }
        }
    }
    Ok(Masked {
        x: RingTensor {
            shape: public_in.to_vec(),
            data: out,
        },
        g,
        scale: scale as f32,
    })
}

fn field_count(shape: &[usize]) -> Option<usize> {
    crate::format::checked_numel(shape)
}

/// Σ_k f_k·G_k over F_p.
pub fn expected_sum(f: &[u64], g: &[u64]) -> u64 {
    dot_p(f, g)
}

/// The correction of a layer's mask: encrypted as the pool entry's body holds it (read and
/// decrypted word by word in the restoring pass), or in the clear (slow mode).
pub enum Correction<'a> {
    Sealed {
        bytes: &'a [u8],
        key: &'a [u8; 32],
        stream: u64,
    },
    Plain(&'a [u64]),
}

/// Little-endian u64 words from bytes (the length a multiple of 8, checked by callers).
#[inline(always)]
fn words_into(bytes: &[u8], out: &mut [u64]) {
    for (w, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    }
}

/// One row of the restore pass: T = y − c into `t` (as f32), whether every |T| ≤ bound,
/// and Σ b_j·T_j over F_p.
#[inline(always)]
fn restore_row(y: &[u64], c: &[u64], b: &[u64], bound: u64, t: &mut [f32]) -> (bool, u64) {
    let mut ok = true;
    let mut total = 0u64;
    let lim = bound.min(1 << 60) as i64;
    let n = y.len();
    let mut j0 = 0;
    while j0 < n {
        let j1 = (j0 + 32).min(n);
        let mut acc = 0u128;
        for j in j0..j1 {
            let v = y[j].wrapping_sub(c[j]) as i64;
            ok &= v.unsigned_abs() <= bound;
            // Out-of-range values fail the verdict anyway; clamped, they stay valid field
            // elements so the pass runs to its end whatever the host sent.
            acc += b[j] as u128 * to_field(v.clamp(-lim, lim)) as u128;
            t[j] = v as f32;
        }
        total = field::add(total, field::reduce(acc));
        j0 = j1;
    }
    (ok, total)
}

/// Restores an exact layer's real output from the accelerator's `y` and the correction
/// `c` (both public layout), checking it as the module docs describe. `u` are the check's
/// output-channel coefficients, `expected` = Σ f·G from the masking pass, `scale` = σ.
#[allow(clippy::too_many_arguments)]
pub fn restore(
    layer: &ExactLayer,
    geo: &Geometry,
    public_layer: u32,
    y: &[u8],
    correction: Correction<'_>,
    u: &[u64],
    chk: &CheckVectors,
    expected: u64,
    scale: f32,
    real_shape: &[usize],
    bias: Option<&[f32]>,
    act: Option<Activation>,
) -> Result<Tensor, TeeError> {
    let m = geo.m();
    let (outer, inner) = match *geo {
        Geometry::Conv { n, ohw, .. } => (n, ohw[0] * ohw[1]),
        Geometry::Dense { rows, .. } => (rows, 1),
    };
    let len = outer * m * inner;
    let c_len = match &correction {
        Correction::Sealed { bytes, .. } => bytes.len() / 8,
        Correction::Plain(c) => c.len(),
    };
    if y.len() != len * 8 || c_len != len || u.len() != m {
        return Err(TeeError::BadResult {
            layer: public_layer,
        });
    }
    let mut stream = match &correction {
        Correction::Sealed { key, stream, .. } => {
            Some(Keystream::new(key, *stream, DOMAIN_CORRECTION))
        }
        Correction::Plain(_) => None,
    };
    // Rows of y and c, read once each (y straight from the host's buffer, c decrypted
    // into a row-sized buffer), then the verdict's parts and T as f32 (f32 keeps 24 bits
    // of every T, far below the restored output's error budget).
    let row_len = match *geo {
        Geometry::Conv { ohw: [_, ow], .. } => ow,
        Geometry::Dense { .. } => m,
    };
    let (mut yrow, mut crow) = (vec![0u64; row_len], vec![0u64; row_len]);
    let mut load = |at: usize, yrow: &mut [u64], crow: &mut [u64]| {
        words_into(&y[at * 8..(at + yrow.len()) * 8], yrow);
        match &correction {
            Correction::Sealed { bytes, .. } => {
                words_into(&bytes[at * 8..(at + crow.len()) * 8], crow);
                if let Some(ks) = stream.as_mut() {
                    ks.seek_word(at as u64);
                    ks.xor_words(crow);
                }
            }
            Correction::Plain(c) => crow.copy_from_slice(&c[at..at + crow.len()]),
        }
    };
    let mut in_range = true;
    let mut t32 = vec![0f32; len];
    let mut s1 = 0u64;
    match *geo {
        Geometry::Conv {
            n, ohw: [oh, ow], ..
        } => {
            for o in 0..m {
                let mut per_o = 0u64;
                for b in 0..n {
                    for oy in 0..oh {
                        let at = (b * m + o) * oh * ow + oy * ow;
                        load(at, &mut yrow, &mut crow);
                        let (ok, row) =
                            restore_row(&yrow, &crow, &chk.b, layer.bound, &mut t32[at..at + ow]);
                        in_range &= ok;
                        per_o = field::add(per_o, field::mul(chk.a[b * oh + oy], row));
                    }
                }
                s1 = field::add(s1, field::mul(u[o], per_o));
            }
        }
        Geometry::Dense { rows, .. } => {
            // Rows of m public outputs: Σ_o u_o·T[r, o] per row, weighted by a_r.
            for r in 0..rows {
                let at = r * m;
                load(at, &mut yrow, &mut crow);
                let (ok, row) = restore_row(&yrow, &crow, u, layer.bound, &mut t32[at..at + m]);
                in_range &= ok;
                s1 = field::add(s1, field::mul(chk.a[r], row));
            }
        }
    }
    // The single verdict (see the module docs).
    if !(in_range && s1 == expected) {
        return Err(TeeError::Integrity {
            layer: public_layer,
        });
    }
    unmix(layer, &t32, m, outer, inner, real_shape, scale, bias, act)
}

/// Positions per block of the unmixing: a group's public rows over a block stay in L1.
const UNMIX_BLOCK: usize = 256;

/// Every real channel = σ·Σ coeff·T[public] + bias, then the fused activation, group by
/// group over blocks of positions (each output block is a small dense product).
#[allow(clippy::too_many_arguments)]
fn unmix(
    layer: &ExactLayer,
    t: &[f32],
    m: usize,
    outer: usize,
    inner: usize,
    real_shape: &[usize],
    scale: f32,
    bias: Option<&[f32]>,
    act: Option<Activation>,
) -> Result<Tensor, TeeError> {
    let nreal: usize = layer.groups.iter().map(|g| g.real.len()).sum();
    let mut out = vec![0f32; outer * nreal * inner];
    if field_count(real_shape) != Some(out.len()) {
        return Err(TeeError::CorruptSecret);
    }
    for b in 0..outer {
        for g in &layer.groups {
            let h = g.public.len();
            for p0 in (0..inner).step_by(UNMIX_BLOCK) {
                let len = UNMIX_BLOCK.min(inner - p0);
                for (ri, &r) in g.real.iter().enumerate() {
                    let r = r as usize;
                    let at = (b * nreal + r) * inner + p0;
                    let dst = &mut out[at..at + len];
                    dst.fill(bias.map_or(0.0, |bv| bv[r]));
                    for (j, &q) in g.public.iter().enumerate() {
                        let k = g.coeffs[ri * h + j] * scale;
                        let from = (b * m + q as usize) * inner + p0;
                        for (d, &v) in dst.iter_mut().zip(&t[from..from + len]) {
                            *d += k * v;
                        }
                    }
                    if inner > 1 {
                        if let Some(a) = act {
                            shadownet_kernels::elementwise::activation_inplace(a, dst);
                        }
                    }
                }
            }
        }
    }
    if inner == 1 {
        if let Some(a) = act {
            shadownet_kernels::elementwise::activation_inplace(a, &mut out);
        }
    }
    Ok(Tensor {
        shape: real_shape.to_vec(),
        data: out,
    })
}

/// The public layout's mask r of layer `stream` (as `mask_input` adds it).
pub fn mask_words(mask_key: &[u8; 32], stream: u64, n: usize) -> RingTensor {
    let mut r = vec![0u64; n];
    Keystream::new(mask_key, stream, DOMAIN_MASK).fill_words(&mut r);
    RingTensor {
        shape: vec![n],
        data: r,
    }
}

/// Wq ⋆ r over Z/2^64 for the layer's mask r: what the correction chunk holds.
pub fn correction(
    kind: &LinearKind,
    public_in: &[usize],
    public_out: &[usize],
    w: &IntTensor,
    mask_key: &[u8; 32],
    stream: u64,
) -> Result<RingTensor, TeeError> {
    let n = field_count(public_in).ok_or(TeeError::CorruptPublic)?;
    let mut r = mask_words(mask_key, stream, n);
    r.shape = public_in.to_vec();
    let y = match kind {
        LinearKind::Conv(c) => shadownet_kernels::ring::conv2d(&r, w, c, public_out),
        LinearKind::ConvTranspose(c) => {
            shadownet_kernels::ring::conv_transpose2d(&r, w, c, public_out)
        }
        LinearKind::MatMul => shadownet_kernels::ring::matmul(&r, w),
    };
    if y.shape != public_out {
        return Err(TeeError::CorruptPublic);
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadownet_ir::{Conv, ConvTranspose};

    fn rnd(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    struct Case {
        kind: LinearKind,
        input: Vec<usize>,
        weight: Vec<usize>,
    }

    fn cases() -> Vec<Case> {
        let conv = |k: usize, s: usize, p: usize, d: usize, g: usize| Conv {
            kernel: [k, k],
            stride: [s, s],
            dilation: [d, d],
            pads: [p; 4],
            groups: g,
        };
        vec![
            Case {
                kind: LinearKind::Conv(conv(3, 1, 1, 1, 1)),
                input: vec![1, 3, 7, 6],
                weight: vec![5, 3, 3, 3],
            },
            Case {
                kind: LinearKind::Conv(conv(3, 2, 1, 1, 2)),
                input: vec![2, 4, 9, 8],
                weight: vec![6, 2, 3, 3],
            },
            Case {
                kind: LinearKind::Conv(conv(3, 1, 2, 2, 1)),
                input: vec![1, 2, 6, 6],
                weight: vec![3, 2, 3, 3],
            },
            Case {
                kind: LinearKind::ConvTranspose(ConvTranspose {
                    kernel: [3, 3],
                    stride: [2, 2],
                    dilation: [1, 1],
                    pads: [1; 4],
                    output_padding: [1, 1],
                    groups: 1,
                }),
                input: vec![1, 3, 4, 5],
                weight: vec![3, 4, 3, 3],
            },
            Case {
                kind: LinearKind::MatMul,
                input: vec![3, 10],
                weight: vec![10, 7],
            },
        ]
    }

    /// A layer whose taps read public channel i for real channel i, so `restore` returns
    /// T itself (times σ).
    fn identity_layer(m: usize, act_bits: u32, bound: u64) -> ExactLayer {
        ExactLayer {
            in_perm: Vec::new(),
            act_bits,
            bound,
            groups: (0..m)
                .map(|i| crate::format::MixGroup {
                    public: vec![i as u32],
                    real: vec![i as u32],
                    coeffs: vec![1.0],
                })
                .collect(),
        }
    }

    /// mask → accelerator (the ring kernels) → restore gives Wq ⋆ x_q exactly, and any
    /// change of one value of the result, by any amount, fails the check.
    #[test]
    fn exact_round_trip_and_every_single_error_is_caught() {
        let mut s = 0x1234_5678_9abc_def1u64;
        for case in cases() {
            let out = shadownet_ir::infer_shapes(
                "t",
                &case.kind.op(),
                &[case.input.clone(), case.weight.clone()],
            )
            .unwrap()
            .remove(0);
            let geo = Geometry::new(&case.kind, &case.input, &case.weight, &out);
            let w = IntTensor {
                shape: case.weight.clone(),
                data: (0..case.weight.iter().product::<usize>())
                    .map(|_| (rnd(&mut s) >> 40) as i32 - (1 << 23))
                    .collect(),
            };
            let layer = identity_layer(geo.m(), 24, 1 << 59);
            let x = Tensor {
                shape: case.input.clone(),
                data: (0..case.input.iter().product::<usize>())
                    .map(|_| (rnd(&mut s) % 2001) as f32 / 100.0 - 10.0)
                    .collect(),
            };
            let key = [3u8; 32];
            let mut ks = Keystream::new(&[4u8; 32], 0, DOMAIN_CHECK);
            let chk = CheckVectors::draw(&geo, &mut ks);
            let u = field_elements(&mut ks, geo.m());
            let f = fold(&geo, &w, &u);
            let masked = mask_input(&layer, &geo, &case.input, &x, &key, 7, &chk).unwrap();
            let expected = expected_sum(&f, &masked.g);
            let y = match &case.kind {
                LinearKind::Conv(c) => shadownet_kernels::ring::conv2d(&masked.x, &w, c, &out),
                LinearKind::ConvTranspose(c) => {
                    shadownet_kernels::ring::conv_transpose2d(&masked.x, &w, c, &out)
                }
                LinearKind::MatMul => shadownet_kernels::ring::matmul(&masked.x, &w),
            };
            let corr = correction(&case.kind, &case.input, &out, &w, &key, 7).unwrap();
            let real = restore(
                &layer,
                &geo,
                0,
                bytemuck::cast_slice(&y.data),
                Correction::Plain(&corr.data),
                &u,
                &chk,
                expected,
                masked.scale,
                &out,
                None,
                None,
            )
            .unwrap();
            // Exactly Wq ⋆ x_q: the same ring op on the unmasked quantised input, times σ.
            let r = mask_words(&key, 7, masked.x.data.len());
            let xq = RingTensor {
                shape: case.input.clone(),
                data: masked
                    .x
                    .data
                    .iter()
                    .zip(&r.data)
                    .map(|(a, b)| a.wrapping_sub(*b))
                    .collect(),
            };
            // x_q is x/σ rounded, within the quantisation range.
            for (&q, &v) in xq.data.iter().zip(&x.data) {
                let q = q as i64;
                assert!(
                    (q as f64 - v as f64 / masked.scale as f64).abs()
                        <= 0.51 + 1e-6 * q.abs() as f64
                );
                assert!(q.unsigned_abs() < 1 << 23);
            }
            let want = match &case.kind {
                LinearKind::Conv(c) => shadownet_kernels::ring::conv2d(&xq, &w, c, &out),
                LinearKind::ConvTranspose(c) => {
                    shadownet_kernels::ring::conv_transpose2d(&xq, &w, c, &out)
                }
                LinearKind::MatMul => shadownet_kernels::ring::matmul(&xq, &w),
            };
            for (a, &b) in real.data.iter().zip(&want.data) {
                let b = (b as i64) as f32 * masked.scale;
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs(),
                    "{:?}: {a} vs {b}",
                    case.kind
                );
            }
            // One wrong value anywhere, small or large, is caught.
            for (at, delta) in [
                (0usize, 1u64),
                (y.data.len() / 2, 1 << 40),
                (y.data.len() - 1, 1 << 63),
            ] {
                let mut bad = y.clone();
                bad.data[at] = bad.data[at].wrapping_add(delta);
                let e = restore(
                    &layer,
                    &geo,
                    3,
                    bytemuck::cast_slice(&bad.data),
                    Correction::Plain(&corr.data),
                    &u,
                    &chk,
                    expected,
                    masked.scale,
                    &out,
                    None,
                    None,
                );
                assert_eq!(
                    e.unwrap_err(),
                    TeeError::Integrity { layer: 3 },
                    "{:?}",
                    case.kind
                );
            }
            // Masked inputs are not the quantised ones.
            assert!(
                masked
                    .x
                    .data
                    .iter()
                    .zip(&xq.data)
                    .filter(|(m, q)| m == q)
                    .count()
                    <= 1
            );
        }
    }

    #[test]
    fn input_channels_are_sent_in_the_secret_order() {
        let case = &cases()[0];
        let out = vec![1, 5, 7, 6];
        let geo = Geometry::new(&case.kind, &case.input, &case.weight, &out);
        let mut layer = identity_layer(5, 20, 1 << 59);
        layer.in_perm = vec![2, 0, 1];
        let x = Tensor {
            shape: case.input.clone(),
            data: (0..126).map(|i| i as f32).collect(),
        };
        let chk = CheckVectors {
            a: vec![1; 7],
            b: vec![1; 6],
        };
        let key = [0u8; 32];
        let m = mask_input(&layer, &geo, &case.input, &x, &key, 0, &chk).unwrap();
        let r = mask_words(&key, 0, 126);
        let plain: Vec<i64> =
            m.x.data
                .iter()
                .zip(&r.data)
                .map(|(a, b)| a.wrapping_sub(*b) as i64)
                .collect();
        // Public channel 0 holds real channel 2 (values 84..126), quantised.
        let q = |v: f32| (v as f64 / m.scale as f64).round() as i64;
        assert_eq!(plain[0], q(84.0));
        assert_eq!(plain[42], q(0.0));
        assert_eq!(plain[84], q(42.0));
    }
}

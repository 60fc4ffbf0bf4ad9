//! Randomised verification of an outsourced linear layer (Freivalds' check).
//!
//! For fresh secret vectors u over output channels (|u_o| ∈ [0.5, 1], random sign) and v
//! over output positions (v_p ∈ [0.5, 1]), the trusted core compares
//!   s₁ = Σ_{o,p} u_o·v_p·y'_{o,p}            (from the accelerator's reply, M·P work)
//!   s₂ = Σ_k (Σ_o u_o·W'_{o,k}) · G_k        (G_k = Σ_p v_p·x̃_{window(p), k}: K·P work)
//! which agree for y' = L(x̃, W'), at 1/M of the layer's multiply-adds and with no im2col.
//! Tolerance, for f32 rounding in the accelerator:
//!   τ = TAU · ε · √K · ‖u ⊙ n‖ · √(R · Σ x̃²),
//! n_o = ‖W'_o‖, K the reduction length, R the most windows one input element falls in;
//! ‖u ⊙ n‖·√(R·Σx̃²) bounds √Σ_p (v_p·Σ_o|u_o|‖W'_o‖‖x̃_w(p)‖)², the scale f32 rounding acts
//! on, and √K is the random-walk growth of that rounding. Any error E with
//! |Σ u_o v_p E_{o,p}| > τ is caught; a single wrong value e is caught when |e| > 4τ
//! (|u_o v_p| ≥ 1/4), whatever u and v are.
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::Tensor;

use crate::format::{LinearKind, PublicLayer};
use crate::onetime::CheckRng;

/// Safety factor over the typical accumulated rounding.
pub const TAU: f64 = 16.0;

/// ‖W'_o‖ for every public output channel.
pub fn filter_norms(l: &PublicLayer) -> Vec<f32> {
    let w = &l.weight;
    let (outer, m, inner) = match l.kind {
        LinearKind::Conv(_) => (1, w.shape[0], w.len() / w.shape[0].max(1)),
        LinearKind::ConvTranspose(_) | LinearKind::MatMul => {
            (w.shape[0], w.shape[1], w.shape[2..].iter().product())
        }
    };
    (0..m)
        .map(|o| {
            let s: f64 = (0..outer)
                .flat_map(|a| &w.data[(a * m + o) * inner..][..inner])
                .map(|&v| (v as f64) * (v as f64))
                .sum();
            libm::sqrt(s) as f32
        })
        .collect()
}

fn draw(rng: &mut CheckRng, n: usize, signed: bool) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let r = rng.u64();
            let mag = 0.5 + 0.5 * ((r >> 11) as f32 / (1u64 << 53) as f32);
            if signed && r & 1 == 1 {
                -mag
            } else {
                mag
            }
        })
        .collect()
}

/// s₁ = Σ_{b,o,p} u_o·v_{b,p}·y[b, o, p] for y laid out [outer, M, p], for every round's
/// (u, v) in one pass over y.
fn weighted_sums(y: &Tensor, uv: &[(Vec<f32>, Vec<f32>)], p: usize) -> [f64; ROUNDS] {
    let m = uv[0].0.len();
    let p = p.max(1);
    let mut s = [0f64; ROUNDS];
    for (o_all, row) in y.data.chunks_exact(p).enumerate() {
        let (b, o) = (o_all / m, o_all % m);
        for (r, (u, v)) in uv.iter().enumerate() {
            s[r] += u[o] as f64 * dot_f64(row, &v[b * p..][..p]);
        }
    }
    s
}

/// Σ_i a_i·b_i in f64 (each product exact) with eight independent lanes, so it
/// vectorises. s₁ sums a whole output, up to millions of terms: accumulating them in f32,
/// even in short blocks, left rounding of the order of the tolerance itself (a false alarm
/// on MobileNet-v1's 112×112 layers).
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] as f64 * y[i] as f64;
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(&x, &y)| x as f64 * y as f64).sum();
    lanes.iter().sum::<f64>() + tail
}

/// For `out` positions o along one axis with stride/dilation/offset, the range of o whose
/// source index o·stride + tap − pad lies in [0, len).
fn valid(out: usize, stride: usize, tap: usize, pad: usize, len: usize) -> (usize, usize) {
    let off = tap as isize - pad as isize;
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let hi = (len as isize - 1 - off).div_euclid(s) + 1;
    (
        lo.clamp(0, out as isize) as usize,
        hi.clamp(lo.max(0), out as isize) as usize,
    )
}

/// Independent rounds per result. One round misses a spread-out error with probability
/// O(τ/|E|) (once in ~1000 replayed results on ResNet-44 in testing); two make that the
/// square, for 2/M of the layer's work.
pub const ROUNDS: usize = 2;

/// Checks `y` = layer(`x`) in [`ROUNDS`] independent rounds, computed together so that x
/// and y are each read once. Returns the largest |s₁ − s₂| / τ (≤ 1 passes) or an error.
pub fn check(
    l: &PublicLayer,
    norms: &[f32],
    x: &Tensor,
    y: &Tensor,
    rng: &mut CheckRng,
) -> Result<f64, String> {
    let w = &l.weight;
    let m = norms.len();
    let us: Vec<Vec<f32>> = (0..ROUNDS).map(|_| draw(rng, m, true)).collect();
    let uns: Vec<f64> = us
        .iter()
        .map(|u| {
            libm::sqrt(
                u.iter()
                    .zip(norms)
                    .map(|(&a, &b)| (a as f64 * b as f64) * (a as f64 * b as f64))
                    .sum::<f64>(),
            )
        })
        .collect();
    let sq: f64 = x.data.iter().map(|&v| v as f64 * v as f64).sum();
    let with_v = |rng: &mut CheckRng, n: usize| -> Vec<(Vec<f32>, Vec<f32>)> {
        us.iter()
            .map(|u| (u.clone(), draw(rng, n, false)))
            .collect()
    };
    let (s1, s2, k, windows) = match &l.kind {
        LinearKind::Conv(c) => {
            let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
            let (oh, ow) = (y.shape[2], y.shape[3]);
            let (cg, kh, kw) = (w.shape[1], w.shape[2], w.shape[3]);
            let og = m / c.groups;
            let per = cg * kh * kw;
            let uv = with_v(rng, n * oh * ow);
            let s1 = weighted_sums(y, &uv, oh * ow);
            // w_u per group, then s₂ = Σ_{c,ky,kx} w_u · G with G from one pass per tap.
            // In f64, like every sum below: activations with a large mean (saturated
            // ReLU6 outputs) make these sums coherent, and f32 rounding then grows with
            // the count of terms, past the tolerance meant for the accelerator's own.
            let wus: Vec<Vec<f64>> = uv
                .iter()
                .map(|(u, _)| {
                    let mut wu = vec![0f64; c.groups * per];
                    for (o, &uo) in u.iter().enumerate() {
                        for (d, &wv) in wu[(o / og) * per..][..per]
                            .iter_mut()
                            .zip(&w.data[o * per..][..per])
                        {
                            *d += uo as f64 * wv as f64;
                        }
                    }
                    wu
                })
                .collect();
            let mut s2 = [0f64; ROUNDS];
            for b in 0..n {
                for ci in 0..cin {
                    let g = ci / cg;
                    let plane = &x.data[(b * cin + ci) * h * wd..][..h * wd];
                    for ky in 0..kh {
                        let (y0, y1) = valid(oh, c.stride[0], ky * c.dilation[0], c.pads[0], h);
                        for kx in 0..kw {
                            let tap = g * per + ((ci % cg) * kh + ky) * kw + kx;
                            let (x0, x1) =
                                valid(ow, c.stride[1], kx * c.dilation[1], c.pads[1], wd);
                            if x0 >= x1 {
                                continue;
                            }
                            let mut acc = [0f64; ROUNDS];
                            for oy in y0..y1 {
                                let iy = oy * c.stride[0] + ky * c.dilation[0] - c.pads[0];
                                let row = &plane[iy * wd..][..wd];
                                let first = x0 * c.stride[1] + kx * c.dilation[1] - c.pads[1];
                                for (a, (_, v)) in acc.iter_mut().zip(&uv) {
                                    let vrow = &v[(b * oh + oy) * ow..][..ow];
                                    *a += if c.stride[1] == 1 {
                                        dot_f64(&vrow[x0..x1], &row[first..first + (x1 - x0)])
                                    } else {
                                        vrow[x0..x1]
                                            .iter()
                                            .zip(row[first..].iter().step_by(c.stride[1]))
                                            .map(|(&a, &b)| a as f64 * b as f64)
                                            .sum()
                                    };
                                }
                            }
                            for ((s, a), wu) in s2.iter_mut().zip(acc).zip(&wus) {
                                *s += wu[tap] * a;
                            }
                        }
                    }
                }
            }
            let r = kh.div_ceil(c.stride[0]) * kw.div_ceil(c.stride[1]);
            (s1, s2, per, r)
        }
        LinearKind::ConvTranspose(c) => {
            let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
            let (oh, ow) = (y.shape[2], y.shape[3]);
            let (kh, kw) = (w.shape[2], w.shape[3]);
            let uv = with_v(rng, n * oh * ow);
            let s1 = weighted_sums(y, &uv, oh * ow);
            let mut s2 = [0f64; ROUNDS];
            for (r, (u, v)) in uv.iter().enumerate() {
                let mut wu = vec![0f64; cin * kh * kw];
                for ci in 0..cin {
                    for (o, &uo) in u.iter().enumerate() {
                        let src = &w.data[(ci * m + o) * kh * kw..][..kh * kw];
                        for (d, &wv) in wu[ci * kh * kw..][..kh * kw].iter_mut().zip(src) {
                            *d += uo as f64 * wv as f64;
                        }
                    }
                }
                // Input (iy, ix) feeds output (iy·s + ky·d − pad, …).
                for b in 0..n {
                    for ci in 0..cin {
                        let plane = &x.data[(b * cin + ci) * h * wd..][..h * wd];
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let coef = wu[(ci * kh + ky) * kw + kx];
                                let mut acc = 0f64;
                                for iy in 0..h {
                                    let oy = (iy * c.stride[0] + ky * c.dilation[0]) as isize
                                        - c.pads[0] as isize;
                                    if oy < 0 || oy >= oh as isize {
                                        continue;
                                    }
                                    let vrow = &v[(b * oh + oy as usize) * ow..][..ow];
                                    for ix in 0..wd {
                                        let ox = (ix * c.stride[1] + kx * c.dilation[1]) as isize
                                            - c.pads[1] as isize;
                                        if ox >= 0 && ox < ow as isize {
                                            acc += vrow[ox as usize] as f64
                                                * plane[iy * wd + ix] as f64;
                                        }
                                    }
                                }
                                s2[r] += coef * acc;
                            }
                        }
                    }
                }
            }
            (s1, s2, cin * kh * kw, kh * kw)
        }
        LinearKind::MatMul => {
            let kk = w.shape[0];
            let rows = x.len() / kk.max(1);
            let uv = with_v(rng, rows);
            let s1 = weighted_sums(y, &uv, 1);
            let mut s2 = [0f64; ROUNDS];
            for (r, (u, v)) in uv.iter().enumerate() {
                let wu: Vec<f64> = (0..kk)
                    .map(|i| dot_f64(&w.data[i * m..(i + 1) * m], u))
                    .collect();
                s2[r] = v
                    .iter()
                    .enumerate()
                    .map(|(i, &vr)| {
                        let xr = &x.data[i * kk..(i + 1) * kk];
                        vr as f64 * xr.iter().zip(&wu).map(|(&a, &b)| a as f64 * b).sum::<f64>()
                    })
                    .sum();
            }
            (s1, s2, kk, 1)
        }
    };
    let mut worst = 0f64;
    for r in 0..ROUNDS {
        worst = worst.max(verdict(s1[r], s2[r], k, uns[r], windows, sq)?);
    }
    Ok(worst)
}

fn verdict(s1: f64, s2: f64, k: usize, un: f64, windows: usize, sq: f64) -> Result<f64, String> {
    let eps = f32::EPSILON as f64 / 2.0;
    let tau = TAU * eps * libm::sqrt(k as f64) * un * libm::sqrt(windows as f64 * sq) + 1e-30;
    let ratio = (s1 - s2).abs() / tau;
    if ratio.is_nan() || ratio > 1.0 {
        return Err(format!(
            "residual {:.3e} exceeds tolerance {tau:.3e}",
            (s1 - s2).abs()
        ));
    }
    Ok(ratio)
}

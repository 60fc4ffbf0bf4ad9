//! Randomised verification of an outsourced linear layer (Freivalds' check).
//!
//! For a fresh secret vector u over output channels, with every |u_o| in [0.5, 1] and a
//! random sign, the trusted core compares z = Σ_o u_o·y'_o (from the accelerator's reply)
//! with conv(x̃, Σ_o u_o·W'_o) — one output channel's worth of work, 1/M of the layer.
//! A tolerance τ per output position covers f32 rounding:
//!   τ_p = TAU · ε · √K · ‖u ⊙ n‖ · ‖x̃ window(p)‖,
//! where n_o = ‖W'_o‖ and K the reduction length. Any error confined to one output
//! channel with |e| > 2τ at some position is caught with certainty (|u_o| ≥ 0.5); a
//! general error e_p escapes only if u·e_p lands within τ of zero.
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use shadownet_ir::{Conv, ConvTranspose, Op, Tensor};

use crate::format::{LinearKind, PublicLayer};
use crate::onetime::Gaussian;

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

fn eval(op: Op, x: &Tensor, w: &Tensor) -> Result<Tensor, String> {
    shadownet_kernels::eval("freivalds", &op, &[x, w])
        .map(|mut v| v.remove(0))
        .map_err(|e| format!("{e}"))
}

/// Checks `y` = layer(`x`). Returns the largest |z − e| / τ seen (≤ 1 passes) or an error.
pub fn check(
    l: &PublicLayer,
    norms: &[f32],
    x: &Tensor,
    y: &Tensor,
    rng: &mut Gaussian,
) -> Result<f64, String> {
    let w = &l.weight;
    let m = norms.len();
    let u: Vec<f32> = (0..m)
        .map(|_| {
            let r = rng.u64();
            let mag = 0.5 + 0.5 * ((r >> 11) as f32 / (1u64 << 53) as f32);
            if r & 1 == 0 {
                mag
            } else {
                -mag
            }
        })
        .collect();
    let un: f64 = libm::sqrt(
        u.iter()
            .zip(norms)
            .map(|(&a, &b)| (a as f64 * b as f64) * (a as f64 * b as f64))
            .sum(),
    );
    let sq = Tensor {
        shape: x.shape.clone(),
        data: x.data.iter().map(|v| v * v).collect(),
    };
    // expected: [outer, P] (summed over groups); window: ‖x̃ window‖² per position; k: reduction length.
    let (expected, window, k, y_outer, inner): (Vec<f64>, Vec<f32>, usize, usize, usize) =
        match &l.kind {
            LinearKind::Conv(c) => {
                let (cg, kh, kw) = (w.shape[1], w.shape[2], w.shape[3]);
                let g = c.groups;
                let og = m / g;
                let per = cg * kh * kw;
                let mut wu = vec![0f32; g * per];
                for o in 0..m {
                    let dst = &mut wu[(o / og) * per..][..per];
                    for (d, &v) in dst.iter_mut().zip(&w.data[o * per..][..per]) {
                        *d += u[o] * v;
                    }
                }
                let wu = Tensor {
                    shape: vec![g, cg, kh, kw],
                    data: wu,
                };
                let e = eval(Op::Conv(c.clone()), x, &wu)?;
                let cin = x.shape[1];
                let ones = Tensor {
                    shape: vec![1, cin, kh, kw],
                    data: vec![1.0; cin * kh * kw],
                };
                let box_conv = Conv {
                    groups: 1,
                    ..c.clone()
                };
                let win = eval(Op::Conv(box_conv), &sq, &ones)?;
                let (n, p) = (e.shape[0], e.shape[2] * e.shape[3]);
                let mut ex = vec![0f64; n * p];
                for b in 0..n {
                    for gi in 0..g {
                        for (acc, &v) in ex[b * p..(b + 1) * p]
                            .iter_mut()
                            .zip(&e.data[(b * g + gi) * p..][..p])
                        {
                            *acc += v as f64;
                        }
                    }
                }
                (ex, win.data, per, n, p)
            }
            LinearKind::ConvTranspose(c) => {
                let (cin, kh, kw) = (w.shape[0], w.shape[2], w.shape[3]);
                let mut wu = vec![0f32; cin * kh * kw];
                for ci in 0..cin {
                    for (o, &uo) in u.iter().enumerate() {
                        let src = &w.data[(ci * m + o) * kh * kw..][..kh * kw];
                        for (d, &v) in wu[ci * kh * kw..][..kh * kw].iter_mut().zip(src) {
                            *d += uo * v;
                        }
                    }
                }
                let wu = Tensor {
                    shape: vec![cin, 1, kh, kw],
                    data: wu,
                };
                let e = eval(
                    Op::ConvTranspose(ConvTranspose {
                        groups: 1,
                        ..c.clone()
                    }),
                    x,
                    &wu,
                )?;
                let ones = Tensor {
                    shape: vec![cin, 1, kh, kw],
                    data: vec![1.0; cin * kh * kw],
                };
                let win = eval(Op::ConvTranspose(c.clone()), &sq, &ones)?;
                let (n, p) = (e.shape[0], e.shape[2] * e.shape[3]);
                (
                    e.data.iter().map(|&v| v as f64).collect(),
                    win.data,
                    cin * kh * kw,
                    n,
                    p,
                )
            }
            LinearKind::MatMul => {
                let kk = w.shape[0];
                let mut wu = vec![0f32; kk];
                for (r, d) in wu.iter_mut().enumerate() {
                    *d = w.data[r * m..(r + 1) * m]
                        .iter()
                        .zip(&u)
                        .map(|(a, b)| a * b)
                        .sum();
                }
                let rows = x.len() / kk.max(1);
                let mut ex = Vec::with_capacity(rows);
                let mut win = Vec::with_capacity(rows);
                for r in 0..rows {
                    let xr = &x.data[r * kk..(r + 1) * kk];
                    ex.push(xr.iter().zip(&wu).map(|(&a, &b)| a as f64 * b as f64).sum());
                    win.push(xr.iter().map(|v| v * v).sum());
                }
                (ex, win, kk, rows, 1)
            }
        };
    // z = Σ_o u_o y'_o, over the same [outer, P] positions.
    let (ch_outer, ch_inner) = match l.kind {
        LinearKind::MatMul => (y_outer, 1),
        _ => (y_outer, inner),
    };
    let eps = f32::EPSILON as f64 / 2.0;
    let scale = TAU * eps * libm::sqrt(k as f64) * un;
    let mut worst = 0f64;
    for b in 0..ch_outer {
        for p in 0..ch_inner {
            let mut z = 0f64;
            for (o, &uo) in u.iter().enumerate() {
                z += uo as f64 * y.data[(b * m + o) * ch_inner + p] as f64;
            }
            let idx = b * ch_inner + p;
            let tau = scale * libm::sqrt(window[idx].max(0.0) as f64) + 1e-30;
            let ratio = (z - expected[idx]).abs() / tau;
            if ratio.is_nan() || ratio > 1.0 {
                return Err(format!(
                    "position {idx}: residual {:.3e} exceeds tolerance {tau:.3e}",
                    (z - expected[idx]).abs()
                ));
            }
            worst = worst.max(ratio);
        }
    }
    Ok(worst)
}

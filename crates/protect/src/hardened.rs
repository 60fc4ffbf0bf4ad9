//! The hardened scheme's weight transform (docs/schemes.md, "hardened").
//!
//! Per mixing domain (the whole layer, or one group of a grouped conv): the n real filters
//! and M − n fakes (M = ⌈ratio·n⌉) are normalised to unit norm, dealt at random into
//! groups of at most `h` filters, and each group is published only as Q·B for a fresh
//! secret Haar-random orthogonal Q (no fixed family to search; condition number 1, so no
//! precision is lost unmixing). The public channels of a group are scattered over the
//! layer by a secret permutation, so group membership is hidden too. The mixed bank is
//! then quantised row by row to `weight_bits`-bit integers, after mixing in the reals: the
//! real filters are never small vectors of a lattice the public integers define.
//!
//! Fakes share the real filters' second-order statistics without lying in their span:
//! for a conv, every input channel's kernel is drawn from the Gaussian with the real
//! kernels' spatial covariance, scaled to that channel's RMS among the real filters
//! (a Kronecker model of the filters' covariance); for a dense layer, each coordinate is
//! drawn with the real filters' RMS at that coordinate.
use shadownet_ir::{IntTensor, Tensor};
use shadownet_trusted::format::{ExactLayer, MixGroup};

use crate::rng::Rng;

/// Knobs of the hardened transform.
#[derive(Clone, Copy, Debug)]
pub struct MixParams {
    /// Public channels per real one.
    pub ratio: f32,
    /// Largest mixing group.
    pub group: usize,
    /// Bits of the public integer weights, sign included.
    pub weight_bits: u32,
}

/// Filters of a weight tensor along `axis`: filter i is the concatenation over the outer
/// index of the inner block.
pub fn filters(w: &Tensor, axis: usize) -> Vec<Vec<f32>> {
    let outer: usize = w.shape[..axis].iter().product();
    let n = w.shape[axis];
    let inner: usize = w.shape[axis + 1..].iter().product();
    (0..n)
        .map(|i| {
            (0..outer)
                .flat_map(|o| w.data[(o * n + i) * inner..][..inner].iter().copied())
                .collect()
        })
        .collect()
}

/// The inverse of [`filters`]: a tensor of `shape` (with `shape[axis]` = filters.len()).
pub fn from_filters(f: &[Vec<i32>], shape: &[usize], axis: usize) -> IntTensor {
    let outer: usize = shape[..axis].iter().product();
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut data = vec![0i32; outer * n * inner];
    for (i, fi) in f.iter().enumerate() {
        for o in 0..outer {
            data[(o * n + i) * inner..][..inner].copy_from_slice(&fi[o * inner..][..inner]);
        }
    }
    IntTensor {
        shape: shape.to_vec(),
        data,
    }
}

/// Fakes like the reals (see the module docs). `taps` = kernel taps per input channel
/// (1 for a dense layer).
fn fakes(reals: &[Vec<f32>], taps: usize, count: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
    let d = reals.first().map_or(0, |r| r.len());
    let chans = d / taps.max(1);
    // Per-channel RMS over the real filters.
    let mut chan_rms = vec![0f64; chans];
    for r in reals {
        for (c, s) in chan_rms.iter_mut().enumerate() {
            *s += r[c * taps..(c + 1) * taps]
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum::<f64>();
        }
    }
    let norm = (reals.len() * taps).max(1) as f64;
    chan_rms.iter_mut().for_each(|s| *s = (*s / norm).sqrt());
    // Spatial correlation of unit-RMS kernels, and its Cholesky factor.
    let mut cov = vec![0f64; taps * taps];
    let mut count_k = 0f64;
    for r in reals {
        for (c, &cr) in chan_rms.iter().enumerate() {
            if cr <= 0.0 {
                continue;
            }
            let k = &r[c * taps..(c + 1) * taps];
            for i in 0..taps {
                for j in 0..taps {
                    cov[i * taps + j] += k[i] as f64 * k[j] as f64 / (cr * cr);
                }
            }
            count_k += 1.0;
        }
    }
    for (i, v) in cov.iter_mut().enumerate() {
        *v = if count_k > 0.0 { *v / count_k } else { 0.0 };
        // A little shrinkage towards the identity keeps the factor well defined.
        if i % (taps + 1) == 0 {
            *v = 0.9 * *v + 0.1;
        } else {
            *v *= 0.9;
        }
    }
    let l = cholesky(&cov, taps);
    (0..count)
        .map(|_| {
            let mut f = vec![0f32; d];
            for (c, &cr) in chan_rms.iter().enumerate() {
                let z = rng.normals(taps, 1.0);
                for i in 0..taps {
                    let mut s = 0f64;
                    for j in 0..=i {
                        s += l[i * taps + j] * z[j] as f64;
                    }
                    f[c * taps + i] = (s * cr) as f32;
                }
            }
            f
        })
        .collect()
}

/// Lower-triangular L with L·Lᵀ = a (a symmetric positive definite, n×n).
fn cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            l[i * n + j] = if i == j {
                s.max(1e-12).sqrt()
            } else {
                s / l[j * n + j]
            };
        }
    }
    l
}

/// A Haar-random h×h orthogonal matrix (Gram–Schmidt on a Gaussian matrix with the sign
/// convention that makes the distribution uniform), row-major.
pub fn haar_orthogonal(h: usize, rng: &mut Rng) -> Vec<f64> {
    let mut q: Vec<Vec<f64>> = (0..h)
        .map(|_| rng.normals(h, 1.0).iter().map(|&v| v as f64).collect())
        .collect();
    for i in 0..h {
        for j in 0..i {
            let (done, rest) = q.split_at_mut(i);
            let (qi, qj) = (&mut rest[0], &done[j]);
            let d: f64 = qi.iter().zip(qj).map(|(a, b)| a * b).sum();
            for (a, b) in qi.iter_mut().zip(qj) {
                *a -= d * b;
            }
        }
        let n = q[i].iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
        q[i].iter_mut().for_each(|v| *v /= n);
    }
    q.into_iter().flatten().collect()
}

fn norm(v: &[f32]) -> f32 {
    let n = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32;
    if n.is_normal() {
        n
    } else {
        1.0
    }
}

/// A group before quantisation: its public rows, and per real filter in it (filter,
/// coefficient per public row) without the rows' quantisation scales yet.
type RawGroup = (Vec<usize>, Vec<(usize, Vec<f64>)>);

/// One mixing domain's public rows (real-valued) and its groups (rows as positions in the
/// domain).
struct Domain {
    rows: Vec<Vec<f32>>,
    groups: Vec<RawGroup>,
}

fn mix_domain(reals: &[Vec<f32>], taps: usize, p: &MixParams, rng: &mut Rng) -> Domain {
    let n = reals.len();
    let m = ((p.ratio * n as f32).ceil() as usize).max(n + 1);
    let mut bank: Vec<Vec<f32>> = reals.to_vec();
    bank.extend(fakes(reals, taps, m - n, rng));
    let alpha: Vec<f32> = bank.iter().map(|f| norm(f)).collect();
    for (f, a) in bank.iter_mut().zip(&alpha) {
        f.iter_mut().for_each(|v| *v /= a);
    }
    // Deal the bank into groups of near-equal size ≤ group; `order[t]` is the bank filter
    // at group slot t, `place[t]` the public position of group row t.
    let order = rng.permutation(m);
    let place = rng.permutation(m);
    let ngroups = m.div_ceil(p.group.max(2));
    let d = bank.first().map_or(0, |b| b.len());
    let mut rows = vec![vec![0f32; d]; m];
    let mut groups = Vec::with_capacity(ngroups);
    let mut start = 0;
    for gi in 0..ngroups {
        let h = m / ngroups + usize::from(gi < m % ngroups);
        let q = haar_orthogonal(h, rng);
        for r in 0..h {
            let dst = &mut rows[place[start + r]];
            for c in 0..h {
                let coef = q[r * h + c] as f32;
                for (dv, &v) in dst.iter_mut().zip(&bank[order[start + c]]) {
                    *dv += coef * v;
                }
            }
        }
        // B_c = Σ_r Q[r][c]·P_r (Q orthogonal), and real filter i = α_i·B_c.
        let public: Vec<usize> = (0..h).map(|r| place[start + r]).collect();
        let real: Vec<(usize, Vec<f64>)> = (0..h)
            .filter(|&c| order[start + c] < n)
            .map(|c| {
                let b = order[start + c];
                (b, (0..h).map(|r| q[r * h + c] * alpha[b] as f64).collect())
            })
            .collect();
        groups.push((public, real));
        start += h;
    }
    Domain { rows, groups }
}

/// The public integer weights and the secret restore parameters of one layer.
pub struct Mixed {
    /// Public weights in the real input channel order; the caller permutes inputs.
    pub weight: IntTensor,
    pub layer: ExactLayer,
}

/// Mixes layer weights `w` whose filters run along `filter_axis`, in `domains` equal runs
/// of filters (a grouped conv's groups; 1 otherwise); `taps` kernel taps per input channel.
pub fn mix_layer(
    w: &Tensor,
    filter_axis: usize,
    domains: usize,
    taps: usize,
    p: &MixParams,
    rng: &mut Rng,
) -> Mixed {
    let all = filters(w, filter_axis);
    let n = all.len();
    let per = n / domains.max(1);
    let mut rows: Vec<Vec<f32>> = Vec::new();
    let mut raw_groups: Vec<RawGroup> = Vec::new();
    for di in 0..domains {
        let dom = mix_domain(&all[di * per..(di + 1) * per], taps, p, rng);
        let base = rows.len();
        rows.extend(dom.rows);
        raw_groups.extend(dom.groups.into_iter().map(|(public, real)| {
            (
                public.into_iter().map(|q| base + q).collect(),
                real.into_iter().map(|(i, c)| (di * per + i, c)).collect(),
            )
        }));
    }
    // Row-wise quantisation to weight_bits.
    let levels = ((1u64 << (p.weight_bits - 1)) - 1) as f64;
    let mut scales = Vec::with_capacity(rows.len());
    let mut qrows = Vec::with_capacity(rows.len());
    let mut l1max = 1u64;
    for r in &rows {
        let peak = r.iter().fold(0f32, |a, &v| a.max(v.abs())) as f64;
        let s = if peak > 0.0 { peak / levels } else { 1.0 };
        let q: Vec<i32> = r.iter().map(|&v| (v as f64 / s).round() as i32).collect();
        l1max = l1max.max(q.iter().map(|&v| v.unsigned_abs() as u64).sum());
        scales.push(s);
        qrows.push(q);
    }
    // The largest input magnitude that keeps every honest accumulator below 2^59, so
    // that T never wraps and a check error of 2·bound stays below the field's p.
    let log2 = 64 - l1max.leading_zeros(); // l1max < 2^log2
    let act_bits = (60 - log2 as i64).clamp(2, 30) as u32;
    let bound = l1max * ((1u64 << (act_bits - 1)) - 1);
    let mut shape = w.shape.clone();
    shape[filter_axis] = qrows.len();
    let weight = from_filters(&qrows, &shape, filter_axis);
    let groups = raw_groups
        .into_iter()
        .filter(|(_, real)| !real.is_empty())
        .map(|(public, real)| MixGroup {
            coeffs: real
                .iter()
                .flat_map(|(_, c)| c.iter().zip(&public).map(|(c, &q)| (c * scales[q]) as f32))
                .collect(),
            real: real.iter().map(|(i, _)| *i as u32).collect(),
            public: public.iter().map(|&q| q as u32).collect(),
        })
        .collect();
    Mixed {
        weight,
        layer: ExactLayer {
            in_perm: Vec::new(),
            act_bits,
            bound,
            groups,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> Rng {
        Rng::new(rand_chacha::ChaCha20Rng::seed_from_u64(3))
    }

    #[test]
    fn haar_matrices_are_orthogonal() {
        let mut r = rng();
        for h in [1, 2, 7, 16] {
            let q = haar_orthogonal(h, &mut r);
            for i in 0..h {
                for j in 0..h {
                    let d: f64 = (0..h).map(|k| q[i * h + k] * q[j * h + k]).sum();
                    assert!((d - f64::from(u8::from(i == j))).abs() < 1e-9);
                }
            }
        }
    }

    /// restore(transform(W)) = W for one layer: the taps applied to the dequantised public
    /// bank give back every real filter, each real filter only uses its own domain's public
    /// rows, and honest accumulators stay within the bound.
    fn check_restores(
        shape: &[usize],
        axis: usize,
        domains: usize,
        taps: usize,
        p: &MixParams,
        r: &mut Rng,
    ) -> Result<(), String> {
        let n: usize = shape.iter().product();
        let w = Tensor {
            shape: shape.to_vec(),
            data: r.normals(n, 0.3),
        };
        let mixed = mix_layer(&w, axis, domains, taps, p, r);
        let pubf = filters(
            &Tensor {
                shape: mixed.weight.shape.clone(),
                data: mixed.weight.data.iter().map(|&v| v as f32).collect(),
            },
            axis,
        );
        let real = filters(&w, axis);
        let nreal: usize = mixed.layer.groups.iter().map(|g| g.real.len()).sum();
        if nreal != real.len() {
            return Err(format!(
                "{nreal} real filters restored, {} exist",
                real.len()
            ));
        }
        let mut seen = vec![false; real.len()];
        for g in &mixed.layer.groups {
            let h = g.public.len();
            // (A group mixes at least two rows, whatever `group` says.)
            if h > p.group.max(2) || g.coeffs.len() != g.real.len() * h {
                return Err(format!(
                    "group of {h} public rows (largest allowed {})",
                    p.group
                ));
            }
            for (ri, &i) in g.real.iter().enumerate() {
                let i = i as usize;
                if std::mem::replace(&mut seen[i], true) {
                    return Err(format!("real filter {i} restored twice"));
                }
                let mut rec = vec![0f64; real[i].len()];
                for (j, &q) in g.public.iter().enumerate() {
                    let c = g.coeffs[ri * h + j] as f64;
                    for (d, &v) in rec.iter_mut().zip(&pubf[q as usize]) {
                        *d += c * v as f64;
                    }
                }
                // Each public row is rounded to `weight_bits` (half a step, at most
                // 2^-(bits-1) of the row's largest value, ≤ 1 for rows mixed from unit
                // filters), and the filter is its norm times a unit combination of h rows.
                let alpha = real[i]
                    .iter()
                    .map(|&v| v as f64 * v as f64)
                    .sum::<f64>()
                    .sqrt();
                let tol =
                    alpha * (h as f64).sqrt() * 2f64.powi(1 - p.weight_bits as i32) + 1e-6 * alpha;
                for (a, &b) in rec.iter().zip(&real[i]) {
                    let err = (a - b as f64).abs();
                    if err > tol || err.is_nan() {
                        return Err(format!("{shape:?} filter {i}: {a} vs {b}"));
                    }
                }
                // A grouped conv's filters only use their own group's public rows.
                let per_dom = pubf.len() / domains;
                let dom = i / (real.len() / domains);
                if !g.public.iter().all(|&q| q as usize / per_dom == dom) {
                    return Err(format!("filter {i} mixes rows of another conv group"));
                }
            }
        }
        if mixed.layer.bound >= 1 << 60 {
            return Err(format!("bound {} not below 2^60", mixed.layer.bound));
        }
        let l1: u64 = pubf
            .iter()
            .map(|f| f.iter().map(|v| v.abs() as u64).sum())
            .max()
            .unwrap_or(0);
        if l1 * ((1u64 << (mixed.layer.act_bits - 1)) - 1) > mixed.layer.bound {
            return Err("an honest accumulator can exceed the bound".into());
        }
        Ok(())
    }

    #[test]
    fn taps_restore_every_real_filter() {
        let mut r = rng();
        let p = MixParams {
            ratio: 1.25,
            group: 4,
            weight_bits: 20,
        };
        for &(shape, axis, domains, taps) in &[
            (&[10usize, 24][..], 1usize, 1usize, 1usize),
            (&[13, 4, 3, 3][..], 0, 1, 9),
            (&[12, 2, 3, 3][..], 0, 3, 9),
            (&[5, 11, 2, 2][..], 1, 1, 4),
        ] {
            check_restores(shape, axis, domains, taps, &p, &mut r).unwrap();
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        /// The same over random conv and dense shapes, group sizes, fake ratios, weight
        /// widths and seeds.
        #[test]
        fn taps_restore_every_real_filter_of_random_layers(
            seed in 0u64..1 << 40,
            per_dom in 1usize..24,
            domains in 1usize..4,
            cin in 1usize..12,
            k in 1usize..4,
            dense in proptest::bool::ANY,
            group in 1usize..17,
            ratio in 1.0f32..2.0,
            weight_bits in 12u32..25,
        ) {
            let mut r = Rng::new(rand_chacha::ChaCha20Rng::seed_from_u64(seed));
            let p = MixParams { ratio, group, weight_bits };
            let res = if dense {
                // Dense weights are [K, N]: filters along axis 1, no conv groups.
                check_restores(&[cin * k, per_dom], 1, 1, 1, &p, &mut r)
            } else {
                check_restores(&[per_dom * domains, cin, k, k], 0, domains, k * k, &p, &mut r)
            };
            proptest::prop_assert!(res.is_ok(), "{}", res.unwrap_err());
        }
    }

    #[test]
    fn no_public_filter_is_close_to_a_real_one() {
        let mut r = rng();
        let w = Tensor {
            shape: vec![64, 32, 3, 3],
            data: r.normals(64 * 288, 0.1),
        };
        let p = MixParams {
            ratio: 1.2,
            group: 16,
            weight_bits: 24,
        };
        let mixed = mix_layer(&w, 0, 1, 9, &p, &mut r);
        let pubf = filters(
            &Tensor {
                shape: mixed.weight.shape.clone(),
                data: mixed.weight.data.iter().map(|&v| v as f32).collect(),
            },
            0,
        );
        let cos = |a: &[f32], b: &[f32]| {
            let d: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
            d.abs() / (norm(a) as f64 * norm(b) as f64)
        };
        let worst = filters(&w, 0)
            .iter()
            .map(|f| pubf.iter().map(|q| cos(f, q)).fold(0f64, f64::max))
            .fold(0f64, f64::max);
        assert!(
            worst < 0.8,
            "a public filter leans {worst} towards a real one"
        );
    }
}

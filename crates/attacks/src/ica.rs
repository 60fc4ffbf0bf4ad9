//! FastICA (Hyvärinen & Oja 2000), symmetric and deflation, with the log-cosh, kurtosis
//! and Gaussian contrasts.
//!
//! Orientation: `x` holds n mixtures as rows and d samples as columns. For a filter bank,
//! the rows are public filters (each a mixture P = A·B of hidden filters B) and the
//! samples are the filter coordinates: trained filters are far from Gaussian over their
//! coordinates (heavy-tailed, sparse), which is what ICA separates on. Sources come back
//! as rows of `sources`, computed from the uncentred mixtures (the unmixing is estimated on
//! centred data, then applied to the raw rows, so a filter's own mean is kept).
use serde::{Deserialize, Serialize};

use crate::mat::{dot, norm, sym_eig, Mat};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contrast {
    /// G(u) = log cosh u: robust, the usual default.
    LogCosh,
    /// G(u) = u⁴/4: kurtosis (sparsity for super-Gaussian sources).
    Kurtosis,
    /// G(u) = −exp(−u²/2): for very heavy tails.
    Gauss,
}

impl Contrast {
    pub fn name(self) -> &'static str {
        match self {
            Contrast::LogCosh => "logcosh",
            Contrast::Kurtosis => "kurtosis",
            Contrast::Gauss => "gauss",
        }
    }

    /// g = G′ and the mean of g′ over `u`, writing g(u) into `out`.
    fn apply(self, u: &[f64], out: &mut [f64]) -> f64 {
        let mut dsum = 0.0;
        match self {
            Contrast::LogCosh => {
                for (o, &v) in out.iter_mut().zip(u) {
                    let t = v.tanh();
                    *o = t;
                    dsum += 1.0 - t * t;
                }
            }
            Contrast::Kurtosis => {
                for (o, &v) in out.iter_mut().zip(u) {
                    *o = v * v * v;
                    dsum += 3.0 * v * v;
                }
            }
            Contrast::Gauss => {
                for (o, &v) in out.iter_mut().zip(u) {
                    let e = (-0.5 * v * v).exp();
                    *o = v * e;
                    dsum += (1.0 - v * v) * e;
                }
            }
        }
        dsum / u.len().max(1) as f64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// All components at once, decorrelated symmetrically after every step.
    Symmetric,
    /// One component at a time, orthogonalised against the ones found.
    Deflation,
}

#[derive(Clone, Debug)]
pub struct IcaOptions {
    pub contrast: Contrast,
    pub mode: Mode,
    pub max_iter: usize,
    pub tol: f64,
    /// At most this many components (default: the whitened rank).
    pub components: Option<usize>,
    /// Whitening drops directions with variance below this times the largest.
    pub rel_eig_tol: f64,
    pub seed: u64,
}

impl Default for IcaOptions {
    fn default() -> Self {
        IcaOptions {
            contrast: Contrast::LogCosh,
            mode: Mode::Symmetric,
            max_iter: 200,
            tol: 1e-6,
            components: None,
            rel_eig_tol: 1e-9,
            seed: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Ica {
    /// Estimated sources, one per row, from the uncentred mixtures (k × d).
    pub sources: Mat,
    /// Unmixing from the centred mixtures to the sources (k × n).
    pub unmixing: Mat,
    /// Estimated mixing: centred mixtures ≈ mixing · centred sources (n × k).
    pub mixing: Mat,
    pub iterations: usize,
    pub converged: bool,
}

/// Whitening of the rows of `xc` (already centred): returns (K, K⁺) with K·xc white
/// (unit covariance over the samples).
pub fn whitening(xc: &Mat, rel_tol: f64, max_k: usize) -> (Mat, Mat) {
    let d = xc.cols.max(1) as f64;
    let mut c = xc.gram_rows();
    c.scale(1.0 / d);
    let (vals, vecs) = sym_eig(&c);
    let top = vals.first().copied().unwrap_or(0.0);
    let k = vals
        .iter()
        .take_while(|&&v| v > top * rel_tol && v > 0.0)
        .count()
        .min(max_k);
    let n = xc.rows;
    let kmat = Mat::from_fn(k, n, |i, j| vecs[(j, i)] / vals[i].sqrt());
    let kinv = Mat::from_fn(n, k, |i, j| vecs[(i, j)] * vals[j].sqrt());
    (kmat, kinv)
}

fn center_rows(x: &Mat) -> Mat {
    let mut c = x.clone();
    for i in 0..c.rows {
        let r = c.row_mut(i);
        let m = r.iter().sum::<f64>() / r.len().max(1) as f64;
        r.iter_mut().for_each(|v| *v -= m);
    }
    c
}

/// (W·Wᵀ)^{-1/2}·W.
fn sym_decorrelate(w: &Mat) -> Mat {
    let (vals, vecs) = sym_eig(&w.gram_rows());
    let k = w.rows;
    let inv_sqrt = Mat::from_fn(k, k, |i, j| {
        (0..k)
            .map(|l| vecs[(i, l)] * vecs[(j, l)] / vals[l].max(1e-300).sqrt())
            .sum()
    });
    inv_sqrt.matmul(w)
}

/// One fixed-point step for the unit `w` over white data `z`: E[z g(wᵀz)] − E[g′(wᵀz)] w.
fn step(z: &Mat, w: &[f64], contrast: Contrast, u: &mut [f64], g: &mut [f64]) -> Vec<f64> {
    let d = z.cols as f64;
    u.iter_mut().for_each(|v| *v = 0.0);
    for (i, &wi) in w.iter().enumerate() {
        if wi != 0.0 {
            for (a, &b) in u.iter_mut().zip(z.row(i)) {
                *a += wi * b;
            }
        }
    }
    let gp = contrast.apply(u, g);
    (0..z.rows)
        .map(|i| dot(z.row(i), g) / d - gp * w[i])
        .collect()
}

/// Runs FastICA on the rows of `x`. `None` when there is nothing to separate (fewer than
/// two samples or a zero matrix).
pub fn fastica(x: &Mat, opts: &IcaOptions) -> Option<Ica> {
    if x.rows == 0 || x.cols < 2 {
        return None;
    }
    let xc = center_rows(x);
    let max_k = opts.components.unwrap_or(x.rows).min(x.cols - 1).max(1);
    let (kmat, kinv) = whitening(&xc, opts.rel_eig_tol, max_k);
    let k = kmat.rows;
    if k == 0 {
        return None;
    }
    let z = kmat.matmul(&xc);
    let mut rng = Rng::new(opts.seed ^ 0x1ca);
    let mut u = vec![0.0; z.cols];
    let mut g = vec![0.0; z.cols];
    let (w, iterations, converged) = match opts.mode {
        Mode::Symmetric => {
            let mut w = rng.orthogonal(k);
            let mut it = 0;
            let mut conv = false;
            while it < opts.max_iter {
                it += 1;
                let mut next = Mat::zeros(k, k);
                for i in 0..k {
                    let r = step(&z, w.row(i), opts.contrast, &mut u, &mut g);
                    next.row_mut(i).copy_from_slice(&r);
                }
                let next = sym_decorrelate(&next);
                let lim = (0..k)
                    .map(|i| (1.0 - dot(next.row(i), w.row(i)).abs()).abs())
                    .fold(0.0, f64::max);
                w = next;
                if lim < opts.tol {
                    conv = true;
                    break;
                }
            }
            (w, it, conv)
        }
        Mode::Deflation => {
            let mut w = Mat::zeros(k, k);
            let mut total = 0;
            let mut all = true;
            for p in 0..k {
                let mut v = rng.normals(k);
                orthonormalise(&mut v, &w, p);
                let mut conv = false;
                for _ in 0..opts.max_iter {
                    total += 1;
                    let mut next = step(&z, &v, opts.contrast, &mut u, &mut g);
                    orthonormalise(&mut next, &w, p);
                    let lim = (1.0 - dot(&next, &v).abs()).abs();
                    v = next;
                    if lim < opts.tol {
                        conv = true;
                        break;
                    }
                }
                all &= conv;
                w.row_mut(p).copy_from_slice(&v);
            }
            (w, total, all)
        }
    };
    let unmixing = w.matmul(&kmat);
    let sources = unmixing.matmul(x);
    let mixing = kinv.matmul(&w.transpose());
    Some(Ica {
        sources,
        unmixing,
        mixing,
        iterations,
        converged,
    })
}

/// v minus its projections on the first `p` rows of `w`, normalised.
fn orthonormalise(v: &mut [f64], w: &Mat, p: usize) {
    for j in 0..p {
        let d = dot(v, w.row(j));
        for (a, b) in v.iter_mut().zip(w.row(j)) {
            *a -= d * b;
        }
    }
    let n = norm(v);
    if n > 0.0 {
        v.iter_mut().for_each(|a| *a /= n);
    }
}

/// Excess kurtosis of a vector's entries (0 for Gaussian; large for sparse vectors).
pub fn excess_kurtosis(v: &[f64]) -> f64 {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let m2 = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    let m4 = v.iter().map(|x| (x - m).powi(4)).sum::<f64>() / n;
    if m2 <= 0.0 {
        return 0.0;
    }
    m4 / (m2 * m2) - 3.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::{iid_floor, score};

    /// Sparse (Laplacian-like) sources: the kind of distribution trained filters have.
    fn laplace_sources(rng: &mut Rng, h: usize, d: usize) -> Mat {
        let mut s = Mat::zeros(h, d);
        for v in s.data.iter_mut() {
            let u = rng.unit() - 0.5;
            *v = -u.signum() * (1.0 - 2.0 * u.abs()).ln();
        }
        s
    }

    #[test]
    fn separates_non_gaussian_sources_every_variant() {
        let mut rng = Rng::new(3);
        let (h, d) = (8, 2000);
        let b = laplace_sources(&mut rng, h, d);
        let a = rng.gaussian(h, h);
        let p = a.matmul(&b);
        for contrast in [Contrast::LogCosh, Contrast::Kurtosis, Contrast::Gauss] {
            for mode in [Mode::Symmetric, Mode::Deflation] {
                let ica = fastica(
                    &p,
                    &IcaOptions {
                        contrast,
                        mode,
                        seed: 1,
                        ..Default::default()
                    },
                )
                .unwrap();
                let s = score(&b, &ica.sources);
                assert_eq!(s.recovered, h, "{contrast:?} {mode:?}: {s:?}");
                assert!(s.mean_cos > 0.97, "{contrast:?} {mode:?}: {s:?}");
            }
        }
    }

    /// The negative direction: Gaussian sources have no preferred axes, so ICA gets no
    /// closer to them than the mixtures themselves, at the random floor for this many
    /// guesses (a test that ICA finds "sources" anyway would mean scoring is broken).
    #[test]
    fn gaussian_sources_stay_hidden() {
        let mut rng = Rng::new(4);
        let (h, d) = (16, 400);
        let b = rng.gaussian(h, d);
        let a = rng.orthogonal(h);
        let p = a.matmul(&b);
        let ica = fastica(&p, &IcaOptions::default()).unwrap();
        let s = score(&b, &ica.sources);
        assert_eq!(s.recovered, 0, "{s:?}");
        // Mixtures of 16 sources keep |cos| ≈ 1/4 with each; far from 0.95.
        assert!(s.mean_cos < 0.8, "{s:?}");
        assert!(iid_floor(h, d, h).fraction < 1e-9);
    }

    #[test]
    fn kurtosis_of_known_shapes() {
        let mut rng = Rng::new(9);
        let g = rng.normals(200_000);
        assert!(excess_kurtosis(&g).abs() < 0.1);
        let l = laplace_sources(&mut rng, 1, 200_000);
        assert!((excess_kurtosis(&l.data) - 3.0).abs() < 0.3);
    }
}

//! Averaging and regression: the attack on zero-mean masks.
//!
//! A fresh real-valued mask that is zero-mean hides one observation, not many: running one
//! input T times and averaging what the accelerator receives, x̃_t = x + m_t, converges to
//! x with error σ/√T ([`Mean`]). With every outsourced layer's input recovered, each
//! layer's weights follow by regression: the real output channel i of layer k is a linear
//! function of the layer's public output channels (y_i = Σ_r c_ir·y′_r + b_i, the secret
//! restoration), and the next layer's input is that output after the activation, so on
//! the samples where the activation is linear (ReLU: positive) a ridge least-squares fit
//! of the next layer's recovered input on the public outputs gives the c_ir, and the real
//! filter is Σ_r c_ir·W′_r from the public weights ([`regress_filters`]).
use serde::{Deserialize, Serialize};

use crate::mat::{solve_spd, Mat};

/// Running mean of repeated observations of one tensor.
#[derive(Clone, Debug, Default)]
pub struct Mean {
    pub count: usize,
    sum: Vec<f64>,
}

impl Mean {
    pub fn add(&mut self, x: &[f32]) {
        if self.sum.is_empty() {
            self.sum = vec![0.0; x.len()];
        }
        assert_eq!(self.sum.len(), x.len(), "observations of different sizes");
        for (s, &v) in self.sum.iter_mut().zip(x) {
            *s += v as f64;
        }
        self.count += 1;
    }

    pub fn mean(&self) -> Vec<f64> {
        let n = self.count.max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }
}

/// Pearson correlation (0 when either side is constant, unless both are equal).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let ma = a.iter().sum::<f64>() / n;
    let mb = b.iter().sum::<f64>() / n;
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x - ma, y - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa <= 0.0 || bb <= 0.0 {
        return if a == b { 1.0 } else { 0.0 };
    }
    ab / (aa * bb).sqrt()
}

/// Which samples a target is fitted on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Region {
    /// Every sample (a linear or leaky path to the next layer).
    All,
    /// Samples whose target exceeds `frac` × the target's RMS: the linear part of a ReLU
    /// (the margin keeps the noisy near-zero values of an averaged estimate out).
    Positive { frac: f64 },
}

/// A ridge fit of several targets on shared features (+ intercept).
#[derive(Clone, Debug, Default)]
pub struct RidgeFit {
    /// targets × features.
    pub coef: Mat,
    pub intercept: Vec<f64>,
    /// Coefficient of determination on the fitted samples.
    pub r2: Vec<f64>,
    pub samples: Vec<usize>,
}

/// Fits every column of `y` (n × q) on the columns of `x` (n × p) plus an intercept, each
/// on its own `region` of samples, with ridge λ = `lambda` × the mean diagonal of the
/// normal matrix. Targets with fewer than 2 samples get zero coefficients.
pub fn ridge(x: &Mat, y: &Mat, region: Region, lambda: f64) -> RidgeFit {
    let (n, p, q) = (x.rows, x.cols, y.cols);
    assert_eq!(y.rows, n, "features and targets differ in samples");
    let mut fit = RidgeFit {
        coef: Mat::zeros(q, p),
        intercept: vec![0.0; q],
        r2: vec![0.0; q],
        samples: vec![0; q],
    };
    for j in 0..q {
        let col: Vec<f64> = (0..n).map(|i| y[(i, j)]).collect();
        let rms = (col.iter().map(|v| v * v).sum::<f64>() / n.max(1) as f64).sqrt();
        let keep: Vec<usize> = match region {
            Region::All => (0..n).collect(),
            Region::Positive { frac } => (0..n).filter(|&i| col[i] > frac * rms).collect(),
        };
        fit.samples[j] = keep.len();
        if keep.len() < 2 {
            continue;
        }
        // Features with a constant column for the intercept, centred for conditioning.
        let xs = x.select_rows(&keep);
        let ys: Vec<f64> = keep.iter().map(|&i| col[i]).collect();
        let m = keep.len() as f64;
        let xmean: Vec<f64> = (0..p)
            .map(|c| (0..xs.rows).map(|r| xs[(r, c)]).sum::<f64>() / m)
            .collect();
        let ymean = ys.iter().sum::<f64>() / m;
        let mut xc = xs;
        for r in 0..xc.rows {
            for (v, mu) in xc.row_mut(r).iter_mut().zip(&xmean) {
                *v -= mu;
            }
        }
        let mut g = xc.gram_cols();
        let tr = (0..p).map(|c| g[(c, c)]).sum::<f64>() / p.max(1) as f64;
        let reg = (lambda * tr).max(1e-12 * tr.max(1e-300));
        for c in 0..p {
            g[(c, c)] += reg;
        }
        let yc: Vec<f64> = ys.iter().map(|v| v - ymean).collect();
        let rhs = Mat::from_fn(p, 1, |c, _| (0..xc.rows).map(|r| xc[(r, c)] * yc[r]).sum());
        let Some(sol) = solve_spd(&g, &rhs) else {
            continue;
        };
        let coef: Vec<f64> = sol.data.clone();
        let intercept = ymean - crate::mat::dot(&coef, &xmean);
        let mut ss_res = 0.0;
        let mut ss_tot = 0.0;
        for (r, &y) in yc.iter().enumerate() {
            let pred = crate::mat::dot(&coef, xc.row(r));
            ss_res += (y - pred).powi(2);
            ss_tot += y * y;
        }
        fit.r2[j] = if ss_tot > 0.0 {
            1.0 - ss_res / ss_tot
        } else {
            0.0
        };
        fit.coef.row_mut(j).copy_from_slice(&coef);
        fit.intercept[j] = intercept;
    }
    fit
}

/// Filters recovered by regression, one per target channel.
#[derive(Clone, Debug)]
pub struct Regressed {
    /// targets × d: Σ_r c_ir·W′_r.
    pub filters: Mat,
    pub r2: Vec<f64>,
    pub samples: Vec<usize>,
}

/// Regresses the targets (n samples × C channels: the next layer's recovered input) on
/// the layer's estimated public outputs (n × M, first M columns of `features`; further
/// columns, e.g. a residual branch's recovered activation, enter the fit but not the
/// filters) and maps the coefficients to filters through the public bank (M × d).
pub fn regress_filters(
    public_bank: &Mat,
    features: &Mat,
    targets: &Mat,
    region: Region,
    lambda: f64,
) -> Regressed {
    let m = public_bank.rows;
    assert!(
        features.cols >= m,
        "features must start with the public outputs"
    );
    let fit = ridge(features, targets, region, lambda);
    let coef = fit.coef.select_cols(&(0..m).collect::<Vec<_>>());
    Regressed {
        filters: coef.matmul(public_bank),
        r2: fit.r2,
        samples: fit.samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::score::score;

    #[test]
    fn averaging_converges_as_one_over_sqrt_t() {
        let mut rng = Rng::new(1);
        let x = rng.normals(4000);
        let mut corr = Vec::new();
        for &t in &[1usize, 16, 256] {
            let mut m = Mean::default();
            for _ in 0..t {
                let obs: Vec<f32> = x.iter().map(|v| (v + 2.0 * rng.normal()) as f32).collect();
                m.add(&obs);
            }
            corr.push(pearson(&m.mean(), &x));
        }
        // σ_m = 2σ_x: corr = 1/sqrt(1 + 4/T).
        for (c, t) in corr.iter().zip([1.0f64, 16.0, 256.0]) {
            let want = 1.0 / (1.0 + 4.0 / t).sqrt();
            assert!((c - want).abs() < 0.03, "T={t}: {c} vs {want}");
        }
    }

    /// A ReLU layer behind a secret mixing: regression of the (noisy) next activations on
    /// the public outputs gives the real filters; regression of unrelated targets does not.
    #[test]
    fn regression_recovers_filters_behind_a_mixing() {
        let mut rng = Rng::new(2);
        let (n_real, d, samples) = (12, 40, 3000);
        let w = rng.gaussian(n_real, d);
        let m_pub = 15;
        // Public bank: a mixing of real and fake filters; restoration = pseudo-inverse rows.
        let mut hidden = w.clone();
        hidden.append_rows(&rng.gaussian(m_pub - n_real, d));
        let a = rng.gaussian(m_pub, m_pub);
        let public = a.matmul(&hidden);
        let x = rng.gaussian(samples, d);
        let y_pub = x.matmul_t(&public); // samples × M
        let bias: Vec<f64> = rng.normals(n_real);
        let real_out = x.matmul_t(&w);
        let targets = Mat::from_fn(samples, n_real, |i, j| {
            (real_out[(i, j)] + bias[j]).max(0.0) + 0.05 * rng.normal()
        });
        let r = regress_filters(
            &public,
            &y_pub,
            &targets,
            Region::Positive { frac: 0.2 },
            1e-6,
        );
        let s = score(&w, &r.filters);
        assert_eq!(s.recovered, n_real, "{s:?}");
        assert!(r.r2.iter().all(|&v| v > 0.9));
        // The same fit on all samples (a ReLU fitted as if linear) is worse, and unrelated
        // targets give nothing.
        let noise = rng.gaussian(samples, n_real);
        let r = regress_filters(&public, &y_pub, &noise, Region::All, 1e-6);
        assert_eq!(score(&w, &r.filters).recovered, 0);
    }
}

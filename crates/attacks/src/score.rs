//! Scoring a filter-recovery attack, and the floors it is judged against.
//!
//! The attacker does not know which of its candidates is which real filter (nor the sign
//! or scale), so every real filter is scored by its best |cosine| over all candidates; a
//! filter counts as recovered at |cos| ≥ [`COS_RECOVERED`] and as exact at ≥
//! [`COS_EXACT`] (in 9 dimensions 0.95 is easy to reach by chance, 0.999 is not).
//!
//! A score means nothing alone: best-of-K matching rewards sheer numbers of guesses, and
//! public filters can be close to real ones by construction. Two floors go beside every
//! result:
//!
//! - the **public floor**: the public filters themselves as the guesses;
//! - the **black-box floor**: what guessing without the package gives, with as many
//!   guesses as the attack produced. For i.i.d. isotropic guesses it is exact and needs no
//!   sampling: |cos|² between a fixed unit vector and a random direction of R^d is
//!   Beta(1/2, (d−1)/2), so the best of K has CDF F(c)^K ([`iid_floor`]). An attacker with
//!   output-only queries learns the function, not the weights: the published
//!   functional-extraction attacks (Carlini et al. CRYPTO'20, Canales-Martínez et al.
//!   EUROCRYPT'24) recover weights up to permutation and scale for small ReLU MLPs with
//!   millions of queries per neuron and have not been shown on deep CNNs with pooling and
//!   folded BatchNorm, so the strongest cheap black-box attacker guesses from a prior: random
//!   directions, or, when it holds a public pretrained model of the same family, that
//!   model's filters of the same shape ([`guesses_floor`] with those as guesses).
//!
//! "At the floor" ([`judge`]) means within noise of both floors, the noise band being 3
//! standard deviations of the floors' own spread over guess seeds (binomial for the
//! recovered share, the spread of best cosines over filters for the mean).
use serde::{Deserialize, Serialize};

use crate::mat::Mat;
use crate::rng::Rng;

/// A filter counts as recovered at |cos| ≥ this ("exact up to scale" in the terms).
pub const COS_RECOVERED: f64 = 0.95;
/// ... and as exact at |cos| ≥ this.
pub const COS_EXACT: f64 = 0.999;
/// Width of the noise band, in standard deviations of the floors' spread.
pub const BAND_SIGMAS: f64 = 3.0;

/// Best |cos| of every row of `real` over the rows of `cand` (0 when there are none).
/// Candidates are processed in blocks, so the full cosine matrix is never held.
pub fn best_abs_cos(real: &Mat, cand: &Mat) -> Vec<f64> {
    let mut best = vec![0.0f64; real.rows];
    if cand.rows == 0 || real.rows == 0 {
        return best;
    }
    assert_eq!(
        real.cols, cand.cols,
        "real filters and candidates differ in length"
    );
    let r = real.normalized_rows();
    let block = (1 << 22) / real.rows.max(1);
    let block = block.clamp(64, 4096);
    let mut start = 0;
    while start < cand.rows {
        let len = block.min(cand.rows - start);
        let c = cand.row_range(start, len).normalized_rows();
        let g = r.matmul_t(&c);
        for (i, b) in best.iter_mut().enumerate() {
            for &v in g.row(i) {
                if v.abs() > *b {
                    *b = v.abs();
                }
            }
        }
        start += len;
    }
    best.iter_mut().for_each(|b| *b = b.min(1.0));
    best
}

/// How well a set of candidates matches the real filters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub filters: usize,
    pub candidates: usize,
    /// Real filters with best |cos| ≥ [`COS_RECOVERED`].
    pub recovered: usize,
    /// ... and ≥ [`COS_EXACT`].
    pub exact: usize,
    pub fraction: f64,
    pub mean_cos: f64,
    /// Standard deviation of the best cosines over filters.
    pub sd_cos: f64,
}

impl Score {
    pub fn from_best(best: &[f64], candidates: usize) -> Score {
        let n = best.len();
        let recovered = best.iter().filter(|&&c| c >= COS_RECOVERED).count();
        let exact = best.iter().filter(|&&c| c >= COS_EXACT).count();
        let mean = best.iter().sum::<f64>() / n.max(1) as f64;
        let var = best.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / n.max(1) as f64;
        Score {
            filters: n,
            candidates,
            recovered,
            exact,
            fraction: recovered as f64 / n.max(1) as f64,
            mean_cos: mean,
            sd_cos: var.sqrt(),
        }
    }
}

pub fn score(real: &Mat, cand: &Mat) -> Score {
    Score::from_best(&best_abs_cos(real, cand), cand.rows)
}

/// A floor: the expected score of some attack-free guessing, with its spread over seeds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    pub name: String,
    pub guesses: usize,
    pub fraction: f64,
    pub mean_cos: f64,
    /// Standard deviation over seeds of the recovered share ...
    pub sd_fraction: f64,
    /// ... and of the mean best cosine.
    pub sd_mean_cos: f64,
}

impl Floor {
    fn from_score(name: &str, s: &Score) -> Floor {
        let n = s.filters.max(1) as f64;
        Floor {
            name: name.into(),
            guesses: s.candidates,
            fraction: s.fraction,
            mean_cos: s.mean_cos,
            sd_fraction: (s.fraction * (1.0 - s.fraction) / n).sqrt(),
            sd_mean_cos: s.sd_cos / n.sqrt(),
        }
    }
}

/// The public floor: the public filters as guesses. Its spread is that of a draw of the
/// same many filters (binomial share, standard error of the mean).
pub fn public_floor(real: &Mat, public: &Mat) -> Floor {
    Floor::from_score("public", &score(real, public))
}

/// Any fixed set of guesses as a floor (e.g. the filters of a public pretrained model of
/// the same family).
pub fn guesses_floor(name: &str, real: &Mat, guesses: &Mat) -> Floor {
    Floor::from_score(name, &score(real, guesses))
}

/// The black-box floor for `guesses` i.i.d. isotropic random guesses in R^d against
/// `filters` real filters, computed exactly (expectation over guess seeds).
pub fn iid_floor(filters: usize, d: usize, guesses: usize) -> Floor {
    let n = filters.max(1) as f64;
    let name = "random".to_string();
    if guesses == 0 {
        return Floor {
            name,
            ..Default::default()
        };
    }
    if d <= 1 {
        return Floor {
            name,
            guesses,
            fraction: 1.0,
            mean_cos: 1.0,
            sd_fraction: 0.0,
            sd_mean_cos: 0.0,
        };
    }
    // P(best ≤ c) = F(c)^K with 1 − F(c) = I_{1−c²}((d−1)/2, 1/2).
    let k = guesses as f64;
    let cdf_best = |c: f64| -> f64 {
        if c >= 1.0 {
            return 1.0;
        }
        let upper = beta_reg(1.0 - c * c, (d as f64 - 1.0) / 2.0, 0.5);
        (k * (-upper).ln_1p()).exp()
    };
    let p = 1.0 - cdf_best(COS_RECOVERED);
    // E[best] = ∫ (1 − G), E[best²] = ∫ 2c(1 − G), Simpson on a fine grid.
    let steps = 4000;
    let h = 1.0 / steps as f64;
    let (mut m1, mut m2) = (0.0, 0.0);
    for i in 0..=steps {
        let c = i as f64 * h;
        let w = if i == 0 || i == steps {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        };
        let tail = 1.0 - cdf_best(c);
        m1 += w * tail;
        m2 += w * 2.0 * c * tail;
    }
    m1 *= h / 3.0;
    m2 *= h / 3.0;
    let var = (m2 - m1 * m1).max(0.0);
    Floor {
        name,
        guesses,
        fraction: p,
        mean_cos: m1,
        sd_fraction: (p * (1.0 - p) / n).sqrt(),
        sd_mean_cos: (var / n).sqrt(),
    }
}

/// The same floor by sampling `seeds` sets of `guesses` N(0, I) guesses: the mean over
/// seeds and the spread between them (a check of [`iid_floor`], and a floor for small
/// layers).
pub fn iid_floor_sampled(real: &Mat, guesses: usize, seeds: usize, rng: &mut Rng) -> Floor {
    let mut fr = Vec::new();
    let mut mc = Vec::new();
    for _ in 0..seeds.max(1) {
        let g = rng.gaussian(guesses, real.cols);
        let s = score(real, &g);
        fr.push(s.fraction);
        mc.push(s.mean_cos);
    }
    let (mf, sf) = mean_sd(&fr);
    let (mm, sm) = mean_sd(&mc);
    Floor {
        name: "random (sampled)".into(),
        guesses,
        fraction: mf,
        mean_cos: mm,
        sd_fraction: sf,
        sd_mean_cos: sm,
    }
}

pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

/// An attack's result against its floors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The higher of the floors, for the recovered share and the mean best cosine.
    pub floor_fraction: f64,
    pub floor_mean_cos: f64,
    pub band_fraction: f64,
    pub band_mean_cos: f64,
    /// The public filters themselves are within noise of the black-box floor.
    pub public_at_floor: bool,
    /// The attack is within noise of both floors (and the public floor of the black-box).
    pub at_floor: bool,
}

/// Judges `attack` against the public floor and the strongest of the black-box floors
/// (random guesses as many as the attack's candidates, and any `blackbox` floors such as
/// a pretrained model's filters), for filters of length `d`. The public floor is itself
/// held to the random floor for as many guesses as there are public filters. The band is
/// [`BAND_SIGMAS`] times the larger spread of the floors, and at least one filter for the
/// recovered share.
pub fn judge(attack: &Score, d: usize, public: &Floor, blackbox: &[Floor]) -> Verdict {
    let random = iid_floor(attack.filters, d, attack.candidates);
    let public_random = iid_floor(attack.filters, d, public.guesses);
    let mut blackbox = blackbox.to_vec();
    blackbox.push(random);
    let bb_frac = blackbox.iter().map(|f| f.fraction).fold(0.0, f64::max);
    let bb_cos = blackbox.iter().map(|f| f.mean_cos).fold(0.0, f64::max);
    let sd_frac = blackbox
        .iter()
        .map(|f| f.sd_fraction)
        .fold(public.sd_fraction, f64::max);
    let sd_cos = blackbox
        .iter()
        .map(|f| f.sd_mean_cos)
        .fold(public.sd_mean_cos, f64::max);
    let band_fraction = (BAND_SIGMAS * sd_frac).max(1.0 / attack.filters.max(1) as f64);
    let band_mean_cos = BAND_SIGMAS * sd_cos;
    let pub_bb_frac = bb_frac.max(public_random.fraction);
    let pub_bb_cos = blackbox
        .iter()
        .filter(|f| f.name != "random")
        .map(|f| f.mean_cos)
        .fold(public_random.mean_cos, f64::max);
    let public_at_floor = public.fraction <= pub_bb_frac + band_fraction
        && public.mean_cos
            <= pub_bb_cos + band_mean_cos.max(BAND_SIGMAS * public_random.sd_mean_cos);
    let floor_fraction = bb_frac.max(public.fraction);
    let floor_mean_cos = bb_cos.max(public.mean_cos);
    Verdict {
        floor_fraction,
        floor_mean_cos,
        band_fraction,
        band_mean_cos,
        public_at_floor,
        at_floor: public_at_floor
            && attack.fraction <= floor_fraction + band_fraction
            && attack.mean_cos <= floor_mean_cos + band_mean_cos,
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta function I_x(a, b).
pub fn beta_reg(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The continued fraction converges fast for x < (a + 1)/(a + b + 2); use the symmetry
    // I_x(a, b) = 1 − I_{1−x}(b, a) otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(1.0 - x, b, a) / b
    }
}

/// Lentz's continued fraction for the incomplete beta function.
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_beta_known_values() {
        // I_x(1, 1) = x; I_x(1/2, 1/2) = (2/π) asin(√x); I_x(2, 3) = 6x²(1/2 − 2x/3 + x²/4)...
        for &x in &[0.1, 0.5, 0.9] {
            assert!((beta_reg(x, 1.0, 1.0) - x).abs() < 1e-12);
            let want = 2.0 / std::f64::consts::PI * x.sqrt().asin();
            assert!((beta_reg(x, 0.5, 0.5) - want).abs() < 1e-10);
            let want = x.powi(2) * (6.0 - 8.0 * x + 3.0 * x * x);
            assert!((beta_reg(x, 2.0, 3.0) - want).abs() < 1e-12);
        }
    }

    /// The exact floor agrees with sampling, for a short and a long filter length, and the
    /// sampled spread over seeds is of the size the analytic band assumes.
    #[test]
    fn analytic_floor_matches_sampling() {
        let mut rng = Rng::new(5);
        for &(d, k) in &[(9usize, 200usize), (9, 2000), (64, 500), (576, 100)] {
            let real = rng.gaussian(300, d);
            let exact = iid_floor(300, d, k);
            let sampled = iid_floor_sampled(&real, k, 8, &mut rng);
            assert!(
                (exact.mean_cos - sampled.mean_cos).abs() < 4.0 * exact.sd_mean_cos + 0.01,
                "d={d} k={k}: {exact:?} vs {sampled:?}"
            );
            assert!(
                (exact.fraction - sampled.fraction).abs() < 4.0 * exact.sd_fraction + 0.01,
                "d={d} k={k}: {exact:?} vs {sampled:?}"
            );
        }
        // In 9 dimensions a few thousand guesses already "recover" a share at 0.95 (and
        // come close on average): why the floor goes beside every result.
        let f = iid_floor(100, 9, 5000);
        assert!(f.fraction > 0.02 && f.mean_cos > 0.85, "{f:?}");
        assert!(iid_floor(100, 576, 100_000).fraction < 1e-6);
    }

    #[test]
    fn scores_and_verdicts() {
        let mut rng = Rng::new(1);
        let real = rng.gaussian(50, 64);
        // Candidates: the real filters, negated and rescaled, among noise.
        let mut cand = rng.gaussian(100, 64);
        let mut neg = real.clone();
        neg.scale(-3.0);
        cand.append_rows(&neg);
        let s = score(&real, &cand);
        assert_eq!((s.recovered, s.exact, s.candidates), (50, 50, 150));
        let pubf = public_floor(&real, &rng.gaussian(60, 64));
        let v = judge(&s, 64, &pubf, &[]);
        assert!(!v.at_floor && v.public_at_floor);
        // Pure noise as the "attack" is at the floor.
        let noise = score(&real, &rng.gaussian(150, 64));
        assert!(judge(&noise, 64, &pubf, &[]).at_floor);
        // A public bank that is the real filters is not at the floor, whatever the attack.
        let leaky = public_floor(&real, &real);
        let v = judge(&noise, 64, &leaky, &[]);
        assert!(!v.public_at_floor && !v.at_floor);
    }
}

//! Static attacks on a layer's public filter bank: each public filter is a secret linear
//! mixture of hidden filters (real and fake), P = A·B, and these try to get B back from P
//! alone.
//!
//! - **pairs**: signed 2×2 structures (a Hadamard pair gives P₀ ± P₁ = the two hidden
//!   filters up to scale);
//! - **PCA** of a candidate group: the right singular vectors of the group (the
//!   eigenvectors of its Gram matrix PᵀP); when the hidden filters are near-orthogonal and
//!   the mixing is orthogonal × diagonal, these are the hidden filters;
//! - **structure matching**: when the mixing is a fixed family up to signs and a
//!   permutation (Q = S₁ΠCS₂ with C the DCT-II or Hadamard matrix), snap an estimate of
//!   the mixing (from PCA or ICA) to the nearest family member by alternating assignments
//!   and output Cᵀ·(S₁Π)ᵀ·P, which is exactly D·S₂·B when the snap is right;
//! - **FastICA** over each candidate group and over the whole layer (group membership
//!   hidden): trained filters are non-Gaussian over their coordinates;
//! - **sparsity**: the vectors of the row span with the largest ℓ₄ norm (sparsest), from
//!   many random starts and without ICA's orthogonality constraint;
//! - **low rank**: vectors of the span whose C × (kh·kw) reshaping is closest to rank 1;
//! - **templates**: public pretrained filters of the same family projected onto the span.
//!
//! Candidate groups are contiguous runs of public filters ([`near_equal_groups`], the
//! converter's own rule, and [`block_groups`]); "whole" runs over every public filter.
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::assign::hungarian;
use crate::ica::{fastica, Contrast, IcaOptions, Mode};
use crate::mat::{dot, norm, row_span, svd, Mat};
use crate::rng::Rng;

/// How a filter's coordinates are laid out: `channels` input channels × `taps` kernel
/// positions, channel-major (a conv weight [O, C, kh, kw] row). Dense filters have one tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    pub channels: usize,
    pub taps: usize,
}

/// A contiguous group of public filters: (first row, number of rows).
pub type Group = (usize, usize);

/// The converter's grouping: ⌈m/max_h⌉ groups of near-equal size, none above max_h.
pub fn near_equal_groups(m: usize, max_h: usize) -> Vec<Group> {
    if m == 0 || max_h == 0 {
        return Vec::new();
    }
    let ng = m.div_ceil(max_h);
    let mut start = 0;
    (0..ng)
        .map(|gi| {
            let h = m / ng + usize::from(gi < m % ng);
            let g = (start, h);
            start += h;
            g
        })
        .collect()
}

/// Runs of exactly h from the first filter (a shorter last run is kept if ≥ 2).
pub fn block_groups(m: usize, h: usize) -> Vec<Group> {
    let h = h.max(1);
    (0..m)
        .step_by(h)
        .map(|s| (s, h.min(m - s)))
        .filter(|&(_, l)| l >= 2)
        .collect()
}

/// (0, 1), (2, 3), ...: pairs that share an input channel in a depthwise layer published
/// with channel multiplier 2.
pub fn disjoint_pairs(m: usize) -> Vec<(usize, usize)> {
    (0..m / 2).map(|i| (2 * i, 2 * i + 1)).collect()
}

/// Every (i, i + 1).
pub fn adjacent_pairs(m: usize) -> Vec<(usize, usize)> {
    (0..m.saturating_sub(1)).map(|i| (i, i + 1)).collect()
}

/// P_a + P_b and P_a − P_b for every pair; with `normalize`, of the unit-norm filters.
pub fn pair_candidates(bank: &Mat, pairs: &[(usize, usize)], normalize: bool) -> Mat {
    let d = bank.cols;
    let mut out = Mat::zeros(2 * pairs.len(), d);
    for (k, &(a, b)) in pairs.iter().enumerate() {
        let (pa, pb) = (bank.row(a), bank.row(b));
        let (na, nb) = if normalize {
            (norm(pa).max(1e-300), norm(pb).max(1e-300))
        } else {
            (1.0, 1.0)
        };
        for j in 0..d {
            let (x, y) = (pa[j] / na, pb[j] / nb);
            out[(2 * k, j)] = x + y;
            out[(2 * k + 1, j)] = x - y;
        }
    }
    out
}

/// A fixed family of orthogonal mixing matrices (up to row signs, a row permutation and
/// column signs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// The orthonormal DCT-II matrix: row k, column n = c_k cos(π(2n+1)k / 2h).
    Dct2,
    /// The normalised Sylvester–Hadamard matrix (h a power of two).
    Hadamard,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Dct2 => "dct2",
            Family::Hadamard => "hadamard",
        }
    }

    /// The h×h matrix, rows = basis vectors; `None` for a Hadamard h not a power of two.
    pub fn matrix(self, h: usize) -> Option<Mat> {
        match self {
            Family::Dct2 => Some(Mat::from_fn(h, h, |k, n| {
                let c = if k == 0 {
                    (1.0 / h as f64).sqrt()
                } else {
                    (2.0 / h as f64).sqrt()
                };
                c * (std::f64::consts::PI * (2 * n + 1) as f64 * k as f64 / (2 * h) as f64).cos()
            })),
            Family::Hadamard if h.is_power_of_two() => Some(Mat::from_fn(h, h, |i, j| {
                let s = if (i & j).count_ones() % 2 == 0 {
                    1.0
                } else {
                    -1.0
                };
                s / (h as f64).sqrt()
            })),
            Family::Hadamard => None,
        }
    }
}

/// A signed row assignment: public row r is family row `freq[r]` with sign `sign[r]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Snap {
    pub freq: Vec<usize>,
    pub sign: Vec<f64>,
    /// ‖T·Â − C·M‖²_F / h of the best fit (0 for an exact member of the family).
    pub residual: f64,
}

/// Snaps an estimate `mixing` (h×h: estimated mixing columns, any order, sign and scale)
/// to the nearest member S₁ΠCS₂ of `family` by alternating two assignments: public rows
/// to family rows (given the column matching), then columns to family columns (given the
/// row matching). Starts: for the DCT, every (DC row, first-harmonic row) guess — the DC
/// row's signs are the column signs, and the first harmonic, strictly monotone over the
/// columns, orders them — plus `restarts` random column matchings.
pub fn snap_to_family(
    mixing: &Mat,
    family: Family,
    restarts: usize,
    rng: &mut Rng,
) -> Option<Snap> {
    snaps_to_family(mixing, family, restarts, rng)
        .into_iter()
        .next()
}

/// Every distinct local fit [`snap_to_family`] reaches, best (smallest residual) first.
pub fn snaps_to_family(mixing: &Mat, family: Family, restarts: usize, rng: &mut Rng) -> Vec<Snap> {
    let h = mixing.rows;
    let Some(c) = family.matrix(h) else {
        return Vec::new();
    };
    if mixing.cols != h || h == 0 {
        return Vec::new();
    }
    // Unit columns remove the unknown diagonal scale.
    let a = mixing.transpose().normalized_rows().transpose();
    let mut starts: Vec<(Vec<usize>, Vec<f64>)> = Vec::new();
    if family == Family::Dct2 && h >= 2 {
        for r0 in 0..h {
            let t: Vec<f64> = (0..h)
                .map(|j| if a[(r0, j)] >= 0.0 { 1.0 } else { -1.0 })
                .collect();
            for r1 in (0..h).filter(|&r| r != r0) {
                let mut order: Vec<usize> = (0..h).collect();
                order.sort_by(|&x, &y| (a[(r1, y)] * t[y]).total_cmp(&(a[(r1, x)] * t[x])));
                let mut sigma = vec![0; h];
                for (rank, &j) in order.iter().enumerate() {
                    sigma[j] = rank;
                }
                let rev: Vec<usize> = sigma.iter().map(|&s| h - 1 - s).collect();
                starts.push((sigma, t.clone()));
                starts.push((rev, t.clone()));
            }
        }
    }
    for _ in 0..restarts {
        starts.push((rng.permutation(h), (0..h).map(|_| rng.sign()).collect()));
    }
    let ct = c.transpose();
    let mut found: Vec<Snap> = Vec::new();
    for (mut sigma, mut t) in starts {
        let mut last = f64::INFINITY;
        let mut snap = None;
        for _ in 0..50 {
            // Target columns: Y[:, j] = t_j · C[:, σ(j)].
            let y = Mat::from_fn(h, h, |k, j| t[j] * c[(k, sigma[j])]);
            // Rows: public row r ↦ family row k maximising |⟨Â_r, Y_k⟩|.
            let ip = a.matmul_t(&y);
            let freq = hungarian(&Mat::from_fn(h, h, |r, k| -ip[(r, k)].abs()));
            let sign: Vec<f64> = (0..h)
                .map(|r| if ip[(r, freq[r])] >= 0.0 { 1.0 } else { -1.0 })
                .collect();
            // X = T·Â: row freq[r] is sign[r]·Â_r.
            let mut x = Mat::zeros(h, h);
            for r in 0..h {
                for j in 0..h {
                    x[(freq[r], j)] = sign[r] * a[(r, j)];
                }
            }
            // Columns: X[:, j] ≈ t_j C[:, σ(j)].
            let cp = x.transpose().matmul_t(&ct);
            sigma = hungarian(&Mat::from_fn(h, h, |j, i| -cp[(j, i)].abs()));
            t = (0..h)
                .map(|j| if cp[(j, sigma[j])] >= 0.0 { 1.0 } else { -1.0 })
                .collect();
            let residual = (0..h)
                .flat_map(|k| (0..h).map(move |j| (k, j)))
                .map(|(k, j)| (x[(k, j)] - t[j] * c[(k, sigma[j])]).powi(2))
                .sum::<f64>()
                / h as f64;
            snap = Some(Snap {
                freq,
                sign,
                residual,
            });
            if residual >= last - 1e-12 {
                break;
            }
            last = residual;
        }
        if let Some(s) = snap {
            if !found.iter().any(|f| f.freq == s.freq && f.sign == s.sign) {
                found.push(s);
            }
        }
    }
    found.sort_by(|a, b| a.residual.total_cmp(&b.residual));
    found
}

/// What a family search maximises over the signed row assignment T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// Σ_c (Y·Yᵀ)²_cc / ‖P·Pᵀ‖²_F for Y = Cᵀ·T·P: 1 when the candidates are orthogonal
    /// (near-orthogonal hidden filters: random weights). An orthogonal T keeps ‖Y·Yᵀ‖_F,
    /// so this is the diagonal's share of it. (Tried: −Σ cos² between candidates, which
    /// ignores the secret diagonal scale; it misled the search more often.)
    Gram,
    /// Σ_c |excess kurtosis of Y_c|: the candidates are as non-Gaussian as they can be
    /// (trained weights).
    Kurtosis,
}

fn objective_value(group: &Mat, gram: &Mat, c: &Mat, snap: &Snap, obj: Objective) -> f64 {
    let h = group.rows;
    // O[k][r] = C[freq[r]][k]·sign[r], so Y = O·P.
    let o = Mat::from_fn(h, h, |k, r| c[(snap.freq[r], k)] * snap.sign[r]);
    match obj {
        Objective::Gram => {
            // diag(O·G·Oᵀ) directly: h³ flops, no products through faer for 8×8.
            let total = gram.frobenius().powi(2).max(1e-300);
            let mut v = 0.0;
            let mut og = vec![0.0; h];
            for k in 0..h {
                let ok = o.row(k);
                for (r2, x) in og.iter_mut().enumerate() {
                    *x = (0..h).map(|r| ok[r] * gram[(r, r2)]).sum();
                }
                v += dot(&og, ok).powi(2);
            }
            v / total
        }
        Objective::Kurtosis => {
            let y = o.matmul(group);
            (0..h)
                .map(|k| crate::ica::excess_kurtosis(y.row(k)).abs())
                .sum()
        }
    }
}

/// Hill-climbs the signed row assignment T (moves: swap two rows' family rows, flip a
/// row's sign) from each start, maximising `obj` on the data; returns the best.
pub fn family_search(group: &Mat, family: Family, obj: Objective, starts: &[Snap]) -> Option<Snap> {
    let h = group.rows;
    let c = family.matrix(h)?;
    let gram = group.gram_rows();
    let mut best: Option<(f64, Snap)> = None;
    for start in starts {
        let mut cur = start.clone();
        let mut val = objective_value(group, &gram, &c, &cur, obj);
        loop {
            let mut improved: Option<(f64, Snap)> = None;
            let mut consider = |s: Snap| {
                let v = objective_value(group, &gram, &c, &s, obj);
                if v > val + 1e-12 && improved.as_ref().is_none_or(|(b, _)| v > *b) {
                    improved = Some((v, s));
                }
            };
            // Swaps with every sign combination of the two rows (a swap alone often has
            // to flip a sign to pay off), and single flips.
            for r1 in 0..h {
                for r2 in r1 + 1..h {
                    for flips in 0..4u8 {
                        let mut s = cur.clone();
                        s.freq.swap(r1, r2);
                        if flips & 1 != 0 {
                            s.sign[r1] = -s.sign[r1];
                        }
                        if flips & 2 != 0 {
                            s.sign[r2] = -s.sign[r2];
                        }
                        consider(s);
                    }
                }
                let mut s = cur.clone();
                s.sign[r1] = -s.sign[r1];
                consider(s);
            }
            match improved {
                Some((v, s)) => {
                    val = v;
                    cur = s;
                }
                None => break,
            }
        }
        if best.as_ref().is_none_or(|(b, _)| val > *b) {
            best = Some((val, cur));
        }
    }
    best.map(|(v, mut s)| {
        s.residual = -v;
        s
    })
}

/// `n` uniformly random signed row assignments.
pub fn random_snaps(h: usize, n: usize, rng: &mut Rng) -> Vec<Snap> {
    (0..n)
        .map(|_| Snap {
            freq: rng.permutation(h),
            sign: (0..h).map(|_| rng.sign()).collect(),
            residual: f64::INFINITY,
        })
        .collect()
}

/// The hidden filters under a snap: rows Σ_r C[freq(r)][c]·sign(r)·P_r.
pub fn family_candidates(group: &Mat, c: &Mat, snap: &Snap) -> Mat {
    let h = group.rows;
    let mut tp = Mat::zeros(h, group.cols);
    for r in 0..h {
        let s = snap.sign[r];
        for (dst, &v) in tp.row_mut(snap.freq[r]).iter_mut().zip(group.row(r)) {
            *dst = s * v;
        }
    }
    c.transpose().matmul(&tp)
}

/// The right singular vectors of a group (its principal directions in filter space),
/// those with a singular value above 1e-9 of the largest.
pub fn pca_candidates(group: &Mat) -> Mat {
    let Some((_, s, vt)) = svd(group) else {
        return Mat::zeros(0, group.cols);
    };
    let top = s.first().copied().unwrap_or(0.0);
    let k = s.iter().take_while(|&&v| v > top * 1e-9 && v > 0.0).count();
    vt.row_range(0, k)
}

/// The mixing as PCA sees it: the left singular vectors (eigenvectors of P·Pᵀ) as
/// columns; `None` unless the group has full rank.
pub fn pca_mixing(group: &Mat) -> Option<Mat> {
    let (u, s, _) = svd(group)?;
    let top = s.first().copied().unwrap_or(0.0);
    (s.len() == group.rows && s.iter().all(|&v| v > top * 1e-9) && u.cols == group.rows)
        .then_some(u)
}

/// The unit vectors of the span of `basis` (orthonormal rows) with the largest ℓ₄ norm
/// (the sparsest, or most heavy-tailed, directions), from `restarts` random starts by the
/// fixed point a ← normalise(U·(Uᵀa)³); local maxima that coincide (|cos| > 0.99) are
/// kept once.
pub fn l4_span(basis: &Mat, restarts: usize, iters: usize, rng: &mut Rng) -> Mat {
    let k = basis.rows;
    if k == 0 || restarts == 0 {
        return Mat::zeros(0, basis.cols);
    }
    let mut a = rng.gaussian(restarts, k).normalized_rows();
    for _ in 0..iters {
        let mut x = a.matmul(basis);
        x.data.iter_mut().for_each(|v| *v = *v * *v * *v);
        a = x.matmul_t(basis).normalized_rows();
    }
    dedupe(&a.matmul(basis), 0.99)
}

/// Vectors of the span whose `geom` reshaping (channels × taps) is closest to rank 1, by
/// alternating the best rank-1 approximation and the projection onto the span.
pub fn rank1_span(
    basis: &Mat,
    geom: Geometry,
    restarts: usize,
    iters: usize,
    rng: &mut Rng,
) -> Mat {
    let (k, d) = (basis.rows, basis.cols);
    if k == 0 || geom.channels < 2 || geom.taps < 2 || geom.channels * geom.taps != d {
        return Mat::zeros(0, d);
    }
    let seeds: Vec<u64> = (0..restarts).map(|_| rng.next_u64()).collect();
    let rows: Vec<Vec<f64>> = seeds
        .par_iter()
        .map(|&s| {
            let mut r = Rng::new(s);
            let mut a = r.normals(k);
            let mut v = r.normals(geom.taps);
            let mut x = vec![0.0; d];
            for _ in 0..iters {
                combine(basis, &a, &mut x);
                let (u, sv) = top_singular(&x, geom, &mut v);
                let y: Vec<f64> = (0..d)
                    .map(|i| sv * u[i / geom.taps] * v[i % geom.taps])
                    .collect();
                a = (0..k).map(|j| dot(basis.row(j), &y)).collect();
                let n = norm(&a);
                if n == 0.0 {
                    break;
                }
                a.iter_mut().for_each(|v| *v /= n);
            }
            combine(basis, &a, &mut x);
            x
        })
        .collect();
    dedupe(&Mat::from_rows(&rows), 0.99)
}

/// x = Σ a_j basis_j.
fn combine(basis: &Mat, a: &[f64], x: &mut [f64]) {
    x.iter_mut().for_each(|v| *v = 0.0);
    for (j, &aj) in a.iter().enumerate() {
        for (xi, &b) in x.iter_mut().zip(basis.row(j)) {
            *xi += aj * b;
        }
    }
}

/// Leading singular triple of x reshaped channels × taps, by power iteration warm-started
/// from `v` (updated in place). Returns (u, σ).
fn top_singular(x: &[f64], geom: Geometry, v: &mut [f64]) -> (Vec<f64>, f64) {
    let (c, t) = (geom.channels, geom.taps);
    let mut u = vec![0.0; c];
    let mut s = 0.0;
    for _ in 0..8 {
        for (i, ui) in u.iter_mut().enumerate() {
            *ui = dot(&x[i * t..(i + 1) * t], v);
        }
        let nu = norm(&u);
        if nu == 0.0 {
            break;
        }
        u.iter_mut().for_each(|a| *a /= nu);
        for (j, vj) in v.iter_mut().enumerate() {
            *vj = (0..c).map(|i| x[i * t + j] * u[i]).sum();
        }
        s = norm(v);
        if s == 0.0 {
            break;
        }
        v.iter_mut().for_each(|a| *a /= s);
    }
    (u, s)
}

/// The templates projected onto the span of `basis` (orthonormal rows).
pub fn project_templates(basis: &Mat, templates: &Mat) -> Mat {
    if basis.rows == 0 || templates.rows == 0 {
        return Mat::zeros(0, basis.cols);
    }
    templates.matmul_t(basis).matmul(basis)
}

/// Keeps the first of every set of rows with |cos| > `tol` between them (zero rows dropped).
pub fn dedupe(m: &Mat, tol: f64) -> Mat {
    let u = m.normalized_rows();
    let mut kept: Vec<usize> = Vec::new();
    for i in 0..u.rows {
        if norm(u.row(i)) == 0.0 {
            continue;
        }
        if kept.iter().all(|&j| dot(u.row(i), u.row(j)).abs() <= tol) {
            kept.push(i);
        }
    }
    m.select_rows(&kept)
}

/// One attack on one group of public filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Pca,
    /// PCA's mixing estimate snapped to a family.
    PcaFamily(Family),
    Ica(Contrast, Mode),
    /// ICA's (log-cosh, symmetric) mixing estimate snapped to a family.
    IcaFamily(Family),
    /// Sparsest vectors of the span (ℓ₄).
    Sparse,
    /// Closest-to-rank-1 vectors of the span.
    LowRank,
    /// Public pretrained filters projected onto the span.
    Templates,
}

impl Method {
    pub fn name(self) -> String {
        match self {
            Method::Pca => "pca".into(),
            Method::PcaFamily(f) => format!("pca-{}", f.name()),
            Method::Ica(c, m) => format!(
                "ica-{}-{}",
                c.name(),
                match m {
                    Mode::Symmetric => "sym",
                    Mode::Deflation => "defl",
                }
            ),
            Method::IcaFamily(f) => format!("ica-{}", f.name()),
            Method::Sparse => "sparse-l4".into(),
            Method::LowRank => "low-rank".into(),
            Method::Templates => "templates".into(),
        }
    }

    /// Methods that work on the span only, and so say nothing when the span is all of R^d.
    fn span_only(self) -> bool {
        matches!(
            self,
            Method::Sparse | Method::LowRank | Method::Templates | Method::Ica(..)
        )
    }
}

/// Knobs of the span searches.
#[derive(Clone, Debug)]
pub struct SearchBudget {
    /// Random starts of the sparse / low-rank searches, per dimension of the span.
    pub restarts_per_dim: usize,
    /// ... capped at this many.
    pub max_restarts: usize,
    pub iters: usize,
    /// Whole-layer ICA: at most this many components.
    pub max_components: usize,
    /// Random starts of the family searches (beside those from the PCA/ICA estimate).
    pub family_starts: usize,
    /// FastICA iterations (Gaussian-like groups never converge: this is their cost).
    pub ica_iters: usize,
    /// Family searches only on groups of at most this many filters: a hill-climbing step
    /// costs ~4h² moves of h³ (Gram) or h²·d (kurtosis) each.
    pub max_family_h: usize,
}

impl Default for SearchBudget {
    fn default() -> Self {
        SearchBudget {
            restarts_per_dim: 4,
            max_restarts: 256,
            iters: 40,
            max_components: 128,
            family_starts: 64,
            ica_iters: 100,
            max_family_h: 8,
        }
    }
}

/// Runs `method` on one group (or the whole bank) and returns its candidates.
pub fn attack_group(
    group: &Mat,
    method: Method,
    geom: Geometry,
    templates: Option<&Mat>,
    budget: &SearchBudget,
    seed: u64,
) -> Mat {
    let d = group.cols;
    let mut rng = Rng::new(seed);
    let empty = || Mat::zeros(0, d);
    let span = || row_span(group, 1e-9);
    let restarts = |k: usize| (budget.restarts_per_dim * k).clamp(1, budget.max_restarts);
    let family = matches!(method, Method::PcaFamily(_) | Method::IcaFamily(_));
    if family && group.rows > budget.max_family_h {
        return empty();
    }
    match method {
        Method::Pca => pca_candidates(group),
        Method::PcaFamily(f) => {
            let (Some(c), Some(u)) = (f.matrix(group.rows), pca_mixing(group)) else {
                return empty();
            };
            // PCA's eigenvectors mix wherever two diagonal scales are close; the snaps
            // of its estimate are only starts for the search on the data.
            let mut starts = snaps_to_family(&u, f, 8, &mut rng);
            starts.truncate(16);
            starts.extend(random_snaps(group.rows, budget.family_starts, &mut rng));
            match family_search(group, f, Objective::Gram, &starts) {
                Some(s) => family_candidates(group, &c, &s),
                None => empty(),
            }
        }
        Method::Ica(contrast, mode) => {
            let opts = IcaOptions {
                contrast,
                mode,
                seed,
                components: Some(budget.max_components),
                max_iter: budget.ica_iters,
                ..Default::default()
            };
            fastica(group, &opts).map_or_else(empty, |i| i.sources)
        }
        Method::IcaFamily(f) => {
            let Some(c) = f.matrix(group.rows) else {
                return empty();
            };
            let opts = IcaOptions {
                seed,
                ..Default::default()
            };
            match fastica(group, &opts) {
                Some(i) if i.mixing.cols == group.rows => {
                    let mut starts = snaps_to_family(&i.mixing, f, 4, &mut rng);
                    starts.truncate(4);
                    starts.extend(random_snaps(group.rows, 4, &mut rng));
                    match family_search(group, f, Objective::Kurtosis, &starts) {
                        Some(s) => family_candidates(group, &c, &s),
                        None => empty(),
                    }
                }
                _ => empty(),
            }
        }
        Method::Sparse => {
            let b = span();
            l4_span(&b, restarts(b.rows), budget.iters, &mut rng)
        }
        Method::LowRank => {
            let b = span();
            rank1_span(&b, geom, restarts(b.rows), budget.iters, &mut rng)
        }
        Method::Templates => match templates {
            Some(t) if t.cols == d => project_templates(&span(), t),
            _ => empty(),
        },
    }
}

/// A candidate grouping of a layer's public filters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grouping {
    pub name: String,
    pub groups: Vec<Group>,
}

impl Grouping {
    pub fn near_equal(m: usize, h: usize) -> Self {
        Grouping {
            name: format!("near-equal h<={h}"),
            groups: near_equal_groups(m, h),
        }
    }

    pub fn blocks(m: usize, h: usize) -> Self {
        Grouping {
            name: format!("blocks h={h}"),
            groups: block_groups(m, h),
        }
    }

    /// Every public filter in one group: the attacker does not know the membership.
    pub fn whole(m: usize) -> Self {
        Grouping {
            name: "whole layer".into(),
            groups: vec![(0, m)],
        }
    }
}

#[derive(Clone, Debug)]
pub struct UnmixOptions {
    pub groupings: Vec<Grouping>,
    pub methods: Vec<Method>,
    /// Pair sums and differences (disjoint pairs, raw and normalised).
    pub pairs: bool,
    pub budget: SearchBudget,
    pub seed: u64,
}

/// The candidates of one (method, grouping).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CandidateSet {
    pub method: String,
    pub grouping: String,
    #[serde(skip)]
    pub candidates: Mat,
    pub millis: f64,
    /// Why nothing was tried, when nothing was.
    pub skipped: Option<String>,
}

/// Runs every (method, grouping) of `opts` on a layer's public bank (rows = public
/// filters), groups in parallel. Span-only methods are skipped on groups whose span is all
/// of R^d (nothing to find there but the coordinate axes).
pub fn unmix_layer(
    bank: &Mat,
    geom: Geometry,
    templates: Option<&Mat>,
    opts: &UnmixOptions,
) -> Vec<CandidateSet> {
    let mut out = Vec::new();
    if opts.pairs {
        for normalize in [false, true] {
            let t0 = Instant::now();
            let c = pair_candidates(bank, &disjoint_pairs(bank.rows), normalize);
            out.push(CandidateSet {
                method: if normalize {
                    "pairs-normalised"
                } else {
                    "pairs"
                }
                .into(),
                grouping: "disjoint pairs".into(),
                candidates: c,
                millis: t0.elapsed().as_secs_f64() * 1e3,
                skipped: None,
            });
        }
    }
    for (gi, grouping) in opts.groupings.iter().enumerate() {
        for (mi, &method) in opts.methods.iter().enumerate() {
            if method == Method::Templates && templates.is_none() {
                continue;
            }
            let t0 = Instant::now();
            let full_rank = grouping.groups.iter().all(|&(_, h)| h >= bank.cols);
            if method.span_only() && full_rank {
                out.push(CandidateSet {
                    method: method.name(),
                    grouping: grouping.name.clone(),
                    candidates: Mat::zeros(0, bank.cols),
                    millis: 0.0,
                    skipped: Some(format!(
                        "every group spans R^{} (group size ≥ filter length)",
                        bank.cols
                    )),
                });
                continue;
            }
            let parts: Vec<Mat> = grouping
                .groups
                .par_iter()
                .enumerate()
                .map(|(k, &(s, h))| {
                    if h < 2 || (method.span_only() && h >= bank.cols) {
                        return Mat::zeros(0, bank.cols);
                    }
                    let seed = opts.seed
                        ^ (gi as u64) << 48
                        ^ (mi as u64) << 40
                        ^ (k as u64).wrapping_mul(0x9e37_79b9);
                    attack_group(
                        &bank.row_range(s, h),
                        method,
                        geom,
                        templates,
                        &opts.budget,
                        seed,
                    )
                })
                .collect();
            let mut c = Mat::zeros(0, bank.cols);
            for p in &parts {
                if p.rows > 0 {
                    c.append_rows(p);
                }
            }
            out.push(CandidateSet {
                method: method.name(),
                grouping: grouping.name.clone(),
                candidates: c,
                millis: t0.elapsed().as_secs_f64() * 1e3,
                skipped: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ica::excess_kurtosis;
    use crate::score::{judge, public_floor, score};

    /// Filters like trained ones: heavy-tailed coordinates, a shared smooth spatial
    /// profile over 3×3 taps, different per filter.
    fn trained_like(rng: &mut Rng, n: usize, channels: usize) -> Mat {
        let profile = [0.5, 1.0, 0.5, 1.0, 2.0, 1.0, 0.5, 1.0, 0.5];
        let mut m = Mat::zeros(n, channels * 9);
        for i in 0..n {
            for c in 0..channels {
                let u = rng.unit() - 0.5;
                let lap = -u.signum() * (1.0 - 2.0 * u.abs()).ln();
                let gain = lap * lap * lap;
                for t in 0..9 {
                    m[(i, c * 9 + t)] = gain * profile[t] * (1.0 + 0.3 * rng.normal());
                }
            }
        }
        m
    }

    /// Independent heavy-tailed (Laplace) coordinates: what ICA must separate.
    fn laplace(rng: &mut Rng, n: usize, d: usize) -> Mat {
        Mat::from_fn(n, d, |_, _| {
            let u = rng.unit() - 0.5;
            -u.signum() * (1.0 - 2.0 * u.abs()).ln()
        })
    }

    /// The converter's DCT mixing for one group: Q = S₁ΠCS₂, A = Q·D.
    pub(super) fn dct_mix(rng: &mut Rng, b: &Mat) -> Mat {
        let h = b.rows;
        let c = Family::Dct2.matrix(h).unwrap();
        let pi = rng.permutation(h);
        let s1: Vec<f64> = (0..h).map(|_| rng.sign()).collect();
        let s2: Vec<f64> = (0..h).map(|_| rng.sign()).collect();
        let dg: Vec<f64> = (0..h).map(|_| rng.uniform(0.75, 1.33)).collect();
        let a = Mat::from_fn(h, h, |r, col| s1[r] * c[(pi[r], col)] * s2[col] * dg[col]);
        a.matmul(b)
    }

    #[test]
    fn groupings_match_the_converter() {
        let g = near_equal_groups(77, 8);
        assert_eq!(g.len(), 10);
        assert_eq!(g.iter().map(|x| x.1).sum::<usize>(), 77);
        assert!(g.iter().all(|&(_, h)| h == 7 || h == 8));
        assert_eq!(block_groups(10, 4), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(block_groups(9, 4), vec![(0, 4), (4, 4)]);
    }

    #[test]
    fn family_matrices_are_orthogonal() {
        for f in [Family::Dct2, Family::Hadamard] {
            for h in [2, 4, 8, 16] {
                let c = f.matrix(h).unwrap();
                let g = c.gram_rows();
                for i in 0..h {
                    for j in 0..h {
                        let want = if i == j { 1.0 } else { 0.0 };
                        assert!((g[(i, j)] - want).abs() < 1e-12);
                    }
                }
            }
        }
        assert!(Family::Hadamard.matrix(6).is_none());
    }

    /// Depthwise pairs mixed by a signed 2×2 DCT (= Hadamard) with a diagonal scale: the
    /// sums and differences are the hidden filters exactly. Mixed by a dense random 2×2
    /// instead, they are not (and stay near the public floor).
    #[test]
    fn pairs_break_signed_hadamard_only() {
        let mut rng = Rng::new(7);
        let n = 200;
        let real = trained_like(&mut rng, n, 1);
        let mut bank = Mat::zeros(0, 9);
        let mut dense = Mat::zeros(0, 9);
        for i in 0..n {
            // Unit-norm real and fake, as the converter normalises them.
            let fake = rng.gaussian(1, 9);
            let mut pair = real.row_range(i, 1);
            pair.append_rows(&fake);
            let pair = pair.normalized_rows();
            bank.append_rows(&dct_mix(&mut rng, &pair));
            dense.append_rows(&rng.gaussian(2, 2).matmul(&pair));
        }
        let c = pair_candidates(&bank, &disjoint_pairs(bank.rows), false);
        let s = score(&real, &c);
        assert_eq!(s.exact, n, "{s:?}");
        let v = judge(&s, 9, &public_floor(&real, &bank), &[]);
        assert!(!v.at_floor);
        let c = pair_candidates(&dense, &disjoint_pairs(dense.rows), false);
        let s = score(&real, &c);
        assert!(s.exact < n / 10, "{s:?}");
    }

    /// DCT groups of 8 over near-orthogonal (random) filters: PCA snapped to the DCT
    /// family recovers the hidden filters exactly; plain PCA only approximately. With a
    /// dense random orthogonal mixing (no family) the snap finds nothing.
    #[test]
    fn pca_structure_matching_breaks_dct_groups() {
        let mut rng = Rng::new(11);
        let (groups, h, d) = (12, 8, 576);
        let mut real = Mat::zeros(0, d);
        let mut bank = Mat::zeros(0, d);
        let mut haar = Mat::zeros(0, d);
        for _ in 0..groups {
            let b = rng.gaussian(h, d).normalized_rows();
            real.append_rows(&b);
            bank.append_rows(&dct_mix(&mut rng, &b));
            haar.append_rows(&rng.orthogonal(h).matmul(&b));
        }
        let budget = SearchBudget::default();
        let geom = Geometry {
            channels: 64,
            taps: 9,
        };
        let run = |bank: &Mat, m: Method| {
            let mut c = Mat::zeros(0, d);
            for g in near_equal_groups(bank.rows, 8) {
                c.append_rows(&attack_group(
                    &bank.row_range(g.0, g.1),
                    m,
                    geom,
                    None,
                    &budget,
                    1,
                ));
            }
            score(&real, &c)
        };
        let snapped = run(&bank, Method::PcaFamily(Family::Dct2));
        assert!(
            snapped.exact as f64 >= 0.7 * (groups * h) as f64,
            "{snapped:?}"
        );
        let pf = public_floor(&real, &bank);
        assert_eq!(pf.fraction, 0.0);
        let haar_snapped = run(&haar, Method::PcaFamily(Family::Dct2));
        assert_eq!(haar_snapped.recovered, 0, "{haar_snapped:?}");
    }

    /// ICA over groups of 8 heavy-tailed filters mixed by dense Gaussian matrices recovers
    /// them; the same mixing of Gaussian filters gives nothing (ICA cannot beat a
    /// Gaussian), so the attack is neither blind nor hallucinating.
    #[test]
    fn ica_on_groups_both_directions() {
        let mut rng = Rng::new(13);
        // Long filters: ICA's estimation error falls as 1/√d (d = 288 gives |cos| ≈ 0.9–0.95).
        let (groups, h, channels) = (6, 8, 200);
        let d = channels * 9;
        let mut real = Mat::zeros(0, d);
        let mut bank = Mat::zeros(0, d);
        let mut greal = Mat::zeros(0, d);
        let mut gbank = Mat::zeros(0, d);
        for _ in 0..groups {
            let b = laplace(&mut rng, h, d);
            real.append_rows(&b);
            bank.append_rows(&rng.gaussian(h, h).matmul(&b));
            let gb = rng.gaussian(h, d);
            greal.append_rows(&gb);
            gbank.append_rows(&rng.gaussian(h, h).matmul(&gb));
        }
        assert!(excess_kurtosis(real.row(0)) > 1.5);
        let opts = UnmixOptions {
            groupings: vec![Grouping::near_equal(bank.rows, 8)],
            methods: vec![
                Method::Ica(Contrast::LogCosh, Mode::Symmetric),
                Method::Ica(Contrast::Kurtosis, Mode::Deflation),
                Method::Sparse,
            ],
            pairs: false,
            budget: SearchBudget::default(),
            seed: 3,
        };
        for set in unmix_layer(&bank, Geometry { channels, taps: 9 }, None, &opts) {
            let s = score(&real, &set.candidates);
            assert!(s.fraction > 0.8, "{}: {s:?}", set.method);
        }
        for set in unmix_layer(&gbank, Geometry { channels, taps: 9 }, None, &opts) {
            let s = score(&greal, &set.candidates);
            // Every candidate lies in an 8-dimensional group span, where random guesses
            // also come close now and then: judge against that floor.
            let per_group = set.candidates.rows.div_ceil(groups);
            let floor = crate::score::iid_floor(greal.rows, h, per_group);
            let limit = greal.rows as f64 * (floor.fraction + 3.0 * floor.sd_fraction) + 1.0;
            assert!(
                (s.recovered as f64) <= limit && s.mean_cos < floor.mean_cos + 0.1,
                "{}: {s:?} vs span floor {floor:?}",
                set.method
            );
        }
    }

    /// Hidden membership: ICA over the whole layer (M < d) still separates heavy-tailed
    /// filters mixed in hidden blocks.
    #[test]
    fn whole_layer_ica_finds_hidden_groups() {
        let mut rng = Rng::new(17);
        let (groups, h, channels) = (4, 8, 300);
        let d = channels * 9;
        let mut real = Mat::zeros(0, d);
        let mut bank = Mat::zeros(0, d);
        for _ in 0..groups {
            let b = laplace(&mut rng, h, d);
            real.append_rows(&b);
            bank.append_rows(&rng.gaussian(h, h).matmul(&b));
        }
        // Shuffle the public bank so no contiguous run is a group.
        let perm = rng.permutation(bank.rows);
        let bank = bank.select_rows(&perm);
        let c = attack_group(
            &bank,
            Method::Ica(Contrast::LogCosh, Mode::Symmetric),
            Geometry { channels, taps: 9 },
            None,
            &SearchBudget::default(),
            5,
        );
        let s = score(&real, &c);
        assert!(s.fraction > 0.8, "{s:?}");
    }

    /// Low rank: hidden rank-1 filters (outer products) in a random mixture come out of the
    /// span search; full-rank Gaussian filters do not.
    #[test]
    fn low_rank_search() {
        let mut rng = Rng::new(19);
        let (h, channels) = (6, 16);
        let d = channels * 9;
        let real = Mat::from_rows(
            &(0..h)
                .map(|_| {
                    let u = rng.normals(channels);
                    let v = rng.normals(9);
                    (0..d).map(|i| u[i / 9] * v[i % 9]).collect()
                })
                .collect::<Vec<_>>(),
        );
        let bank = rng.gaussian(h, h).matmul(&real);
        let geom = Geometry { channels, taps: 9 };
        let c = attack_group(
            &bank,
            Method::LowRank,
            geom,
            None,
            &SearchBudget::default(),
            1,
        );
        let s = score(&real, &c);
        assert_eq!(s.exact, h, "{s:?}");
        let g = rng.gaussian(h, d);
        let c = attack_group(
            &rng.gaussian(h, h).matmul(&g),
            Method::LowRank,
            geom,
            None,
            &SearchBudget::default(),
            1,
        );
        assert_eq!(score(&g, &c).recovered, 0);
    }

    /// Templates close to the real filters get closer once projected on a group's span.
    #[test]
    fn templates_projected_on_the_span() {
        let mut rng = Rng::new(23);
        let (h, d) = (8, 288);
        let real = rng.gaussian(h, d);
        let mut noise = rng.gaussian(h, d);
        noise.scale(0.8);
        let templates = Mat::from_fn(h, d, |i, j| real[(i, j)] + noise[(i, j)]);
        let before = score(&real, &templates);
        let bank = rng.gaussian(h, h).matmul(&real);
        let c = project_templates(&row_span(&bank, 1e-9), &templates);
        let after = score(&real, &c);
        assert!(
            before.recovered == 0 && after.recovered == h,
            "{before:?} {after:?}"
        );
    }
}

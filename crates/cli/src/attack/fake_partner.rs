//! The fake-partner attack (GroupCover's "fragility of randomness") on ShadowNet's
//! fake-filter pairs, and its scoring against the reference model.
//!
//! Every public bank of a fake-pair layer holds N transformed real filters
//! P_i = (W_i − R_j(i)) / s_i and M − N fake filters R_j ~ N(0, 1). Real weights are
//! no larger than the fakes (the converter scales them to the fakes' size), so P_i leans
//! towards its partner R_j(i) (cos ≈ 0.7, against ~1/sqrt(d) for unrelated filters): public
//! filters cluster around the fakes. The attack
//!
//! 1. links public filters whose |cosine| exceeds a dimension-dependent threshold and takes
//!    connected components: one fake and the transformed reals that share it;
//! 2. names the component's fake: the member the others lean towards most (largest Σ cos²:
//!    a transformed real shares R with the fake but only R with another real), or, when that
//!    is not clear-cut (two members), the one with the smallest norm (a fake has
//!    |R|²/d ≈ 1, a transformed real (|R|² + |W|²)/(d·s²));
//! 3. outputs, for every other member P, the point s·P + R of the line that is orthogonal
//!    to R (independent random vectors are nearly orthogonal): P projected off R, which is
//!    W_i/s_i up to O(1/sqrt(d)) — the real filter up to scale. When the real weights are
//!    much smaller than the fakes this is also the least-norm point of the line.
//!
//! The same clustering runs on the hardened scheme's mixed groups (public filters are
//! invertible mixtures of normalised real and fake filters, the fakes combinations of the
//! layer's own filters): there is no fake partner to lean towards, and the scorer shows the
//! recovered share falls to the black-box floor.
//!
//! Only the public package (its layers and its public scheme name) is read here.
use shadownet_ir::{Op, Tensor};
use shadownet_trusted::{LinearKind, Scheme};

use super::PublicLayer;

/// How a public layer's filters were protected, as anyone can tell from its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Conv (groups = 1), ConvTranspose, MatMul: fake-filter pairs.
    FakePairs,
    /// Grouped / depthwise conv: groups shuffled, filters scaled.
    GroupShuffle,
    /// Hardened depthwise conv: every real filter published only inside a secret 2×2
    /// mixture with a fake on the same input channel (twice the public filters).
    MixedPairs,
}

impl Protection {
    /// Grouped/depthwise layers, reported apart from the fake-pair banks.
    pub fn depthwise(self) -> bool {
        self != Protection::FakePairs
    }

    pub fn name(self) -> &'static str {
        match self {
            Protection::FakePairs => "fake-pairs",
            Protection::GroupShuffle => "group-shuffle",
            Protection::MixedPairs => "mixed-pairs",
        }
    }
}

/// The protection of a public layer, as anyone can tell from its kind, its weight shape
/// and the package's (public) scheme.
pub fn protection(l: &PublicLayer, scheme: Scheme) -> Protection {
    match &l.kind {
        LinearKind::Conv(c)
            if c.groups > 1 && scheme == Scheme::Hardened && l.weight.shape.get(1) == Some(&1) =>
        {
            Protection::MixedPairs
        }
        LinearKind::Conv(c) if c.groups > 1 => Protection::GroupShuffle,
        _ => Protection::FakePairs,
    }
}

/// The axis of a layer's weight that indexes filters: 0 for conv [O, C/g, kh, kw], 1 for
/// transposed conv [C, O, kh, kw] and dense [K, N].
pub fn filter_axis(kind: &LinearKind) -> usize {
    match kind {
        LinearKind::Conv(_) => 0,
        _ => 1,
    }
}

/// Filters of `w` along `axis`, as a row-major [count, dim] matrix.
pub fn filters(w: &Tensor, axis: usize) -> (Vec<f32>, usize, usize) {
    if axis >= w.shape.len() {
        return (Vec::new(), 0, 0);
    }
    let outer: usize = w.shape[..axis].iter().product();
    let n = w.shape[axis];
    let inner: usize = w.shape[axis + 1..].iter().product();
    let d = outer * inner;
    let mut out = vec![0f32; n * d];
    for j in 0..n {
        for o in 0..outer {
            out[j * d + o * inner..][..inner]
                .copy_from_slice(&w.data[(o * n + j) * inner..][..inner]);
        }
    }
    (out, n, d)
}

/// Rows scaled to unit norm (zero rows stay zero).
pub fn normalized(rows: &[f32], d: usize) -> Vec<f32> {
    let mut u = rows.to_vec();
    if d == 0 {
        return u;
    }
    for r in u.chunks_mut(d) {
        let n = r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt() as f32;
        if n > 0.0 {
            r.iter_mut().for_each(|x| *x /= n);
        }
    }
    u
}

/// a [n, d] · b [m, d]ᵀ → [n, m], with the packed GEMM kernels.
pub fn cross(a: &[f32], n: usize, b: &[f32], m: usize, d: usize) -> Vec<f32> {
    if n == 0 || m == 0 || d == 0 {
        return vec![0.0; n * m];
    }
    let mut bt = vec![0f32; d * m];
    for j in 0..m {
        for k in 0..d {
            bt[k * m + j] = b[j * d + k];
        }
    }
    let at = Tensor {
        shape: vec![n, d],
        data: a.to_vec(),
    };
    let btt = Tensor {
        shape: vec![d, m],
        data: bt,
    };
    match shadownet_cpu::eval("cross", &Op::MatMul, &[&at, &btt]) {
        Ok(mut v) if !v.is_empty() => v.remove(0).data,
        // Shapes are consistent by construction; fall back to the plain loop regardless.
        _ => {
            let mut out = vec![0f32; n * m];
            for i in 0..n {
                for j in 0..m {
                    out[i * m + j] = a[i * d..][..d]
                        .iter()
                        .zip(&b[j * d..][..d])
                        .map(|(x, y)| x * y)
                        .sum();
                }
            }
            out
        }
    }
}

/// What the attack got out of one public layer.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub protection: Protection,
    /// Filter length.
    pub dim: usize,
    /// Public filters in the bank.
    pub public_filters: usize,
    /// Public filters the attack named as fakes.
    pub fakes_found: usize,
    /// Recovered filters (real filters up to scale), row-major [count, dim].
    pub filters: Vec<f32>,
    pub count: usize,
}

/// Runs the attack on one public layer of a package of `scheme`. Group-shuffled layers are
/// "recovered" by taking the public filters as they are (each is a real filter divided by a
/// scale). Mixed-pair (hardened depthwise) layers likewise give every public filter as a
/// guess: each is some mixture of a real filter and its fake, and the attacker cannot tell
/// which direction of the pair's plane is the real one.
pub fn attack_layer(l: &PublicLayer, scheme: Scheme) -> Recovered {
    let (f, m, d) = filters(&l.weight, filter_axis(&l.kind));
    let protection = protection(l, scheme);
    if protection.depthwise() || m < 2 || d == 0 {
        return Recovered {
            protection,
            dim: d,
            public_filters: m,
            fakes_found: 0,
            filters: f,
            count: m,
        };
    }
    let u = normalized(&f, d);
    let g = cross(&u, m, &u, m, d);
    // Two unrelated filters have |cos| ~ 1/sqrt(d); a real and its fake ~ 1/sqrt(1 + |W|²/|R|²),
    // about 0.7 when the real weights are scaled to the fakes' size.
    let tau = (4.0 / (d as f32).sqrt()).clamp(0.35, 0.6);
    let mut parent: Vec<usize> = (0..m).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    for i in 0..m {
        for j in i + 1..m {
            if g[i * m + j].abs() > tau {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                if a != b {
                    parent[a] = b;
                }
            }
        }
    }
    let mut comps: Vec<Vec<usize>> = vec![Vec::new(); m];
    for i in 0..m {
        let r = find(&mut parent, i);
        comps[r].push(i);
    }
    let norm2: Vec<f64> = f
        .chunks(d)
        .map(|r| r.iter().map(|&x| (x as f64).powi(2)).sum())
        .collect();
    let mut out = Vec::new();
    let mut count = 0;
    let mut fakes_found = 0;
    for comp in comps.iter().filter(|c| c.len() >= 2) {
        // Each transformed real is (W_i − R)/s_i with W_i roughly orthogonal to R, so it
        // leans towards the fake (cos² ≈ 1/(1 + |W_i|²/|R|²)) more than towards another
        // real sharing it (cos² ≈ 1/(1 + |W|²/|R|²)²): the fake maximises Σ cos².
        let pull = |c: usize| -> f64 {
            comp.iter()
                .filter(|&&j| j != c)
                .map(|&j| (g[j * m + c] as f64).powi(2))
                .sum()
        };
        // A N(0,1) fake has |R|²/d ≈ 1; a transformed real (|R|² + |W|²)/(d·s²) is larger.
        let small = |c: usize| norm2[c] / d as f64;
        let mut order: Vec<usize> = comp.clone();
        order.sort_by(|&a, &b| pull(b).total_cmp(&pull(a)));
        let c = match order.as_slice() {
            [a, b, ..] if pull(*a) - pull(*b) > 0.05 * (comp.len() - 1) as f64 => *a,
            _ => match comp.iter().min_by(|&&a, &&b| small(a).total_cmp(&small(b))) {
                Some(&c) => c,
                None => continue,
            },
        };
        fakes_found += 1;
        let fc = &f[c * d..][..d];
        // W_i = s·P_i + R for the s that makes it orthogonal to R: P_i projected off R.
        for &j in comp.iter().filter(|&&j| j != c) {
            let fj = &f[j * d..][..d];
            let dot: f64 = fj.iter().zip(fc).map(|(&a, &b)| a as f64 * b as f64).sum();
            let t = if norm2[c] > 0.0 { dot / norm2[c] } else { 0.0 };
            out.extend(
                fj.iter()
                    .zip(fc)
                    .map(|(&a, &b)| (a as f64 - t * b as f64) as f32),
            );
            count += 1;
        }
    }
    Recovered {
        protection,
        dim: d,
        public_filters: m,
        fakes_found,
        filters: out,
        count,
    }
}

/// Best |cosine| of each real filter over a set of guesses.
pub fn best_cosines(real: &[f32], n: usize, guesses: &[f32], k: usize, d: usize) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; n];
    }
    let c = cross(&normalized(real, d), n, &normalized(guesses, d), k, d);
    c.chunks(k)
        .map(|row| row.iter().fold(0f32, |a, &x| a.max(x.abs())))
        .collect()
}

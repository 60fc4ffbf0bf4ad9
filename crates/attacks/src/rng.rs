//! The attacker's (and the tests') seeded randomness: splitmix64 with Box–Muller. Every
//! attack that draws anything takes a seed, so results are reproducible.
use crate::mat::Mat;

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5eed_a77a_c4ed_0001)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in 0..n (n > 0); the modulo bias is below 2⁻⁴⁰ for the sizes used here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn sign(&mut self) -> f64 {
        if self.next_u64() & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let (u1, u2) = (self.unit(), self.unit());
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            v.push(r * t.cos());
            v.push(r * t.sin());
        }
        v.truncate(n);
        v
    }

    /// [`Rng::normals`] as f32, scaled by `std` (inputs and masks the attacker sends).
    pub fn normals_f32(&mut self, n: usize, std: f32) -> Vec<f32> {
        self.normals(n)
            .into_iter()
            .map(|x| x as f32 * std)
            .collect()
    }

    /// A rows×cols matrix of i.i.d. N(0, 1) entries.
    pub fn gaussian(&mut self, rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            data: self.normals(rows * cols),
        }
    }

    /// A uniformly random permutation of 0..n.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }

    /// A Haar-random n×n orthogonal matrix (Gram–Schmidt of a Gaussian matrix).
    pub fn orthogonal(&mut self, n: usize) -> Mat {
        let g = self.gaussian(n, n);
        let mut q = Mat::zeros(n, n);
        for i in 0..n {
            let mut v = g.row(i).to_vec();
            for _ in 0..2 {
                for j in 0..i {
                    let d = crate::mat::dot(&v, q.row(j));
                    for (x, y) in v.iter_mut().zip(q.row(j)) {
                        *x -= d * y;
                    }
                }
            }
            let n = crate::mat::norm(&v);
            for (x, y) in q.row_mut(i).iter_mut().zip(&v) {
                *x = y / n;
            }
        }
        q
    }
}

//! Why faer: the products and eigen-decompositions the attacks spend their time in, timed
//! against plain loops in one interleaved run (ratios, not absolute times, are the point
//! on a shared machine).
//!
//! cargo run --release -p shadownet-attacks --example linalg_speed
use std::time::Instant;

use shadownet_attacks::mat::{dot, sym_eig, Mat};
use shadownet_attacks::Rng;

fn naive_matmul_t(a: &Mat, b: &Mat) -> Mat {
    Mat::from_fn(a.rows, b.rows, |i, j| dot(a.row(i), b.row(j)))
}

fn main() {
    let mut rng = Rng::new(1);
    // A MobileNet-v1 1×1 layer's cosine matrix: 1024 real filters × 1229 public ones × 1024.
    let a = rng.gaussian(1024, 1024);
    let b = rng.gaussian(1229, 1024);
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let x = a.matmul_t(&b);
        fast.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let y = naive_matmul_t(&a, &b);
        slow.push(t.elapsed().as_secs_f64());
        assert!((x[(3, 5)] - y[(3, 5)]).abs() < 1e-9);
    }
    fast.sort_by(f64::total_cmp);
    slow.sort_by(f64::total_cmp);
    println!(
        "1024x1024 · (1229x1024)ᵀ: faer {:.3} s, plain loop {:.3} s: {:.1}x (medians of 3, interleaved)",
        fast[1],
        slow[1],
        slow[1] / fast[1]
    );
    // Whole-layer whitening: the eigen-decomposition of a 512×512 Gram matrix.
    let g = rng.gaussian(512, 2048).gram_rows();
    let t = Instant::now();
    let (vals, _) = sym_eig(&g);
    println!(
        "512x512 symmetric eigen-decomposition: faer {:.3} s (largest eigenvalue {:.1})",
        t.elapsed().as_secs_f64(),
        vals[0]
    );
}

//! How the lattice attack on mixing modulo q scales with the group size h: int8-like
//! filters (|w| ≤ 127, d = 4h) mixed by a random invertible matrix mod q, attacked on
//! 2h + 4 coordinates; prints the share recovered exactly and the time.
//!
//! cargo run --release -p shadownet-attacks --example lattice_scale [-- 8,16,24]
use std::time::Instant;

use shadownet_attacks::lattice::{echelon_mod, modular_attack};
use shadownet_attacks::score::score;
use shadownet_attacks::{Mat, Rng};

fn main() {
    let hs: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "8,16,24".into())
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    let mut rng = Rng::new(7);
    for (qname, q) in [("2^64", 1u128 << 64), ("2^32", 1u128 << 32)] {
        for &h in &hs {
            let d = 4 * h;
            let b: Vec<Vec<i64>> = (0..h)
                .map(|_| {
                    (0..d)
                        .map(|_| ((rng.normal() * 40.0).round() as i64).clamp(-127, 127))
                        .collect()
                })
                .collect();
            let a = loop {
                let a: Vec<Vec<u128>> = (0..h)
                    .map(|_| (0..h).map(|_| rng.next_u64() as u128 % q).collect())
                    .collect();
                if echelon_mod(&a, q).is_some() {
                    break a;
                }
            };
            let p: Vec<Vec<u128>> = (0..h)
                .map(|r| {
                    (0..d)
                        .map(|c| {
                            (0..h).fold(0u128, |acc, k| {
                                let bv = (b[k][c] as i128).rem_euclid(q as i128) as u128;
                                (acc + (a[r][k] * bv) % q) % q
                            })
                        })
                        .collect()
                })
                .collect();
            let t = Instant::now();
            let out = modular_attack(&p, q, 2 * h + 4);
            let secs = t.elapsed().as_secs_f64();
            let real = Mat::from_rows(
                &b.iter()
                    .map(|r| r.iter().map(|&v| v as f64).collect())
                    .collect::<Vec<_>>(),
            );
            match out {
                Some(o) => {
                    let s = score(&real, &o.filters);
                    println!(
                        "q = {qname}, h = {h:>2}, lattice dim {:>3}: {}/{h} filters exact, {secs:.2} s",
                        o.coords.len(),
                        s.exact
                    );
                }
                None => println!("q = {qname}, h = {h}: no unit pivots"),
            }
        }
    }
}

//! Seed search: when every secret of a conversion and a public value (the conversion id)
//! come from one seeded generator, the public value names the seed. Given a closure that
//! recomputes the public value for a seed (re-running the public converter on a dummy
//! model of the same shapes, or just its first draws), [`search`] scans a seed range and
//! returns the first seed that reproduces it; re-converting with that seed then gives
//! every secret.
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeedSearch {
    pub found: Option<u64>,
    /// Seeds tried (the whole range when nothing was found).
    pub tried: u64,
    pub seconds: f64,
}

/// Scans `lo..hi` for the smallest seed with `reconvert(seed) == target`, in parallel
/// chunks (the result does not depend on the thread count).
pub fn search<T, F>(lo: u64, hi: u64, target: &T, reconvert: F) -> SeedSearch
where
    T: PartialEq + Sync,
    F: Fn(u64) -> T + Sync,
{
    const CHUNK: u64 = 1 << 14;
    let t0 = Instant::now();
    let len = hi.saturating_sub(lo);
    let chunks = len.div_ceil(CHUNK) as usize;
    let found = (0..chunks).into_par_iter().find_map_first(|c| {
        let s = lo + c as u64 * CHUNK;
        let e = (s + CHUNK).min(hi);
        (s..e).find(|&seed| reconvert(seed) == *target)
    });
    SeedSearch {
        found,
        tried: found.map_or(len, |f| f - lo + 1),
        seconds: t0.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(seed: u64) -> [u8; 8] {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }

    #[test]
    fn finds_the_seed_and_only_in_range() {
        let target = mix(123_456);
        let r = search(0, 1 << 20, &target, mix);
        assert_eq!(r.found, Some(123_456));
        assert_eq!(r.tried, 123_457);
        let r = search(200_000, 1 << 20, &target, mix);
        assert_eq!((r.found, r.tried), (None, (1 << 20) - 200_000));
    }
}

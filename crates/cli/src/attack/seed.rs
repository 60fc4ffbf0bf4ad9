//! `attack --kind seed`: recovers a conversion's secrets from its public conversion id
//! when the conversion was seeded (`convert --seed N`).
//!
//! The converter draws everything from one ChaCha20 stream seeded with N: first the
//! calibration inputs (a count fixed by the public input shapes), then the 16-byte
//! conversion id, then every secret (fakes, partners, scales, permutations, mixing
//! matrices, masks), in an order and amount that depend on the shapes only, never on
//! the weight values. So the id names the seed: the attacker reproduces the id for each
//! candidate seed (the same first draws: one ChaCha block per seed), and on a match
//! re-converts a dummy model of the same architecture (weights of its own choosing) with
//! that seed. The dummy's secret restoration, applied to the victim's public banks, gives
//! the victim's real filters up to one scale per filter (the only weight-dependent
//! secret). The search runs over what a person types as a seed (0..2^bits); a
//! conversion seeded from the OS is out of reach, which the report then says.
use anyhow::{Context, Result};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use shadownet_attacks::score::{self, Floor};
use shadownet_attacks::seed::{search, SeedSearch};
use shadownet_attacks::{Mat, Rng};
use shadownet_ir::{Graph, Tensor};
use shadownet_trusted::{PublicPackage, Restore};

use super::bank::{self, Judged, Totals};
use super::fake_partner::protection;
use super::op_name;

/// The conversion id the converter draws for `seed` on a model with `inputs` (shapes in
/// model-input order): the ChaCha20 words after the calibration draws (each input of n
/// values takes ⌈n/2⌉ Box–Muller pairs of two u64, i.e. 4·⌈n/2⌉ words).
pub fn conversion_id(seed: u64, inputs: &[Vec<usize>]) -> [u8; 16] {
    let words: u128 = inputs
        .iter()
        .map(|s| 4 * s.iter().product::<usize>().div_ceil(2) as u128)
        .sum();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_word_pos(words);
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    id
}

/// A model of the same architecture as `g` with every outsourced layer's weight and bias
/// replaced by the attacker's own N(0, 1) values: what an attacker who knows the
/// architecture (not the weights) converts.
pub fn dummy_of(g: &Graph, seed: u64) -> Graph {
    let mut d = g.clone();
    let mut rng = Rng::new(seed ^ 0xd0d0);
    for n in &g.nodes {
        if shadownet_protect::outsourced_kind(g, n).is_none() {
            continue;
        }
        for &v in n.inputs.iter().skip(1) {
            if let Some(t) = &g.values[v].data {
                let data = rng.normals(t.len()).into_iter().map(|x| x as f32).collect();
                d.values[v].data = Some(Tensor {
                    shape: t.shape.clone(),
                    data,
                });
            }
        }
    }
    d
}

/// The real filters (each up to its scale) that `restore` makes of the public bank `p`.
pub fn restore_bank(restore: &Restore, p: &Mat) -> Mat {
    let d = p.cols;
    match restore {
        Restore::FakePairs {
            real_pos,
            fake_pos,
            scale,
            fake_scale,
        } => Mat::from_fn(real_pos.len(), d, |i, j| {
            scale[i] as f64 * p[(real_pos[i] as usize, j)]
                + fake_scale[i] as f64 * p[(fake_pos[i] as usize, j)]
        }),
        Restore::GroupShuffle { groups, perm, .. } => {
            let og = p.rows / (*groups).max(1);
            let mut out = Mat::zeros(p.rows, d);
            for (q, &pg) in perm.iter().enumerate() {
                for r in 0..og {
                    out.row_mut(pg as usize * og + r)
                        .copy_from_slice(p.row(q * og + r));
                }
            }
            out
        }
        Restore::Mix { taps, .. } => Mat::from_fn(taps.len(), d, |i, j| {
            taps[i]
                .iter()
                .map(|&(pos, c)| c as f64 * p[(pos as usize, j)])
                .sum()
        }),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SeedLayer {
    pub layer: usize,
    pub op: String,
    pub depthwise: bool,
    pub real_filters: usize,
    pub public_floor: Floor,
    #[serde(flatten)]
    pub judged: Judged,
}

#[derive(Clone, Debug, Serialize)]
pub struct SeedReport {
    /// Seeds searched: lo..hi.
    pub range: [u64; 2],
    #[serde(flatten)]
    pub search: SeedSearch,
    /// Public values that a seed in range reproduces (derived from seeded randomness).
    pub public_values_from_seed: Vec<String>,
    /// The re-conversion of the dummy with the found seed reproduced the conversion id and
    /// every public shape.
    pub reconverted: bool,
    /// The fake ratio the re-conversion used (read off the public shapes).
    pub ratio: Option<f32>,
    pub layers: Vec<SeedLayer>,
    pub dense: Totals,
    pub depthwise: Totals,
}

/// The attack: the public package and a dummy of the architecture only. Returns the
/// search, the ratio and, per layer, the recovered filters.
pub fn attack(
    public: &PublicPackage,
    dummy: &Graph,
    bits: u32,
) -> Result<(SeedSearch, Option<f32>, Vec<Mat>)> {
    let shapes: Vec<Vec<usize>> = public.inputs.iter().map(|(_, s)| s.clone()).collect();
    let hi = if bits >= 64 { u64::MAX } else { 1u64 << bits };
    let found = search(0, hi, &public.conversion_id, |s| conversion_id(s, &shapes));
    let Some(seed) = found.found else {
        return Ok((found, None, Vec::new()));
    };
    // The ratio: the first candidate that gives every public bank its size.
    let dummy_nodes: Vec<usize> = dummy
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| shadownet_protect::outsourced_kind(dummy, n).is_some())
        .map(|(k, _)| k)
        .collect();
    let mut tried = Vec::new();
    for ratio in ratio_candidates(public, dummy, &dummy_nodes) {
        tried.push(ratio);
        let opts = shadownet_protect::Options {
            scheme: public.scheme,
            ratio,
            seed: Some(seed),
            ..Default::default()
        };
        let c = shadownet_protect::convert(dummy, &opts, &mut |_, _| {})
            .context("re-converting the dummy model")?;
        let shapes_match = c.public.layers.len() == public.layers.len()
            && c.public
                .layers
                .iter()
                .zip(&public.layers)
                .all(|(a, b)| a.weight.shape == b.weight.shape);
        if c.public.conversion_id == public.conversion_id && shapes_match {
            let rec = c
                .secret
                .layers
                .iter()
                .zip(&public.layers)
                .map(|(sl, pl)| restore_bank(&sl.restore, &bank::public_bank(pl).0))
                .collect();
            return Ok((found, Some(ratio), rec));
        }
    }
    anyhow::bail!("seed {seed} reproduces the conversion id, but no re-conversion (ratios {tried:?}) reproduces the public shapes")
}

/// Ratios that could have produced the public bank sizes, most likely first.
fn ratio_candidates(public: &PublicPackage, dummy: &Graph, nodes: &[usize]) -> Vec<f32> {
    let mut v = vec![
        1.2f32, 1.5, 2.0, 1.1, 1.25, 1.3, 1.4, 1.6, 1.75, 1.8, 3.0, 4.0,
    ];
    // The public size of a dense-like bank is max(⌈r·N⌉, N + 1): narrow r down.
    let (mut lo, mut hi) = (1.0f32, f32::INFINITY);
    for (l, &n) in public.layers.iter().zip(nodes) {
        if protection(l, public.scheme).depthwise() {
            continue;
        }
        let kind = match shadownet_protect::outsourced_kind(dummy, &dummy.nodes[n]) {
            Some(k) => k,
            None => continue,
        };
        let Some(w) = dummy.constant(dummy.nodes[n].inputs[1]) else {
            continue;
        };
        let axis = super::fake_partner::filter_axis(&kind);
        let (nr, m) = (w.shape[axis] as f32, l.weight.shape[axis] as f32);
        if m > nr + 1.0 {
            lo = lo.max((m - 1.0) / nr);
            hi = hi.min(m / nr);
        }
    }
    if hi.is_finite() && hi > lo {
        v.retain(|&r| r > lo && r <= hi);
        v.push(0.5 * (lo + hi));
    }
    v
}

/// Runs the seed attack and scores it.
pub fn run(
    public: &PublicPackage,
    g: &Graph,
    nodes: &[usize],
    bits: u32,
    seed: u64,
) -> Result<SeedReport> {
    let dummy = dummy_of(g, seed);
    let (found, ratio, recovered) = attack(public, &dummy, bits)?;
    let mut layers = Vec::new();
    let (mut dense, mut dw) = (Totals::default(), Totals::default());
    for (k, (l, &n)) in public.layers.iter().zip(nodes).enumerate() {
        let real = bank::real_bank(g, n, &l.kind, k)?;
        let (pb, _) = bank::public_bank(l);
        bank::check_dims(&real, &pb, k)?;
        let public_floor = score::public_floor(&real, &pb);
        let cand = recovered.get(k).cloned().unwrap_or_default();
        let best = if cand.rows > 0 {
            score::best_abs_cos(&real, &cand)
        } else {
            vec![0.0; real.rows]
        };
        let judged = bank::judge(&best, cand.rows, pb.cols, &public_floor, &[]);
        let depthwise = protection(l, public.scheme).depthwise();
        if depthwise {
            dw.add(&judged, &public_floor);
        } else {
            dense.add(&judged, &public_floor);
        }
        layers.push(SeedLayer {
            layer: k,
            op: op_name(&l.kind),
            depthwise,
            real_filters: real.rows,
            public_floor,
            judged,
        });
    }
    let hi = if bits >= 64 { u64::MAX } else { 1u64 << bits };
    Ok(SeedReport {
        range: [0, hi],
        public_values_from_seed: if found.found.is_some() {
            vec!["conversion_id".into()]
        } else {
            Vec::new()
        },
        reconverted: ratio.is_some(),
        search: found,
        ratio,
        layers,
        dense: dense.finish(),
        depthwise: dw.finish(),
    })
}

impl SeedReport {
    pub fn to_table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nseed search over {}..{}: {} seeds in {:.1} s: {}",
            self.range[0],
            self.range[1],
            self.search.tried,
            self.search.seconds,
            match self.search.found {
                Some(v) => format!(
                    "conversion id reproduced by seed {v}; re-conversion {}",
                    if self.reconverted {
                        format!("matches (ratio {:?})", self.ratio.unwrap_or_default())
                    } else {
                        "does not match".into()
                    }
                ),
                None => "no seed reproduces the conversion id".into(),
            }
        );
        s.push_str(&bank::totals_line("dense-like layers", &self.dense));
        s.push_str(&bank::totals_line("depthwise layers", &self.depthwise));
        s
    }
}

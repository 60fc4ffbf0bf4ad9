//! The mask-reuse attack: ShadowNet draws each layer's input mask once, at conversion, and
//! adds the same mask on every inference. The attacker runs the package on inputs of its
//! choice and watches the accelerator's inputs x̃ = P(x) + m.
//!
//! Differences already cancel the mask: x̃_a − x̃_b = P(x_a − x_b). To get absolute values
//! the attacker needs one anchor per element, and ReLU networks hand it one: a post-ReLU
//! activation is exactly 0 on a large share of inputs, so over many chosen queries the
//! per-element minimum of x̃ is exactly m wherever some query drove that element to zero
//! (the value repeats bit for bit, which the attacker counts as an "anchor"). Queries mix
//! i.i.d. noise and per-channel-constant images at several scales: constant images switch
//! whole channels off, which anchors layers fed by global pooling too. The victim's
//! activation is then x̃_v − m̂. Layers fed directly by a model input are unmasked and
//! recognised by their input equalling the query.
//!
//! Against the hardened scheme, whose trusted core draws a fresh mask for every layer on
//! every inference, the same procedure runs unchanged: nothing repeats, so nothing is
//! anchored and the estimate is unrelated to any mask (docs/security.md).
//!
//! Only public shapes, the spy's records and `infer` are used.
use super::{Observed, PublicPackage};
use anyhow::{bail, Result};
use shadownet_ir::Tensor;

use super::Rng;

/// The attacker's capability: run the package on chosen inputs and read what the
/// accelerator saw during that run.
pub trait Oracle {
    fn query(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Observed>>;
}

/// Per layer: the recovered input activation in the public layout (group-shuffled layers
/// keep the secret group order), whether it was seen unmasked, and the share of elements
/// whose mask estimate is anchored by a repeated exact minimum.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub recovered: Vec<Tensor>,
    pub unmasked: Vec<bool>,
    pub anchored: Vec<f32>,
    pub queries: usize,
}

/// The attacker's probe `q`: zeros first, then i.i.d. Gaussian and per-channel-constant
/// inputs at scales 1, 8, 64, 512 (large inputs swamp the biases, so
/// activations switch off about half the time).
pub fn probe(shapes: &[Vec<usize>], q: usize, rng: &mut Rng) -> Vec<Tensor> {
    shapes
        .iter()
        .map(|shape| {
            let n: usize = shape.iter().product();
            if q == 0 {
                return Tensor::zeros(shape);
            }
            let sigma = [1.0f32, 8.0, 64.0, 512.0][(q / 2) % 4];
            let data = if q % 2 == 1 {
                rng.normals_f32(n, sigma)
            } else {
                // Channel axis guess: the smaller of axes 1 and 3 of an image batch.
                let axis = match shape.len() {
                    4 if shape[3] < shape[1] => 3,
                    r if r >= 2 => 1,
                    _ => 0,
                };
                let c = shape.get(axis).copied().unwrap_or(1).max(1);
                let inner: usize = shape[axis + 1..].iter().product();
                let vals = rng.normals_f32(c, sigma);
                (0..n).map(|i| vals[(i / inner.max(1)) % c]).collect()
            };
            Tensor {
                shape: shape.clone(),
                data,
            }
        })
        .collect()
}

fn first_per_layer(obs: Vec<Observed>, layers: usize) -> Vec<Option<Observed>> {
    let mut out: Vec<Option<Observed>> = vec![None; layers];
    for o in obs {
        if let Some(slot) = out.get_mut(o.layer as usize) {
            if slot.is_none() {
                *slot = Some(o);
            }
        }
    }
    out
}

pub fn attack(
    public: &PublicPackage,
    oracle: &mut dyn Oracle,
    victim: &[Tensor],
    queries: usize,
    seed: u64,
) -> Result<Outcome> {
    let l = public.layers.len();
    let shapes: Vec<Vec<usize>> = public.inputs.iter().map(|(_, s)| s.clone()).collect();
    let mut rng = Rng::new(seed);
    let mut mins: Vec<Vec<f32>> = vec![Vec::new(); l];
    let mut hits: Vec<Vec<u32>> = vec![Vec::new(); l];
    let mut plain = vec![true; l];
    let queries = queries.max(2);
    for q in 0..queries {
        let xs = probe(&shapes, q, &mut rng);
        let seen = first_per_layer(oracle.query(xs.clone())?, l);
        for (k, o) in seen.into_iter().enumerate() {
            let Some(o) = o else {
                bail!("layer {k} never reached the accelerator");
            };
            let x = &o.input.data;
            plain[k] &= xs.iter().any(|t| t.shape == o.input.shape && &t.data == x);
            if mins[k].is_empty() {
                mins[k] = x.clone();
                hits[k] = vec![1; x.len()];
                continue;
            }
            if mins[k].len() != x.len() {
                bail!("layer {k}: the accelerator input changed size between runs");
            }
            for ((m, h), &v) in mins[k].iter_mut().zip(hits[k].iter_mut()).zip(x) {
                if v < *m {
                    *m = v;
                    *h = 1;
                } else if v == *m {
                    *h += 1;
                }
            }
        }
    }
    let seen = first_per_layer(oracle.query(victim.to_vec())?, l);
    let mut recovered = Vec::with_capacity(l);
    let mut anchored = Vec::with_capacity(l);
    for (k, o) in seen.into_iter().enumerate() {
        let Some(o) = o else {
            bail!("layer {k} never reached the accelerator on the victim input");
        };
        let mut t = o.input;
        if plain[k] {
            anchored.push(1.0);
        } else {
            for (v, m) in t.data.iter_mut().zip(&mins[k]) {
                *v -= m;
            }
            let a = hits[k].iter().filter(|&&h| h >= 2).count();
            anchored.push(a as f32 / hits[k].len().max(1) as f32);
        }
        recovered.push(t);
    }
    Ok(Outcome {
        recovered,
        unmasked: plain,
        anchored,
        queries,
    })
}

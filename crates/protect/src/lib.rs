//! Vendor side: turns a plain model into a protected package.
//!
//! Every linear layer with constant weights is outsourced: its public weights are
//! transformed so that they reveal neither the real filters nor the bias, and the secret
//! needed to undo the transform goes into a [`SecretModel`] sealed to one device.
mod rng;

use std::path::Path;

use rand_core::{OsRng, RngCore, SeedableRng};
use shadownet_ir::{Graph, Node, Op, Tensor};
use shadownet_trusted::format::{PUBLIC_FILE, PUBLIC_MAGIC, SECRET_FILE};
use shadownet_trusted::restore;
use shadownet_trusted::{
    LinearKind, Mask, PublicLayer, PublicPackage, Restore, Scheme, SecretLayer, SecretModel,
};

use crate::rng::Rng;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--ratio must be greater than 1 (each real filter needs a fake partner), got {0}")]
    Ratio(f32),
    #[error("the model has no linear layer with constant weights: nothing to outsource")]
    NothingToOutsource,
    #[error("calibration run failed: {0}")]
    Kernel(#[from] shadownet_cpu::Error),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Clone, Debug)]
pub struct Options {
    pub scheme: Scheme,
    /// Public output channels per real one (the paper's r).
    pub ratio: f32,
    /// Reproducible conversions for tests; `None` draws from the OS.
    pub seed: Option<u64>,
    /// Mask standard deviation relative to the activation it hides; `None` takes the
    /// scheme's default (see [`Options::mask_scale`]).
    pub mask_scale: Option<f32>,
}

impl Options {
    /// Larger masks hide better but cost precision in proportion (see docs/schemes.md).
    /// The paper's fake filters already spend most of the f32 headroom, so its masks are
    /// as large as the activations; the hardened scheme's unit-norm mixing leaves room for
    /// masks twice that size.
    pub fn mask_scale(&self) -> f32 {
        self.mask_scale.unwrap_or(match self.scheme {
            Scheme::ShadowNet => 1.0,
            Scheme::Hardened => 2.0,
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scheme: Scheme::ShadowNet,
            ratio: 1.2,
            seed: None,
            mask_scale: None,
        }
    }
}

/// RMS of the fake filters relative to the (rescaled) real ones; see `fake_pairs`.
const FAKE_TO_REAL: f32 = 4.0;

/// The same for head layers, whose output reaches a model output without passing another
/// outsourced layer. Restoration noise grows with the fakes' size; in an inner layer it is
/// diluted by the sums of the layers after it, but a head's lands on the output as it is.
/// On hand_landmark_lite, fakes 4× the real filters in its four dense heads alone cost
/// 1e-4 to 2.6e-4 relative error on the world landmarks (seeds 1, 7, 11, 13, 17, 23);
/// fakes as large as the real filters bring that to 3e-5 to 7e-5. A public head filter
/// then keeps a cosine of ~0.7 with its real one, which the paper's fake-partner attack
/// does not even need: it recovers these layers whatever the ratio.
const HEAD_FAKE_TO_REAL: f32 = 1.0;

/// Marks the outsourced nodes (by node index) whose output flows into a model output
/// through non-outsourced nodes only.
fn head_layers(g: &Graph, linear: &[(usize, LinearKind)]) -> Vec<bool> {
    let mut outsourced = vec![false; g.nodes.len()];
    for &(k, _) in linear {
        outsourced[k] = true;
    }
    // Values from which a model output is reached without an outsourced node; nodes are in
    // topological order, so one backward sweep settles every value.
    let mut reaches = vec![false; g.values.len()];
    for &o in &g.outputs {
        reaches[o] = true;
    }
    let mut head = vec![false; g.nodes.len()];
    for (k, n) in g.nodes.iter().enumerate().rev() {
        let feeds = n.outputs.iter().any(|&o| reaches[o]);
        if outsourced[k] {
            head[k] = feeds;
        } else if feeds {
            for &i in &n.inputs {
                reaches[i] = true;
            }
        }
    }
    head
}

/// Smallest scale drawn for a filter: tiny scales would blow up the transformed weights
/// and with them the float error of restoration.
const MIN_SCALE: f32 = 0.1;

/// The outsourced form of a node, if it is a linear op with constant weights.
pub fn outsourced_kind(g: &Graph, n: &Node) -> Option<LinearKind> {
    let weight_const = n.inputs.get(1).is_some_and(|&w| g.constant(w).is_some());
    let input_varies = n.inputs.first().is_some_and(|&x| g.constant(x).is_none());
    let bias_ok = n.inputs.get(2).is_none_or(|&b| g.constant(b).is_some());
    if !(weight_const && input_varies && bias_ok) {
        return None;
    }
    match &n.op {
        Op::Conv(c) => Some(LinearKind::Conv(c.clone())),
        // Grouped transposed convs have no fake-filter form here; they stay trusted.
        Op::ConvTranspose(c) if c.groups == 1 => Some(LinearKind::ConvTranspose(c.clone())),
        Op::MatMul if g.shape(n.inputs[1]).len() == 2 && !g.shape(n.inputs[0]).is_empty() => {
            Some(LinearKind::MatMul)
        }
        _ => None,
    }
}

pub struct Converted {
    pub public: PublicPackage,
    pub secret: SecretModel,
}

/// Converts `g`, calling `progress(done, total)` after each outsourced layer.
pub fn convert(
    g: &Graph,
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Converted> {
    if opts.ratio <= 1.0 || !opts.ratio.is_finite() {
        return Err(Error::Ratio(opts.ratio));
    }
    let mut rng = match opts.seed {
        Some(s) => Rng::new(rand_chacha::ChaCha20Rng::seed_from_u64(s)),
        None => Rng::new(
            rand_chacha::ChaCha20Rng::from_rng(OsRng)
                .unwrap_or_else(|_| rand_chacha::ChaCha20Rng::seed_from_u64(OsRng.next_u64())),
        ),
    };
    let linear: Vec<(usize, LinearKind)> = g
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(k, n)| outsourced_kind(g, n).map(|kind| (k, kind)))
        .collect();
    if linear.is_empty() {
        return Err(Error::NothingToOutsource);
    }
    let stds = activation_stds(g, &mut rng)?;
    let heads = head_layers(g, &linear);
    let mut conversion_id = [0u8; 16];
    rng.fill(&mut conversion_id);
    let mut public_layers = Vec::with_capacity(linear.len());
    let mut secret_layers = Vec::with_capacity(linear.len());
    for (done, (k, kind)) in linear.iter().enumerate() {
        let node = &g.nodes[*k];
        let fake_to_real = if heads[*k] {
            HEAD_FAKE_TO_REAL
        } else {
            FAKE_TO_REAL
        };
        let (pl, sl) = protect_layer(g, *k, node, kind, opts, &stds, fake_to_real, &mut rng)?;
        public_layers.push(pl);
        secret_layers.push(sl);
        progress(done + 1, linear.len());
    }
    let secret_graph = strip_outsourced_weights(g, linear.iter().map(|(k, _)| *k));
    let io = |ids: &[usize]| {
        ids.iter()
            .map(|&i| (g.values[i].name.clone(), g.values[i].shape.clone()))
            .collect()
    };
    Ok(Converted {
        public: PublicPackage {
            scheme: opts.scheme,
            conversion_id,
            inputs: io(&g.inputs),
            outputs: io(&g.outputs),
            layers: public_layers,
        },
        secret: SecretModel {
            scheme: opts.scheme,
            conversion_id,
            graph: secret_graph,
            layers: secret_layers,
        },
    })
}

/// Per-channel RMS of every value on one random N(0,1) input, to size the masks: channel
/// axis 1 for images, the last axis otherwise. A per-tensor scale would drown quiet
/// channels in noise far larger than they are, costing precision for nothing.
fn activation_stds(g: &Graph, rng: &mut Rng) -> Result<Vec<Vec<f32>>> {
    let inputs: Vec<Tensor> = g
        .inputs
        .iter()
        .map(|&i| {
            let shape = g.shape(i).to_vec();
            let n = shape.iter().product();
            Tensor {
                shape,
                data: rng.normals(n, 1.0),
            }
        })
        .collect();
    let mut stds = vec![Vec::new(); g.values.len()];
    for (&i, t) in g.inputs.iter().zip(&inputs) {
        stds[i] = channel_rms(t);
    }
    shadownet_cpu::run_graph_observed(g, &inputs, |k, outs| {
        for (&o, t) in g.nodes[k].outputs.iter().zip(outs) {
            stds[o] = channel_rms(t);
        }
    })?;
    Ok(stds)
}

fn mask_axis(shape: &[usize]) -> usize {
    if shape.len() == 4 {
        1
    } else {
        shape.len().saturating_sub(1)
    }
}

/// The per-channel size of the mask that hides `t`: its RMS (means count too: a mask
/// must hide a constant offset as well), but at least half its largest magnitude, so the
/// few large values of a sparse post-ReLU channel do not stand out of a mask sized by the
/// many zeros.
fn channel_rms(t: &Tensor) -> Vec<f32> {
    if t.shape.is_empty() {
        return vec![t.data.first().map_or(1.0, |v| v.abs().max(1e-3))];
    }
    let axis = mask_axis(&t.shape);
    let c = t.shape[axis].max(1);
    let inner: usize = t.shape[axis + 1..].iter().product();
    let mut acc = vec![0f64; c];
    let mut peak = vec![0f32; c];
    for (i, v) in t.data.iter().enumerate() {
        let ch = (i / inner.max(1)) % c;
        acc[ch] += (*v as f64).powi(2);
        peak[ch] = peak[ch].max(v.abs());
    }
    let per = (t.len() / c).max(1) as f64;
    acc.iter()
        .zip(&peak)
        .map(|(a, &p)| ((a / per).sqrt() as f32).max(0.5 * p).max(1e-3))
        .collect()
}

/// A mask for an input of `shape` whose channels have RMS `rms`.
fn draw_mask(shape: &[usize], rms: &[f32], scale: f32, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let axis = mask_axis(shape);
    let c = shape.get(axis).copied().unwrap_or(1).max(1);
    let inner: usize = shape
        .get(axis + 1..)
        .map_or(1, |s| s.iter().product::<usize>().max(1));
    let mut data = rng.normals(n, 1.0);
    for (i, v) in data.iter_mut().enumerate() {
        *v *= scale * rms.get((i / inner) % c).copied().unwrap_or(1.0);
    }
    Tensor {
        shape: shape.to_vec(),
        data,
    }
}

#[allow(clippy::too_many_arguments)]
fn protect_layer(
    g: &Graph,
    k: usize,
    node: &Node,
    kind: &LinearKind,
    opts: &Options,
    stds: &[Vec<f32>],
    fake_to_real: f32,
    rng: &mut Rng,
) -> Result<(PublicLayer, SecretLayer)> {
    let x = node.inputs[0];
    let w = g
        .constant(node.inputs[1])
        .cloned()
        .unwrap_or_else(|| Tensor::zeros(&[0]));
    let bias = node
        .inputs
        .get(2)
        .and_then(|&b| g.constant(b))
        .map(|t| t.data.clone());
    let out_shape = g.shape(node.outputs[0]).to_vec();
    let axis = kind.channel_axis(out_shape.len());
    // Filters run along axis 0 of a conv weight [O, C/g, kh, kw], axis 1 of a transposed
    // conv's [C, O, kh, kw] and of a dense weight [K, N].
    let filter_axis = if matches!(kind, LinearKind::Conv(_)) {
        0
    } else {
        1
    };
    let hardened = opts.scheme == Scheme::Hardened;
    let (weight, restore) = match kind {
        LinearKind::Conv(c) if c.groups > 1 && hardened && w.shape[1] == 1 => {
            mixed_depthwise(&w, c.groups, rng)
        }
        LinearKind::Conv(c) if c.groups > 1 => group_shuffle(&w, c.groups, rng),
        _ if hardened => mixed_groups(&w, filter_axis, opts.ratio, rng),
        _ => fake_pairs(&w, filter_axis, opts.ratio, fake_to_real, rng),
    };
    let mut public_output = out_shape.clone();
    public_output[axis] = weight.shape[filter_axis];
    let mut layer = SecretLayer {
        node: k as u32,
        public_output: public_output.clone(),
        restore,
        bias: None,
        mask: None,
        mask_correction: None,
        mask_rms: Vec::new(),
    };
    if hardened {
        // One-time masks on every layer, the first included, drawn per inference by the
        // trusted core; only their per-channel size is fixed here.
        layer.mask_rms = stds[x].iter().map(|r| r * opts.mask_scale()).collect();
    } else if !g.inputs.contains(&x) {
        // Layers fed straight by a model input see it in the clear (the user's input is
        // not the vendor's secret); every other layer's input is masked.
        // The correction is computed from the mask exactly as the trusted core keeps it.
        let mask = Mask::from_f32(&draw_mask(g.shape(x), &stds[x], opts.mask_scale(), rng));
        let through = shadownet_cpu::eval("mask", &kind.op(), &[&mask.to_tensor(), &weight])?;
        layer.mask_correction = Some(restore::restore_output(
            &layer,
            &through[0],
            &out_shape,
            axis,
        ));
        layer.mask = Some(mask);
    }
    layer.bias = bias;
    let public = PublicLayer {
        kind: kind.clone(),
        weight,
        input_shape: g.shape(x).to_vec(),
        output_shape: public_output,
    };
    Ok((public, layer))
}

/// The paper's fake-filter transform along `axis` of `w`: returns the public bank and
/// how to restore. Filter i of the bank is (W_i/α − R_j(i)) / s_i, followed by the fakes R.
///
/// α_i rescales filter i so its RMS is `1/fake_to_real` of the fakes' N(0, 1). The paper
/// draws R from N(0, 1) whatever the weights' scale; for He-scaled layers (RMS ~0.03), or
/// for the near-zero filters BN folding leaves in real models, the accelerator's f32 sums
/// then carry noise tens of times the signal, which after restoration costs well over
/// 1e-4 relative error across a deep model. Fakes a few times larger than the real
/// filters still bury them (cosine ~1/fake_to_real) and restoration stays within float
/// noise. Each α_i is secret and folds into the secret scale s_i, so this is the paper's
/// scheme on a rescaled layer, with its weakness (and its attack) unchanged.
fn fake_pairs(
    w: &Tensor,
    axis: usize,
    ratio: f32,
    fake_to_real: f32,
    rng: &mut Rng,
) -> (Tensor, Restore) {
    let outer: usize = w.shape[..axis].iter().product();
    let n = w.shape[axis];
    let inner: usize = w.shape[axis + 1..].iter().product();
    let alpha: Vec<f32> = (0..n)
        .map(|i| {
            let sq: f64 = (0..outer)
                .flat_map(|o| &w.data[(o * n + i) * inner..][..inner])
                .map(|&v| v as f64 * v as f64)
                .sum();
            let rms = (sq / (outer * inner).max(1) as f64).sqrt() as f32;
            if rms.is_normal() {
                rms * fake_to_real
            } else {
                1.0
            }
        })
        .collect();
    let m = ((ratio * n as f32).ceil() as usize).max(n + 1);
    let f = m - n;
    let fakes: Vec<Vec<f32>> = (0..f).map(|_| rng.normals(outer * inner, 1.0)).collect();
    let partner: Vec<usize> = (0..n).map(|_| rng.below(f)).collect();
    let scale: Vec<f32> = (0..n).map(|_| rng.uniform(MIN_SCALE, 1.0)).collect();
    let perm = rng.permutation(m);
    let mut data = vec![0f32; outer * m * inner];
    for o in 0..outer {
        for t in 0..m {
            let dst = &mut data[(o * m + perm[t]) * inner..][..inner];
            if t < n {
                let src = &w.data[(o * n + t) * inner..][..inner];
                let r = &fakes[partner[t]][o * inner..][..inner];
                for ((d, &s), &r) in dst.iter_mut().zip(src).zip(r) {
                    *d = (s / alpha[t] - r) / scale[t];
                }
            } else {
                dst.copy_from_slice(&fakes[t - n][o * inner..][..inner]);
            }
        }
    }
    let mut shape = w.shape.clone();
    shape[axis] = m;
    let restore = Restore::FakePairs {
        real_pos: (0..n).map(|i| perm[i] as u32).collect(),
        fake_pos: (0..n).map(|i| perm[n + partner[i]] as u32).collect(),
        scale: scale.iter().zip(&alpha).map(|(s, a)| s * a).collect(),
        fake_scale: alpha,
    };
    (Tensor { shape, data }, restore)
}

/// Filter i of `w` along `axis`, as a vector.
fn filter(w: &Tensor, axis: usize, i: usize) -> Vec<f32> {
    let outer: usize = w.shape[..axis].iter().product();
    let n = w.shape[axis];
    let inner: usize = w.shape[axis + 1..].iter().product();
    (0..outer)
        .flat_map(|o| w.data[(o * n + i) * inner..][..inner].iter().copied())
        .collect()
}

fn rms(v: &[f32]) -> f32 {
    let r =
        (v.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / v.len().max(1) as f64).sqrt() as f32;
    if r.is_normal() {
        r
    } else {
        1.0
    }
}

/// A fake filter with the second-order statistics of `reals`: a random Gaussian
/// combination of them, so no statistic of a single filter tells it apart.
fn fake_like(reals: &[Vec<f32>], rng: &mut Rng) -> Vec<f32> {
    let len = reals.first().map_or(0, |r| r.len());
    let coeffs = rng.normals(reals.len(), 1.0 / (reals.len().max(1) as f32).sqrt());
    let mut f = vec![0f32; len];
    for (r, c) in reals.iter().zip(coeffs) {
        for (d, &v) in f.iter_mut().zip(r) {
            *d += c * v;
        }
    }
    f
}

/// A random well-conditioned invertible h×h matrix A = Q·D and its inverse, row-major.
/// Q = P·S₁·C·S₂ spreads every filter evenly over the group (C is the orthonormal DCT-II
/// matrix, |C_ij| ≤ √(2/h); P a random row permutation, S random signs), so no public
/// filter is dominated by one real filter; D is diagonal in [0.75, 1.33].
fn random_mixing(h: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let pi = std::f64::consts::PI;
    let rows = rng.permutation(h);
    let s1: Vec<f64> = (0..h)
        .map(|_| if rng.below(2) == 0 { 1.0 } else { -1.0 })
        .collect();
    let s2: Vec<f64> = (0..h)
        .map(|_| if rng.below(2) == 0 { 1.0 } else { -1.0 })
        .collect();
    let q = |r: usize, c: usize| {
        let k = rows[r];
        let norm = if k == 0 {
            (1.0 / h as f64).sqrt()
        } else {
            (2.0 / h as f64).sqrt()
        };
        s1[r] * norm * (pi * (2 * c + 1) as f64 * k as f64 / (2 * h) as f64).cos() * s2[c]
    };
    let d: Vec<f64> = (0..h).map(|_| rng.uniform(0.75, 1.33) as f64).collect();
    // A[r][c] = Q[r][c]·d[c]; A⁻¹ = D⁻¹·Qᵀ, so A⁻¹[c][r] = Q[r][c] / d[c].
    let mut a = vec![0f32; h * h];
    let mut inv = vec![0f32; h * h];
    for r in 0..h {
        for c in 0..h {
            a[r * h + c] = (q(r, c) * d[c]) as f32;
            inv[c * h + r] = (q(r, c) / d[c]) as f32;
        }
    }
    (a, inv)
}

/// Filters mixed per group of up to this many public channels (restoration costs this
/// many multiply-adds per output element).
pub const MIX_GROUP: usize = 8;

/// The hardened transform for dense-like layers (conv with one group, transposed conv,
/// dense), along `axis` of `w`:
/// 1. fakes are random combinations of the layer's own filters (same statistics);
/// 2. real and fake filters are normalised to unit RMS (a secret scale per filter) and
///    randomly permuted;
/// 3. each run of `MIX_GROUP` consecutive public channels is a secret random invertible
///    mixture A·B of the filters B placed there.
///
/// Restoring real filter i takes the row of A⁻¹ for its slot: ≤ MIX_GROUP taps.
fn mixed_groups(w: &Tensor, axis: usize, ratio: f32, rng: &mut Rng) -> (Tensor, Restore) {
    let outer: usize = w.shape[..axis].iter().product();
    let n = w.shape[axis];
    let inner: usize = w.shape[axis + 1..].iter().product();
    let m = ((ratio * n as f32).ceil() as usize).max(n + 1);
    let reals: Vec<Vec<f32>> = (0..n).map(|i| filter(w, axis, i)).collect();
    let alpha: Vec<f32> = reals.iter().map(|r| rms(r)).collect();
    let mut bank: Vec<Vec<f32>> = reals
        .iter()
        .zip(&alpha)
        .map(|(r, a)| r.iter().map(|v| v / a).collect())
        .collect();
    while bank.len() < m {
        let f = fake_like(&reals, rng);
        let a = rms(&f);
        bank.push(f.into_iter().map(|v| v / a).collect());
    }
    // slot[t] = bank index placed at public channel t.
    let slot = rng.permutation(m);
    let mut public = vec![vec![0f32; outer * inner]; m];
    let mut taps: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
    // Groups of near-equal size, none above MIX_GROUP.
    let ngroups = m.div_ceil(MIX_GROUP);
    let mut start = 0;
    for gi in 0..ngroups {
        let h = m / ngroups + usize::from(gi < m % ngroups);
        let (a, inv) = random_mixing(h, rng);
        for r in 0..h {
            let dst = &mut public[start + r];
            for c in 0..h {
                let coef = a[r * h + c];
                for (d, &v) in dst.iter_mut().zip(&bank[slot[start + c]]) {
                    *d += coef * v;
                }
            }
        }
        for c in 0..h {
            let b = slot[start + c];
            if b < n {
                taps[b] = (0..h)
                    .map(|r| ((start + r) as u32, inv[c * h + r] * alpha[b]))
                    .collect();
            }
        }
        start += h;
    }
    let mut data = vec![0f32; outer * m * inner];
    for (t, f) in public.iter().enumerate() {
        for o in 0..outer {
            data[(o * m + t) * inner..][..inner].copy_from_slice(&f[o * inner..][..inner]);
        }
    }
    let mut shape = w.shape.clone();
    shape[axis] = m;
    (
        Tensor { shape, data },
        Restore::Mix {
            taps,
            in_perm: Vec::new(),
        },
    )
}

/// The hardened transform for depthwise convs: input channels are shuffled, and every
/// real filter gets a fake partner (a random combination of the layer's other filters)
/// applied to the same input channel; the pair is published only as a secret 2×2 mixture,
/// so the accelerator runs the layer with twice the channel multiplier.
fn mixed_depthwise(w: &Tensor, groups: usize, rng: &mut Rng) -> (Tensor, Restore) {
    let o = w.shape[0];
    let per: usize = w.shape[1..].iter().product();
    let og = o / groups;
    let reals: Vec<Vec<f32>> = (0..o)
        .map(|i| w.data[i * per..(i + 1) * per].to_vec())
        .collect();
    let perm = rng.permutation(groups);
    let mut data = vec![0f32; 2 * o * per];
    let mut taps: Vec<Vec<(u32, f32)>> = vec![Vec::new(); o];
    for (q, &p) in perm.iter().enumerate() {
        for r in 0..og {
            let real = p * og + r;
            let alpha = rms(&reals[real]);
            let fake = fake_like(&reals, rng);
            let fa = rms(&fake);
            let pair = [
                reals[real].iter().map(|v| v / alpha).collect::<Vec<f32>>(),
                fake.iter().map(|v| v / fa).collect(),
            ];
            let (a, inv) = random_mixing(2, rng);
            let base = q * 2 * og + 2 * r;
            for row in 0..2 {
                let dst = &mut data[(base + row) * per..][..per];
                for c in 0..2 {
                    for (d, &v) in dst.iter_mut().zip(&pair[c]) {
                        *d += a[row * 2 + c] * v;
                    }
                }
            }
            taps[real] = (0..2)
                .map(|row| ((base + row) as u32, inv[row] * alpha))
                .collect();
        }
    }
    let mut shape = w.shape.clone();
    shape[0] = 2 * o;
    (
        Tensor { shape, data },
        Restore::Mix {
            taps,
            in_perm: perm.iter().map(|&p| p as u32).collect(),
        },
    )
}

/// ShuffleChannel for grouped and depthwise convs: groups are permuted and every output
/// channel's filter is divided by a secret scale.
fn group_shuffle(w: &Tensor, groups: usize, rng: &mut Rng) -> (Tensor, Restore) {
    let o = w.shape[0];
    let per: usize = w.shape[1..].iter().product();
    let og = o / groups;
    let perm = rng.permutation(groups);
    let scale: Vec<f32> = (0..o).map(|_| rng.uniform(MIN_SCALE, 1.0)).collect();
    let mut data = vec![0f32; w.len()];
    for (q, &p) in perm.iter().enumerate() {
        for r in 0..og {
            let real = p * og + r;
            let src = &w.data[real * per..(real + 1) * per];
            for (d, &s) in data[(q * og + r) * per..][..per].iter_mut().zip(src) {
                *d = s / scale[real];
            }
        }
    }
    (
        Tensor {
            shape: w.shape.clone(),
            data,
        },
        Restore::GroupShuffle {
            groups,
            perm: perm.iter().map(|&p| p as u32).collect(),
            scale,
        },
    )
}

/// The secret graph keeps every node but drops the outsourced layers' weights and
/// biases (the trusted core never needs them) and constants nothing reads.
fn strip_outsourced_weights(g: &Graph, outsourced: impl Iterator<Item = usize>) -> Graph {
    let mut s = g.clone();
    let mut used = vec![false; g.values.len()];
    let outsourced: Vec<usize> = outsourced.collect();
    for (k, n) in g.nodes.iter().enumerate() {
        let skip_params = outsourced.contains(&k);
        for (j, &i) in n.inputs.iter().enumerate() {
            if !(skip_params && j > 0) {
                used[i] = true;
            }
        }
    }
    for (v, u) in s.values.iter_mut().zip(used) {
        if !u {
            v.data = None;
        }
    }
    s
}

/// `public.bin`: magic, then the postcard-encoded public package.
pub fn encode_public(p: &PublicPackage) -> Vec<u8> {
    let mut out = PUBLIC_MAGIC.to_vec();
    // Serialising plain structs into a Vec cannot fail.
    out.extend(postcard::to_allocvec(p).unwrap_or_default());
    out
}

/// Seals the secret to the device public key, bound to the encoded public part.
pub fn seal_secret(secret: &SecretModel, device_pub: &[u8; 32], public_bytes: &[u8]) -> Vec<u8> {
    let plain = postcard::to_allocvec(secret).unwrap_or_default();
    let hash = shadownet_trusted::seal::sha256(public_bytes);
    shadownet_trusted::seal::seal(&mut OsRng, device_pub, &secret.conversion_id, &hash, &plain)
}

/// Writes a package directory (created if needed). Files are written under temporary
/// names and renamed, so an interrupted write never leaves a mixed package.
pub fn write_package(dir: &Path, public_bytes: &[u8], sealed: &[u8]) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| Error::Io {
        path: p.display().to_string(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, bytes) in [(PUBLIC_FILE, public_bytes), (SECRET_FILE, sealed)] {
        let tmp = dir.join(format!(".{name}.partial"));
        std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
        let dst = dir.join(name);
        std::fs::rename(&tmp, &dst).map_err(|e| io(&dst, e))?;
    }
    Ok(())
}

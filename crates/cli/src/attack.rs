//! `shadownet attack`: attacks run against a package.
//!
//! The attack code ([`fake_partner`], [`mask_reuse`], [`averaging`], [`unmix`], [`seed`],
//! the algorithms themselves in the `shadownet-attacks` crate) sees only what an attacker
//! outside the trusted core sees: the public package, every tensor the accelerator
//! receives and returns (a [`SpyAccelerator`]), the ability to run the package on inputs
//! of its choice ([`mask_reuse::Oracle`]) and the model's architecture (never its
//! weights). The device key only lets the device's own trusted core run; the attack never
//! reads the secret. The reference model is read only to score (and, with its weights
//! replaced, as the architecture). See docs/security.md.
pub mod averaging;
pub mod bank;
pub mod fake_partner;
pub mod forge;
pub mod liar;
pub mod mask_reuse;
pub mod rollback;
pub mod seed;
pub mod unmix;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use shadownet_ir::RingTensor;
use shadownet_ir::{Graph, Tensor};
use shadownet_trusted::format::PublicWeight;
use shadownet_trusted::{LinearKind, Payload, Scheme};
use shadownet_untrusted::{CpuAccelerator, PublicModel, SecureModel, SpyAccelerator};

use crate::secure::{self, EnclaveMode};
use fake_partner::Protection;

/// A filter counts as recovered at |cosine| ≥ this ("exact up to scale").
pub const COS_RECOVERED: f32 = 0.95;
/// An activation counts as recovered at relative error below this.
pub const REL_ERR_RECOVERED: f32 = 0.05;
/// ... or, in the correlation view, at Pearson correlation at least this (the recovered
/// activation explains ≥ 90% of the real one's variance).
pub const CORR_RECOVERED: f32 = 0.95;
/// A correlation over fewer values says nothing (over two it is always ±1): smaller
/// activations count as recovered only by their relative error.
pub const MIN_CORR_ELEMENTS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttackKind {
    /// Recover real filters from the public fake-filter banks.
    FakePartner,
    /// Recover masked activations from the fixed, reused masks.
    MaskReuse,
    /// The two published attacks: fake-partner and mask-reuse.
    All,
    /// Repeat chosen inputs, average the accelerator's inputs, regress the weights.
    Averaging,
    /// Static attacks on the public banks: pairs, PCA, structure matching, ICA, sparsity,
    /// low rank, templates.
    Unmix,
    /// Search the transform's seed (a conversion with a small --insecure-reproducible-seed).
    Seed,
    /// Roll the counter file and the mask pool back before every query: one-time masks
    /// used many times, then mask-reuse on the ring (hardened packages).
    Rollback,
    /// An accelerator that alters results; counts the lies the core accepts.
    Liar,
    /// Seal an own package to device.pub with the victim's public part and pool.
    Forge,
}

#[derive(clap::Args, Clone, Debug)]
pub struct AttackArgs {
    /// Package directory.
    pub pkg: PathBuf,
    /// Device secret key: lets the device's trusted core run the package (the attack never
    /// reads the secret).
    #[arg(long)]
    pub key: PathBuf,
    /// The original model (.onnx/.tflite), used only to score the attack.
    #[arg(long)]
    pub reference: PathBuf,
    #[arg(long, value_enum, default_value = "all")]
    pub kind: AttackKind,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Chosen-input runs of the package for the mask-reuse attack.
    #[arg(long, default_value_t = 64)]
    pub queries: usize,
    /// Seed of the attacker's randomness (probes, victim input, baseline guesses).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// averaging: runs of each chosen input (T, up to 4096).
    #[arg(long, default_value_t = 64)]
    pub runs: usize,
    /// averaging: distinct chosen inputs (regression samples = inputs × positions).
    #[arg(long, default_value_t = 8)]
    pub inputs: usize,
    /// averaging: layers with more public channels are not regressed.
    #[arg(long, default_value_t = 1024)]
    pub max_features: usize,
    /// unmix: candidate group sizes (near-equal groups of at most h, and blocks of h).
    #[arg(long, value_delimiter = ',', default_value = "8,16")]
    pub group_sizes: Vec<usize>,
    /// unmix: do not also attack each layer as one group (hidden membership).
    #[arg(long)]
    pub no_whole_layer: bool,
    /// unmix: methods (pca, pca-dct2, pca-hadamard, ica-logcosh-sym, ica-kurtosis-defl,
    /// ica-gauss-sym, ..., ica-dct2, sparse-l4, low-rank, templates); default: all but
    /// the ICA-driven family searches.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// unmix: a public pretrained model of the same family whose filters serve as
    /// templates (and as a black-box floor): MODEL, or MODEL:NAME=1,3,H,W when its input
    /// has free dimensions.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// unmix: only these layers (package order).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// forge: the device's public key (default: the key file with .pub for .key).
    #[arg(long)]
    pub device_pub: Option<PathBuf>,
    /// seed: search seeds 0..2^bits (each candidate costs two conversions of the model).
    #[arg(long, default_value_t = 8)]
    pub seed_bits: u32,
}

// ---------------------------------------------------------------------------------------
// The attacker's view of the v3 formats.

/// One public layer as the attacker reads it from `public.bin`: the weights as f32. The
/// hardened scheme's weights are i32 of at most 24 bits (sign included), so the f32 copy
/// is exact; `int_weights` says the accelerator uses them over Z/2^64.
#[derive(Clone, Debug)]
pub struct PublicLayer {
    pub kind: LinearKind,
    pub weight: Tensor,
    pub int_weights: bool,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
}

/// The public package as the attacker reads it (`public.bin`, format v3).
#[derive(Clone, Debug)]
pub struct PublicPackage {
    pub scheme: Scheme,
    pub package_id: [u8; 16],
    pub inputs: Vec<(String, Vec<usize>)>,
    pub outputs: Vec<(String, Vec<usize>)>,
    pub layers: Vec<PublicLayer>,
}

impl PublicPackage {
    /// Model inputs of the package's shapes, N(0, 1) from `rng`.
    pub fn random_inputs(&self, rng: &mut Rng) -> Vec<Tensor> {
        self.inputs
            .iter()
            .map(|(_, s)| Tensor {
                shape: s.clone(),
                data: rng.normals_f32(s.iter().product(), 1.0),
            })
            .collect()
    }

    pub fn from_model(m: &PublicModel) -> Self {
        let layers = m
            .header
            .layers
            .iter()
            .zip(&m.weights)
            .map(|(l, w)| {
                let (weight, int_weights) = match w {
                    PublicWeight::F32(t) => (t.clone(), false),
                    PublicWeight::I32(t) => (
                        Tensor {
                            shape: t.shape.clone(),
                            data: t.data.iter().map(|&v| v as f32).collect(),
                        },
                        true,
                    ),
                };
                PublicLayer {
                    kind: l.kind.clone(),
                    weight,
                    int_weights,
                    input_shape: l.input_shape.clone(),
                    output_shape: l.output_shape.clone(),
                }
            })
            .collect();
        PublicPackage {
            scheme: m.header.scheme,
            package_id: m.header.package_id,
            inputs: m.header.inputs.clone(),
            outputs: m.header.outputs.clone(),
            layers,
        }
    }

    /// Reads and decodes `PKG/public.bin` (every weight checked against its hash).
    pub fn read(pkg: &Path) -> Result<Self> {
        let path = pkg.join(shadownet_trusted::format::PUBLIC_FILE);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let (m, _) = PublicModel::decode(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Self::from_model(&m))
    }
}

/// The attacker's best real-valued reading of a ring tensor: each element as a signed
/// 64-bit integer (an honest accumulator of the hardened scheme is exactly that; a masked
/// one is uniform over the ring whichever reading is taken).
pub fn ring_to_f32(t: &RingTensor) -> Tensor {
    Tensor {
        shape: t.shape.clone(),
        data: t.data.iter().map(|&v| v as i64 as f32).collect(),
    }
}

fn payload_f32(p: &Payload) -> Tensor {
    match p {
        Payload::F32(t) => t.clone(),
        Payload::Ring(t) => ring_to_f32(t),
    }
}

/// One accelerator call as the attacker reads it: real-valued tensors (ring payloads read
/// as signed integers, [`ring_to_f32`]); `ring` says which.
#[derive(Clone, Debug)]
pub struct Observed {
    pub layer: u32,
    pub input: Tensor,
    pub output: Tensor,
    pub ring: bool,
}

impl Observed {
    pub fn from_spy(o: &shadownet_untrusted::Observed) -> Self {
        Observed {
            layer: o.layer,
            input: payload_f32(&o.input),
            output: payload_f32(&o.output),
            ring: matches!(o.input, Payload::Ring(_)),
        }
    }
}

/// The attacker's seeded generator (the attack crate's).
pub use shadownet_attacks::Rng;

/// The attacker's view of a running package: `infer` plus the spy's records.
pub struct SpyOracle {
    model: SecureModel,
    public: PublicPackage,
    seen: Arc<Mutex<Vec<shadownet_untrusted::Observed>>>,
}

impl SpyOracle {
    /// Opens the package on this device (its trusted core reads the key) with a spying
    /// CPU accelerator.
    pub fn open(pkg: &Path, key: &Path) -> Result<Self> {
        let spy = SpyAccelerator::new(CpuAccelerator::new());
        let seen = spy.seen.clone();
        let mut model = secure::open(pkg, key, EnclaveMode::Inproc, Box::new(spy))?;
        // Hardened packages need a one-time mask per inference: the trusted core draws them
        // on the spot (an attacker running its own device could equally precompute a pool;
        // either way every query gets fresh masks). No effect on shadownet packages.
        model.allow_slow_masks = true;
        let public = PublicPackage::from_model(&model.public);
        Ok(SpyOracle {
            model,
            public,
            seen,
        })
    }

    pub fn public(&self) -> &PublicPackage {
        &self.public
    }
}

impl mask_reuse::Oracle for SpyOracle {
    fn query(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Observed>> {
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
        self.model.infer(inputs)?;
        let mut s = self
            .seen
            .lock()
            .map_err(|_| anyhow::anyhow!("spy records poisoned"))?;
        Ok(std::mem::take(&mut *s)
            .iter()
            .map(Observed::from_spy)
            .collect())
    }
}

// ---------------------------------------------------------------------------------------
// Scoring (reads the reference model).

/// The reference model's outsourced nodes, in package order (scoring only). The package
/// holds the linear nodes the converter outsourced, in graph order, less those it kept in
/// the trusted core (the hardened scheme keeps depthwise convs by default): each public
/// layer is matched to the next reference node of the same op and input shape.
pub fn reference_layers(g: &Graph, public: &PublicPackage) -> Result<Vec<usize>> {
    let linear: Vec<(usize, LinearKind)> = g
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(k, n)| shadownet_protect::outsourced_kind(g, n).map(|kind| (k, kind)))
        .collect();
    let mut out = Vec::with_capacity(public.layers.len());
    let mut next = 0;
    for (k, l) in public.layers.iter().enumerate() {
        let found = linear[next..].iter().position(|(n, kind)| {
            *kind == l.kind && g.shape(g.nodes[*n].inputs[0]) == l.input_shape.as_slice()
        });
        let Some(off) = found else {
            bail!(
                "layer {k} ({} on {:?}) matches no remaining linear node of the reference model: wrong --reference?",
                op_name(&l.kind),
                l.input_shape
            );
        };
        out.push(linear[next + off].0);
        next += off + 1;
    }
    Ok(out)
}

pub(crate) fn op_name(kind: &LinearKind) -> String {
    match kind {
        LinearKind::Conv(c) if c.groups > 1 => format!("DWConv/g{}", c.groups),
        LinearKind::Conv(_) => "Conv".into(),
        LinearKind::ConvTranspose(_) => "ConvTranspose".into(),
        LinearKind::MatMul => "MatMul".into(),
    }
}

#[derive(Clone, Debug)]
pub struct FilterLayer {
    pub layer: usize,
    pub op: String,
    pub depthwise: bool,
    pub protection: Protection,
    pub real_filters: usize,
    pub public_filters: usize,
    pub dim: usize,
    pub fakes_found: usize,
    pub guesses: usize,
    pub recovered: usize,
    pub mean_cos: f32,
    pub baseline_recovered: usize,
    pub baseline_mean_cos: f32,
    /// The public filters themselves as guesses.
    pub public_recovered: usize,
    pub public_mean_cos: f32,
}

#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub layers: usize,
    pub filters: usize,
    pub recovered: usize,
    pub mean_cos: f32,
    pub baseline_recovered: usize,
    pub baseline_mean_cos: f32,
    pub public_recovered: usize,
    pub public_mean_cos: f32,
}

impl Totals {
    pub fn fraction(&self) -> f32 {
        self.recovered as f32 / self.filters.max(1) as f32
    }
    pub fn baseline_fraction(&self) -> f32 {
        self.baseline_recovered as f32 / self.filters.max(1) as f32
    }
}

#[derive(Clone, Debug)]
pub struct FakePartnerReport {
    pub layers: Vec<FilterLayer>,
    /// Fake-pair layers (Conv, ConvTranspose, MatMul); under the hardened scheme these are
    /// the mixed-group banks.
    pub fake_pairs: Totals,
    /// Depthwise/grouped layers: scaled and shuffled only (shadownet), or published as 2×2
    /// real/fake mixtures (hardened).
    pub depthwise: Totals,
}

fn totals<'a>(it: impl Iterator<Item = &'a FilterLayer>) -> Totals {
    let mut t = Totals::default();
    let (mut c, mut b, mut p) = (0f64, 0f64, 0f64);
    for l in it {
        t.layers += 1;
        t.filters += l.real_filters;
        t.recovered += l.recovered;
        t.baseline_recovered += l.baseline_recovered;
        t.public_recovered += l.public_recovered;
        c += l.mean_cos as f64 * l.real_filters as f64;
        b += l.baseline_mean_cos as f64 * l.real_filters as f64;
        p += l.public_mean_cos as f64 * l.real_filters as f64;
    }
    t.mean_cos = (c / t.filters.max(1) as f64) as f32;
    t.baseline_mean_cos = (b / t.filters.max(1) as f64) as f32;
    t.public_mean_cos = (p / t.filters.max(1) as f64) as f32;
    t
}

/// Runs the fake-partner attack on the public package and scores it against `g`.
pub fn fake_partner(public: &PublicPackage, g: &Graph, seed: u64) -> Result<FakePartnerReport> {
    let nodes = reference_layers(g, public)?;
    let mut rng = Rng::new(seed ^ 0xfa6e);
    let mut layers = Vec::new();
    for (k, (l, &n)) in public.layers.iter().zip(&nodes).enumerate() {
        // The attack: public data only.
        let rec = fake_partner::attack_layer(l, public.scheme);
        // Scoring: the reference's real filters.
        let w = g
            .constant(g.nodes[n].inputs[1])
            .with_context(|| format!("layer {k}: the reference has no constant weight"))?;
        let (real, nreal, d) = fake_partner::filters(w, fake_partner::filter_axis(&l.kind));
        if d != rec.dim {
            bail!(
                "layer {k}: reference filters have length {d}, the package's {}: wrong --reference?",
                rec.dim
            );
        }
        let best = fake_partner::best_cosines(&real, nreal, &rec.filters, rec.count, d);
        let guesses = rec.count.max(1);
        let noise = rng.normals_f32(guesses * d, 1.0);
        let base = fake_partner::best_cosines(&real, nreal, &noise, guesses, d);
        let (pubf, npub, _) = fake_partner::filters(&l.weight, fake_partner::filter_axis(&l.kind));
        let publ = fake_partner::best_cosines(&real, nreal, &pubf, npub, d);
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
        let hit = |v: &[f32]| v.iter().filter(|&&c| c >= COS_RECOVERED).count();
        layers.push(FilterLayer {
            layer: k,
            op: op_name(&l.kind),
            depthwise: rec.protection.depthwise(),
            protection: rec.protection,
            real_filters: nreal,
            public_filters: rec.public_filters,
            dim: d,
            fakes_found: rec.fakes_found,
            guesses: rec.count,
            recovered: hit(&best),
            mean_cos: mean(&best),
            baseline_recovered: hit(&base),
            baseline_mean_cos: mean(&base),
            public_recovered: hit(&publ),
            public_mean_cos: mean(&publ),
        });
    }
    Ok(FakePartnerReport {
        fake_pairs: totals(layers.iter().filter(|l| !l.depthwise)),
        depthwise: totals(layers.iter().filter(|l| l.depthwise)),
        layers,
    })
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ActivationLayer {
    pub layer: usize,
    pub op: String,
    /// The attacker saw this layer's input unmasked (fed by a model input).
    pub unmasked: bool,
    /// Share of elements whose mask estimate is anchored (attacker-side confidence).
    pub anchored: f32,
    /// Channel groups matched by correlation before scoring (group-shuffled layers).
    pub channel_matched: bool,
    /// Values in the activation.
    pub elements: usize,
    pub rel_err: f32,
    pub corr: f32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct MaskReuseReport {
    pub queries: usize,
    pub layers: Vec<ActivationLayer>,
    /// Masked layers only.
    pub masked_layers: usize,
    pub recovered: usize,
    pub recovered_corr: usize,
    pub median_rel_err: f32,
}

fn pearson(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len()).max(1) as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa <= 0.0 || bb <= 0.0 {
        // Constant vectors: perfectly "correlated" only if equal.
        return if a == b { 1.0 } else { 0.0 };
    }
    (ab / (aa * bb).sqrt()) as f32
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    if den <= 0.0 {
        return if num <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    (num / den).sqrt() as f32
}

/// Puts the recovered groups of an NCHW tensor into the real order by matching each real
/// group with its best-correlated recovered group (scoring only: the secret permutation is
/// not used).
pub(crate) fn match_groups(rec: &Tensor, real: &Tensor, groups: usize) -> Tensor {
    let s = &real.shape;
    if s.len() < 2 || groups == 0 || !s[1].is_multiple_of(groups) || rec.shape != *s {
        return rec.clone();
    }
    let outer = s[0];
    let c = s[1];
    let inner: usize = s[2..].iter().product();
    let block = c / groups * inner;
    let gather = |t: &Tensor, q: usize| -> Vec<f32> {
        (0..outer)
            .flat_map(|o| t.data[o * c * inner + q * block..][..block].iter().copied())
            .collect()
    };
    let rec_groups: Vec<Vec<f32>> = (0..groups).map(|q| gather(rec, q)).collect();
    let mut out = rec.clone();
    for p in 0..groups {
        let want = gather(real, p);
        let best = (0..groups)
            .max_by(|&a, &b| {
                pearson(&rec_groups[a], &want).total_cmp(&pearson(&rec_groups[b], &want))
            })
            .unwrap_or(p);
        for o in 0..outer {
            out.data[o * c * inner + p * block..][..block]
                .copy_from_slice(&rec_groups[best][o * block..][..block]);
        }
    }
    out
}

/// Runs the mask-reuse attack through `oracle` and scores it against `g`'s activations on
/// the same victim input.
pub fn mask_reuse(
    public: &PublicPackage,
    oracle: &mut dyn mask_reuse::Oracle,
    g: &Graph,
    queries: usize,
    seed: u64,
) -> Result<MaskReuseReport> {
    mask_reuse_scored(public, oracle, g, queries, seed, false)
}

/// Pearson correlation of the sorted values: what is left to compare when the scorer
/// cannot align the channels (a dense input in a secret order).
fn sorted_corr(a: &[f32], b: &[f32]) -> f32 {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(f32::total_cmp);
    b.sort_by(f32::total_cmp);
    pearson(&a, &b)
}

/// [`mask_reuse`], scored with every input channel matched to its best-correlated
/// recovered channel when `match_channels` (the hardened scheme sends the channels in a
/// secret order; a dense input is compared by its sorted values).
pub fn mask_reuse_scored(
    public: &PublicPackage,
    oracle: &mut dyn mask_reuse::Oracle,
    g: &Graph,
    queries: usize,
    seed: u64,
    match_channels: bool,
) -> Result<MaskReuseReport> {
    let nodes = reference_layers(g, public)?;
    // A fresh victim input the attacker never chose as a probe.
    let mut vr = Rng::new(seed ^ 0x71c7_1a00);
    let victim = public.random_inputs(&mut vr);
    let out = mask_reuse::attack(public, oracle, &victim, queries, seed)?;
    // Scoring: the plain model's real input of every outsourced node.
    let want: Vec<usize> = nodes.iter().map(|&n| g.nodes[n].inputs[0]).collect();
    let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
    for (&i, t) in g.inputs.iter().zip(&victim) {
        vals[i] = Some(t.clone());
    }
    shadownet_cpu::run_graph_observed(g, &victim, |k, outs| {
        for (&o, t) in g.nodes[k].outputs.iter().zip(outs) {
            if want.contains(&o) {
                vals[o] = Some((*t).clone());
            }
        }
    })
    .context("running the reference model")?;
    let mut layers = Vec::new();
    for (k, (l, &v)) in public.layers.iter().zip(&want).enumerate() {
        let real = vals[v]
            .as_ref()
            .with_context(|| format!("layer {k}: no reference activation"))?;
        let rec = &out.recovered[k];
        let (rec, matched) = match &l.kind {
            LinearKind::Conv(c) if c.groups > 1 && !out.unmasked[k] => {
                (match_groups(rec, real, c.groups), true)
            }
            LinearKind::Conv(_) if match_channels && real.shape.len() == 4 => {
                (match_groups(rec, real, real.shape[1]), true)
            }
            _ => (rec.clone(), false),
        };
        if rec.data.len() != real.data.len() {
            bail!("layer {k}: recovered and real activations differ in size");
        }
        let sorted = match_channels && !matched;
        layers.push(ActivationLayer {
            layer: k,
            op: op_name(&l.kind),
            unmasked: out.unmasked[k],
            anchored: out.anchored[k],
            channel_matched: matched,
            elements: real.data.len(),
            rel_err: rel_err(&rec.data, &real.data),
            corr: if sorted {
                sorted_corr(&rec.data, &real.data)
            } else {
                pearson(&rec.data, &real.data)
            },
        });
    }
    let masked: Vec<&ActivationLayer> = layers.iter().filter(|l| !l.unmasked).collect();
    let mut errs: Vec<f32> = masked.iter().map(|l| l.rel_err).collect();
    errs.sort_by(|a, b| a.total_cmp(b));
    Ok(MaskReuseReport {
        queries: out.queries,
        masked_layers: masked.len(),
        recovered: masked
            .iter()
            .filter(|l| l.rel_err < REL_ERR_RECOVERED)
            .count(),
        recovered_corr: masked
            .iter()
            .filter(|l| {
                if l.elements >= MIN_CORR_ELEMENTS {
                    l.corr >= CORR_RECOVERED
                } else {
                    l.rel_err < REL_ERR_RECOVERED
                }
            })
            .count(),
        median_rel_err: errs.get(errs.len() / 2).copied().unwrap_or(0.0),
        layers,
    })
}

// ---------------------------------------------------------------------------------------
// The command.

#[derive(Clone, Debug)]
pub struct Report {
    pub package: String,
    pub scheme: String,
    pub fake_partner: Option<FakePartnerReport>,
    pub mask_reuse: Option<MaskReuseReport>,
    pub averaging: Option<averaging::AveragingReport>,
    pub unmix: Option<unmix::UnmixReport>,
    pub seed: Option<seed::SeedReport>,
    pub rollback: Option<RollbackReport>,
    pub liar: Option<liar::LiarReport>,
    pub forge: Option<forge::ForgeReport>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RollbackReport {
    /// Only packages with one-time pool entries (hardened) have anything to roll back.
    pub applicable: bool,
    /// Queries the core ran from the rolled-back counter and pool.
    pub accepted: usize,
    /// The core's refusal, when it refused.
    pub refused: Option<String>,
    /// One input run twice from the rolled-back files crossed to the accelerator alike.
    pub mask_reused: Option<bool>,
    /// Mask-reuse on the ring over the rolled-back queries (channels matched for scoring).
    pub activations: Option<MaskReuseReport>,
    pub seconds: f64,
}

/// Runs the rollback attack (see [`rollback`]).
pub fn rollback_attack(
    a: &AttackArgs,
    public: &PublicPackage,
    g: &Graph,
) -> Result<RollbackReport> {
    let t0 = std::time::Instant::now();
    if public.scheme != Scheme::Hardened {
        return Ok(RollbackReport {
            applicable: false,
            accepted: 0,
            refused: None,
            mask_reused: None,
            activations: None,
            seconds: 0.0,
        });
    }
    let mut o = rollback::RollbackOracle::new(&a.pkg, &a.key, public.layers.len())?;
    let probe = mask_reuse::probe(
        &public
            .inputs
            .iter()
            .map(|(_, s)| s.clone())
            .collect::<Vec<_>>(),
        1,
        &mut Rng::new(a.seed),
    );
    let reused = o.check_reuse(probe).ok();
    let activations = if reused == Some(true) {
        mask_reuse_scored(public, &mut o, g, a.queries, a.seed, true).ok()
    } else {
        None
    };
    Ok(RollbackReport {
        applicable: true,
        accepted: o.accepted,
        refused: o.refused.clone(),
        mask_reused: o.mask_reused,
        activations,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl RollbackReport {
    pub fn to_table(&self) -> String {
        let mut s =
            String::from("\nrollback (counter file and pool put back before every query): ");
        if !self.applicable {
            s.push_str("not applicable: the paper scheme's masks are fixed at conversion (see mask-reuse)\n");
            return s;
        }
        let _ = writeln!(
            s,
            "{} queries accepted from the rolled-back files; mask reused: {}{}",
            self.accepted,
            self.mask_reused.map_or("?".into(), |b| b.to_string()),
            self.refused
                .as_ref()
                .map_or(String::new(), |r| format!("; refused: {r}"))
        );
        if let Some(m) = &self.activations {
            for l in &m.layers {
                let _ = writeln!(
                    s,
                    "    layer {:>3} {:<14} corr {:.4}{}",
                    l.layer,
                    l.op,
                    l.corr,
                    if l.channel_matched {
                        " (channels matched)"
                    } else {
                        " (sorted values)"
                    }
                );
            }
            let _ = writeln!(
                s,
                "masked layers: {}; activations recovered (corr >= 0.95): {} ({})",
                m.masked_layers,
                m.recovered_corr,
                pct(m.recovered_corr, m.masked_layers)
            );
        }
        s
    }
}

/// Runs the chosen attacks on a package directory with the default settings of the
/// newer attacks (see [`run_with`]).
pub fn run(
    pkg: &Path,
    key: &Path,
    reference: &Path,
    kind: AttackKind,
    queries: usize,
    seed: u64,
) -> Result<Report> {
    let mut a = AttackArgs {
        pkg: pkg.into(),
        key: key.into(),
        reference: reference.into(),
        kind,
        json: false,
        queries,
        seed,
        runs: 64,
        inputs: 8,
        max_features: 1024,
        group_sizes: vec![8, 16],
        no_whole_layer: false,
        methods: Vec::new(),
        templates: None,
        layers: Vec::new(),
        seed_bits: 8,
        device_pub: None,
    };
    a.json = false;
    run_with(&a)
}

/// Runs the attack `a.kind` with every option of `a`.
pub fn run_with(a: &AttackArgs) -> Result<Report> {
    let (kind, queries, seed) = (a.kind, a.queries, a.seed);
    let mut oracle = SpyOracle::open(&a.pkg, &a.key)?;
    let public = oracle.public().clone();
    let g = shadownet_import::load_model(&a.reference, &public.inputs)
        .with_context(|| format!("cannot load reference model {}", a.reference.display()))?
        .graph;
    let fp = match kind {
        AttackKind::FakePartner | AttackKind::All => Some(fake_partner(&public, &g, seed)?),
        _ => None,
    };
    let mr = match kind {
        AttackKind::MaskReuse | AttackKind::All => {
            Some(mask_reuse(&public, &mut oracle, &g, queries, seed)?)
        }
        _ => None,
    };
    let nodes = reference_layers(&g, &public)?;
    let avg = match kind {
        AttackKind::Averaging => {
            let cfg = averaging::AveragingConfig {
                runs: a.runs,
                inputs: a.inputs,
                probes: queries,
                lambda: 1e-4,
                max_features: a.max_features,
                seed,
            };
            Some(averaging::run(&public, &mut oracle, &g, &nodes, &cfg)?)
        }
        _ => None,
    };
    let um = match kind {
        AttackKind::Unmix => {
            let methods = if a.methods.is_empty() {
                unmix::default_methods()
            } else {
                a.methods
                    .iter()
                    .map(|m| {
                        unmix::parse_method(m)
                            .with_context(|| format!("unknown --methods entry '{m}'"))
                    })
                    .collect::<Result<_>>()?
            };
            let templates = match &a.templates {
                Some(p) => {
                    // MODEL or MODEL:NAME=1,3,H,W for a model with free input dimensions.
                    let text = p.to_string_lossy();
                    let (path, shapes) = match text.rsplit_once(':') {
                        Some((path, shape)) if shape.contains('=') => (
                            PathBuf::from(path),
                            vec![crate::plain::parse_input_shape(shape)?],
                        ),
                        _ => (p.clone(), Vec::new()),
                    };
                    unmix::templates_from(
                        &shadownet_import::load_model(&path, &shapes)
                            .with_context(|| {
                                format!("cannot load template model {}", path.display())
                            })?
                            .graph,
                    )
                }
                None => Vec::new(),
            };
            let cfg = unmix::UnmixConfig {
                group_sizes: a.group_sizes.clone(),
                whole_layer: !a.no_whole_layer,
                methods,
                templates,
                templates_name: a.templates.as_ref().map(|p| p.display().to_string()),
                layers: a.layers.clone(),
                seed,
            };
            Some(unmix::run(&public, &g, &nodes, &cfg)?)
        }
        _ => None,
    };
    let sd = match kind {
        AttackKind::Seed => Some(seed::run(&public, &g, &nodes, a.seed_bits, seed)?),
        _ => None,
    };
    let rb = match kind {
        AttackKind::Rollback => {
            drop(oracle);
            Some(rollback_attack(a, &public, &g)?)
        }
        _ => None,
    };
    let forge = match kind {
        AttackKind::Forge => {
            let dp = a
                .device_pub
                .clone()
                .unwrap_or_else(|| a.key.with_extension("pub"));
            Some(forge::run(&a.pkg, &a.key, &public, &g, &dp, seed)?)
        }
        _ => None,
    };
    let liar = match kind {
        AttackKind::Liar => Some(liar::run(&a.pkg, &a.key, &public, &g, a.runs, seed)?),
        _ => None,
    };
    Ok(Report {
        package: a.pkg.display().to_string(),
        scheme: public.scheme.name().to_string(),
        fake_partner: fp,
        mask_reuse: mr,
        averaging: avg,
        unmix: um,
        seed: sd,
        rollback: rb,
        liar,
        forge,
    })
}

pub fn cmd(a: &AttackArgs) -> Result<()> {
    let r = run_with(a)?;
    if a.json {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.to_table());
    }
    Ok(())
}

fn pct(a: usize, b: usize) -> String {
    format!("{:.1}%", 100.0 * a as f64 / b.max(1) as f64)
}

impl Report {
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "package {} (scheme {})", self.package, self.scheme);
        if let Some(fp) = &self.fake_partner {
            let _ = writeln!(
                s,
                "\nfake-partner attack (filters recovered at |cos| >= {COS_RECOVERED}; baseline: as many N(0,1) guesses)"
            );
            let _ = writeln!(
                s,
                "{:>5} {:<14} {:>6} {:>6} {:>6} {:>6} {:>9} {:>8} {:>9} {:>8}",
                "layer",
                "op",
                "real",
                "public",
                "dim",
                "fakes",
                "recovered",
                "mean cos",
                "baseline",
                "base cos"
            );
            for l in &fp.layers {
                let _ = writeln!(
                    s,
                    "{:>5} {:<14} {:>6} {:>6} {:>6} {:>6} {:>9} {:>8.4} {:>9} {:>8.4}",
                    l.layer,
                    l.op,
                    l.real_filters,
                    l.public_filters,
                    l.dim,
                    l.fakes_found,
                    pct(l.recovered, l.real_filters),
                    l.mean_cos,
                    pct(l.baseline_recovered, l.real_filters),
                    l.baseline_mean_cos
                );
            }
            for (name, t) in [
                ("fake-pair layers", &fp.fake_pairs),
                ("depthwise layers", &fp.depthwise),
            ] {
                let _ = writeln!(
                    s,
                    "{name}: {} layers, {}/{} filters recovered ({}), mean best cos {:.4}; black-box baseline {} (mean {:.4})",
                    t.layers,
                    t.recovered,
                    t.filters,
                    pct(t.recovered, t.filters),
                    t.mean_cos,
                    pct(t.baseline_recovered, t.filters),
                    t.baseline_mean_cos
                );
            }
        }
        if let Some(mr) = &self.mask_reuse {
            let _ = writeln!(
                s,
                "\nmask-reuse attack ({} chosen queries; recovered at rel err < {REL_ERR_RECOVERED}, or corr >= {CORR_RECOVERED})",
                mr.queries
            );
            let _ = writeln!(
                s,
                "{:>5} {:<14} {:>8} {:>9} {:>10} {:>8}",
                "layer", "op", "masked", "anchored", "rel err", "corr"
            );
            for l in &mr.layers {
                let _ = writeln!(
                    s,
                    "{:>5} {:<14} {:>8} {:>8.1}% {:>10.2e} {:>8.4}{}",
                    l.layer,
                    l.op,
                    if l.unmasked { "no" } else { "yes" },
                    100.0 * l.anchored,
                    l.rel_err,
                    l.corr,
                    if l.channel_matched {
                        "  (groups matched)"
                    } else {
                        ""
                    }
                );
            }
            let _ = writeln!(
                s,
                "masked layers: {}; activations recovered: {} by rel err ({}), {} by correlation ({}); median rel err {:.2e}",
                mr.masked_layers,
                mr.recovered,
                pct(mr.recovered, mr.masked_layers),
                mr.recovered_corr,
                pct(mr.recovered_corr, mr.masked_layers),
                mr.median_rel_err
            );
        }
        if let Some(a) = &self.averaging {
            s.push_str(&a.to_table());
        }
        if let Some(u) = &self.unmix {
            s.push_str(&u.to_table());
        }
        if let Some(r) = &self.seed {
            s.push_str(&r.to_table());
        }
        if let Some(r) = &self.rollback {
            s.push_str(&r.to_table());
        }
        if let Some(r) = &self.liar {
            s.push_str(&r.to_table());
        }
        if let Some(r) = &self.forge {
            s.push_str(&r.to_table());
        }
        s
    }

    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"package\":{},\"scheme\":{}",
            jstr(&self.package),
            jstr(&self.scheme)
        );
        let _ = write!(
            s,
            ",\"thresholds\":{{\"cos_recovered\":{},\"rel_err_recovered\":{},\"corr_recovered\":{}}}",
            jnum(COS_RECOVERED),
            jnum(REL_ERR_RECOVERED),
            jnum(CORR_RECOVERED)
        );
        if let Some(fp) = &self.fake_partner {
            s.push_str(",\"fake_partner\":{\"layers\":[");
            for (i, l) in fp.layers.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(
                    s,
                    "{{\"layer\":{},\"op\":{},\"depthwise\":{},\"protection\":{},\"real_filters\":{},\"public_filters\":{},\"dim\":{},\"fakes_found\":{},\"guesses\":{},\"recovered\":{},\"fraction\":{},\"mean_cos\":{},\"baseline_recovered\":{},\"baseline_fraction\":{},\"baseline_mean_cos\":{}}}",
                    l.layer,
                    jstr(&l.op),
                    l.depthwise,
                    jstr(l.protection.name()),
                    l.real_filters,
                    l.public_filters,
                    l.dim,
                    l.fakes_found,
                    l.guesses,
                    l.recovered,
                    jnum(l.recovered as f32 / l.real_filters.max(1) as f32),
                    jnum(l.mean_cos),
                    l.baseline_recovered,
                    jnum(l.baseline_recovered as f32 / l.real_filters.max(1) as f32),
                    jnum(l.baseline_mean_cos)
                );
            }
            s.push(']');
            for (name, t) in [("fake_pairs", &fp.fake_pairs), ("depthwise", &fp.depthwise)] {
                let _ = write!(
                    s,
                    ",\"{name}\":{{\"layers\":{},\"filters\":{},\"recovered\":{},\"fraction\":{},\"mean_cos\":{},\"baseline_recovered\":{},\"baseline_fraction\":{},\"baseline_mean_cos\":{},\"public_floor_fraction\":{},\"public_floor_mean_cos\":{}}}",
                    t.layers,
                    t.filters,
                    t.recovered,
                    jnum(t.fraction()),
                    jnum(t.mean_cos),
                    t.baseline_recovered,
                    jnum(t.baseline_fraction()),
                    jnum(t.baseline_mean_cos),
                    jnum(t.public_recovered as f32 / t.filters.max(1) as f32),
                    jnum(t.public_mean_cos)
                );
            }
            s.push('}');
        }
        if let Some(mr) = &self.mask_reuse {
            let _ = write!(
                s,
                ",\"mask_reuse\":{{\"queries\":{},\"layers\":[",
                mr.queries
            );
            for (i, l) in mr.layers.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(
                    s,
                    "{{\"layer\":{},\"op\":{},\"masked\":{},\"anchored\":{},\"channel_matched\":{},\"rel_err\":{},\"corr\":{}}}",
                    l.layer,
                    jstr(&l.op),
                    !l.unmasked,
                    jnum(l.anchored),
                    l.channel_matched,
                    jnum(l.rel_err),
                    jnum(l.corr)
                );
            }
            let _ = write!(
                s,
                "],\"masked_layers\":{},\"recovered\":{},\"recovered_fraction\":{},\"recovered_corr\":{},\"recovered_corr_fraction\":{},\"median_rel_err\":{}}}",
                mr.masked_layers,
                mr.recovered,
                jnum(mr.recovered as f32 / mr.masked_layers.max(1) as f32),
                mr.recovered_corr,
                jnum(mr.recovered_corr as f32 / mr.masked_layers.max(1) as f32),
                jnum(mr.median_rel_err)
            );
        }
        // The newer attacks' reports, serde-derived.
        for (name, v) in [
            (
                "averaging",
                self.averaging.as_ref().map(serde_json::to_string),
            ),
            ("unmix", self.unmix.as_ref().map(serde_json::to_string)),
            ("seed", self.seed.as_ref().map(serde_json::to_string)),
            (
                "rollback",
                self.rollback.as_ref().map(serde_json::to_string),
            ),
            ("liar", self.liar.as_ref().map(serde_json::to_string)),
            ("forge", self.forge.as_ref().map(serde_json::to_string)),
        ] {
            if let Some(Ok(v)) = v {
                let _ = write!(s, ",\"{name}\":{v}");
            }
        }
        s.push('}');
        s
    }
}

fn jnum(x: f32) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

fn jstr(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

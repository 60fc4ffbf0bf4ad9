//! Vendor side: turns a plain model into a protected package (format v3, see
//! `shadownet_trusted::format`).
//!
//! Every linear layer with constant weights is outsourced unless kept in the TEE: its
//! public weights are transformed so that they reveal neither the real filters nor the
//! bias, and what undoes the transform goes into a secret sealed (HPKE) to one device; the
//! vendor signs the public part and the sealed secret.
mod hardened;
mod paper;
mod rng;

pub use hardened::{filters, haar_orthogonal, MixParams};

use std::path::Path;

use rand_core::{OsRng, RngCore, SeedableRng};
use shadownet_ir::{Graph, Node, Op, Tensor};
use shadownet_trusted::format::{
    self, ChunkMeta, ExactLayer, FixedMask, KeptLayer, Key32, LayerRestore, LayerSecret,
    LinearKind, PublicHeader, PublicLayer, Scheme, SecretModel, SignatureFile, WeightMeta,
    WeightType, CHUNKS_FILE, HPKE_INFO, PUBLIC_FILE, PUBLIC_MAGIC, SECRET_FILE, SECRET_MAGIC,
    SIGNATURE_FILE,
};
use zeroize::Zeroizing;

use crate::rng::Rng;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--ratio must be greater than 1 (every real filter needs fakes beside it), got {0}")]
    Ratio(f32),
    #[error("--group must be at least 2, got {0}")]
    Group(usize),
    #[error("--keep-in-tee names '{0}', which is not a linear layer with constant weights in this model")]
    KeepUnknown(String),
    #[error("the model has no linear layer with constant weights left to outsource")]
    NothingToOutsource,
    #[error("calibration run failed: {0}")]
    Kernel(#[from] shadownet_cpu::Error),
    #[error("cannot seal the secret: {0}")]
    Seal(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Which linear layers run whole inside the TEE.
#[derive(Clone, Debug, PartialEq)]
pub enum Keep {
    /// The scheme's default: for `hardened`, depthwise convs (restoring a mixed depthwise
    /// layer costs the trusted core more than computing it); none for `shadownet`.
    Default,
    /// None at all.
    None,
    /// The default plus these nodes (by name).
    Names(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct Options {
    pub scheme: Scheme,
    /// Public output channels per real one.
    pub ratio: f32,
    /// Seeds the transform's randomness (fakes, mixing, permutations, fixed masks) for
    /// reproducible tests. INSECURE: whoever knows the seed can redo the transform. The
    /// package id and every key are drawn from the OS whatever this is.
    pub insecure_seed: Option<u64>,
    /// Paper scheme: mask size relative to the activation it hides.
    pub mask_scale: f32,
    /// Hardened: largest mixing group.
    pub group: usize,
    /// Hardened: bits of the public integer weights.
    pub weight_bits: u32,
    pub keep: Keep,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scheme: Scheme::Hardened,
            ratio: 1.2,
            insecure_seed: None,
            mask_scale: 1.0,
            group: 16,
            weight_bits: 24,
            keep: Keep::Default,
        }
    }
}

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
        // Grouped transposed convs have no transform here; they stay trusted.
        Op::ConvTranspose(c) if c.groups == 1 => Some(LinearKind::ConvTranspose(c.clone())),
        Op::MatMul if g.shape(n.inputs[1]).len() == 2 && !g.shape(n.inputs[0]).is_empty() => {
            Some(LinearKind::MatMul)
        }
        _ => None,
    }
}

/// A depthwise conv (one input channel per group).
fn is_depthwise(g: &Graph, n: &Node) -> bool {
    matches!(&n.op, Op::Conv(c) if c.groups > 1 && g.shape(n.inputs[1]).get(1) == Some(&1))
}

/// A converted model, before sealing.
pub struct Converted {
    pub header: PublicHeader,
    /// Per public layer, its weights blob.
    pub weights: Vec<Vec<u8>>,
    pub secret: SecretModel,
    /// Plaintext of every chunk, by index.
    pub chunks: Vec<Zeroizing<Vec<u8>>>,
    /// Layers kept in the TEE, with the reason.
    pub kept: Vec<(String, String)>,
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
    if opts.group < 2 {
        return Err(Error::Group(opts.group));
    }
    let mut rng = match opts.insecure_seed {
        Some(s) => Rng::new(rand_chacha::ChaCha20Rng::seed_from_u64(s)),
        None => Rng::new(
            rand_chacha::ChaCha20Rng::from_rng(OsRng)
                .map_err(|e| Error::Seal(format!("the OS random source failed: {e}")))?,
        ),
    };
    // Public and key material: always from the OS, never from the transform's stream.
    let mut package_id = [0u8; 16];
    let mut root = Key32([0; 32]);
    let mut chunk_key = Key32([0; 32]);
    OsRng.fill_bytes(&mut package_id);
    OsRng.fill_bytes(&mut root.0);
    OsRng.fill_bytes(&mut chunk_key.0);

    let linear: Vec<(usize, LinearKind)> = g
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(k, n)| outsourced_kind(g, n).map(|kind| (k, kind)))
        .collect();
    let mut keep_reason: Vec<Option<String>> = vec![None; g.nodes.len()];
    let hardened = opts.scheme == Scheme::Hardened;
    if opts.keep != Keep::None && hardened {
        for &(k, _) in &linear {
            if is_depthwise(g, &g.nodes[k]) {
                keep_reason[k] = Some("depthwise: computing it costs the trusted core less than restoring a mixed one".into());
            }
        }
    }
    if let Keep::Names(names) = &opts.keep {
        for name in names {
            let k = linear
                .iter()
                .find(|(k, _)| &g.nodes[*k].name == name)
                .map(|(k, _)| *k)
                .ok_or_else(|| Error::KeepUnknown(name.clone()))?;
            keep_reason[k] = Some("named in --keep-in-tee".into());
        }
    }
    let outsourced: Vec<(usize, LinearKind)> = linear
        .iter()
        .filter(|(k, _)| keep_reason[*k].is_none())
        .cloned()
        .collect();
    if outsourced.is_empty() {
        return Err(Error::NothingToOutsource);
    }
    let stds = if hardened {
        Vec::new()
    } else {
        activation_stds(g, &mut rng)?
    };
    let heads = head_layers(g, &outsourced);
    let mut chunks: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    let mut layers = Vec::with_capacity(outsourced.len());
    let mut secrets = Vec::with_capacity(outsourced.len());
    let mut weights = Vec::with_capacity(outsourced.len());
    for (done, (k, kind)) in outsourced.iter().enumerate() {
        let node = &g.nodes[*k];
        let (pl, blob, sl) = if hardened {
            protect_exact(g, *k, node, kind, opts, &mut rng)
        } else {
            let fake_to_real = if heads[*k] {
                paper::HEAD_FAKE_TO_REAL
            } else {
                paper::FAKE_TO_REAL
            };
            protect_paper(
                g,
                *k,
                node,
                kind,
                opts,
                &stds,
                fake_to_real,
                &mut rng,
                &mut chunks,
            )?
        };
        layers.push(pl);
        weights.push(blob);
        secrets.push(sl);
        progress(done + 1, outsourced.len());
    }
    // Kept layers: their constant inputs travel as chunks.
    let mut kept = Vec::new();
    let mut kept_report = Vec::new();
    for (k, reason) in keep_reason.iter().enumerate() {
        let Some(reason) = reason else { continue };
        let node = &g.nodes[k];
        let consts: Vec<Tensor> = node.inputs[1..]
            .iter()
            .map(|&v| {
                g.constant(v)
                    .cloned()
                    .unwrap_or_else(|| Tensor::zeros(&[0]))
            })
            .collect();
        let bytes = postcard::to_allocvec(&consts).map_err(|e| Error::Seal(e.to_string()))?;
        kept.push(KeptLayer {
            node: k as u32,
            chunk: chunks.len() as u32,
        });
        chunks.push(Zeroizing::new(bytes));
        kept_report.push((node.name.clone(), reason.clone()));
    }
    // Weights blobs' offsets and hashes.
    let mut offset = 0u64;
    for (l, blob) in layers.iter_mut().zip(&weights) {
        l.weight.offset = offset;
        l.weight.sha256 = shadownet_trusted::crypto::sha256(blob);
        offset += blob.len() as u64;
    }
    let stripped: Vec<usize> = outsourced
        .iter()
        .map(|(k, _)| *k)
        .chain(kept.iter().map(|kl| kl.node as usize))
        .collect();
    let graph = strip_weights(g, &stripped);
    let io = |ids: &[usize]| {
        ids.iter()
            .map(|&i| (g.values[i].name.clone(), g.values[i].shape.clone()))
            .collect()
    };
    // Chunk offsets within secret.chunks (each sealed chunk carries a 16-byte tag).
    let mut metas = Vec::with_capacity(chunks.len());
    let mut at = 0u64;
    for c in &chunks {
        let len = c.len() as u64 + 16;
        metas.push(ChunkMeta { offset: at, len });
        at += len;
    }
    Ok(Converted {
        header: PublicHeader {
            scheme: opts.scheme,
            package_id,
            inputs: io(&g.inputs),
            outputs: io(&g.outputs),
            layers,
        },
        weights,
        secret: SecretModel {
            scheme: opts.scheme,
            package_id,
            root,
            chunk_key,
            graph,
            layers: secrets,
            kept,
            chunks: metas,
        },
        chunks,
        kept: kept_report,
    })
}

/// Filters run along axis 0 of a conv weight [O, C/g, kh, kw], axis 1 of a transposed
/// conv's [C, O, kh, kw] and of a dense weight [K, N]; inputs along the other.
fn input_axis(kind: &LinearKind) -> usize {
    match kind {
        LinearKind::Conv(_) => 1,
        _ => 0,
    }
}

fn f32_blob(t: &[f32]) -> Vec<u8> {
    t.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Permutes axis `axis` of a row-major tensor: output index q along it takes input
/// index perm[q].
fn permute_axis<T: Copy + Default>(
    data: &[T],
    shape: &[usize],
    axis: usize,
    perm: &[usize],
) -> Vec<T> {
    let outer: usize = shape[..axis].iter().product();
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = vec![T::default(); data.len()];
    for o in 0..outer {
        for (q, &p) in perm.iter().enumerate() {
            out[(o * n + q) * inner..][..inner]
                .copy_from_slice(&data[(o * n + p) * inner..][..inner]);
        }
    }
    out
}

fn protect_exact(
    g: &Graph,
    k: usize,
    node: &Node,
    kind: &LinearKind,
    opts: &Options,
    rng: &mut Rng,
) -> (PublicLayer, Vec<u8>, LayerSecret) {
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
    let (domains, taps) = match kind {
        LinearKind::Conv(c) => (c.groups, c.kernel[0] * c.kernel[1]),
        LinearKind::ConvTranspose(c) => (1, c.kernel[0] * c.kernel[1]),
        LinearKind::MatMul => (1, 1),
    };
    let params = MixParams {
        ratio: opts.ratio,
        group: opts.group,
        weight_bits: opts.weight_bits,
    };
    let mut mixed = hardened::mix_layer(&w, kind.filter_axis(), domains, taps, &params, rng);
    // The input channels go to the accelerator in a secret order (grouped convs keep
    // theirs: each group reads its own run of channels).
    let in_shape = g.shape(x).to_vec();
    if domains == 1 {
        let axis = input_axis(kind);
        let c = mixed.weight.shape[axis];
        let perm = rng.permutation(c);
        mixed.weight.data = permute_axis(&mixed.weight.data, &mixed.weight.shape, axis, &perm);
        mixed.layer.in_perm = perm.iter().map(|&p| p as u32).collect();
    }
    let out_shape = g.shape(node.outputs[0]).to_vec();
    let mut public_out = out_shape.clone();
    public_out[kind.channel_axis(out_shape.len())] = mixed.weight.shape[kind.filter_axis()];
    let blob: Vec<u8> = mixed
        .weight
        .data
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let pl = PublicLayer {
        kind: kind.clone(),
        weight: WeightMeta {
            dtype: WeightType::I32,
            shape: mixed.weight.shape.clone(),
            offset: 0,
            sha256: [0; 32],
        },
        input_shape: in_shape,
        output_shape: public_out,
    };
    let sl = LayerSecret {
        node: k as u32,
        bias,
        restore: LayerRestore::Exact(ExactLayer { ..mixed.layer }),
    };
    (pl, blob, sl)
}

#[allow(clippy::too_many_arguments)]
fn protect_paper(
    g: &Graph,
    k: usize,
    node: &Node,
    kind: &LinearKind,
    opts: &Options,
    stds: &[Vec<f32>],
    fake_to_real: f32,
    rng: &mut Rng,
    chunks: &mut Vec<Zeroizing<Vec<u8>>>,
) -> Result<(PublicLayer, Vec<u8>, LayerSecret)> {
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
    let (weight, transform) = match kind {
        LinearKind::Conv(c) if c.groups > 1 => paper::group_shuffle(&w, c.groups, rng),
        _ => paper::fake_pairs(&w, kind.filter_axis(), opts.ratio, fake_to_real, rng),
    };
    let mut public_out = out_shape.clone();
    public_out[axis] = weight.shape[kind.filter_axis()];
    let mut fixed = None;
    if !g.inputs.contains(&x) {
        // Layers fed straight by a model input see it in the clear (the user's input is
        // not the vendor's secret); every other layer's input is masked. The correction is
        // computed from the mask exactly as the core keeps it (bfloat16), in the public
        // input layout, restored to the real output layout, with the bias folded in.
        let real = paper::draw_mask(g.shape(x), &stds[x], opts.mask_scale, rng);
        let masked_public = shadownet_trusted::paper::prepare_input(&transform, None, real);
        let bits: Vec<u16> = masked_public
            .data
            .iter()
            .map(|&v| shadownet_trusted::paper::to_bf16(v))
            .collect();
        let mask_t = Tensor {
            shape: masked_public.shape.clone(),
            data: bits
                .iter()
                .map(|&b| shadownet_trusted::paper::bf16(b))
                .collect(),
        };
        let through = shadownet_cpu::eval("mask", &kind.op(), &[&mask_t, &weight])?;
        let through_le: Vec<u8> = through[0]
            .data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut corr = shadownet_trusted::paper::restore_fused(
            &transform,
            &through_le,
            &through[0].shape,
            &out_shape,
            axis,
            None,
            None,
            None,
            None,
        )
        .map_err(|_| Error::Seal("a fixed mask's correction is not finite".into()))?;
        if let Some(b) = &bias {
            let outer: usize = out_shape[..axis].iter().product();
            let n = out_shape[axis];
            let inner: usize = out_shape[axis + 1..].iter().product();
            for o in 0..outer {
                for (i, &bv) in b.iter().enumerate() {
                    for v in &mut corr.data[(o * n + i) * inner..][..inner] {
                        *v -= bv;
                    }
                }
            }
        }
        let mask_chunk = chunks.len() as u32;
        chunks.push(Zeroizing::new(
            bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
        ));
        let corr_chunk = chunks.len() as u32;
        chunks.push(Zeroizing::new(f32_blob(&corr.data)));
        fixed = Some(FixedMask {
            mask: mask_chunk,
            correction: corr_chunk,
        });
    }
    let pl = PublicLayer {
        kind: kind.clone(),
        weight: WeightMeta {
            dtype: WeightType::F32,
            shape: weight.shape.clone(),
            offset: 0,
            sha256: [0; 32],
        },
        input_shape: g.shape(x).to_vec(),
        output_shape: public_out,
    };
    let sl = LayerSecret {
        node: k as u32,
        bias,
        restore: LayerRestore::Paper { transform, fixed },
    };
    Ok((pl, f32_blob(&weight.data), sl))
}

/// Marks the nodes (by index) whose output flows into a model output through nodes that
/// are not outsourced only.
fn head_layers(g: &Graph, linear: &[(usize, LinearKind)]) -> Vec<bool> {
    let mut outsourced = vec![false; g.nodes.len()];
    for &(k, _) in linear {
        outsourced[k] = true;
    }
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

/// Per-channel RMS of every value on one random N(0,1) input, to size the paper scheme's
/// fixed masks.
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
        stds[i] = paper::channel_rms(t);
    }
    shadownet_cpu::run_graph_observed(g, &inputs, |k, outs| {
        for (&o, t) in g.nodes[k].outputs.iter().zip(outs) {
            stds[o] = paper::channel_rms(t);
        }
    })?;
    Ok(stds)
}

/// The secret graph keeps every node but drops the weights and biases of the layers in
/// `stripped` (outsourced, or streamed in as chunks) that nothing else reads.
fn strip_weights(g: &Graph, stripped: &[usize]) -> Graph {
    let mut s = g.clone();
    let mut used = vec![false; g.values.len()];
    for (k, n) in g.nodes.iter().enumerate() {
        let skip_params = stripped.contains(&k);
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

/// The files of a sealed, signed package.
pub struct Package {
    pub public: Vec<u8>,
    pub sealed: Vec<u8>,
    pub chunks: Vec<u8>,
    pub signature: Vec<u8>,
}

/// `public.bin`'s header region: magic, length, header.
pub fn encode_header(h: &PublicHeader) -> Result<Vec<u8>> {
    let body = postcard::to_allocvec(h).map_err(|e| Error::Seal(e.to_string()))?;
    let mut out = PUBLIC_MAGIC.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Seals `c`'s secret to `device_pub` (X25519) and signs the package with `vendor_secret`
/// (an Ed25519 signing key seed).
pub fn seal(c: &Converted, device_pub: &[u8; 32], vendor_secret: &[u8; 32]) -> Result<Package> {
    use hpke::{Deserializable, Serializable};
    let header_region = encode_header(&c.header)?;
    let mut public = header_region.clone();
    for w in &c.weights {
        public.extend_from_slice(w);
    }
    let plain =
        Zeroizing::new(postcard::to_allocvec(&c.secret).map_err(|e| Error::Seal(e.to_string()))?);
    let pk = <hpke::kem::X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(device_pub)
        .map_err(|e| Error::Seal(format!("bad device public key: {e}")))?;
    let mut info = HPKE_INFO.to_vec();
    info.extend_from_slice(&c.header.package_id);
    let mut rng =
        <rand_core_09::OsRng as rand_core_09::TryRngCore>::unwrap_err(rand_core_09::OsRng);
    let (enc, ct) = hpke::single_shot_seal::<
        hpke::aead::ChaCha20Poly1305,
        hpke::kdf::HkdfSha256,
        hpke::kem::X25519HkdfSha256,
        _,
    >(
        &hpke::OpModeS::Base,
        &pk,
        &info,
        &plain,
        &shadownet_trusted::crypto::sha256(&header_region),
        &mut rng,
    )
    .map_err(|e| Error::Seal(e.to_string()))?;
    let mut sealed = SECRET_MAGIC.to_vec();
    sealed.extend_from_slice(&enc.to_bytes());
    sealed.extend_from_slice(&ct);
    let aad = shadownet_trusted::chunk_aad(&c.header.package_id);
    let sealed_chunks: Vec<Vec<u8>> = c
        .chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            shadownet_trusted::crypto::seal_chunk(&c.secret.chunk_key.0, i as u64, &aad, chunk)
        })
        .collect();
    let chunks = format::encode_chunks(&sealed_chunks);
    let signing = ed25519_dalek::SigningKey::from_bytes(vendor_secret);
    let sig =
        ed25519_dalek::Signer::sign(&signing, &format::signed_message(&header_region, &sealed));
    let signature = SignatureFile {
        vendor: signing.verifying_key().to_bytes(),
        signature: sig.to_bytes(),
    }
    .encode();
    Ok(Package {
        public,
        sealed,
        chunks,
        signature,
    })
}

/// Writes a package directory (created if needed). Files are written under temporary
/// names and renamed, so an interrupted write never leaves a mixed package.
pub fn write_package(dir: &Path, p: &Package) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| Error::Io {
        path: p.display().to_string(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, bytes) in [
        (PUBLIC_FILE, &p.public),
        (SECRET_FILE, &p.sealed),
        (CHUNKS_FILE, &p.chunks),
        (SIGNATURE_FILE, &p.signature),
    ] {
        let tmp = dir.join(format!(".{name}.partial"));
        std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
        let dst = dir.join(name);
        std::fs::rename(&tmp, &dst).map_err(|e| io(&dst, e))?;
    }
    Ok(())
}

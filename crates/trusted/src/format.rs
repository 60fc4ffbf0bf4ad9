//! What a protected package holds (format version 3; docs/package-format.md).
//!
//! A package directory has four files:
//! - `public.bin`: `SNPKGv3\0`, a u32 (LE) header length, the postcard-encoded
//!   [`PublicHeader`], then every public layer's weights as little-endian blobs at the
//!   offsets the header gives, each with its SHA-256. Anyone may read it; the host loads
//!   the weights onto the accelerator, the trusted core only ever sees the header and, when
//!   it needs one, a single layer's blob (checked against its hash).
//! - `secret.sealed`: `SNSECv3\0`, the HPKE encapsulated key (32 bytes), then the HPKE
//!   ciphertext (RFC 9180 base mode, X25519-HKDF-SHA256, HKDF-SHA256, ChaCha20-Poly1305;
//!   info = [`HPKE_INFO`] ‖ package id, aad = SHA-256 of the public header region) of the
//!   postcard-encoded [`SecretModel`]: what the core keeps resident.
//! - `secret.chunks`: the large secret parts (weights of layers kept in the TEE, the paper
//!   scheme's fixed masks and corrections), each ChaCha8-Poly1305-sealed under the
//!   secret's chunk key with its index as nonce, streamed to the core one at a time:
//!   `SNCHKv4\0`, a u32 count, per chunk its (offset, length) as two u64 (where the host
//!   finds it; sizes follow from the architecture, which is public), then the data.
//! - `package.sig`: `SNSIGv1\0`, the vendor's Ed25519 public key, and its signature over
//!   [`signed_message`] (the hashes of the public header region and the sealed secret).
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use shadownet_ir::{Conv, ConvTranspose, Graph, IntTensor, Op, Tensor};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::TeeError;

pub const PUBLIC_FILE: &str = "public.bin";
pub const SECRET_FILE: &str = "secret.sealed";
pub const CHUNKS_FILE: &str = "secret.chunks";
pub const SIGNATURE_FILE: &str = "package.sig";

pub const PUBLIC_MAGIC: &[u8; 8] = b"SNPKGv3\0";
/// Magic of the format before version 3, refused with [`TeeError::UnsupportedVersion`].
pub const PUBLIC_MAGIC_V2: &[u8; 8] = b"SNPKGv2\0";
pub const SECRET_MAGIC: &[u8; 8] = b"SNSECv3\0";
pub const SIGNATURE_MAGIC: &[u8; 8] = b"SNSIGv1\0";
pub const CHUNKS_MAGIC: &[u8; 8] = b"SNCHKv4\0";
pub const HPKE_INFO: &[u8] = b"shadownet/secret/v3";
const SIGNATURE_DOMAIN: &[u8] = b"shadownet/package-signature/v3\0";

/// Largest public header, secret or chunk the core accepts (a corrupt length must not make
/// it allocate wildly).
pub const MAX_HEADER: usize = 64 << 20;
pub const MAX_CHUNK: usize = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheme {
    /// The ShadowNet paper's scheme: fake-filter pairs, channel shuffle, masks fixed at
    /// conversion. Kept for comparison; known broken (docs/security.md).
    ShadowNet,
    /// Exact masked arithmetic over Z/2^64 with one-time masks, dense secret mixing with
    /// hidden groups, Freivalds-checked results, layers kept in the TEE where the static
    /// attacks beat their floor (docs/schemes.md).
    Hardened,
}

impl Scheme {
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::ShadowNet => "shadownet",
            Scheme::Hardened => "hardened",
        }
    }
}

/// The linear op the accelerator runs, with the public weights as its second input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LinearKind {
    Conv(Conv),
    ConvTranspose(ConvTranspose),
    /// x [.., K] · W [K, M]
    MatMul,
}

impl LinearKind {
    pub fn op(&self) -> Op {
        match self {
            LinearKind::Conv(c) => Op::Conv(c.clone()),
            LinearKind::ConvTranspose(c) => Op::ConvTranspose(c.clone()),
            LinearKind::MatMul => Op::MatMul,
        }
    }

    /// The axis of the output (and of the input) that indexes channels.
    pub fn channel_axis(&self, rank: usize) -> usize {
        match self {
            LinearKind::MatMul => rank.saturating_sub(1),
            _ => 1,
        }
    }

    /// The axis of the weight that indexes output channels (filters).
    pub fn filter_axis(&self) -> usize {
        match self {
            LinearKind::Conv(_) => 0,
            _ => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightType {
    /// f32: the paper scheme's transformed weights.
    F32,
    /// i32: the hardened scheme's quantised mixed weights, used over Z/2^64.
    I32,
}

impl WeightType {
    pub fn bytes(&self) -> usize {
        4
    }
}

/// Where one public layer's weights lie in `public.bin` and what they hash to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightMeta {
    pub dtype: WeightType,
    pub shape: Vec<usize>,
    /// Byte offset from the start of the weights region (just after the header).
    pub offset: u64,
    pub sha256: [u8; 32],
}

impl WeightMeta {
    /// Bytes of the blob, or `None` if the shape overflows.
    pub fn byte_len(&self) -> Option<usize> {
        checked_numel(&self.shape)?.checked_mul(self.dtype.bytes())
    }
}

/// One outsourced layer as the untrusted host sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicLayer {
    pub kind: LinearKind,
    pub weight: WeightMeta,
    /// The tensor the accelerator is given (public layout: channels in the secret order).
    pub input_shape: Vec<usize>,
    /// The tensor it returns (public channels: real ones mixed with fakes).
    pub output_shape: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicHeader {
    pub scheme: Scheme,
    /// Random per conversion, from the OS: names the package (pool files, counters are
    /// keyed by secret randomness, not by this). Never derived from anything secret.
    pub package_id: [u8; 16],
    pub inputs: Vec<(String, Vec<usize>)>,
    pub outputs: Vec<(String, Vec<usize>)>,
    /// In the order the trusted core requests them.
    pub layers: Vec<PublicLayer>,
}

/// A public layer's weights, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum PublicWeight {
    F32(Tensor),
    I32(IntTensor),
}

/// The parts of `public.bin`: the header region (magic, length, header: what the
/// signature and the sealed secret are bound to), the decoded header, and the weights.
pub struct PublicParts<'a> {
    pub header_region: &'a [u8],
    pub header: PublicHeader,
    pub weights: &'a [u8],
}

/// Splits and decodes `public.bin` (or just its header region, with empty weights).
pub fn split_public(bytes: &[u8]) -> Result<PublicParts<'_>, TeeError> {
    if bytes.len() >= 8 && &bytes[..8] == PUBLIC_MAGIC_V2 {
        return Err(TeeError::UnsupportedVersion);
    }
    if bytes.len() < 12 || &bytes[..8] != PUBLIC_MAGIC {
        return Err(TeeError::CorruptPublic);
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if len > MAX_HEADER {
        return Err(TeeError::TooLarge);
    }
    let end = 12usize
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or(TeeError::CorruptPublic)?;
    let header: PublicHeader =
        postcard::from_bytes(&bytes[12..end]).map_err(|_| TeeError::CorruptPublic)?;
    validate_public(&header)?;
    Ok(PublicParts {
        header_region: &bytes[..end],
        header,
        weights: &bytes[end..],
    })
}

/// Shapes and sizes of a public header checked before anything indexes with them.
pub fn validate_public(h: &PublicHeader) -> Result<(), TeeError> {
    let bad = TeeError::CorruptPublic;
    for (_, s) in h.inputs.iter().chain(&h.outputs) {
        checked_numel(s).ok_or(bad)?;
    }
    for l in &h.layers {
        let w = &l.weight;
        w.byte_len().ok_or(bad)?;
        checked_numel(&l.input_shape).ok_or(bad)?;
        checked_numel(&l.output_shape).ok_or(bad)?;
        let want_type = match h.scheme {
            Scheme::ShadowNet => WeightType::F32,
            Scheme::Hardened => WeightType::I32,
        };
        if w.dtype != want_type {
            return Err(bad);
        }
        // The op must accept these shapes and produce the advertised output.
        let out = shadownet_ir::infer_shapes(
            "public layer",
            &l.kind.op(),
            &[l.input_shape.clone(), w.shape.clone()],
        )
        .map_err(|_| bad)?;
        if out.len() != 1 || out[0] != l.output_shape {
            return Err(bad);
        }
    }
    Ok(())
}

/// Decodes the weights of public layer `l` from its blob, checking length and hash.
pub fn decode_weight(l: &PublicLayer, blob: &[u8]) -> Result<PublicWeight, TeeError> {
    let w = &l.weight;
    if Some(blob.len()) != w.byte_len() || crate::crypto::sha256(blob) != w.sha256 {
        return Err(TeeError::BadChunk);
    }
    Ok(match w.dtype {
        WeightType::F32 => PublicWeight::F32(Tensor {
            shape: w.shape.clone(),
            data: blob
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        }),
        WeightType::I32 => PublicWeight::I32(IntTensor {
            shape: w.shape.clone(),
            data: blob
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        }),
    })
}

/// The blob of layer `l` within the weights region of `public.bin`.
pub fn weight_blob<'a>(weights: &'a [u8], l: &PublicLayer) -> Result<&'a [u8], TeeError> {
    let len = l.weight.byte_len().ok_or(TeeError::CorruptPublic)?;
    let start = usize::try_from(l.weight.offset).map_err(|_| TeeError::CorruptPublic)?;
    start
        .checked_add(len)
        .and_then(|end| weights.get(start..end))
        .ok_or(TeeError::CorruptPublic)
}

/// What the vendor signs: both parts the core opens, by hash.
pub fn signed_message(header_region: &[u8], sealed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 64);
    m.extend_from_slice(SIGNATURE_DOMAIN);
    m.extend_from_slice(&crate::crypto::sha256(header_region));
    m.extend_from_slice(&crate::crypto::sha256(sealed));
    m
}

/// `package.sig`: the signer's public key and the signature.
pub struct SignatureFile {
    pub vendor: [u8; 32],
    pub signature: [u8; 64],
}

impl SignatureFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = SIGNATURE_MAGIC.to_vec();
        v.extend_from_slice(&self.vendor);
        v.extend_from_slice(&self.signature);
        v
    }

    pub fn decode(b: &[u8]) -> Result<Self, TeeError> {
        if b.len() != 8 + 32 + 64 || &b[..8] != SIGNATURE_MAGIC {
            return Err(TeeError::CorruptSignature);
        }
        let mut vendor = [0u8; 32];
        vendor.copy_from_slice(&b[8..40]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[40..104]);
        Ok(SignatureFile { vendor, signature })
    }
}

// ------------------------------------------------------------------------------------------
// The secret part.

/// The paper's LinearTransform / ShuffleChannel (see docs/schemes.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PaperTransform {
    /// real channel i = scale[i]·y'[real_pos[i]] + fake_scale[i]·y'[fake_pos[i]].
    FakePairs {
        real_pos: Vec<u32>,
        fake_pos: Vec<u32>,
        scale: Vec<f32>,
        fake_scale: Vec<f32>,
    },
    /// Grouped and depthwise convs: public group q computes real group perm[q], every
    /// output channel divided by its scale; the input's channel groups are sent in the
    /// same order.
    GroupShuffle {
        groups: usize,
        perm: Vec<u32>,
        scale: Vec<f32>,
    },
}

/// The paper scheme's fixed mask of one layer: its bfloat16 values (chunk `mask`, in the
/// public input layout) and the restored image of the mask (chunk `correction`, f32, real
/// output layout, the bias already subtracted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedMask {
    pub mask: u32,
    pub correction: u32,
}

/// An exactly masked layer of the hardened scheme. The accelerator computes
/// T' = Wq ⋆ x̃ over Z/2^64 on x̃ = x_q + r (x_q the input quantised with a per-inference
/// scale σ, r a one-time mask uniform over the ring); the core recovers T = T' − Wq ⋆ r
/// (the correction, precomputed in the pool), checks it, and restores every real channel
/// from its mixing group's public channels: σ · Σ_j coeff[j] · T[public[j]] + bias.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExactLayer {
    /// Public input channel q carries real channel `in_perm[q]` (empty: the identity).
    pub in_perm: Vec<u32>,
    /// Bits of the quantised input, sign included.
    pub act_bits: u32,
    /// max |T| over every input the quantisation can produce: the result of an honest
    /// accelerator never exceeds it (Σ_k |Wq[o, k]| · (2^(act_bits−1) − 1)).
    pub bound: u64,
    pub groups: Vec<MixGroup>,
}

/// One mixing group: the real channels `real` restored from the public channels `public`,
/// real channel `real[i]` = Σ_j coeffs[i·public.len() + j] · T[public[j]].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixGroup {
    pub public: Vec<u32>,
    pub real: Vec<u32>,
    pub coeffs: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LayerRestore {
    Paper {
        transform: PaperTransform,
        /// `None` for layers fed straight by a model input (the user's input is not the
        /// vendor's secret).
        fixed: Option<FixedMask>,
    },
    Exact(ExactLayer),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSecret {
    /// Index of the linear node in the secret graph.
    pub node: u32,
    /// Real bias per output channel (removed from the public layer).
    pub bias: Option<Vec<f32>>,
    pub restore: LayerRestore,
}

/// A layer run entirely inside the trusted core, whose constant inputs (weights, bias)
/// stream in from chunk `chunk` (postcard `Vec<Tensor>`, for the node's inputs 1..).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeptLayer {
    pub node: u32,
    pub chunk: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    pub offset: u64,
    pub len: u64,
}

/// 32 secret bytes, wiped when dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Key32(pub [u8; 32]);

impl core::fmt::Debug for Key32 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Key32(..)")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecretModel {
    pub scheme: Scheme,
    pub package_id: [u8; 16],
    /// Secret randomness drawn at conversion: everything the core derives for this
    /// package on a device (pool keys, counter names) comes from it and the device key.
    pub root: Key32,
    /// Key of the chunks in `secret.chunks`.
    pub chunk_key: Key32,
    /// The whole model; the outsourced layers' and kept layers' weights stripped.
    pub graph: Graph,
    /// Indexed like `PublicHeader::layers`.
    pub layers: Vec<LayerSecret>,
    pub kept: Vec<KeptLayer>,
    pub chunks: Vec<ChunkMeta>,
}

/// Elements of a shape, or `None` when the product overflows.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// The chunk table at the start of `secret.chunks`: per chunk, (offset, length) in the
/// whole file. For the host, which hands chunks to the core by index.
pub fn chunk_table(file: &[u8]) -> Option<Vec<ChunkMeta>> {
    if file.len() < 12 || &file[..8] != CHUNKS_MAGIC {
        return None;
    }
    let n = u32::from_le_bytes([file[8], file[9], file[10], file[11]]) as usize;
    let table_end = n.checked_mul(16)?.checked_add(12)?;
    let table = file.get(12..table_end)?;
    let metas: Vec<ChunkMeta> = table
        .chunks_exact(16)
        .map(|e| {
            let w = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            ChunkMeta {
                offset: w(&e[..8]),
                len: w(&e[8..]),
            }
        })
        .collect();
    let ok = metas.iter().all(|m| {
        m.offset
            .checked_add(m.len)
            .is_some_and(|end| end <= file.len() as u64 && m.offset >= table_end as u64)
    });
    ok.then_some(metas)
}

/// Encodes `secret.chunks` from sealed chunks.
pub fn encode_chunks(sealed: &[Vec<u8>]) -> Vec<u8> {
    let mut out = CHUNKS_MAGIC.to_vec();
    out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    let mut at = (12 + 16 * sealed.len()) as u64;
    for c in sealed {
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        at += c.len() as u64;
    }
    for c in sealed {
        out.extend_from_slice(c);
    }
    out
}

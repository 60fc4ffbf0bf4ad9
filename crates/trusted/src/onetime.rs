//! One-time masks (hardened scheme). Every inference masks every outsourced layer's input
//! with a mask never used before, derived from a fresh 32-byte seed; its correction
//! `unmix(public_op(mask))` is either precomputed offline into a sealed pool entry or
//! computed on the spot. Pool entries carry an index that must match the trusted core's
//! monotonic counter, so a replayed or reordered entry is refused.
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use hkdf::Hkdf;
use rand_chacha::{ChaCha20Rng, ChaCha8Rng};
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use shadownet_ir::{Graph, Tensor};

use crate::format::{PublicLayer, SecretLayer};
use crate::restore;

#[derive(Serialize, Deserialize)]
pub struct PoolEntry {
    pub index: u64,
    pub seed: [u8; 32],
    /// Per outsourced layer: the restored image of its mask.
    pub corrections: Vec<Tensor>,
}

/// The trusted core's stream of check vectors, seeded from the platform's RNG.
pub struct CheckRng(ChaCha20Rng);

impl CheckRng {
    pub fn new(seed: [u8; 32]) -> Self {
        CheckRng(ChaCha20Rng::from_seed(seed))
    }

    pub fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

const SQRT_3: f32 = 1.732_050_8;

/// The public-layout mask of layer `k` for input shape `shape`.
///
/// Entries are uniform on [−√3·σ_c, √3·σ_c] (standard deviation σ_c): hiding depends on the
/// mask's variance, and a uniform draw costs a few nanoseconds where Box–Muller's
/// transcendentals made mask generation the largest cost of an inference.
pub fn mask(seed: [u8; 32], k: usize, layer: &SecretLayer, shape: &[usize]) -> Tensor {
    // ChaCha8: the best known attacks reach 7 rounds of ChaCha, and the mask stream is most
    // of an inference's random bytes (18 MB for MobileNet-v1), where 12 rounds cost half
    // as much again.
    let mut rng = ChaCha8Rng::from_seed(seed);
    rng.set_stream(k as u64);
    let n: usize = shape.iter().product();
    let axis = restore::mask_axis(shape);
    let c = shape.get(axis).copied().unwrap_or(1).max(1);
    let inner: usize = shape
        .get(axis + 1..)
        .map_or(1, |s| s.iter().product::<usize>().max(1));
    let outer = n / (c * inner).max(1);
    let mut data = Vec::with_capacity(n);
    // Random words a block at a time: one call per value cost more than the cipher.
    let mut block = [0u8; 4096];
    for _ in 0..outer {
        for ch in 0..c {
            let half_width = SQRT_3 * layer.mask_rms.get(ch).copied().unwrap_or(1.0);
            let mut left = inner;
            while left > 0 {
                let take = left.min(block.len() / 4);
                rng.fill_bytes(&mut block[..take * 4]);
                // 24 random bits give a uniform value in [-1, 1).
                data.extend(block[..take * 4].chunks_exact(4).map(|b| {
                    let w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    ((w >> 8) as f32 * (2.0 / (1u32 << 24) as f32) - 1.0) * half_width
                }));
                left -= take;
            }
        }
    }
    // Drawn in the real layout, then shuffled like the input it hides.
    restore::shuffle_input(
        &layer.restore,
        &Tensor {
            shape: shape.to_vec(),
            data,
        },
    )
}

/// Corrections for every layer of one inference: what the accelerator will add to each
/// layer's output because of its mask, in real layout.
pub fn corrections(
    seed: [u8; 32],
    graph: &Graph,
    secret: &[SecretLayer],
    public: &[PublicLayer],
) -> Result<Vec<Tensor>, String> {
    let mut out = Vec::with_capacity(secret.len());
    for (k, (sl, pl)) in secret.iter().zip(public).enumerate() {
        let node = graph
            .nodes
            .get(sl.node as usize)
            .ok_or("layer names a missing node")?;
        let m = mask(seed, k, sl, &pl.input_shape);
        let y = shadownet_kernels::eval("mask", &pl.kind.op(), &[&m, &pl.weight])
            .map_err(|e| format!("{e}"))?;
        let real = graph.shape(node.outputs[0]);
        out.push(restore::unmix(
            &sl.restore,
            &y[0],
            real,
            pl.kind.channel_axis(real.len()),
        ));
    }
    Ok(out)
}

fn cipher(device_key: &[u8; 32], conversion_id: &[u8; 16]) -> Aes256Gcm {
    let hk = Hkdf::<Sha256>::new(Some(conversion_id), device_key);
    let mut key = [0u8; 32];
    let _ = hk.expand(b"shadownet/pool/v2 aes-256-gcm", &mut key);
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))
}

fn nonce_aad(conversion_id: &[u8; 16], index: u64) -> ([u8; 12], [u8; 24]) {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&index.to_le_bytes());
    let mut aad = [0u8; 24];
    aad[..16].copy_from_slice(conversion_id);
    aad[16..].copy_from_slice(&index.to_le_bytes());
    (nonce, aad)
}

/// index (8 bytes, little endian) ‖ AES-256-GCM(entry). Each index is sealed once, so
/// (key, nonce) pairs never repeat.
pub fn seal_entry(device_key: &[u8; 32], conversion_id: &[u8; 16], entry: &PoolEntry) -> Vec<u8> {
    let plain = postcard::to_allocvec(entry).unwrap_or_default();
    let (nonce, aad) = nonce_aad(conversion_id, entry.index);
    let ct = cipher(device_key, conversion_id)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(8 + ct.len());
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&ct);
    out
}

pub fn entry_index(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(..8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
}

/// Opens a sealed entry, decrypting where it lies: an entry is tens of megabytes, and a
/// fresh plaintext buffer cost its size again in page faults and zeroed pages.
pub fn open_entry(
    device_key: &[u8; 32],
    conversion_id: &[u8; 16],
    mut bytes: Vec<u8>,
) -> Option<PoolEntry> {
    let index = entry_index(&bytes)?;
    let (nonce, aad) = nonce_aad(conversion_id, index);
    // index ‖ ciphertext ‖ 16-byte tag
    let tag_at = bytes.len().checked_sub(16).filter(|&t| t >= 8)?;
    let (body, tag) = bytes.split_at_mut(tag_at);
    let plain = &mut body[8..];
    cipher(device_key, conversion_id)
        .decrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, plain, Tag::from_slice(tag))
        .ok()?;
    let e: PoolEntry = postcard::from_bytes(plain).ok()?;
    (e.index == index).then_some(e)
}

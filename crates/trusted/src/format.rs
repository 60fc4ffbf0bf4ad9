//! What a protected package holds. The public part may be read by anyone; the secret part
//! only ever exists in plaintext inside the trusted core (and the vendor's converter).
//! Both are encoded with postcard; see docs/package-format.md.
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use shadownet_ir::{Conv, ConvTranspose, Graph, Op, Tensor};

/// File names inside a package directory.
pub const PUBLIC_FILE: &str = "public.bin";
pub const SECRET_FILE: &str = "secret.sealed";

/// Magic and version at the start of `public.bin`.
pub const PUBLIC_MAGIC: &[u8; 8] = b"SNPKGv2\0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheme {
    /// The ShadowNet paper's scheme: fake-filter pairs, channel shuffle, masks fixed at
    /// conversion.
    ShadowNet,
    /// Group mixing through secret invertible matrices with fakes drawn from the layer's
    /// own weights, one-time masks on every layer, and a Freivalds check of every result.
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

/// The linear op the accelerator runs, with the transformed weights as its second input.
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

    /// The axis of the output that indexes filters.
    pub fn channel_axis(&self, rank: usize) -> usize {
        match self {
            LinearKind::MatMul => rank - 1,
            _ => 1,
        }
    }
}

/// One outsourced layer as the untrusted host sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicLayer {
    pub kind: LinearKind,
    /// Transformed weights: fake filters mixed in, scaled, shuffled.
    pub weight: Tensor,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicPackage {
    pub scheme: Scheme,
    /// Random per conversion; binds the public part to its sealed secret.
    pub conversion_id: [u8; 16],
    pub inputs: Vec<(String, Vec<usize>)>,
    pub outputs: Vec<(String, Vec<usize>)>,
    /// In the order the trusted core requests them.
    pub layers: Vec<PublicLayer>,
}

/// How the trusted core turns the accelerator's output back into the real one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Restore {
    /// ShadowNet's LinearTransform: real channel i =
    /// scale[i]·y'[real_pos[i]] + fake_scale[i]·y'[fake_pos[i]].
    FakePairs {
        real_pos: Vec<u32>,
        fake_pos: Vec<u32>,
        scale: Vec<f32>,
        fake_scale: Vec<f32>,
    },
    /// ShadowNet's ShuffleChannel for grouped/depthwise convs: public group q computes real
    /// group perm[q] with every output channel divided by its scale.
    GroupShuffle {
        groups: usize,
        perm: Vec<u32>,
        scale: Vec<f32>,
    },
    /// The hardened LinearTransform: real channel i = Σ (coeff · y'[pos]) over `taps[i]`.
    /// When `in_perm` is not empty the input's channel blocks are permuted first, public
    /// block q holding real block in_perm[q] (depthwise layers).
    Mix {
        taps: Vec<Vec<(u32, f32)>>,
        in_perm: Vec<u32>,
    },
}

/// A fixed mask, kept as bfloat16. Any value hides as well as any other (the correction
/// is computed from exactly these values), and half the bytes halve what the trusted core
/// keeps resident and streams through memory for it on every layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub shape: Vec<usize>,
    /// The upper 16 bits of each f32 value.
    pub bits: Vec<u16>,
}

impl Mask {
    /// Rounds `t` to bfloat16 (to nearest, ties to even).
    pub fn from_f32(t: &Tensor) -> Mask {
        let bits = t
            .data
            .iter()
            .map(|v| {
                let b = v.to_bits();
                let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1));
                (rounded >> 16) as u16
            })
            .collect();
        Mask {
            shape: t.shape.clone(),
            bits,
        }
    }

    #[inline]
    pub fn value(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }

    pub fn to_tensor(&self) -> Tensor {
        Tensor {
            shape: self.shape.clone(),
            data: self.bits.iter().map(|&b| Mask::value(b)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.bits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }
}

impl Serialize for Mask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let bytes: Vec<u8> = self.bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.shape)?;
        t.serialize_element(&Bytes(&bytes))?;
        t.end()
    }
}

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de> Deserialize<'de> for Mask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, SeqAccess, Visitor};
        struct Halves;
        impl<'de> Visitor<'de> for Halves {
            type Value = Vec<u16>;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("little-endian bfloat16 bytes")
            }
            fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Vec<u16>, E> {
                if !b.len().is_multiple_of(2) {
                    return Err(E::invalid_length(b.len(), &self));
                }
                Ok(b.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect())
            }
        }
        struct HalvesField(Vec<u16>);
        impl<'de> Deserialize<'de> for HalvesField {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_bytes(Halves).map(HalvesField)
            }
        }
        struct MaskVisitor;
        impl<'de> Visitor<'de> for MaskVisitor {
            type Value = Mask;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a mask (shape, bfloat16 data)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Mask, A::Error> {
                let shape: Vec<usize> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let HalvesField(bits) = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                if n != Some(bits.len()) {
                    return Err(de::Error::custom("mask data does not match its shape"));
                }
                Ok(Mask { shape, bits })
            }
        }
        d.deserialize_tuple(2, MaskVisitor)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecretLayer {
    /// Index of the linear node in the secret graph.
    pub node: u32,
    /// Shape of the accelerator's (transformed) output, checked on every reply.
    pub public_output: Vec<usize>,
    pub restore: Restore,
    /// Real bias per output channel (removed from the public layer).
    pub bias: Option<Vec<f32>>,
    /// Mask added to the (public-layout) input; `None` for layers fed by a model input.
    pub mask: Option<Mask>,
    /// The restored image of the mask, `restore(public_op(mask))`, subtracted after restoring.
    pub mask_correction: Option<Tensor>,
    /// Hardened scheme: per-channel standard deviation of the one-time masks.
    pub mask_rms: Vec<f32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecretModel {
    pub scheme: Scheme,
    pub conversion_id: [u8; 16],
    /// The whole model, minus the weights of the outsourced layers.
    pub graph: Graph,
    /// Indexed like `PublicPackage::layers`.
    pub layers: Vec<SecretLayer>,
}

impl SecretModel {
    /// Bytes held by the model's tensors inside the trusted core.
    pub fn resident_bytes(&self) -> usize {
        let consts: usize = self
            .graph
            .values
            .iter()
            .filter_map(|v| v.data.as_ref())
            .map(|t| t.len() * 4)
            .sum();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                let r = match &l.restore {
                    Restore::FakePairs { scale, .. } => scale.len() * 16,
                    Restore::GroupShuffle { perm, scale, .. } => perm.len() * 4 + scale.len() * 4,
                    Restore::Mix { taps, in_perm } => {
                        taps.iter().map(|t| t.len() * 8).sum::<usize>() + in_perm.len() * 4
                    }
                };
                r + l.bias.as_ref().map_or(0, |b| b.len() * 4)
                    + l.mask.as_ref().map_or(0, |t| t.len() * 2)
                    + l.mask_correction.as_ref().map_or(0, |t| t.len() * 4)
                    + l.mask_rms.len() * 4
            })
            .sum();
        consts + layers
    }

    /// Peak bytes of activations alive at once during one inference, including the
    /// masked input and raw accelerator output of the layer in flight.
    pub fn peak_activation_bytes(&self, public: &[PublicLayer]) -> usize {
        let g = &self.graph;
        let last = g.last_uses();
        let size = |v: usize| g.values[v].shape.iter().product::<usize>() * 4;
        let mut live: usize = g.inputs.iter().map(|&i| size(i)).sum();
        let mut peak = live;
        let mut layer_of = alloc::vec![None; g.nodes.len()];
        for (k, l) in self.layers.iter().enumerate() {
            if let Some(slot) = layer_of.get_mut(l.node as usize) {
                *slot = Some(k);
            }
        }
        for (k, n) in g.nodes.iter().enumerate() {
            let outs: usize = n.outputs.iter().map(|&o| size(o)).sum();
            let transient = layer_of[k].and_then(|l| public.get(l)).map_or(0, |p| {
                (p.input_shape.iter().product::<usize>() + p.output_shape.iter().product::<usize>())
                    * 4
            });
            peak = peak.max(live + outs + transient);
            live += outs;
            for (j, &i) in n.inputs.iter().enumerate() {
                let first_mention = !n.inputs[..j].contains(&i);
                if first_mention
                    && last[i] == k
                    && g.values[i].data.is_none()
                    && !g.inputs.contains(&i)
                {
                    live = live.saturating_sub(size(i));
                }
            }
        }
        peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_to_nearest_bfloat16_and_survive_encoding() {
        let t = Tensor {
            shape: alloc::vec![2, 3],
            // 1 + 2^-8 is a tie (rounds to even: 1); 1 + 3·2^-8 rounds up to 1 + 2^-6.
            data: alloc::vec![1.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5, 0.0, 3.0e-3],
        };
        let m = Mask::from_f32(&t);
        let back = m.to_tensor();
        assert_eq!(back.data[..4], [1.0, 1.0, 1.0 + 1.0 / 64.0, -2.5]);
        for (a, b) in back.data.iter().zip(&t.data) {
            assert!((a - b).abs() <= b.abs() / 256.0, "{a} vs {b}");
        }
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Mask>(&bytes).unwrap(), m);
        // Data that does not fill the shape is refused.
        let short = Mask {
            shape: alloc::vec![2, 4],
            bits: m.bits.clone(),
        };
        let bytes = postcard::to_allocvec(&short).unwrap();
        assert!(postcard::from_bytes::<Mask>(&bytes).is_err());
    }
}

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
pub const PUBLIC_MAGIC: &[u8; 8] = b"SNPKGv1\0";

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
    pub mask: Option<Tensor>,
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
                    + l.mask.as_ref().map_or(0, |t| t.len() * 4)
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

//! The trusted core's message API: an I/O-free state machine (like quinn-proto) that
//! poisons itself on error (like rustls).
//!
//! The host hands over a [`HostToTee`] message and gets back a [`TeeToHost`] one, as an
//! ECALL/OCALL pair would on a real TEE. Every transition consumes the state: on an error
//! the core is left `Poisoned` and answers everything but `Open` with that.
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use shadownet_ir::{Activation, Graph, IntTensor, Op, RingTensor, Tensor, ValueId};
use zeroize::Zeroizing;

use crate::crypto::{self, DeviceRecord, Keystream};
use crate::error::TeeError;
use crate::exact::{self, CheckVectors, Geometry};
use crate::format::{
    self, ChunkMeta, Key32, LayerRestore, LinearKind, PublicHeader, PublicWeight, Scheme,
    SecretModel, SECRET_MAGIC,
};
#[cfg(not(feature = "fuzzing"))]
use crate::format::{SignatureFile, HPKE_INFO};
use crate::paper;
use crate::platform::{Platform, PlatformError};
use crate::pool::{self, PoolHeader};

/// Most pool entries one `Precompute` may ask for.
pub const MAX_PRECOMPUTE: u32 = 4096;

/// A tensor crossing the boundary: f32 for the paper scheme, ring values for the exact one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    F32(Tensor),
    Ring(RingTensor),
}

/// A tensor as the host's buffer holds it: its shape and its elements' little-endian
/// bytes (f32 or u64). The enclave process decodes `LinearDone` this way straight from
/// the shared region, so the accelerator's result and the pool's corrections are read in
/// place, once, and never copied into trusted memory (as a TA reads the normal world's
/// shared buffers). The same encoding as [`Payload`].
#[derive(Clone, Debug, Deserialize)]
pub enum PayloadRef<'a> {
    F32(#[serde(borrow)] (Vec<usize>, &'a [u8])),
    Ring(#[serde(borrow)] (Vec<usize>, &'a [u8])),
}

impl Payload {
    /// This payload's bytes, as [`PayloadRef`] (little-endian machines).
    pub fn as_ref(&self) -> PayloadRef<'_> {
        match self {
            Payload::F32(t) => PayloadRef::F32((t.shape.clone(), bytemuck::cast_slice(&t.data))),
            Payload::Ring(t) => PayloadRef::Ring((t.shape.clone(), bytemuck::cast_slice(&t.data))),
        }
    }
}

/// [`HostToTee`] decoded with `LinearDone`'s tensor and chunks borrowed from the buffer
/// (same encoding, variant for variant).
#[derive(Debug, Deserialize)]
pub enum HostToTeeRef<'a> {
    Open {
        #[serde(with = "serde_bytes")]
        public_header: Vec<u8>,
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    Begin {
        inputs: Vec<Tensor>,
        pool_entry: Option<PoolEntryRef>,
        allow_slow_masks: bool,
    },
    LinearDone {
        layer: u32,
        #[serde(borrow)]
        output: PayloadRef<'a>,
        #[serde(borrow)]
        chunks: Vec<&'a [u8]>,
    },
    Chunks {
        #[serde(with = "blobs")]
        chunks: Vec<Vec<u8>>,
    },
    Precompute {
        count: u32,
    },
    Continue,
}

/// Something the core streams in instead of keeping resident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChunkId {
    /// Chunk `i` of `secret.chunks` (its bytes as stored).
    Secret(u32),
    /// The weights blob of public layer `i` (from `public.bin`).
    PublicWeight(u32),
    /// Pool entry body part of public layer `i` (the entry given at `Begin`).
    PoolBody(u32),
}

/// Lists of byte strings encoded as byte strings (postcard writes a plain `Vec<u8>` byte
/// by byte through serde's sequence path: megabytes of pool corrections crawled).
mod blobs {
    use alloc::vec::Vec;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let refs: Vec<&serde_bytes::Bytes> = v.iter().map(|b| serde_bytes::Bytes::new(b)).collect();
        refs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<serde_bytes::ByteBuf> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(serde_bytes::ByteBuf::into_vec).collect())
    }
}

/// Messages from the untrusted host (ECALLs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum HostToTee {
    /// Open a package: the header region of `public.bin` (magic, length, header), the
    /// sealed secret and the vendor signature.
    Open {
        #[serde(with = "serde_bytes")]
        public_header: Vec<u8>,
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// Start one inference on the model inputs, in model-input order. Hardened packages
    /// take the prefix and header of the next pool entry, or compute masks on the spot when
    /// none is given and `allow_slow_masks` is set.
    Begin {
        inputs: Vec<Tensor>,
        pool_entry: Option<PoolEntryRef>,
        allow_slow_masks: bool,
    },
    /// The accelerator's output for the layer last requested, with the chunks that
    /// request asked for, in its order.
    LinearDone {
        layer: u32,
        output: Payload,
        #[serde(with = "blobs")]
        chunks: Vec<Vec<u8>>,
    },
    /// The chunks a `NeedChunks` asked for, in its order.
    Chunks {
        #[serde(with = "blobs")]
        chunks: Vec<Vec<u8>>,
    },
    /// Make `count` one-time mask entries (hardened packages).
    Precompute { count: u32 },
    /// Go on after a `PoolPart`.
    Continue,
}

/// The parts of a pool entry the core reads at `Begin`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolEntryRef {
    /// The entry file's first `pool::PREFIX` bytes (magic, index, epoch).
    #[serde(with = "serde_bytes")]
    pub prefix: Vec<u8>,
    /// The sealed header at the entry file's end.
    #[serde(with = "serde_bytes")]
    pub header: Vec<u8>,
}

/// Replies to the host (OCALLs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TeeToHost {
    Opened {
        layers: u32,
        /// Bytes of the opened model the core keeps resident.
        resident_bytes: u64,
    },
    /// Run public layer `layer` on `input`, then reply `LinearDone` with the chunks listed
    /// in `prefetch`.
    RunLinear {
        layer: u32,
        input: Payload,
        prefetch: Vec<ChunkId>,
    },
    /// Reply `Chunks` with these.
    NeedChunks {
        ids: Vec<ChunkId>,
    },
    /// Part of pool entry `index`: store it, then reply `Continue`.
    PoolPart {
        index: u64,
        part: PoolPart,
    },
    /// Every entry asked for is made.
    PoolDone,
    Done {
        outputs: Vec<Tensor>,
    },
    Failed {
        error: TeeError,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PoolPart {
    /// The entry file's prefix (comes first).
    Prefix(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Layer `layer`'s encrypted correction, appended in layer order.
    Body {
        layer: u32,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The sealed header, appended last: the entry is complete.
    Header(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A hardened package's consumed and issued counters' names, and the consumed one's epoch.
type Counters = ([u8; 32], [u8; 32], [u8; 16]);

/// What the core knows of one outsourced layer once the package is open.
struct LayerInfo {
    node: usize,
    /// The real output's shape and the value the restored output is stored as (the fused
    /// activation's output when an activation alone reads the layer's output).
    real_shape: Vec<usize>,
    value: ValueId,
    act: Option<Activation>,
    /// Nodes after the layer, up to (not including) the next outsourced one.
    resume: usize,
    /// Hardened: the layer's shapes.
    geo: Option<Geometry>,
    /// Chunks the restore of this layer and the trusted segment after it need.
    prefetch: Vec<ChunkId>,
    /// Paper: the outsourced layer that alone reads this one's output (restored straight
    /// into its input).
    forward: Option<u32>,
}

struct Session {
    header: PublicHeader,
    model: SecretModel,
    layer_of: Vec<Option<u32>>,
    kept_of: Vec<Option<u32>>,
    last_use: Vec<usize>,
    info: Vec<LayerInfo>,
    /// Chunks the trusted nodes before the first outsourced layer need.
    prefetch_begin: Vec<ChunkId>,
    pkg_key: Zeroizing<[u8; 32]>,
    /// Hardened: the consumed and issued counters' names and the epoch.
    counters: Option<Counters>,
    resident: u64,
    /// Per chunk of `secret.chunks`: kept open across inferences once opened. Chunks are
    /// the same on every inference (fixed masks, corrections, kept layers' weights), so
    /// the ones that fit the platform's memory budget are opened once, not streamed again.
    keep_open: Vec<bool>,
    /// The opened chunks kept (chunk index → plaintext).
    opened: BTreeMap<u32, Zeroizing<Vec<u8>>>,
    /// Buffers of streamed chunks already used, kept for the next ones (see `Run::spare`).
    spare: Vec<Zeroizing<Vec<u8>>>,
}

/// The one-time material of a hardened inference.
struct OneTime {
    mask_key: Key32,
    correction_key: Key32,
    check_key: Key32,
    /// Per layer, f = uᵀWq; `None` in slow mode, where f is made from the weights.
    folds: Option<Vec<Vec<u64>>>,
    /// Source of the per-inference check vectors a, b.
    online: Key32,
}

enum Pending {
    Paper,
    Exact {
        chk: CheckVectors,
        g: Vec<u64>,
        scale: f32,
    },
}

struct Run {
    vals: Vec<Option<Tensor>>,
    next: usize,
    onetime: Option<OneTime>,
    /// Opened chunks waiting to be used.
    chunks: BTreeMap<ChunkId, Zeroizing<Vec<u8>>>,
    /// A restored output already masked as the input of this outsourced layer (paper).
    forwarded: Option<(u32, Tensor)>,
    /// Buffers of used chunks, reopened into rather than freed: a freed buffer of secret
    /// plaintext has to be zeroised, and they are tens of megabytes an inference. They go
    /// back to the session between inferences and are zeroised when it ends.
    spare: Vec<Zeroizing<Vec<u8>>>,
}

struct Precomp {
    left: u32,
    index: u64,
    layer: u32,
    header: Option<PoolHeader>,
}

enum State {
    Idle,
    Ready(Box<Session>),
    /// Waiting for the accelerator's result of `layer`.
    Linear(Box<Session>, Box<Run>, u32, Pending),
    /// Waiting for chunks before running trusted nodes.
    Chunks(Box<Session>, Box<Run>, Vec<ChunkId>),
    /// Precompute: waiting for a layer's weights.
    PreWeights(Box<Session>, Precomp),
    /// Precompute: waiting for the host to store a part.
    PreStored(Box<Session>, Precomp),
    Poisoned,
}

/// The trusted core. Holds the device record; everything else arrives as messages.
pub struct TrustedCore {
    device: DeviceRecord,
    platform: Box<dyn Platform>,
    state: State,
    #[cfg(feature = "debug-trace")]
    observer: Option<Box<dyn FnMut(usize, Option<u32>, &[&Tensor]) + Send>>,
}

impl TrustedCore {
    /// A core for the device whose record (`device.key`) is `record`.
    pub fn new(record: &[u8], platform: Box<dyn Platform>) -> Result<Self, TeeError> {
        Ok(TrustedCore {
            device: DeviceRecord::decode(record)?,
            platform,
            state: State::Idle,
            #[cfg(feature = "debug-trace")]
            observer: None,
        })
    }

    /// Debug builds only: shows every node's plain output to `f(node, public layer if the
    /// node was outsourced, outputs)` (`shadownet trace`).
    #[cfg(feature = "debug-trace")]
    pub fn set_observer(&mut self, f: Box<dyn FnMut(usize, Option<u32>, &[&Tensor]) + Send>) {
        self.observer = Some(f);
    }

    /// Handles one message decoded with borrowed buffers (the enclave process).
    pub fn handle_ref(&mut self, msg: HostToTeeRef<'_>) -> TeeToHost {
        let owned = match msg {
            HostToTeeRef::LinearDone {
                layer,
                output,
                chunks,
            } => {
                let state = core::mem::replace(&mut self.state, State::Poisoned);
                let res = match state {
                    State::Linear(s, run, want, pending) => {
                        self.linear_done(s, run, want, pending, layer, output, &chunks)
                    }
                    State::Poisoned => Err(TeeError::Poisoned),
                    _ => Err(TeeError::UnexpectedMessage),
                };
                return match res {
                    Ok(reply) => reply,
                    Err(error) => {
                        self.state = State::Poisoned;
                        TeeToHost::Failed { error }
                    }
                };
            }
            HostToTeeRef::Open {
                public_header,
                sealed,
                signature,
            } => HostToTee::Open {
                public_header,
                sealed,
                signature,
            },
            HostToTeeRef::Begin {
                inputs,
                pool_entry,
                allow_slow_masks,
            } => HostToTee::Begin {
                inputs,
                pool_entry,
                allow_slow_masks,
            },
            HostToTeeRef::Chunks { chunks } => HostToTee::Chunks { chunks },
            HostToTeeRef::Precompute { count } => HostToTee::Precompute { count },
            HostToTeeRef::Continue => HostToTee::Continue,
        };
        self.handle(owned)
    }

    /// Handles one message.
    pub fn handle(&mut self, msg: HostToTee) -> TeeToHost {
        let state = core::mem::replace(&mut self.state, State::Poisoned);
        let res = match (state, msg) {
            (
                _,
                HostToTee::Open {
                    public_header,
                    sealed,
                    signature,
                },
            ) => self.open(&public_header, &sealed, &signature),
            (State::Poisoned, _) => Err(TeeError::Poisoned),
            (
                State::Ready(s),
                HostToTee::Begin {
                    inputs,
                    pool_entry,
                    allow_slow_masks,
                },
            ) => self.begin(s, inputs, pool_entry, allow_slow_masks),
            (State::Ready(s), HostToTee::Precompute { count }) => self.precompute(s, count),
            (
                State::Linear(s, run, layer, pending),
                HostToTee::LinearDone {
                    layer: got,
                    output,
                    chunks,
                },
            ) => {
                let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                self.linear_done(s, run, layer, pending, got, output.as_ref(), &refs)
            }
            (State::Chunks(mut s, mut run, ids), HostToTee::Chunks { chunks }) => {
                let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                match store_chunks(&mut s, &mut run, &ids, &refs) {
                    Ok(_) => self.advance(s, run),
                    Err(e) => Err(e),
                }
            }
            (State::PreWeights(s, p), HostToTee::Chunks { chunks }) => {
                self.precompute_layer(s, p, chunks)
            }
            (State::PreStored(s, p), HostToTee::Continue) => self.precompute_next(s, p),
            _ => Err(TeeError::UnexpectedMessage),
        };
        match res {
            Ok(reply) => reply,
            Err(error) => {
                self.state = State::Poisoned;
                TeeToHost::Failed { error }
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Opening a package.

    fn open(
        &mut self,
        header_region: &[u8],
        sealed: &[u8],
        signature: &[u8],
    ) -> Result<TeeToHost, TeeError> {
        let parts = format::split_public(header_region)?;
        if !parts.weights.is_empty() {
            return Err(TeeError::CorruptPublic);
        }
        let header = parts.header;
        let plain = self.authenticate(header_region, &header, sealed, signature)?;
        let model: SecretModel =
            postcard::from_bytes(&plain).map_err(|_| TeeError::CorruptSecret)?;
        drop(plain);
        let session = self.session(header_region, header, model)?;
        let reply = TeeToHost::Opened {
            layers: session.info.len() as u32,
            resident_bytes: session.resident,
        };
        self.state = State::Ready(Box::new(session));
        Ok(reply)
    }

    /// Checks the vendor's signature and opens the sealed secret: its plaintext.
    #[cfg(not(feature = "fuzzing"))]
    fn authenticate(
        &self,
        header_region: &[u8],
        header: &PublicHeader,
        sealed: &[u8],
        signature: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TeeError> {
        // Who may speak to the core: a vendor pinned at provisioning, over exactly these
        // bytes.
        let sig = SignatureFile::decode(signature)?;
        if !self.device.pinned.contains(&sig.vendor) {
            return Err(TeeError::UntrustedVendor);
        }
        crypto::verify_signature(
            &sig.vendor,
            &format::signed_message(header_region, sealed),
            &sig.signature,
        )?;
        if sealed.len() >= 8 && &sealed[..8] == b"SNSEALv1" {
            return Err(TeeError::UnsupportedVersion);
        }
        if sealed.len() < 8 + 32 + 16 || &sealed[..8] != SECRET_MAGIC {
            return Err(TeeError::CorruptSecret);
        }
        let mut info = HPKE_INFO.to_vec();
        info.extend_from_slice(&header.package_id);
        crypto::hpke_open(
            &self.device.secret,
            &sealed[8..40],
            &info,
            &crypto::sha256(header_region),
            &sealed[40..],
        )
    }

    /// Fuzzing builds only (like rustls' fuzzing provider): the sealed secret is its own
    /// plaintext after the magic and nothing is signed, so a fuzzer reaches everything past
    /// the cryptography. Never in a build of the workspace (the fuzz harness is a
    /// workspace of its own).
    #[cfg(feature = "fuzzing")]
    fn authenticate(
        &self,
        _header_region: &[u8],
        _header: &PublicHeader,
        sealed: &[u8],
        _signature: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TeeError> {
        if sealed.len() < 8 || &sealed[..8] != SECRET_MAGIC {
            return Err(TeeError::CorruptSecret);
        }
        Ok(Zeroizing::new(sealed[8..].to_vec()))
    }

    fn session(
        &mut self,
        header_region: &[u8],
        header: PublicHeader,
        model: SecretModel,
    ) -> Result<Session, TeeError> {
        let bad = TeeError::CorruptSecret;
        if model.scheme != header.scheme
            || model.package_id != header.package_id
            || model.layers.len() != header.layers.len()
        {
            return Err(bad);
        }
        let g = &model.graph;
        validate_chunks(&model.chunks)?;
        // A trace observes every node's value, so nothing runs fused behind its back (a
        // fused activation leaves no pre-activation tensor to show). Release builds have
        // no observer and always fuse.
        #[cfg(feature = "debug-trace")]
        let may_fuse = self.observer.is_none();
        #[cfg(not(feature = "debug-trace"))]
        let may_fuse = true;
        let mut layer_of = vec![None; g.nodes.len()];
        let mut kept_of = vec![None; g.nodes.len()];
        for (k, l) in model.layers.iter().enumerate() {
            let slot = layer_of.get_mut(l.node as usize).ok_or(bad)?;
            if slot.replace(k as u32).is_some() {
                return Err(bad);
            }
        }
        for (k, kl) in model.kept.iter().enumerate() {
            let slot = kept_of.get_mut(kl.node as usize).ok_or(bad)?;
            if slot.replace(k as u32).is_some()
                || layer_of[kl.node as usize].is_some()
                || kl.chunk as usize >= model.chunks.len()
            {
                return Err(bad);
            }
        }
        validate_graph(g, &layer_of, &kept_of)?;
        if g.inputs.len() != header.inputs.len() || g.outputs.len() != header.outputs.len() {
            return Err(bad);
        }
        for (&v, (_, shape)) in g.inputs.iter().zip(&header.inputs) {
            if &g.values[v].shape != shape {
                return Err(bad);
            }
        }
        let last_use = g.last_uses();
        // Per layer: shapes against the public part, restoration parameters in range.
        let mut info = Vec::with_capacity(model.layers.len());
        for (k, (l, p)) in model.layers.iter().zip(&header.layers).enumerate() {
            let node = &g.nodes[l.node as usize];
            let linear = match (&node.op, &p.kind) {
                (Op::Conv(a), LinearKind::Conv(b)) => {
                    a.kernel == b.kernel
                        && a.stride == b.stride
                        && a.dilation == b.dilation
                        && a.pads == b.pads
                }
                (Op::ConvTranspose(a), LinearKind::ConvTranspose(b)) => {
                    a.kernel == b.kernel && a.stride == b.stride && a.pads == b.pads
                }
                (Op::MatMul, LinearKind::MatMul) => true,
                _ => false,
            };
            if !linear || node.outputs.len() != 1 || node.inputs.is_empty() {
                return Err(bad);
            }
            let real_in = g.shape(node.inputs[0]).to_vec();
            let out = node.outputs[0];
            let real_out = g.shape(out).to_vec();
            // Ranks first: everything below indexes these shapes.
            if real_in.is_empty()
                || real_out.is_empty()
                || real_in.len() != p.input_shape.len()
                || real_out.len() != p.output_shape.len()
            {
                return Err(bad);
            }
            let axis = p.kind.channel_axis(real_out.len());
            let (n, m) = (real_out[axis], p.output_shape[axis]);
            let c = real_in[p.kind.channel_axis(real_in.len())];
            if format::checked_numel(&real_in) != format::checked_numel(&p.input_shape)
                || l.bias.as_ref().is_some_and(|b| b.len() != n)
            {
                return Err(bad);
            }
            let geo = match (&l.restore, header.scheme) {
                (LayerRestore::Paper { transform, fixed }, Scheme::ShadowNet) => {
                    if !paper::validate(transform, m, n, c)
                        || fixed.is_some_and(|f| {
                            f.mask as usize >= model.chunks.len()
                                || f.correction as usize >= model.chunks.len()
                        })
                    {
                        return Err(bad);
                    }
                    None
                }
                (LayerRestore::Exact(e), Scheme::Hardened) => {
                    let perm_ok = e.in_perm.is_empty()
                        || (e.in_perm.len() == c && paper::is_permutation(&e.in_perm));
                    if !perm_ok
                        || !(2..=31).contains(&e.act_bits)
                        || e.bound >= 1 << 60
                        || !groups_ok(&e.groups, m, n)
                        || matches!(&p.kind, LinearKind::Conv(cv) if cv.groups > 1 && !e.in_perm.is_empty())
                    {
                        return Err(bad);
                    }
                    Some(Geometry::new(
                        &p.kind,
                        &p.input_shape,
                        &p.weight.shape,
                        &p.output_shape,
                    ))
                }
                _ => return Err(bad),
            };
            // An activation that alone reads this output runs inside the restoring pass.
            let fused = g
                .nodes
                .get(l.node as usize + 1)
                .filter(|_| may_fuse)
                .and_then(|next| match next.op {
                    Op::Act(a)
                        if next.inputs[..] == [out]
                            && last_use[out] == l.node as usize + 1
                            && layer_of[l.node as usize + 1].is_none()
                            && kept_of[l.node as usize + 1].is_none()
                            && !g.outputs.contains(&out) =>
                    {
                        Some((a, next.outputs[0]))
                    }
                    _ => None,
                });
            let (value, resume) = match fused {
                Some((_, v)) => (v, l.node as usize + 2),
                None => (out, l.node as usize + 1),
            };
            info.push(LayerInfo {
                node: l.node as usize,
                real_shape: g.shape(value).to_vec(),
                value,
                act: fused.map(|(a, _)| a),
                resume,
                geo,
                prefetch: Vec::new(),
                forward: None,
            });
            let _ = k;
        }
        // What each stretch of trusted nodes needs streamed in, asked for ahead of time.
        let mut prefetch_begin = Vec::new();
        let first = info.first().map_or(g.nodes.len(), |i| i.node);
        segment_chunks(&model, &layer_of, &kept_of, 0, first, &mut prefetch_begin);
        for k in 0..info.len() {
            let mut ids = Vec::new();
            match &model.layers[k].restore {
                LayerRestore::Paper { fixed: Some(f), .. } => {
                    ids.push(ChunkId::Secret(f.correction))
                }
                LayerRestore::Paper { .. } => {}
                LayerRestore::Exact(_) => ids.push(ChunkId::PoolBody(k as u32)),
            }
            let end = info.get(k + 1).map_or(g.nodes.len(), |i| i.node);
            segment_chunks(&model, &layer_of, &kept_of, info[k].resume, end, &mut ids);
            // Paper: a value only the next outsourced layer reads goes straight into it.
            if let (Some(next), Scheme::ShadowNet, true) = (
                layer_of.get(info[k].resume).copied().flatten(),
                header.scheme,
                may_fuse,
            ) {
                let nn = &g.nodes[info[k].resume];
                let v = info[k].value;
                let axis_ok = info[k].real_shape.len() == 4
                    || paper::input_perm(paper_transform(&model, next)).is_none();
                if nn.inputs.first() == Some(&v)
                    && last_use[v] == info[k].resume
                    && !g.outputs.contains(&v)
                    && axis_ok
                {
                    info[k].forward = Some(next);
                }
            }
            info[k].prefetch = ids;
        }
        let pkg_key = crypto::derive(
            self.device.secret.as_ref(),
            &model.root.0,
            &[b"shadownet/package-key/v3", &crypto::sha256(header_region)],
        );
        let counters = match header.scheme {
            Scheme::ShadowNet => None,
            Scheme::Hardened => Some(self.counters(&pkg_key)?),
        };
        let resident = resident_bytes(&model) as u64;
        let keep_open = keep_open(
            &model,
            &header,
            &info,
            &prefetch_begin,
            self.platform.memory_budget(),
            resident as usize,
        );
        Ok(Session {
            header,
            model,
            layer_of,
            kept_of,
            last_use,
            info,
            prefetch_begin,
            pkg_key,
            counters,
            resident,
            keep_open,
            opened: BTreeMap::new(),
            spare: Vec::new(),
        })
    }

    /// The package's counters (created on first use, each in a fresh random epoch).
    fn counters(&mut self, pkg_key: &[u8; 32]) -> Result<Counters, TeeError> {
        let consumed = *crypto::derive(pkg_key, b"", &[b"counter/consumed"]);
        let issued = *crypto::derive(pkg_key, b"", &[b"counter/issued"]);
        let mut epoch = None;
        for name in [&consumed, &issued] {
            match self.platform.read_counter(name) {
                Ok(c) => {
                    if name == &consumed {
                        epoch = Some(c.epoch);
                    }
                }
                Err(PlatformError::NotFound) => {
                    let mut e = [0u8; 16];
                    self.platform.random(&mut e).map_err(|_| TeeError::Random)?;
                    self.platform
                        .create_counter(name, e)
                        .map_err(|_| TeeError::Storage)?;
                    if name == &consumed {
                        epoch = Some(e);
                    }
                }
                Err(_) => return Err(TeeError::Storage),
            }
        }
        Ok((consumed, issued, epoch.ok_or(TeeError::Storage)?))
    }

    // ---------------------------------------------------------------------------------
    // Inference.

    fn begin(
        &mut self,
        mut s: Box<Session>,
        inputs: Vec<Tensor>,
        pool_entry: Option<PoolEntryRef>,
        allow_slow: bool,
    ) -> Result<TeeToHost, TeeError> {
        let g = &s.model.graph;
        if inputs.len() != g.inputs.len() {
            return Err(TeeError::InputCount);
        }
        let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
        for (i, (&id, t)) in g.inputs.iter().zip(inputs).enumerate() {
            if t.shape != g.values[id].shape
                || Some(t.data.len()) != format::checked_numel(&t.shape)
            {
                return Err(TeeError::InputShape { index: i as u32 });
            }
            vals[id] = Some(t);
        }
        let onetime = match (s.header.scheme, &s.counters) {
            (Scheme::ShadowNet, _) => None,
            (Scheme::Hardened, Some((consumed, _, epoch))) => {
                let mut online = Key32([0; 32]);
                self.platform
                    .random(&mut online.0)
                    .map_err(|_| TeeError::Random)?;
                Some(match pool_entry {
                    Some(e) => {
                        let (index, entry_epoch) = pool::read_prefix(&e.prefix)?;
                        if &entry_epoch != epoch {
                            return Err(TeeError::PoolEpoch);
                        }
                        let c = self
                            .platform
                            .read_counter(consumed)
                            .map_err(|_| TeeError::Storage)?;
                        if c.epoch != *epoch {
                            return Err(TeeError::PoolEpoch);
                        }
                        if index < c.value {
                            return Err(TeeError::PoolReplayed {
                                index,
                                next: c.value,
                            });
                        }
                        let key = crypto::derive(s.pkg_key.as_ref(), epoch, &[b"pool/header"]);
                        let h = pool::open_header(&key, index, epoch, &e.header)?;
                        if h.folds.len() != s.info.len()
                            || h.folds
                                .iter()
                                .zip(&s.info)
                                .any(|(f, i)| i.geo.is_some_and(|geo| f.len() != geo.k_total()))
                        {
                            return Err(TeeError::PoolCorrupt);
                        }
                        // Spent before use: a crash mid-inference must not allow a reuse.
                        self.platform
                            .advance_counter(consumed, index + 1)
                            .map_err(|_| TeeError::Storage)?;
                        OneTime {
                            mask_key: h.mask_key,
                            correction_key: h.correction_key,
                            check_key: h.check_key,
                            folds: Some(h.folds),
                            online,
                        }
                    }
                    None if allow_slow => {
                        let mut keys = [Key32([0; 32]), Key32([0; 32]), Key32([0; 32])];
                        for k in &mut keys {
                            self.platform
                                .random(&mut k.0)
                                .map_err(|_| TeeError::Random)?;
                        }
                        let [mask_key, correction_key, check_key] = keys;
                        OneTime {
                            mask_key,
                            correction_key,
                            check_key,
                            folds: None,
                            online,
                        }
                    }
                    None => return Err(TeeError::PoolEmpty),
                })
            }
            (Scheme::Hardened, None) => return Err(TeeError::CorruptSecret),
        };
        let run = Box::new(Run {
            vals,
            next: 0,
            onetime,
            chunks: BTreeMap::new(),
            forwarded: None,
            spare: core::mem::take(&mut s.spare),
        });
        let ids = still_sealed(&s, &s.prefetch_begin);
        if !ids.is_empty() {
            self.state = State::Chunks(s, run, ids.clone());
            return Ok(TeeToHost::NeedChunks { ids });
        }
        self.advance(s, run)
    }

    /// Runs trusted nodes until the next outsourced layer or the end of the graph.
    fn advance(&mut self, s: Box<Session>, mut run: Box<Run>) -> Result<TeeToHost, TeeError> {
        let g = &s.model.graph;
        while run.next < g.nodes.len() {
            let k = run.next;
            let node = &g.nodes[k];
            if let Some(layer) = s.layer_of[k] {
                let (input, pending) = prepare(&s, &mut run, layer)?;
                let prefetch = still_sealed(&s, &s.info[layer as usize].prefetch);
                self.state = State::Linear(s, run, layer, pending);
                return Ok(TeeToHost::RunLinear {
                    layer,
                    input,
                    prefetch,
                });
            }
            let outs = {
                let kept = match s.kept_of[k] {
                    Some(i) => {
                        let id = ChunkId::Secret(s.model.kept[i as usize].chunk);
                        let ts: Vec<Tensor> = postcard::from_bytes(chunk(&s, &run, id)?)
                            .map_err(|_| TeeError::CorruptSecret)?;
                        release(&mut run, &id);
                        if ts.len() + 1 != node.inputs.len() {
                            return Err(TeeError::CorruptSecret);
                        }
                        for (t, &v) in ts.iter().zip(&node.inputs[1..]) {
                            if t.shape != g.values[v].shape
                                || Some(t.data.len()) != format::checked_numel(&t.shape)
                            {
                                return Err(TeeError::CorruptSecret);
                            }
                        }
                        Some(ts)
                    }
                    None => None,
                };
                let mut xs: Vec<&Tensor> = Vec::with_capacity(node.inputs.len());
                for (j, &i) in node.inputs.iter().enumerate() {
                    let t = match (&kept, j) {
                        (Some(ts), j) if j > 0 => &ts[j - 1],
                        _ => fetch(g, &run.vals, i)?,
                    };
                    xs.push(t);
                }
                shadownet_kernels::eval("", &node.op, &xs).map_err(|_| TeeError::Kernel)?
            };
            #[cfg(feature = "debug-trace")]
            if let Some(f) = self.observer.as_mut() {
                let refs: Vec<&Tensor> = outs.iter().collect();
                f(k, None, &refs);
            }
            for (&o, t) in node.outputs.iter().zip(outs) {
                run.vals[o] = Some(t);
            }
            free_dead(g, &s.last_use, k, &mut run.vals);
            run.next = k + 1;
        }
        let mut outputs = Vec::with_capacity(g.outputs.len());
        for &o in &g.outputs {
            outputs.push(match &g.values[o].data {
                Some(c) => c.clone(),
                None => run.vals[o].take().ok_or(TeeError::CorruptSecret)?,
            });
        }
        let mut s = s;
        s.spare = core::mem::take(&mut run.spare);
        self.state = State::Ready(s);
        Ok(TeeToHost::Done { outputs })
    }

    #[allow(clippy::too_many_arguments)]
    fn linear_done(
        &mut self,
        mut s: Box<Session>,
        mut run: Box<Run>,
        want: u32,
        pending: Pending,
        layer: u32,
        output: PayloadRef<'_>,
        chunks: &[&[u8]],
    ) -> Result<TeeToHost, TeeError> {
        if layer != want {
            return Err(TeeError::WrongLayer { layer });
        }
        let k = layer as usize;
        let ids = still_sealed(&s, &s.info[k].prefetch);
        // The pool entry's corrections stay where the host put them (read once, in the
        // restoring pass); everything else is opened into the core's memory.
        let body = store_chunks(&mut s, &mut run, &ids, chunks)?;
        let info = &s.info[k];
        let pl = &s.header.layers[k];
        let sl = &s.model.layers[k];
        let g = &s.model.graph;
        let y = match (&sl.restore, output, pending) {
            (
                LayerRestore::Paper { transform, fixed },
                PayloadRef::F32((shape, bytes)),
                Pending::Paper,
            ) => {
                if shape != pl.output_shape
                    || format::checked_numel(&shape).and_then(|n| n.checked_mul(4))
                        != Some(bytes.len())
                {
                    return Err(TeeError::BadResult { layer });
                }
                let correction = match fixed {
                    Some(f) => Some(
                        words::<f32>(chunk(&s, &run, ChunkId::Secret(f.correction))?)
                            .map_err(|_| TeeError::CorruptSecret)?,
                    ),
                    None => None,
                };
                if correction
                    .as_ref()
                    .is_some_and(|c| Some(c.len()) != format::checked_numel(&info.real_shape))
                {
                    return Err(TeeError::CorruptSecret);
                }
                let axis = pl.kind.channel_axis(shape.len());
                let next_mask_id =
                    info.forward
                        .and_then(|next| match &s.model.layers[next as usize].restore {
                            LayerRestore::Paper { fixed: Some(f), .. } => {
                                Some(ChunkId::Secret(f.mask))
                            }
                            _ => None,
                        });
                let next_mask = match next_mask_id {
                    Some(id) => Some(
                        words::<u16>(chunk(&s, &run, id)?).map_err(|_| TeeError::CorruptSecret)?,
                    ),
                    None => None,
                };
                let forward = info.forward.map(|next| paper::Forward {
                    transform: paper_transform(&s.model, next),
                    mask: next_mask.as_deref(),
                });
                if let (Some(m), Some(next)) = (&next_mask, info.forward) {
                    if Some(m.len())
                        != format::checked_numel(&s.header.layers[next as usize].input_shape)
                    {
                        return Err(TeeError::CorruptSecret);
                    }
                }
                let restored = paper::restore_fused(
                    transform,
                    bytes,
                    &shape,
                    &info.real_shape_pre_act(g, sl.node),
                    axis,
                    correction.as_deref(),
                    if fixed.is_some() {
                        None
                    } else {
                        sl.bias.as_deref()
                    },
                    info.act,
                    forward,
                )
                .map(|mut t| {
                    t.shape = info.real_shape.clone();
                    t
                })
                .map_err(|_| TeeError::NonFinite { layer });
                // Streamed chunks' buffers go back for the next ones to be opened into;
                // kept-open chunks stay where they are.
                drop((correction, next_mask));
                for id in fixed
                    .map(|f| ChunkId::Secret(f.correction))
                    .iter()
                    .chain(&next_mask_id)
                {
                    release(&mut run, id);
                }
                restored?
            }
            (
                LayerRestore::Exact(e),
                PayloadRef::Ring((shape, y)),
                Pending::Exact {
                    chk,
                    g: gsum,
                    scale,
                },
            ) => {
                let geo = info.geo.ok_or(TeeError::CorruptSecret)?;
                if shape != pl.output_shape
                    || format::checked_numel(&shape).and_then(|n| n.checked_mul(8)) != Some(y.len())
                {
                    return Err(TeeError::BadResult { layer });
                }
                let ot = run.onetime.as_ref().ok_or(TeeError::UnexpectedMessage)?;
                let u = exact::field_elements(
                    &mut Keystream::new(&ot.check_key.0, k as u64, exact::DOMAIN_CHECK),
                    geo.m(),
                );
                let plain_c;
                let (correction, f) = match &ot.folds {
                    Some(folds) => {
                        let body = body.ok_or(TeeError::BadChunk)?;
                        if body.len() != y.len() {
                            return Err(TeeError::BadChunk);
                        }
                        (
                            exact::Correction::Sealed {
                                bytes: body,
                                key: &ot.correction_key.0,
                                stream: k as u64,
                            },
                            folds[k].clone(),
                        )
                    }
                    None => {
                        // Slow mode: made here from the public weights.
                        let blob = run
                            .chunks
                            .remove(&ChunkId::PublicWeight(layer))
                            .ok_or(TeeError::BadChunk)?;
                        let w = int_weights(&s, &blob, layer)?;
                        plain_c = exact::correction(
                            &pl.kind,
                            &pl.input_shape,
                            &pl.output_shape,
                            &w,
                            &ot.mask_key.0,
                            k as u64,
                        )?;
                        (
                            exact::Correction::Plain(&plain_c.data),
                            exact::fold(&geo, &w, &u),
                        )
                    }
                };
                let expected = exact::expected_sum(&f, &gsum);
                let real_pre = info.real_shape_pre_act(g, sl.node);
                let mut t = exact::restore(
                    e,
                    &geo,
                    layer,
                    y,
                    correction,
                    &u,
                    &chk,
                    expected,
                    scale,
                    &real_pre,
                    sl.bias.as_deref(),
                    info.act,
                )?;
                t.shape = info.real_shape.clone();
                t
            }
            _ => return Err(TeeError::BadResult { layer }),
        };
        // (A forwarded y is already the next layer's masked input: not a value to show.)
        #[cfg(feature = "debug-trace")]
        if let (Some(f), None) = (self.observer.as_mut(), info.forward) {
            if info.act.is_some() {
                f(info.node, Some(layer), &[]);
            }
            f(
                info.node + usize::from(info.act.is_some()),
                (info.act.is_none()).then_some(layer),
                &[&y],
            );
        }
        free_dead(g, &s.last_use, info.node, &mut run.vals);
        if info.act.is_some() {
            free_dead(g, &s.last_use, info.node + 1, &mut run.vals);
        }
        run.next = info.resume;
        match info.forward {
            Some(next) => run.forwarded = Some((next, y)),
            None => run.vals[info.value] = Some(y),
        }
        self.advance(s, run)
    }

    // ---------------------------------------------------------------------------------
    // Precompute.

    fn precompute(&mut self, s: Box<Session>, count: u32) -> Result<TeeToHost, TeeError> {
        let Some((_, issued, _)) = s.counters else {
            return Err(TeeError::UnexpectedMessage);
        };
        if count == 0 || count > MAX_PRECOMPUTE {
            return Err(TeeError::TooLarge);
        }
        let c = self
            .platform
            .read_counter(&issued)
            .map_err(|_| TeeError::Storage)?;
        // Reserve the indices before handing anything out, so none is issued twice.
        let end = c
            .value
            .checked_add(count as u64)
            .ok_or(TeeError::TooLarge)?;
        self.platform
            .advance_counter(&issued, end)
            .map_err(|_| TeeError::Storage)?;
        let p = Precomp {
            left: count,
            index: c.value,
            layer: 0,
            header: None,
        };
        self.precompute_start(s, p)
    }

    fn precompute_start(&mut self, s: Box<Session>, mut p: Precomp) -> Result<TeeToHost, TeeError> {
        let (_, _, epoch) = s.counters.ok_or(TeeError::UnexpectedMessage)?;
        let mut keys = [Key32([0; 32]), Key32([0; 32]), Key32([0; 32])];
        for k in &mut keys {
            self.platform
                .random(&mut k.0)
                .map_err(|_| TeeError::Random)?;
        }
        let [mask_key, correction_key, check_key] = keys;
        p.header = Some(PoolHeader {
            index: p.index,
            epoch,
            mask_key,
            correction_key,
            check_key,
            folds: Vec::with_capacity(s.info.len()),
        });
        p.layer = 0;
        let index = p.index;
        self.state = State::PreStored(s, p);
        Ok(TeeToHost::PoolPart {
            index,
            part: PoolPart::Prefix(pool::prefix(index, &epoch).to_vec()),
        })
    }

    fn precompute_next(&mut self, s: Box<Session>, mut p: Precomp) -> Result<TeeToHost, TeeError> {
        if (p.layer as usize) < s.info.len() {
            let ids = vec![ChunkId::PublicWeight(p.layer)];
            self.state = State::PreWeights(s, p);
            return Ok(TeeToHost::NeedChunks { ids });
        }
        if let Some(h) = p.header.take() {
            let (_, _, epoch) = s.counters.ok_or(TeeError::UnexpectedMessage)?;
            let key = crypto::derive(s.pkg_key.as_ref(), &epoch, &[b"pool/header"]);
            let mut nonce = [0u8; 24];
            self.platform
                .random(&mut nonce)
                .map_err(|_| TeeError::Random)?;
            let sealed = pool::seal_header(&key, nonce, &h)?;
            let index = p.index;
            p.left -= 1;
            p.index += 1;
            self.state = State::PreStored(s, p);
            return Ok(TeeToHost::PoolPart {
                index,
                part: PoolPart::Header(sealed),
            });
        }
        if p.left == 0 {
            self.state = State::Ready(s);
            return Ok(TeeToHost::PoolDone);
        }
        self.precompute_start(s, p)
    }

    fn precompute_layer(
        &mut self,
        s: Box<Session>,
        mut p: Precomp,
        chunks: Vec<Vec<u8>>,
    ) -> Result<TeeToHost, TeeError> {
        let k = p.layer as usize;
        let [blob] = <[Vec<u8>; 1]>::try_from(chunks).map_err(|_| TeeError::BadChunk)?;
        let pl = &s.header.layers[k];
        let PublicWeight::I32(w) = format::decode_weight(pl, &blob)? else {
            return Err(TeeError::CorruptPublic);
        };
        drop(blob);
        let geo = s.info[k].geo.ok_or(TeeError::CorruptSecret)?;
        let h = p.header.as_mut().ok_or(TeeError::UnexpectedMessage)?;
        let mut c = exact::correction(
            &pl.kind,
            &pl.input_shape,
            &pl.output_shape,
            &w,
            &h.mask_key.0,
            k as u64,
        )?
        .data;
        let u = exact::field_elements(
            &mut Keystream::new(&h.check_key.0, k as u64, exact::DOMAIN_CHECK),
            geo.m(),
        );
        h.folds.push(exact::fold(&geo, &w, &u));
        Keystream::new(&h.correction_key.0, k as u64, exact::DOMAIN_CORRECTION).xor_words(&mut c);
        let index = p.index;
        let layer = p.layer;
        p.layer += 1;
        self.state = State::PreStored(s, p);
        Ok(TeeToHost::PoolPart {
            index,
            part: PoolPart::Body {
                layer,
                bytes: pool::word_bytes(&c),
            },
        })
    }
}

impl LayerInfo {
    /// The shape of the layer's own output (before the fused activation, same shape).
    fn real_shape_pre_act(&self, g: &Graph, node: u32) -> Vec<usize> {
        g.shape(g.nodes[node as usize].outputs[0]).to_vec()
    }
}

/// The tensor for the accelerator for outsourced layer `layer`, and what the restore of
/// its result will need.
fn prepare(s: &Session, run: &mut Run, layer: u32) -> Result<(Payload, Pending), TeeError> {
    let k = layer as usize;
    let g = &s.model.graph;
    let node = &g.nodes[s.info[k].node];
    let xid = node.inputs[0];
    let pl = &s.header.layers[k];
    match &s.model.layers[k].restore {
        LayerRestore::Paper { transform, fixed } => {
            if let Some((l, t)) = run.forwarded.take() {
                if l != layer {
                    return Err(TeeError::CorruptSecret);
                }
                return Ok((Payload::F32(t), Pending::Paper));
            }
            // An input nothing after this layer reads is masked where it lies.
            let x = if s.last_use[xid] == s.info[k].node
                && g.values[xid].data.is_none()
                && !g.outputs.contains(&xid)
            {
                run.vals[xid].take().ok_or(TeeError::CorruptSecret)?
            } else {
                fetch(g, &run.vals, xid)?.clone()
            };
            let mask = match fixed {
                Some(f) => Some(
                    words::<u16>(chunk(s, run, ChunkId::Secret(f.mask))?)
                        .map_err(|_| TeeError::CorruptSecret)?,
                ),
                None => None,
            };
            if mask
                .as_ref()
                .is_some_and(|m| Some(m.len()) != format::checked_numel(&pl.input_shape))
            {
                return Err(TeeError::CorruptSecret);
            }
            let input = paper::prepare_input(transform, mask.as_deref(), x);
            drop(mask);
            if let Some(f) = fixed {
                release(run, &ChunkId::Secret(f.mask));
            }
            Ok((Payload::F32(input), Pending::Paper))
        }
        LayerRestore::Exact(e) => {
            let geo = s.info[k].geo.ok_or(TeeError::CorruptSecret)?;
            let ot = run.onetime.as_ref().ok_or(TeeError::CorruptSecret)?;
            let chk = CheckVectors::draw(
                &geo,
                &mut Keystream::new(&ot.online.0, k as u64, exact::DOMAIN_CHECK),
            );
            let x = fetch(g, &run.vals, xid)?;
            let m = exact::mask_input(e, &geo, &pl.input_shape, x, &ot.mask_key.0, k as u64, &chk)?;
            Ok((
                Payload::Ring(m.x),
                Pending::Exact {
                    chk,
                    g: m.g,
                    scale: m.scale,
                },
            ))
        }
    }
}

/// The integer weights of public layer `layer` from its blob (slow mode).
fn int_weights(s: &Session, blob: &[u8], layer: u32) -> Result<IntTensor, TeeError> {
    match format::decode_weight(&s.header.layers[layer as usize], blob)? {
        PublicWeight::I32(w) => Ok(w),
        PublicWeight::F32(_) => Err(TeeError::CorruptPublic),
    }
}

fn paper_transform(model: &SecretModel, layer: u32) -> &format::PaperTransform {
    match &model.layers[layer as usize].restore {
        LayerRestore::Paper { transform, .. } => transform,
        // Sessions mix schemes never: `session` checks every layer against the scheme.
        LayerRestore::Exact(_) => &EMPTY_TRANSFORM,
    }
}

static EMPTY_TRANSFORM: format::PaperTransform = format::PaperTransform::FakePairs {
    real_pos: Vec::new(),
    fake_pos: Vec::new(),
    scale: Vec::new(),
    fake_scale: Vec::new(),
};

/// Opens and files the chunks the host sent for `ids` (same order), except a pool entry's
/// body, which is returned as it lies (its words are read once, by the restoring pass).
fn store_chunks<'a>(
    s: &mut Session,
    run: &mut Run,
    ids: &[ChunkId],
    chunks: &[&'a [u8]],
) -> Result<Option<&'a [u8]>, TeeError> {
    if chunks.len() != ids.len() {
        return Err(TeeError::BadChunk);
    }
    let slow = run.onetime.as_ref().is_some_and(|o| o.folds.is_none());
    let mut body = None;
    for (&id, &bytes) in ids.iter().zip(chunks) {
        if bytes.len() > format::MAX_CHUNK {
            return Err(TeeError::TooLarge);
        }
        let opened = match id {
            ChunkId::Secret(i) => {
                let meta = s.model.chunks.get(i as usize).ok_or(TeeError::BadChunk)?;
                if bytes.len() as u64 != meta.len {
                    return Err(TeeError::BadChunk);
                }
                let mut buf = take_buffer(&mut run.spare, bytes.len());
                crypto::open_chunk_into(
                    &s.model.chunk_key.0,
                    i as u64,
                    &chunk_aad(&s.model.package_id),
                    bytes,
                    &mut buf,
                )?;
                buf
            }
            // Checked against the public header's hash where decoded.
            ChunkId::PublicWeight(_) => Zeroizing::new(bytes.to_vec()),
            // In slow mode the host has no entry: it sends the layer's weights instead.
            ChunkId::PoolBody(l) if slow => {
                run.chunks
                    .insert(ChunkId::PublicWeight(l), Zeroizing::new(bytes.to_vec()));
                continue;
            }
            ChunkId::PoolBody(_) => {
                body = Some(bytes);
                continue;
            }
        };
        match id {
            ChunkId::Secret(i) if s.keep_open.get(i as usize) == Some(&true) => {
                s.opened.insert(i, opened);
            }
            _ => {
                run.chunks.insert(id, opened);
            }
        }
    }
    Ok(body)
}

/// A buffer for a chunk of about `len` bytes from the used ones: the smallest that holds
/// it, else the largest (grown when filled), else a new one.
fn take_buffer(spare: &mut Vec<Zeroizing<Vec<u8>>>, len: usize) -> Zeroizing<Vec<u8>> {
    let fits = spare
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i);
    let pick = fits.or_else(|| {
        spare
            .iter()
            .enumerate()
            .max_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)
    });
    match pick {
        Some(i) => spare.swap_remove(i),
        None => Zeroizing::new(Vec::new()),
    }
}

/// Done with a streamed chunk: its buffer waits for the next one. (Freeing buffers that
/// held under half their capacity lowered no model's trusted peak and cost MobileNet-v1
/// about 2 ms of trusted time per inference, zeroising and allocating again.)
fn release(run: &mut Run, id: &ChunkId) {
    if let Some(b) = run.chunks.remove(id) {
        run.spare.push(b);
    }
}

/// The chunks of `ids` the core does not hold open: what the host must send.
fn still_sealed(s: &Session, ids: &[ChunkId]) -> Vec<ChunkId> {
    ids.iter()
        .filter(|id| !matches!(id, ChunkId::Secret(i) if s.opened.contains_key(i)))
        .copied()
        .collect()
}

/// An opened chunk: kept open in the session, or streamed in for this step.
fn chunk<'a>(s: &'a Session, run: &'a Run, id: ChunkId) -> Result<&'a [u8], TeeError> {
    if let ChunkId::Secret(i) = id {
        if let Some(b) = s.opened.get(&i) {
            return Ok(b);
        }
    }
    run.chunks
        .get(&id)
        .map(|b| b.as_slice())
        .ok_or(TeeError::BadChunk)
}

/// Which chunks of `secret.chunks` stay open across inferences: in the order an inference
/// first needs them, as many as fit in half the platform's budget after the resident model
/// and a bound on one inference's working set (the largest layer's tensors and chunks,
/// four times over for the live values around it and the buffers in flight). The other
/// half is for what the core cannot see from here: the decoded secret's own structures,
/// the platform's buffers (ResNet-404 peaked at 16.6 MiB with the whole budget counted).
fn keep_open(
    model: &SecretModel,
    header: &PublicHeader,
    info: &[LayerInfo],
    prefetch_begin: &[ChunkId],
    budget: usize,
    resident: usize,
) -> Vec<bool> {
    let plain_len = |i: u32| {
        model
            .chunks
            .get(i as usize)
            .map_or(0, |c| (c.len as usize).saturating_sub(crypto::TAG_LEN))
    };
    let secret_bytes = |ids: &[ChunkId]| -> usize {
        ids.iter()
            .map(|id| match id {
                ChunkId::Secret(i) => plain_len(*i),
                _ => 0,
            })
            .sum()
    };
    let mut working = secret_bytes(prefetch_begin);
    for (l, i) in header.layers.iter().zip(info) {
        let numel = |s: &[usize]| format::checked_numel(s).unwrap_or(usize::MAX / 64);
        // 8 bytes a value: a ring tensor's (hardened); f32 ones take half, a margin.
        let tensors = 8 * (numel(&l.input_shape) + numel(&l.output_shape) + numel(&i.real_shape));
        working = working.max(tensors.saturating_add(secret_bytes(&i.prefetch)));
    }
    let mut room = (budget / 2)
        .saturating_sub(resident)
        .saturating_sub(working.saturating_mul(4));
    let mut keep = vec![false; model.chunks.len()];
    let order = prefetch_begin
        .iter()
        .chain(info.iter().flat_map(|i| &i.prefetch));
    for id in order {
        if let ChunkId::Secret(i) = *id {
            let n = plain_len(i);
            if keep.get(i as usize) == Some(&false) && n <= room {
                keep[i as usize] = true;
                room -= n;
            }
        }
    }
    keep
}

/// Little-endian words of an opened chunk or a result, read in place where the bytes are
/// aligned for it (the allocators' and the transport's buffers are), else copied.
enum Words<'a, T: zeroize::Zeroize> {
    Borrowed(&'a [T]),
    Owned(Zeroizing<Vec<T>>),
}

impl<T: zeroize::Zeroize> core::ops::Deref for Words<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Words::Borrowed(w) => w,
            Words::Owned(w) => w,
        }
    }
}

trait LeWord: bytemuck::Pod + zeroize::Zeroize {
    fn from_le(b: &[u8]) -> Self;
}

impl LeWord for f32 {
    fn from_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl LeWord for u16 {
    fn from_le(b: &[u8]) -> Self {
        u16::from_le_bytes([b[0], b[1]])
    }
}

fn words<T: LeWord>(b: &[u8]) -> Result<Words<'_, T>, ()> {
    let size = core::mem::size_of::<T>();
    if !b.len().is_multiple_of(size) {
        return Err(());
    }
    #[cfg(target_endian = "little")]
    if let Ok(w) = bytemuck::try_cast_slice(b) {
        return Ok(Words::Borrowed(w));
    }
    Ok(Words::Owned(Zeroizing::new(
        b.chunks_exact(size).map(T::from_le).collect(),
    )))
}

/// Associated data of every chunk of a package's `secret.chunks`.
pub fn chunk_aad(package_id: &[u8; 16]) -> Vec<u8> {
    let mut a = b"shadownet/chunk/v4".to_vec();
    a.extend_from_slice(package_id);
    a
}

/// The chunks the trusted nodes in `from..to` need (kept layers' weights) and, when `to`
/// is an outsourced paper layer with a fixed mask, its mask.
fn segment_chunks(
    model: &SecretModel,
    layer_of: &[Option<u32>],
    kept_of: &[Option<u32>],
    from: usize,
    to: usize,
    ids: &mut Vec<ChunkId>,
) {
    for i in kept_of.iter().take(to).skip(from).flatten() {
        ids.push(ChunkId::Secret(model.kept[*i as usize].chunk));
    }
    if let Some(Some(l)) = layer_of.get(to) {
        if let LayerRestore::Paper { fixed: Some(f), .. } = &model.layers[*l as usize].restore {
            ids.push(ChunkId::Secret(f.mask));
        }
    }
}

fn fetch<'a>(g: &'a Graph, vals: &'a [Option<Tensor>], v: usize) -> Result<&'a Tensor, TeeError> {
    g.values[v]
        .data
        .as_ref()
        .or(vals[v].as_ref())
        .ok_or(TeeError::CorruptSecret)
}

fn free_dead(g: &Graph, last: &[usize], k: usize, vals: &mut [Option<Tensor>]) {
    for &i in &g.nodes[k].inputs {
        if last[i] == k && !g.outputs.contains(&i) {
            vals[i] = None;
        }
    }
}

/// Mixing groups that cover every one of the `n` real channels exactly once, read public
/// channels below `m`, and have a coefficient per (real, public) pair.
fn groups_ok(groups: &[format::MixGroup], m: usize, n: usize) -> bool {
    let mut seen = vec![false; n];
    for g in groups {
        if g.coeffs.len() != g.real.len() * g.public.len()
            || g.public.iter().any(|&q| q as usize >= m)
        {
            return false;
        }
        for &r in &g.real {
            match seen.get_mut(r as usize) {
                Some(s) if !*s => *s = true,
                _ => return false,
            }
        }
    }
    seen.iter().all(|&s| s)
}

fn validate_chunks(chunks: &[ChunkMeta]) -> Result<(), TeeError> {
    if chunks
        .iter()
        .any(|c| c.len as usize > format::MAX_CHUNK || c.offset.checked_add(c.len).is_none())
    {
        return Err(TeeError::CorruptSecret);
    }
    Ok(())
}

/// The whole secret graph checked before anything indexes with it: every value id in
/// range, nodes in topological order, every value made once, every node's shapes re-derived
/// by the op's own rules, constants filling their shapes, and the only values without data
/// that no node makes being model inputs or the stripped weights of outsourced and kept
/// layers.
fn validate_graph(
    g: &Graph,
    layer_of: &[Option<u32>],
    kept_of: &[Option<u32>],
) -> Result<(), TeeError> {
    let bad = TeeError::CorruptSecret;
    let n = g.values.len();
    let mut defined = vec![false; n];
    let mut stripped = vec![false; n];
    for v in &g.values {
        format::checked_numel(&v.shape).ok_or(bad)?;
    }
    for &i in &g.inputs {
        *defined.get_mut(i).ok_or(bad)? = true;
    }
    for (i, v) in g.values.iter().enumerate() {
        if let Some(t) = &v.data {
            if t.shape != v.shape || Some(t.data.len()) != format::checked_numel(&t.shape) {
                return Err(bad);
            }
            defined[i] = true;
        }
    }
    for (k, node) in g.nodes.iter().enumerate() {
        if node.outputs.is_empty() || node.inputs.iter().chain(&node.outputs).any(|&v| v >= n) {
            return Err(bad);
        }
        let weights_elsewhere = layer_of[k].is_some() || kept_of[k].is_some();
        for (j, &i) in node.inputs.iter().enumerate() {
            if j > 0 && weights_elsewhere && g.values[i].data.is_none() && !defined[i] {
                stripped[i] = true;
                continue;
            }
            if !defined[i] && !stripped[i] {
                return Err(bad);
            }
        }
        for &o in &node.outputs {
            if defined[o] || stripped[o] {
                return Err(bad);
            }
            defined[o] = true;
        }
        let shapes: Vec<Vec<usize>> = node
            .inputs
            .iter()
            .map(|&i| g.values[i].shape.clone())
            .collect();
        let outs = shadownet_ir::infer_shapes("", &node.op, &shapes).map_err(|_| bad)?;
        if outs.len() != node.outputs.len()
            || outs
                .iter()
                .zip(&node.outputs)
                .any(|(s, &o)| s != &g.values[o].shape)
        {
            return Err(bad);
        }
    }
    if g.outputs.iter().any(|&o| o >= n || !defined[o]) {
        return Err(bad);
    }
    Ok(())
}

/// Bytes the opened model keeps resident: graph constants and restoration parameters.
fn resident_bytes(m: &SecretModel) -> usize {
    let consts: usize = m
        .graph
        .values
        .iter()
        .filter_map(|v| v.data.as_ref())
        .map(|t| t.len() * 4)
        .sum();
    let layers: usize = m
        .layers
        .iter()
        .map(|l| {
            let r = match &l.restore {
                LayerRestore::Paper { transform, .. } => match transform {
                    format::PaperTransform::FakePairs { scale, .. } => scale.len() * 16,
                    format::PaperTransform::GroupShuffle { perm, scale, .. } => {
                        perm.len() * 4 + scale.len() * 4
                    }
                },
                LayerRestore::Exact(e) => {
                    e.groups
                        .iter()
                        .map(|g| g.coeffs.len() * 4 + (g.public.len() + g.real.len()) * 4)
                        .sum::<usize>()
                        + e.in_perm.len() * 4
                }
            };
            r + l.bias.as_ref().map_or(0, |b| b.len() * 4)
        })
        .sum();
    consts + layers + m.chunks.len() * 16
}

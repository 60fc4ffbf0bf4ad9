//! The trusted core's message API: an I/O-free state machine that poisons itself on error.
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};
use shadownet_ir::{Graph, Tensor};

use crate::format::{PublicPackage, Scheme, SecretModel, PUBLIC_MAGIC};
use crate::freivalds;
use crate::onetime::{self, CheckRng};
use crate::platform::Platform;
use crate::restore;
use crate::seal::{self, SealError};

/// Messages from the untrusted host (ECALLs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum HostToTee {
    /// Open a package: the public part's bytes (their hash binds the secret to them) and
    /// the sealed secret.
    Open { public: Vec<u8>, sealed: Vec<u8> },
    /// Start one inference on the model inputs, in model-input order. Hardened packages
    /// take the next sealed mask-pool entry, or compute masks on the spot when the pool is
    /// empty and `allow_slow_masks` is set.
    Begin {
        inputs: Vec<Tensor>,
        pool_entry: Option<Vec<u8>>,
        allow_slow_masks: bool,
    },
    /// Make `count` one-time mask entries (hardened packages), sealed for the host to keep.
    Precompute { count: u32 },
    /// The accelerator's output for the layer last requested.
    LinearDone { layer: u32, output: Tensor },
}

/// Replies to the host (OCALLs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TeeToHost {
    Opened {
        layers: u32,
        /// Bytes the opened model keeps resident in the trusted core.
        resident_bytes: u64,
        /// Peak bytes of activations during one inference.
        peak_activation_bytes: u64,
    },
    /// Run public layer `layer` on `input` and reply with `LinearDone`.
    RunLinear {
        layer: u32,
        input: Tensor,
    },
    Done {
        outputs: Vec<Tensor>,
    },
    /// Sealed mask-pool entries, in the order they must be used.
    Pool {
        entries: Vec<Vec<u8>>,
    },
    Failed {
        error: TeeError,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TeeError {
    /// The sealed secret does not belong to this public part.
    WrongPackage,
    /// Wrong device key, or the package was altered.
    AuthFailed,
    /// A part of the package that authenticated but cannot be decoded or used.
    Corrupt(String),
    /// A message that makes no sense in the current state.
    Protocol(String),
    /// The accelerator's reply is unusable (wrong layer, wrong shape, NaN or infinity).
    BadAccelerator(String),
    /// The model inputs do not match the model.
    BadInput(String),
    /// A nonlinear op failed.
    Kernel(String),
    /// An earlier error left the core unusable; open the package again.
    Poisoned(Box<TeeError>),
    /// An outsourced result failed the randomised integrity check.
    Integrity(String),
    /// No mask-pool entry was given and on-the-spot masks were not allowed.
    PoolEmpty,
    /// A mask-pool entry already used (index below the monotonic counter).
    PoolReplayed { index: u64, expected: u64 },
    /// A mask-pool entry from further ahead (entries skipped or reordered).
    PoolOutOfOrder { index: u64, expected: u64 },
    /// A mask-pool entry that does not open or does not fit the package.
    PoolCorrupt,
    /// The platform's monotonic counter could not be advanced.
    Storage,
}

impl fmt::Display for TeeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TeeError::WrongPackage => write!(f, "the sealed secret belongs to another conversion than this public part (package parts mixed up)"),
            TeeError::AuthFailed => write!(f, "the sealed secret does not open: wrong device key, or the package was altered"),
            TeeError::Corrupt(s) => write!(f, "corrupt package: {s}"),
            TeeError::Protocol(s) => write!(f, "protocol error: {s}"),
            TeeError::BadAccelerator(s) => write!(f, "the accelerator returned an unusable result: {s}"),
            TeeError::BadInput(s) => write!(f, "bad input: {s}"),
            TeeError::Kernel(s) => write!(f, "trusted op failed: {s}"),
            TeeError::Poisoned(e) => write!(f, "trusted core stopped after an earlier error: {e}"),
            TeeError::Integrity(s) => write!(f, "the accelerator's result failed the integrity check: {s}"),
            TeeError::PoolEmpty => write!(f, "the one-time mask pool is empty: run `shadownet precompute PKG --key KEY --count N`, or pass --allow-slow-masks to compute masks on the spot"),
            TeeError::PoolReplayed { index, expected } => write!(f, "mask-pool entry {index} was already used (next is {expected}): replayed entry refused"),
            TeeError::PoolOutOfOrder { index, expected } => write!(f, "mask-pool entry {index} is out of order (next must be {expected}): reordered or skipped entries refused"),
            TeeError::PoolCorrupt => write!(f, "a mask-pool entry does not open: altered, or made for another package or device"),
            TeeError::Storage => write!(f, "the trusted monotonic counter could not be updated"),
        }
    }
}

struct Run {
    vals: Vec<Option<Tensor>>,
    next: usize,
    /// (layer, node) waiting for the accelerator.
    waiting: Option<(u32, usize)>,
    /// Hardened: this inference's mask seed and per-layer mask corrections.
    masks: Option<([u8; 32], Vec<Tensor>)>,
    /// Hardened: the input sent for the layer in flight, for the integrity check.
    sent: Option<Tensor>,
    /// Hardened: source of the check vectors.
    checker: Option<CheckRng>,
}

struct Session {
    model: SecretModel,
    /// Hardened: the public layers (to check results and make masks) and their filter norms.
    public: Option<(PublicPackage, Vec<Vec<f32>>)>,
    /// For each node, the outsourced layer it is, if any.
    layer_of: Vec<Option<u32>>,
    last_use: Vec<usize>,
    run: Option<Run>,
}

/// The trusted core. Holds the device secret key; everything else arrives as messages.
pub struct TrustedCore {
    device_key: [u8; 32],
    platform: Box<dyn Platform>,
    session: Option<Box<Session>>,
    poisoned: Option<TeeError>,
}

fn counter_name(id: &[u8; 16], what: &[u8]) -> Vec<u8> {
    let mut n = id.to_vec();
    n.extend_from_slice(what);
    n
}

impl TrustedCore {
    pub fn new(device_key: [u8; 32], platform: Box<dyn Platform>) -> Self {
        TrustedCore {
            device_key,
            platform,
            session: None,
            poisoned: None,
        }
    }

    /// Handles one message. After any error the core answers every later message with
    /// `Poisoned`, except `Open`, which starts afresh.
    pub fn handle(&mut self, msg: HostToTee) -> TeeToHost {
        if let (Some(e), false) = (&self.poisoned, matches!(msg, HostToTee::Open { .. })) {
            return TeeToHost::Failed {
                error: TeeError::Poisoned(Box::new(e.clone())),
            };
        }
        let res = match msg {
            HostToTee::Open { public, sealed } => self.open(&public, &sealed),
            HostToTee::Begin {
                inputs,
                pool_entry,
                allow_slow_masks,
            } => self.begin(inputs, pool_entry, allow_slow_masks),
            HostToTee::LinearDone { layer, output } => self.linear_done(layer, output),
            HostToTee::Precompute { count } => self.precompute(count),
        };
        match res {
            Ok(m) => m,
            Err(e) => {
                self.session = None;
                self.poisoned = Some(e.clone());
                TeeToHost::Failed { error: e }
            }
        }
    }

    fn open(&mut self, public: &[u8], sealed: &[u8]) -> Result<TeeToHost, TeeError> {
        self.session = None;
        self.poisoned = None;
        let pkg = decode_public(public)?;
        let plain = seal::open(
            &self.device_key,
            &pkg.conversion_id,
            &seal::sha256(public),
            sealed,
        )
        .map_err(|e| match e {
            SealError::Malformed => {
                TeeError::Corrupt("the sealed secret is truncated or not a shadownet secret".into())
            }
            SealError::WrongPackage => TeeError::WrongPackage,
            SealError::AuthFailed => TeeError::AuthFailed,
        })?;
        let model: SecretModel = postcard::from_bytes(&plain)
            .map_err(|e| TeeError::Corrupt(format!("secret does not decode: {e}")))?;
        if model.conversion_id != pkg.conversion_id || model.layers.len() != pkg.layers.len() {
            return Err(TeeError::Corrupt("secret and public part disagree".into()));
        }
        let g = &model.graph;
        let mut layer_of = vec![None; g.nodes.len()];
        for (k, l) in model.layers.iter().enumerate() {
            let node = g
                .nodes
                .get(l.node as usize)
                .ok_or_else(|| TeeError::Corrupt(format!("layer {k} names a missing node")))?;
            let in_shape = node
                .inputs
                .first()
                .map(|&i| g.shape(i).to_vec())
                .unwrap_or_default();
            let out_shape = g.shape(node.outputs[0]).to_vec();
            let p = &pkg.layers[k];
            let axis = p.kind.channel_axis(out_shape.len());
            if p.output_shape != l.public_output
                || !restore::validate(l, &in_shape, &out_shape, axis)
                || layer_of[l.node as usize].replace(k as u32).is_some()
            {
                return Err(TeeError::Corrupt(format!(
                    "layer {k} does not fit its node"
                )));
            }
        }
        check_graph(g)?;
        let mut resident = model.resident_bytes() as u64;
        let mut model = model;
        for (k, l) in model.layers.iter_mut().enumerate() {
            let rank = l.public_output.len();
            restore::fold_bias(l, pkg.layers[k].kind.channel_axis(rank));
        }
        let peak = model.peak_activation_bytes(&pkg.layers) as u64;
        let layers = model.layers.len() as u32;
        let public = match model.scheme {
            Scheme::ShadowNet => None,
            Scheme::Hardened => {
                resident += pkg
                    .layers
                    .iter()
                    .map(|l| l.weight.len() as u64 * 4)
                    .sum::<u64>();
                let norms = pkg.layers.iter().map(freivalds::filter_norms).collect();
                Some((pkg, norms))
            }
        };
        self.session = Some(Box::new(Session {
            last_use: model.graph.last_uses(),
            model,
            public,
            layer_of,
            run: None,
        }));
        Ok(TeeToHost::Opened {
            layers,
            resident_bytes: resident,
            peak_activation_bytes: peak,
        })
    }

    fn session(&mut self) -> Result<&mut Session, TeeError> {
        self.session
            .as_deref_mut()
            .ok_or_else(|| TeeError::Protocol("no package is open".into()))
    }

    fn begin(
        &mut self,
        inputs: Vec<Tensor>,
        pool_entry: Option<Vec<u8>>,
        allow_slow: bool,
    ) -> Result<TeeToHost, TeeError> {
        let key = self.device_key;
        let platform = &mut self.platform;
        let s = self
            .session
            .as_deref_mut()
            .ok_or_else(|| TeeError::Protocol("no package is open".into()))?;
        let g = &s.model.graph;
        if inputs.len() != g.inputs.len() {
            return Err(TeeError::BadInput(format!(
                "expected {} inputs, got {}",
                g.inputs.len(),
                inputs.len()
            )));
        }
        let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
        for (&id, t) in g.inputs.iter().zip(inputs) {
            let v = &g.values[id];
            if t.shape != v.shape || t.data.len() != v.shape.iter().product::<usize>() {
                return Err(TeeError::BadInput(format!(
                    "input '{}' has shape {:?}, the model expects {:?}",
                    v.name, t.shape, v.shape
                )));
            }
            vals[id] = Some(t);
        }
        let (masks, checker) = match &s.public {
            None => (None, None),
            Some((pkg, _)) => {
                let id = s.model.conversion_id;
                let masks = match pool_entry {
                    Some(bytes) => {
                        let index = onetime::entry_index(&bytes).ok_or(TeeError::PoolCorrupt)?;
                        let name = counter_name(&id, b"consumed");
                        let expected = platform.counter(&name);
                        if index < expected {
                            return Err(TeeError::PoolReplayed { index, expected });
                        }
                        if index > expected {
                            return Err(TeeError::PoolOutOfOrder { index, expected });
                        }
                        let e =
                            onetime::open_entry(&key, &id, bytes).ok_or(TeeError::PoolCorrupt)?;
                        if e.corrections.len() != s.model.layers.len() {
                            return Err(TeeError::PoolCorrupt);
                        }
                        // Spent before use: a crash mid-inference must not allow a reuse.
                        platform
                            .advance_counter(&name, index + 1)
                            .map_err(|_| TeeError::Storage)?;
                        (e.seed, e.corrections)
                    }
                    None if allow_slow => {
                        let mut seed = [0u8; 32];
                        platform.random(&mut seed);
                        let c = onetime::corrections(seed, g, &s.model.layers, &pkg.layers)
                            .map_err(TeeError::Kernel)?;
                        (seed, c)
                    }
                    None => return Err(TeeError::PoolEmpty),
                };
                let mut cseed = [0u8; 32];
                platform.random(&mut cseed);
                (Some(masks), Some(CheckRng::new(cseed)))
            }
        };
        s.run = Some(Run {
            vals,
            next: 0,
            waiting: None,
            masks,
            sent: None,
            checker,
        });
        s.advance()
    }

    fn precompute(&mut self, count: u32) -> Result<TeeToHost, TeeError> {
        let key = self.device_key;
        let platform = &mut self.platform;
        let s = self
            .session
            .as_deref_mut()
            .ok_or_else(|| TeeError::Protocol("no package is open".into()))?;
        let Some((pkg, _)) = &s.public else {
            return Err(TeeError::Protocol(
                "only hardened packages use a mask pool".into(),
            ));
        };
        let id = s.model.conversion_id;
        let name = counter_name(&id, b"issued");
        let first = platform.counter(&name);
        // Reserve the indices before handing anything out, so none is ever issued twice.
        platform
            .advance_counter(&name, first + count as u64)
            .map_err(|_| TeeError::Storage)?;
        let mut entries = Vec::with_capacity(count as usize);
        for i in 0..count as u64 {
            let mut seed = [0u8; 32];
            platform.random(&mut seed);
            let corrections =
                onetime::corrections(seed, &s.model.graph, &s.model.layers, &pkg.layers)
                    .map_err(TeeError::Kernel)?;
            let entry = onetime::PoolEntry {
                index: first + i,
                seed,
                corrections,
            };
            entries.push(onetime::seal_entry(&key, &id, &entry));
        }
        Ok(TeeToHost::Pool { entries })
    }

    fn linear_done(&mut self, layer: u32, output: Tensor) -> Result<TeeToHost, TeeError> {
        let s = self.session()?;
        let run = s
            .run
            .as_mut()
            .ok_or_else(|| TeeError::Protocol("no inference in progress".into()))?;
        let (want, node) = run
            .waiting
            .ok_or_else(|| TeeError::Protocol("no linear layer was requested".into()))?;
        if layer != want {
            return Err(TeeError::BadAccelerator(format!(
                "result for layer {layer}, but layer {want} was requested"
            )));
        }
        let l = &s.model.layers[layer as usize];
        if output.shape != l.public_output
            || output.data.len() != output.shape.iter().product::<usize>()
        {
            return Err(TeeError::BadAccelerator(format!(
                "layer {layer}: shape {:?}, expected {:?}",
                output.shape, l.public_output
            )));
        }
        let non_finite = |p: usize| {
            TeeError::BadAccelerator(format!(
                "layer {layer}: non-finite value in public channel {p}"
            ))
        };
        if let (Some((pkg, norms)), Some(sent), Some(checker)) =
            (&s.public, run.sent.take(), run.checker.as_mut())
        {
            if !restore::all_finite(&output.data) {
                let axis = pkg.layers[layer as usize]
                    .kind
                    .channel_axis(output.shape.len());
                return Err(non_finite(restore::first_bad_channel(&output, axis)));
            }
            let l = layer as usize;
            freivalds::check(&pkg.layers[l], &norms[l], &sent, &output, checker)
                .map_err(|e| TeeError::Integrity(format!("layer {layer}: {e}")))?;
        }
        let g = &s.model.graph;
        let out_id = g.nodes[node].outputs[0];
        let real_shape = g.shape(out_id);
        let axis = match g.nodes[node].op {
            shadownet_ir::Op::MatMul => real_shape.len() - 1,
            _ => 1,
        };
        // An activation that alone reads this output runs inside the restoring pass.
        let fused = g.nodes.get(node + 1).and_then(|next| match next.op {
            shadownet_ir::Op::Act(a)
                if next.inputs[..] == [out_id]
                    && s.last_use[out_id] == node + 1
                    && s.layer_of[node + 1].is_none() =>
            {
                Some((a, next.outputs[0]))
            }
            _ => None,
        });
        let (value, after) = match fused {
            Some((_, act_out)) => (act_out, node + 2),
            None => (out_id, node + 1),
        };
        // With fixed masks, a value that only the next outsourced layer reads is written
        // as that layer's input at once (the one-time masks of the hardened scheme are
        // drawn per layer, and its sent input is kept for the check: not fused).
        let forward = match (&run.masks, s.layer_of.get(after).copied().flatten()) {
            (None, Some(next))
                if g.nodes[after].inputs.first() == Some(&value)
                    && s.last_use[value] == after
                    && (axis == 1 || !restore::shuffles_input(&s.model.layers[next as usize])) =>
            {
                Some(next)
            }
            _ => None,
        };
        let offset = match &run.masks {
            Some((_, corrections)) => Some(&corrections[layer as usize]),
            None => l.mask_correction.as_ref(),
        };
        let y = restore::restore_fused(
            &l.restore,
            &output,
            real_shape,
            axis,
            offset,
            l.bias.as_deref(),
            fused.map(|(a, _)| a),
            forward.map(|k| &s.model.layers[k as usize]),
        )
        .map_err(non_finite)?;
        drop(output);
        free_dead(g, &s.last_use, node, &mut run.vals);
        if let Some(next) = forward {
            run.waiting = Some((next, after));
            return Ok(TeeToHost::RunLinear {
                layer: next,
                input: y,
            });
        }
        run.vals[value] = Some(y);
        run.next = after;
        run.waiting = None;
        s.advance()
    }
}

impl Session {
    /// Runs trusted nodes until the next outsourced layer or the end of the graph.
    fn advance(&mut self) -> Result<TeeToHost, TeeError> {
        let g = &self.model.graph;
        let run = self
            .run
            .as_mut()
            .ok_or_else(|| TeeError::Protocol("no inference in progress".into()))?;
        while run.next < g.nodes.len() {
            let k = run.next;
            let node = &g.nodes[k];
            if let Some(layer) = self.layer_of[k] {
                let xid = node.inputs[0];
                let sl = &self.model.layers[layer as usize];
                let input = match &run.masks {
                    Some((seed, _)) => {
                        let x = fetch(g, &run.vals, xid)?;
                        let mut t = restore::shuffle_input(&sl.restore, x);
                        let m = onetime::mask(*seed, layer as usize, sl, &t.shape);
                        restore::add_assign(&mut t, &m);
                        run.sent = Some(t.clone());
                        t
                    }
                    // An input read by nothing after this layer is masked where it lies.
                    None if self.last_use[xid] == k && g.values[xid].data.is_none() => {
                        let x = run.vals[xid].take().ok_or_else(|| missing(g, xid))?;
                        restore::prepare_owned_input(sl, x)
                    }
                    None => restore::prepare_input(sl, fetch(g, &run.vals, xid)?),
                };
                run.waiting = Some((layer, k));
                return Ok(TeeToHost::RunLinear { layer, input });
            }
            let outs = {
                let mut xs = Vec::with_capacity(node.inputs.len());
                for &i in &node.inputs {
                    xs.push(fetch(g, &run.vals, i)?);
                }
                shadownet_kernels::eval(&node.name, &node.op, &xs)
                    .map_err(|e| TeeError::Kernel(format!("{e}")))?
            };
            for (&o, t) in node.outputs.iter().zip(outs) {
                run.vals[o] = Some(t);
            }
            free_dead(g, &self.last_use, k, &mut run.vals);
            run.next = k + 1;
        }
        let mut outputs = Vec::with_capacity(g.outputs.len());
        for &o in &g.outputs {
            outputs.push(match &g.values[o].data {
                Some(c) => c.clone(),
                None => run.vals[o]
                    .take()
                    .ok_or_else(|| TeeError::Corrupt("a model output is never computed".into()))?,
            });
        }
        self.run = None;
        Ok(TeeToHost::Done { outputs })
    }
}

fn fetch<'a>(g: &'a Graph, vals: &'a [Option<Tensor>], v: usize) -> Result<&'a Tensor, TeeError> {
    g.values[v]
        .data
        .as_ref()
        .or(vals[v].as_ref())
        .ok_or_else(|| missing(g, v))
}

fn missing(g: &Graph, v: usize) -> TeeError {
    TeeError::Corrupt(format!(
        "value '{}' is used before it is computed",
        g.values[v].name
    ))
}

fn free_dead(g: &Graph, last: &[usize], k: usize, vals: &mut [Option<Tensor>]) {
    for &i in &g.nodes[k].inputs {
        if last[i] == k && !g.outputs.contains(&i) {
            vals[i] = None;
        }
    }
}

/// Index checks on an authenticated graph, so a converter bug surfaces as an error.
fn check_graph(g: &Graph) -> Result<(), TeeError> {
    let n = g.values.len();
    let ok = g.inputs.iter().chain(&g.outputs).all(|&v| v < n)
        && g.nodes.iter().all(|node| {
            node.inputs.iter().chain(&node.outputs).all(|&v| v < n) && !node.outputs.is_empty()
        });
    if ok {
        Ok(())
    } else {
        Err(TeeError::Corrupt(
            "the secret graph refers to missing values".into(),
        ))
    }
}

/// Decodes `public.bin`: magic, then the postcard-encoded [`crate::PublicPackage`].
pub fn decode_public(bytes: &[u8]) -> Result<crate::PublicPackage, TeeError> {
    if bytes.len() < PUBLIC_MAGIC.len() || &bytes[..PUBLIC_MAGIC.len()] != PUBLIC_MAGIC {
        return Err(TeeError::Corrupt(
            "public part lacks the shadownet package magic".into(),
        ));
    }
    postcard::from_bytes(&bytes[PUBLIC_MAGIC.len()..])
        .map_err(|e| TeeError::Corrupt(format!("public part does not decode: {e}")))
}

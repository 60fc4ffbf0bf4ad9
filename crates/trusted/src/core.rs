//! The trusted core's message API: an I/O-free state machine that poisons itself on error.
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};
use shadownet_ir::{Graph, Tensor};

use crate::format::{SecretModel, PUBLIC_MAGIC};
use crate::restore;
use crate::seal::{self, SealError};

/// Messages from the untrusted host (ECALLs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum HostToTee {
    /// Open a package: the public part's bytes (their hash binds the secret to them) and
    /// the sealed secret.
    Open { public: Vec<u8>, sealed: Vec<u8> },
    /// Start one inference on the model inputs, in model-input order.
    Begin { inputs: Vec<Tensor> },
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
        }
    }
}

struct Run {
    vals: Vec<Option<Tensor>>,
    next: usize,
    /// (layer, node) waiting for the accelerator.
    waiting: Option<(u32, usize)>,
}

struct Session {
    model: SecretModel,
    /// For each node, the outsourced layer it is, if any.
    layer_of: Vec<Option<u32>>,
    last_use: Vec<usize>,
    run: Option<Run>,
}

/// The trusted core. Holds the device secret key; everything else arrives as messages.
pub struct TrustedCore {
    device_key: [u8; 32],
    session: Option<Box<Session>>,
    poisoned: Option<TeeError>,
}

impl TrustedCore {
    pub fn new(device_key: [u8; 32]) -> Self {
        TrustedCore {
            device_key,
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
            HostToTee::Begin { inputs } => self.begin(inputs),
            HostToTee::LinearDone { layer, output } => self.linear_done(layer, output),
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
        let resident = model.resident_bytes() as u64;
        let peak = model.peak_activation_bytes(&pkg.layers) as u64;
        let layers = model.layers.len() as u32;
        self.session = Some(Box::new(Session {
            last_use: model.graph.last_uses(),
            model,
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

    fn begin(&mut self, inputs: Vec<Tensor>) -> Result<TeeToHost, TeeError> {
        let s = self.session()?;
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
        s.run = Some(Run {
            vals,
            next: 0,
            waiting: None,
        });
        s.advance()
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
        if let Some(i) = output.data.iter().position(|v| !v.is_finite()) {
            return Err(TeeError::BadAccelerator(format!(
                "layer {layer}: non-finite value {} at index {i}",
                output.data[i]
            )));
        }
        let g = &s.model.graph;
        let out_id = g.nodes[node].outputs[0];
        let real_shape = g.shape(out_id);
        let axis = match g.nodes[node].op {
            shadownet_ir::Op::MatMul => real_shape.len() - 1,
            _ => 1,
        };
        let y = restore::restore_output(l, &output, real_shape, axis);
        run.vals[out_id] = Some(y);
        free_dead(g, &s.last_use, node, &mut run.vals);
        run.waiting = None;
        run.next = node + 1;
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
                let x = fetch(g, &run.vals, node.inputs[0])?;
                let input = restore::prepare_input(&self.model.layers[layer as usize], x);
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
        .ok_or_else(|| {
            TeeError::Corrupt(format!(
                "value '{}' is used before it is computed",
                g.values[v].name
            ))
        })
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

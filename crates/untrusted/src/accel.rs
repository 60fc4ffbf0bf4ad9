//! Accelerator backends: they run public (transformed) linear layers and nothing else.
use std::sync::{Arc, Mutex};

use shadownet_ir::{RingTensor, Tensor};
use shadownet_trusted::format::{self, PublicHeader, PublicLayer, PublicWeight};
use shadownet_trusted::{LinearKind, Payload};

use crate::{Error, Result};

/// The public part of a package as the host holds it: the header and every layer's
/// weights, decoded and checked against their hashes.
#[derive(Clone, Debug)]
pub struct PublicModel {
    pub header: PublicHeader,
    pub weights: Vec<PublicWeight>,
}

impl PublicModel {
    /// Decodes `public.bin`.
    pub fn decode(bytes: &[u8]) -> std::result::Result<(Self, usize), shadownet_trusted::TeeError> {
        let parts = format::split_public(bytes)?;
        let mut weights = Vec::with_capacity(parts.header.layers.len());
        for l in &parts.header.layers {
            let blob = format::weight_blob(parts.weights, l)?;
            weights.push(format::decode_weight(l, blob)?);
        }
        let header_len = parts.header_region.len();
        Ok((
            PublicModel {
                header: parts.header,
                weights,
            },
            header_len,
        ))
    }
}

/// A device that runs the package's public linear layers.
pub trait Accelerator: Send {
    fn name(&self) -> &str;
    /// Called once per package with the public part, e.g. to upload weights.
    fn load(&mut self, model: &PublicModel) -> Result<()>;
    /// A layer with f32 weights (the paper scheme).
    fn run(&mut self, layer: u32, input: &Tensor) -> Result<Tensor>;
    /// A layer with integer weights over Z/2^64 (the hardened scheme).
    fn run_ring(&mut self, layer: u32, input: &RingTensor) -> Result<RingTensor>;
}

impl<A: Accelerator + ?Sized> Accelerator for Box<A> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn load(&mut self, model: &PublicModel) -> Result<()> {
        (**self).load(model)
    }
    fn run(&mut self, layer: u32, input: &Tensor) -> Result<Tensor> {
        (**self).run(layer, input)
    }
    fn run_ring(&mut self, layer: u32, input: &RingTensor) -> Result<RingTensor> {
        (**self).run_ring(layer, input)
    }
}

/// The multi-threaded CPU backend: the host's fast kernels.
#[derive(Default)]
pub struct CpuAccelerator {
    layers: Vec<(PublicLayer, PublicWeight)>,
    /// The f32 layers packed once at load for the plain engine's blocked kernels (None
    /// where the packer refuses a layer: those run node by node on `shadownet_cpu::eval`).
    packed: Vec<Option<shadownet_cpu::PackedLayer>>,
    /// The hardened scheme's integer convs packed once at load too: packing them on every
    /// call cost hardened MobileNet-v1 about 7 ms of accelerator time (48 against 41 ms).
    ring_packed: Vec<Option<shadownet_cpu::ring::PackedConv>>,
}

impl CpuAccelerator {
    pub fn new() -> Self {
        Self::default()
    }

    fn layer<'a>(
        layers: &'a [(PublicLayer, PublicWeight)],
        layer: u32,
        shape: &[usize],
    ) -> Result<&'a (PublicLayer, PublicWeight)> {
        let l = layers
            .get(layer as usize)
            .ok_or_else(|| Error::Accel(format!("no layer {layer} loaded")))?;
        if shape != l.0.input_shape {
            return Err(Error::Accel(format!(
                "layer {layer}: input shape {shape:?}, expected {:?}",
                l.0.input_shape
            )));
        }
        Ok(l)
    }
}

impl Accelerator for CpuAccelerator {
    fn name(&self) -> &str {
        "cpu"
    }

    fn load(&mut self, model: &PublicModel) -> Result<()> {
        self.layers = model
            .header
            .layers
            .iter()
            .cloned()
            .zip(model.weights.iter().cloned())
            .collect();
        self.packed = self
            .layers
            .iter()
            .map(|(l, w)| match w {
                PublicWeight::F32(w) => {
                    shadownet_cpu::PackedLayer::new(&l.kind.op(), w, None, &l.input_shape).ok()
                }
                PublicWeight::I32(_) => None,
            })
            .collect();
        self.ring_packed = self
            .layers
            .iter()
            .map(|(l, w)| match (&l.kind, w) {
                (LinearKind::Conv(c), PublicWeight::I32(w)) => {
                    Some(shadownet_cpu::ring::PackedConv::new(w, c))
                }
                _ => None,
            })
            .collect();
        Ok(())
    }

    fn run(&mut self, layer: u32, input: &Tensor) -> Result<Tensor> {
        let (l, w) = Self::layer(&self.layers, layer, &input.shape)?;
        let PublicWeight::F32(w) = w else {
            return Err(Error::Accel(format!("layer {layer} has integer weights")));
        };
        let out = match self.packed.get_mut(layer as usize) {
            Some(Some(p)) => p.run(input),
            _ => shadownet_cpu::eval("public layer", &l.kind.op(), &[input, w])
                .map(|mut o| o.remove(0)),
        }
        .map_err(|e| Error::Accel(e.to_string()))?;
        if out.shape != l.output_shape {
            return Err(Error::Accel(format!(
                "layer {layer}: the kernel returned shape {:?}, expected {:?}",
                out.shape, l.output_shape
            )));
        }
        Ok(out)
    }

    fn run_ring(&mut self, layer: u32, input: &RingTensor) -> Result<RingTensor> {
        let (l, w) = Self::layer(&self.layers, layer, &input.shape)?;
        let PublicWeight::I32(w) = w else {
            return Err(Error::Accel(format!("layer {layer} has f32 weights")));
        };
        Ok(match &l.kind {
            LinearKind::Conv(c) => match self.ring_packed.get(layer as usize) {
                Some(Some(p)) => shadownet_cpu::ring::conv2d_packed(input, p, &l.output_shape),
                _ => shadownet_cpu::ring::conv2d(input, w, c, &l.output_shape),
            },
            LinearKind::ConvTranspose(c) => {
                shadownet_kernels::ring::conv_transpose2d(input, w, c, &l.output_shape)
            }
            LinearKind::MatMul => shadownet_cpu::ring::matmul(input, w),
        })
    }
}

/// One call the untrusted side saw: everything an attacker reading host memory gets.
#[derive(Clone, Debug)]
pub struct Observed {
    pub layer: u32,
    pub input: Payload,
    pub output: Payload,
}

/// Wraps a backend and records every tensor it receives and returns (tests, attacks).
pub struct SpyAccelerator<A> {
    inner: A,
    pub seen: Arc<Mutex<Vec<Observed>>>,
}

impl<A: Accelerator> SpyAccelerator<A> {
    pub fn new(inner: A) -> Self {
        SpyAccelerator {
            inner,
            seen: Default::default(),
        }
    }

    fn record(&self, layer: u32, input: Payload, output: Payload) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(Observed {
                layer,
                input,
                output,
            });
        }
    }
}

impl<A: Accelerator> Accelerator for SpyAccelerator<A> {
    fn name(&self) -> &str {
        "spy"
    }

    fn load(&mut self, model: &PublicModel) -> Result<()> {
        self.inner.load(model)
    }

    fn run(&mut self, layer: u32, input: &Tensor) -> Result<Tensor> {
        let output = self.inner.run(layer, input)?;
        self.record(
            layer,
            Payload::F32(input.clone()),
            Payload::F32(output.clone()),
        );
        Ok(output)
    }

    fn run_ring(&mut self, layer: u32, input: &RingTensor) -> Result<RingTensor> {
        let output = self.inner.run_ring(layer, input)?;
        self.record(
            layer,
            Payload::Ring(input.clone()),
            Payload::Ring(output.clone()),
        );
        Ok(output)
    }
}

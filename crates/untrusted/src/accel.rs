//! Accelerator backends: they run public (transformed) linear layers and nothing else.
use shadownet_ir::{IntTensor, RingTensor, Tensor};
use shadownet_trusted::{LinearKind, PublicLayer};

use crate::{Error, Result};

/// A device that runs the package's public linear layers.
pub trait Accelerator: Send {
    fn name(&self) -> &str;
    /// Called once per package with every public layer, e.g. to upload weights.
    fn load(&mut self, layers: &[PublicLayer]) -> Result<()>;
    fn run(&mut self, layer: u32, input: &Tensor) -> Result<Tensor>;
    /// The layer over the ring Z/2^64 with its integer weights (the exact hardened
    /// scheme); the result must equal `shadownet_kernels::ring` bit for bit.
    fn run_ring(&mut self, layer: u32, _input: &RingTensor) -> Result<RingTensor> {
        Err(Error::Accel(format!(
            "layer {layer}: the {} backend does not support exact ring arithmetic",
            self.name()
        )))
    }
}

impl<A: Accelerator + ?Sized> Accelerator for Box<A> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn load(&mut self, layers: &[PublicLayer]) -> Result<()> {
        (**self).load(layers)
    }
    fn run(&mut self, layer: u32, input: &Tensor) -> Result<Tensor> {
        (**self).run(layer, input)
    }
    fn run_ring(&mut self, layer: u32, input: &RingTensor) -> Result<RingTensor> {
        (**self).run_ring(layer, input)
    }
}

/// A layer's weights as ring integers. Public layers hold f32 weights until the exact
/// scheme's packages carry `IntTensor`s; until then integer-valued f32 weights convert
/// exactly and any other is refused.
pub fn int_weights(layer: u32, w: &Tensor) -> Result<IntTensor> {
    let mut data = Vec::with_capacity(w.data.len());
    for &v in &w.data {
        // Every integer f32 in this range is an exact i32 (|v| < 2^31).
        if v.fract() != 0.0 || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
            return Err(Error::Accel(format!(
                "layer {layer}: exact ring arithmetic needs integer weights, this layer has {v}"
            )));
        }
        data.push(v as i32);
    }
    Ok(IntTensor {
        shape: w.shape.clone(),
        data,
    })
}

/// The multi-threaded CPU backend: the same packed-GEMM kernels as plain inference.
#[derive(Default)]
pub struct CpuAccelerator {
    layers: Vec<PublicLayer>,
}

impl CpuAccelerator {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Accelerator for CpuAccelerator {
    fn name(&self) -> &str {
        "cpu"
    }

    fn load(&mut self, layers: &[PublicLayer]) -> Result<()> {
        self.layers = layers.to_vec();
        Ok(())
    }

    fn run(&mut self, layer: u32, input: &Tensor) -> Result<Tensor> {
        let l = self
            .layers
            .get(layer as usize)
            .ok_or_else(|| Error::Accel(format!("no layer {layer} loaded")))?;
        if input.shape != l.input_shape {
            return Err(Error::Accel(format!(
                "layer {layer}: input shape {:?}, expected {:?}",
                input.shape, l.input_shape
            )));
        }
        let mut out =
            shadownet_cpu::eval(&format!("layer{layer}"), &l.kind.op(), &[input, &l.weight])
                .map_err(|e| Error::Accel(e.to_string()))?;
        Ok(out.remove(0))
    }

    fn run_ring(&mut self, layer: u32, input: &RingTensor) -> Result<RingTensor> {
        use shadownet_kernels::ring;
        let l = self
            .layers
            .get(layer as usize)
            .ok_or_else(|| Error::Accel(format!("no layer {layer} loaded")))?;
        if input.shape != l.input_shape {
            return Err(Error::Accel(format!(
                "layer {layer}: input shape {:?}, expected {:?}",
                input.shape, l.input_shape
            )));
        }
        let w = int_weights(layer, &l.weight)?;
        // The shapes were checked when the package was opened; recheck them here so a
        // mismatched weight is an error, not an index panic in the kernel.
        let out = shadownet_ir::infer_shapes(
            &format!("layer{layer}"),
            &l.kind.op(),
            &[input.shape.clone(), w.shape.clone()],
        )
        .map_err(|e| Error::Accel(e.to_string()))?;
        Ok(match &l.kind {
            LinearKind::Conv(c) => ring::conv2d(input, &w, c, &out[0]),
            LinearKind::ConvTranspose(c) => ring::conv_transpose2d(input, &w, c, &out[0]),
            LinearKind::MatMul if w.shape.len() == 2 => ring::matmul(input, &w),
            LinearKind::MatMul => {
                return Err(Error::Accel(format!(
                    "layer {layer}: ring MatMul needs 2-D weights, got {:?}",
                    w.shape
                )))
            }
        })
    }
}

/// One call the untrusted side saw: everything an attacker reading host memory gets.
#[derive(Clone, Debug)]
pub struct Observed {
    pub layer: u32,
    pub input: Tensor,
    pub output: Tensor,
}

/// Wraps a backend and records every tensor it receives and returns (tests, attacks).
pub struct SpyAccelerator<A> {
    inner: A,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Observed>>>,
}

impl<A: Accelerator> SpyAccelerator<A> {
    pub fn new(inner: A) -> Self {
        SpyAccelerator {
            inner,
            seen: Default::default(),
        }
    }
}

impl<A: Accelerator> Accelerator for SpyAccelerator<A> {
    fn name(&self) -> &str {
        "spy"
    }

    fn load(&mut self, layers: &[PublicLayer]) -> Result<()> {
        self.inner.load(layers)
    }

    fn run(&mut self, layer: u32, input: &Tensor) -> Result<Tensor> {
        let output = self.inner.run(layer, input)?;
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(Observed {
                layer,
                input: input.clone(),
                output: output.clone(),
            });
        }
        Ok(output)
    }

    fn run_ring(&mut self, layer: u32, input: &RingTensor) -> Result<RingTensor> {
        self.inner.run_ring(layer, input)
    }
}

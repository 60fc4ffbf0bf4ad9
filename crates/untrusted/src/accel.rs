//! Accelerator backends: they run public (transformed) linear layers and nothing else.
use shadownet_ir::Tensor;
use shadownet_trusted::PublicLayer;

use crate::{Error, Result};

/// A device that runs the package's public linear layers.
pub trait Accelerator: Send {
    fn name(&self) -> &str;
    /// Called once per package with every public layer, e.g. to upload weights.
    fn load(&mut self, layers: &[PublicLayer]) -> Result<()>;
    fn run(&mut self, layer: u32, input: &Tensor) -> Result<Tensor>;
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
}

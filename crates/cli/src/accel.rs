//! `--accelerator cpu|gpu`: which backend runs a package's public layers.
use anyhow::Result;
use shadownet_untrusted::{Accelerator, CpuAccelerator};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AcceleratorKind {
    /// The host's multi-threaded CPU kernels.
    #[default]
    Cpu,
    /// wgpu compute shaders (Vulkan / Metal / DX12); needs a build with `--features gpu`.
    Gpu,
}

impl AcceleratorKind {
    pub fn name(self) -> &'static str {
        match self {
            AcceleratorKind::Cpu => "cpu",
            AcceleratorKind::Gpu => "gpu",
        }
    }
}

/// Milliseconds of upload, compute and download since the last call.
pub type SplitReader = Box<dyn FnMut() -> [f64; 3] + Send>;

/// A backend, and for the GPU a reader of where its time went.
pub struct Made {
    pub backend: Box<dyn Accelerator>,
    pub split: Option<SplitReader>,
    /// The device, for reports ("cpu", or the GPU adapter and its API).
    pub device: String,
}

pub fn make(kind: AcceleratorKind) -> Result<Made> {
    match kind {
        AcceleratorKind::Cpu => Ok(Made {
            backend: Box::new(CpuAccelerator::new()),
            split: None,
            device: "cpu".into(),
        }),
        AcceleratorKind::Gpu => gpu(),
    }
}

#[cfg(feature = "gpu")]
fn gpu() -> Result<Made> {
    let g = shadownet_gpu::GpuAccelerator::new()?;
    let timings = g.timings();
    let device = g.adapter();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    Ok(Made {
        backend: Box::new(g),
        split: Some(Box::new(move || {
            let t = timings.take();
            [ms(t.upload), ms(t.compute), ms(t.download)]
        })),
        device,
    })
}

#[cfg(not(feature = "gpu"))]
fn gpu() -> Result<Made> {
    anyhow::bail!(
        "this shadownet was built without the GPU accelerator: rebuild with --features gpu"
    )
}

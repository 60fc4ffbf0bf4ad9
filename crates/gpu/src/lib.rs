//! A GPU accelerator for the untrusted host, on `wgpu` compute (Vulkan, Metal, DX12).
//!
//! It runs a package's public linear layers — convolutions of any groups, strides,
//! dilations and pads, depthwise convolutions, transposed convolutions and dense layers —
//! in f32 (the paper scheme) and exactly over the ring Z/2^64 (the hardened scheme's
//! masked layers). Weights are re-laid out and uploaded once, at `load`; each call streams
//! one activation up and the result down through buffers allocated once for the largest
//! layer. Every call's time is split into upload, compute and download ([`Timings`]).
//!
//! One device serves the whole process (the first adapter found: discrete, then
//! integrated, then software GPUs, preferring Vulkan / Metal / DX12; `WGPU_BACKEND` and
//! `SHADOWNET_GPU_ADAPTER=substring of the name` narrow the choice), and its compiled
//! shaders are shared by every accelerator. On a machine without a GPU, Mesa's software
//! Vulkan driver (lavapipe) runs it, slowly but exactly.
pub mod plan;
pub mod shaders;

#[cfg(target_endian = "big")]
compile_error!("the GPU backend moves tensors to the device as their in-memory bytes, which WGSL reads as little-endian");

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shadownet_ir::{infer_shapes, IntTensor, RingTensor, Tensor};
use shadownet_trusted::format::PublicWeight;
use shadownet_trusted::LinearKind;
use shadownet_untrusted::{Accelerator, PublicModel};
use wgpu::util::DeviceExt;

use shaders::{Arith, ShaderKey};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no usable GPU: {0}")]
    NoAdapter(String),
    #[error("GPU device error: {0}")]
    Device(String),
    #[error("layer {layer}: {msg}")]
    Layer { layer: u32, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for shadownet_untrusted::Error {
    fn from(e: Error) -> Self {
        shadownet_untrusted::Error::Accel(e.to_string())
    }
}

/// A layer's public weights: f32 for the paper scheme, integers for the exact one.
#[derive(Clone, Debug)]
pub enum Weights {
    F32(Tensor),
    Int(IntTensor),
}

/// One layer as the accelerator receives it.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub kind: LinearKind,
    pub weights: Weights,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
}

/// Where the accelerator's time went, summed over calls since the last [`Timings::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TimeSplit {
    /// Host → device: the input written and the copy finished.
    pub upload: Duration,
    /// The layer's dispatches, submitted to finished.
    pub compute: Duration,
    /// Device → host: the result copied out, mapped and read.
    pub download: Duration,
    pub calls: u64,
}

/// A handle on an accelerator's time split that stays valid after the accelerator is
/// boxed into a `SecureModel`.
#[derive(Clone, Debug, Default)]
pub struct Timings(Arc<Mutex<TimeSplit>>);

impl Timings {
    /// The split so far, and a fresh start.
    pub fn take(&self) -> TimeSplit {
        self.0
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }

    pub fn get(&self) -> TimeSplit {
        self.0.lock().map(|t| *t).unwrap_or_default()
    }

    fn add(&self, up: Duration, compute: Duration, down: Duration) {
        if let Ok(mut t) = self.0.lock() {
            t.upload += up;
            t.compute += compute;
            t.download += down;
            t.calls += 1;
        }
    }
}

/// The process's device, queue and compiled shaders.
struct Context {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// Errors wgpu reported outside any call's result (validation, device loss).
    errors: Arc<Mutex<Vec<String>>>,
    pipelines: Mutex<HashMap<ShaderKey, wgpu::ComputePipeline>>,
}

const INSTALL_HINT: &str = "on Linux without a GPU, install Mesa's software Vulkan driver (apt-get install mesa-vulkan-drivers libvulkan1)";

fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let device = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (backend, device)
}

impl Context {
    fn shared() -> Result<Arc<Context>> {
        static CTX: OnceLock<std::result::Result<Arc<Context>, String>> = OnceLock::new();
        CTX.get_or_init(|| Context::new().map(Arc::new))
            .clone()
            .map_err(Error::NoAdapter)
    }

    fn new() -> std::result::Result<Context, String> {
        let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        let backends = desc.backends;
        let instance = wgpu::Instance::new(desc);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let wanted = std::env::var("SHADOWNET_GPU_ADAPTER").ok();
        let found: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        if let Some(w) = &wanted {
            let w = w.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&w));
        }
        adapters.sort_by_key(|a| rank(&a.get_info()));
        let Some(adapter) = adapters.into_iter().next() else {
            return Err(match wanted {
                Some(w) => format!(
                    "no adapter's name contains SHADOWNET_GPU_ADAPTER={w:?}; found: {}",
                    if found.is_empty() {
                        "none".to_string()
                    } else {
                        found.join(", ")
                    }
                ),
                None => format!("wgpu found no adapter (backends {backends:?}); {INSTALL_HINT}"),
            });
        };
        let info = adapter.get_info();
        let have = adapter.limits();
        // WebGPU's defaults (16 KiB workgroup memory, 256 invocations: what the shaders
        // are written for) with the adapter's largest buffers.
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: have.max_storage_buffer_binding_size,
            max_buffer_size: have.max_buffer_size,
            ..wgpu::Limits::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("shadownet"),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| {
            format!(
                "{} ({:?}) refused a compute device: {e}",
                info.name, info.backend
            )
        })?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut v) = sink.lock() {
                v.push(format!("device lost ({reason:?}): {msg}"));
            }
        });
        Ok(Context {
            device,
            queue,
            info,
            limits,
            errors,
            pipelines: Mutex::new(HashMap::new()),
        })
    }

    /// Fails with whatever wgpu reported since the last check.
    fn check(&self) -> Result<()> {
        let errs = match self.errors.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => vec!["error log poisoned".into()],
        };
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Device(errs.join("; ")))
        }
    }

    fn pipeline(&self, key: ShaderKey) -> Result<wgpu::ComputePipeline> {
        let mut cache = self
            .pipelines
            .lock()
            .map_err(|_| Error::Device("pipeline cache poisoned".into()))?;
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let src = shaders::source(key);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("shadownet"),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("shadownet"),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    // Every shader writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                    ..Default::default()
                },
                cache: None,
            });
        self.check()
            .map_err(|e| Error::Device(format!("shader {key:?}: {e}")))?;
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn wait(&self, idx: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(idx),
                timeout: None,
            })
            .map_err(|e| Error::Device(e.to_string()))?;
        self.check()
    }
}

/// One dispatch, ready to record.
struct Pass {
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    grid: [u32; 3],
}

struct Layer {
    kind: LinearKind,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    /// None: the layer was not given weights of that arithmetic.
    f32: Option<Vec<Pass>>,
    ring: Option<Vec<Pass>>,
}

/// Activation buffers shared by every layer, sized for the largest.
struct Io {
    input: wgpu::Buffer,
    output: wgpu::Buffer,
    staging: wgpu::Buffer,
}

/// The GPU backend of the untrusted host.
pub struct GpuAccelerator {
    ctx: Arc<Context>,
    layers: Vec<Layer>,
    io: Option<Io>,
    timings: Timings,
    name: String,
}

fn bytes_of(n: usize, elem: usize) -> u64 {
    // Whole vec4s, and never zero: every binding must be non-empty.
    (n * elem).div_ceil(16).max(1) as u64 * 16
}

impl GpuAccelerator {
    /// Opens the process's GPU. Fails, saying why, when there is none.
    pub fn new() -> Result<Self> {
        let ctx = Context::shared()?;
        let name = format!("gpu ({}, {:?})", ctx.info.name, ctx.info.backend);
        Ok(GpuAccelerator {
            ctx,
            layers: Vec::new(),
            io: None,
            timings: Timings::default(),
            name,
        })
    }

    /// The adapter's name and backend, e.g. "llvmpipe (LLVM 15.0.6, 256 bits), Vulkan".
    pub fn adapter(&self) -> String {
        format!("{}, {:?}", self.ctx.info.name, self.ctx.info.backend)
    }

    /// True when the adapter is a software rasteriser (lavapipe, WARP, SwiftShader).
    pub fn is_software(&self) -> bool {
        self.ctx.info.device_type == wgpu::DeviceType::Cpu
    }

    /// A handle on this accelerator's time split.
    pub fn timings(&self) -> Timings {
        self.timings.clone()
    }

    /// Uploads the layers' weights (replacing any loaded before) and sizes the
    /// activation buffers for the largest layer.
    pub fn load_layers(&mut self, specs: &[LayerSpec]) -> Result<()> {
        let layers: Vec<(&LayerSpec, Option<&Tensor>, Option<&IntTensor>)> = specs
            .iter()
            .map(|s| match &s.weights {
                Weights::F32(t) => (s, Some(t), None),
                Weights::Int(t) => (s, None, Some(t)),
            })
            .collect();
        self.upload(&layers)
    }

    fn upload(
        &mut self,
        specs: &[(&LayerSpec, Option<&Tensor>, Option<&IntTensor>)],
    ) -> Result<()> {
        self.layers.clear();
        self.io = None;
        let max_binding = self.ctx.limits.max_storage_buffer_binding_size;
        let (mut max_in, mut max_out) = (16u64, 16u64);
        for (i, (s, f, r)) in specs.iter().enumerate() {
            let layer = i as u32;
            let err = |msg: String| Error::Layer { layer, msg };
            let wshape = match (f, r) {
                (Some(t), _) => &t.shape,
                (_, Some(t)) => &t.shape,
                _ => return Err(err("no weights".into())),
            };
            let got = infer_shapes(
                &format!("layer{i}"),
                &s.kind.op(),
                &[s.input_shape.clone(), wshape.clone()],
            )
            .map_err(|e| err(e.to_string()))?;
            if got.first() != Some(&s.output_shape) {
                return Err(err(format!(
                    "output shape {:?} does not follow from input {:?} and weights {wshape:?} ({got:?})",
                    s.output_shape, s.input_shape
                )));
            }
            // The exact layers move 8-byte values, the f32 ones 4-byte.
            let elem = if r.is_some() { 8 } else { 4 };
            let (bi, bo) = (
                bytes_of(s.input_shape.iter().product(), elem),
                bytes_of(s.output_shape.iter().product(), elem),
            );
            if bi.max(bo) > max_binding {
                return Err(err(format!(
                    "a {} byte activation exceeds the device's {max_binding} byte storage buffers",
                    bi.max(bo)
                )));
            }
            max_in = max_in.max(bi);
            max_out = max_out.max(bo);
        }
        let d = &self.ctx.device;
        let storage = |label, size, usage| {
            d.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        let io = Io {
            input: storage(
                "input",
                max_in,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            ),
            output: storage(
                "output",
                max_out,
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            ),
            staging: storage(
                "staging",
                max_out,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
        };
        let mut layers = Vec::with_capacity(specs.len());
        for (i, (s, f, r)) in specs.iter().enumerate() {
            let layer = i as u32;
            let err = |msg: String| Error::Layer { layer, msg };
            let f32 = match f {
                Some(t) => Some(
                    self.program(&io, s, Arith::F32, &t.shape, &t.data)
                        .map_err(err)?,
                ),
                None => None,
            };
            let ring = match r {
                Some(t) => Some(
                    self.program(&io, s, Arith::Ring, &t.shape, &t.data)
                        .map_err(err)?,
                ),
                None => None,
            };
            layers.push(Layer {
                kind: s.kind.clone(),
                input_shape: s.input_shape.clone(),
                output_shape: s.output_shape.clone(),
                f32,
                ring,
            });
        }
        self.ctx.check()?;
        self.layers = layers;
        self.io = Some(io);
        Ok(())
    }

    /// Plans a layer and uploads what its passes read.
    fn program<T: bytemuck::Pod + Default>(
        &self,
        io: &Io,
        s: &LayerSpec,
        arith: Arith,
        wshape: &[usize],
        w: &[T],
    ) -> std::result::Result<Vec<Pass>, String> {
        if s.output_shape.iter().product::<usize>() == 0
            || s.input_shape.iter().product::<usize>() == 0
        {
            return Ok(Vec::new());
        }
        let p = plan::plan(&s.kind, arith, &s.input_shape, wshape, w, &s.output_shape)?;
        let d = &self.ctx.device;
        let init = |label, bytes: &[u8], usage| {
            let mut padded = bytes.to_vec();
            padded.resize(bytes_of(bytes.len(), 1) as usize, 0);
            d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &padded,
                usage,
            })
        };
        let weights = init(
            "weights",
            bytemuck::cast_slice(&p.weights),
            wgpu::BufferUsages::STORAGE,
        );
        let table = (!p.table.is_empty()).then(|| {
            init(
                "taps",
                bytemuck::cast_slice(&p.table),
                wgpu::BufferUsages::STORAGE,
            )
        });
        let mut passes = Vec::with_capacity(p.passes.len());
        for pp in &p.passes {
            let pipeline = self.ctx.pipeline(pp.key).map_err(|e| e.to_string())?;
            let params = init(
                "params",
                bytemuck::cast_slice(&pp.params),
                wgpu::BufferUsages::UNIFORM,
            );
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: params.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: weights.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: io.input.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: io.output.as_entire_binding(),
                },
            ];
            if matches!(
                pp.key,
                ShaderKey::Gemm {
                    mode: shaders::Mode::Gather,
                    ..
                }
            ) {
                let t = table.as_ref().ok_or("a gather pass without taps")?;
                entries.push(wgpu::BindGroupEntry {
                    binding: 4,
                    resource: t.as_entire_binding(),
                });
            }
            let bind = d.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("layer"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            passes.push(Pass {
                pipeline,
                bind,
                grid: pp.grid,
            });
        }
        Ok(passes)
    }

    fn layer(&self, layer: u32, shape: &[usize]) -> Result<&Layer> {
        let l = self
            .layers
            .get(layer as usize)
            .ok_or_else(|| Error::Layer {
                layer,
                msg: format!("not loaded ({} layers are)", self.layers.len()),
            })?;
        if shape != l.input_shape.as_slice() {
            return Err(Error::Layer {
                layer,
                msg: format!("input shape {shape:?}, expected {:?}", l.input_shape),
            });
        }
        Ok(l)
    }

    /// Uploads `input`, runs `passes`, downloads `out.len()` values into `out`.
    fn execute<T: bytemuck::Pod>(
        &self,
        passes: &[Pass],
        input: &[u8],
        out: &mut [T],
    ) -> Result<()> {
        let io = self
            .io
            .as_ref()
            .ok_or_else(|| Error::Device("nothing loaded".into()))?;
        let (d, q) = (&self.ctx.device, &self.ctx.queue);
        let t0 = Instant::now();
        q.write_buffer(&io.input, 0, input);
        self.ctx.wait(q.submit([]))?;
        let t1 = Instant::now();
        let mut enc = d.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut cp = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            for p in passes {
                cp.set_pipeline(&p.pipeline);
                cp.set_bind_group(0, &p.bind, &[]);
                cp.dispatch_workgroups(p.grid[0], p.grid[1], p.grid[2]);
            }
        }
        self.ctx.wait(q.submit([enc.finish()]))?;
        let t2 = Instant::now();
        let bytes = std::mem::size_of_val(out) as u64;
        let mut enc = d.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(&io.output, 0, &io.staging, 0, bytes);
        let idx = q.submit([enc.finish()]);
        let slice = io.staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait(idx)?;
        rx.recv()
            .map_err(|_| Error::Device("the download was dropped".into()))?
            .map_err(|e| Error::Device(format!("download: {e}")))?;
        {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Device(format!("download: {e}")))?;
            bytemuck::cast_slice_mut::<T, u8>(out).copy_from_slice(&view);
        }
        io.staging.unmap();
        let t3 = Instant::now();
        self.timings.add(t1 - t0, t2 - t1, t3 - t2);
        Ok(())
    }

    fn unsupported(layer: u32, what: &str) -> Error {
        Error::Layer {
            layer,
            msg: format!("was loaded without {what} weights"),
        }
    }

    /// The layer in f32.
    pub fn run_f32(&self, layer: u32, input: &Tensor) -> Result<Tensor> {
        let l = self.layer(layer, &input.shape)?;
        let passes = l
            .f32
            .as_ref()
            .ok_or_else(|| Self::unsupported(layer, "f32"))?;
        let mut out = Tensor::zeros(&l.output_shape);
        if !passes.is_empty() {
            self.execute(passes, bytemuck::cast_slice(&input.data), &mut out.data)?;
        }
        Ok(out)
    }

    /// The layer over Z/2^64, bit for bit `shadownet_kernels::ring`'s result.
    pub fn run_exact(&self, layer: u32, input: &RingTensor) -> Result<RingTensor> {
        let l = self.layer(layer, &input.shape)?;
        let passes = l
            .ring
            .as_ref()
            .ok_or_else(|| Self::unsupported(layer, "integer"))?;
        let mut out = RingTensor::zeros(&l.output_shape);
        if !passes.is_empty() {
            self.execute(passes, bytemuck::cast_slice(&input.data), &mut out.data)?;
        }
        Ok(out)
    }

    /// The op a loaded layer runs (for reports).
    pub fn layer_kind(&self, layer: u32) -> Option<&LinearKind> {
        self.layers.get(layer as usize).map(|l| &l.kind)
    }
}

impl Accelerator for GpuAccelerator {
    fn name(&self) -> &str {
        &self.name
    }

    /// Every layer's weights go up once: f32 (paper scheme) or integer (hardened).
    fn load(&mut self, model: &PublicModel) -> shadownet_untrusted::Result<()> {
        if model.weights.len() != model.header.layers.len() {
            return Err(shadownet_untrusted::Error::Accel(
                "the package's layers and weights differ in number".into(),
            ));
        }
        let specs: Vec<LayerSpec> = model
            .header
            .layers
            .iter()
            .zip(&model.weights)
            .map(|(l, w)| LayerSpec {
                kind: l.kind.clone(),
                weights: match w {
                    PublicWeight::F32(t) => Weights::F32(t.clone()),
                    PublicWeight::I32(t) => Weights::Int(t.clone()),
                },
                input_shape: l.input_shape.clone(),
                output_shape: l.output_shape.clone(),
            })
            .collect();
        Ok(self.load_layers(&specs)?)
    }

    fn run(&mut self, layer: u32, input: &Tensor) -> shadownet_untrusted::Result<Tensor> {
        Ok(self.run_f32(layer, input)?)
    }

    fn run_ring(
        &mut self,
        layer: u32,
        input: &RingTensor,
    ) -> shadownet_untrusted::Result<RingTensor> {
        Ok(self.run_exact(layer, input)?)
    }
}

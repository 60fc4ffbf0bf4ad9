use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use shadownet::secure::{self, EnclaveMode};
use shadownet::{keys, npy, plain};
use shadownet_import::Model;
use shadownet_ir::Tensor;

#[derive(Parser)]
#[command(
    name = "shadownet",
    version,
    about = "Confidential on-device CNN inference (ShadowNet-style)"
)]
struct Cli {
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SchemeArg {
    /// The ShadowNet paper's scheme (fake-filter pairs, channel shuffle, fixed masks).
    Shadownet,
    /// Group mixing, one-time masks and verified results (see docs/schemes.md).
    Hardened,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a model (.onnx/.tflite: plain inference) or a protected package directory
    /// (secure inference; needs --key).
    Run {
        model: PathBuf,
        /// Input tensor as float32 .npy in the model's layout: FILE.npy or NAME=FILE.npy (repeatable).
        #[arg(long = "input", short = 'i', required = true)]
        inputs: Vec<String>,
        /// Write all outputs to this .npz, keyed by output name.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Size of an input with free dimensions: NAME=1,3,224,224 (repeatable). Defaults to the .npy's shape.
        #[arg(long = "input-shape")]
        input_shapes: Vec<String>,
        /// Device secret key (packages only).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Where the trusted core runs (packages only).
        #[arg(long, value_enum, default_value = "inproc")]
        enclave: EnclaveMode,
        /// Hardened packages: when the mask pool is empty, let the trusted core compute
        /// one-time masks on the spot (slow) instead of refusing.
        #[arg(long)]
        allow_slow_masks: bool,
        /// What runs the package's public layers (packages only).
        #[arg(long, value_enum, default_value = "cpu")]
        accelerator: shadownet::accel::AcceleratorKind,
    },
    /// Precompute one-time masks for a hardened package (run by the trusted core, offline).
    Precompute {
        package: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Number of inferences to prepare masks for.
        #[arg(long)]
        count: usize,
        #[arg(long, value_enum, default_value = "inproc")]
        enclave: EnclaveMode,
    },
    /// Convert a model into a protected package sealed to one device.
    Convert {
        model: PathBuf,
        /// The device's public key (from `shadownet keygen`).
        #[arg(long)]
        to: PathBuf,
        /// Package directory to write.
        #[arg(long, short = 'o')]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "shadownet")]
        scheme: SchemeArg,
        /// Public output channels per real channel (fake-filter ratio r).
        #[arg(long, default_value_t = 1.2)]
        ratio: f32,
        /// Seed for a reproducible conversion (default: OS randomness).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long = "input-shape")]
        input_shapes: Vec<String>,
    },
    /// Create a device key pair: DIR/device.key (secret) and DIR/device.pub.
    Keygen {
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Describe a model (ops, parameters, FLOPs per layer, linear layers) or a package
    /// (public layers; with --key also the trusted core's memory).
    Inspect {
        model: PathBuf,
        #[arg(long = "input-shape")]
        input_shapes: Vec<String>,
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Classify the orientation of two bundled real text-line crops with the bundled
    /// PP-OCR direction classifier.
    Demo,
    /// Time plain vs secure inference (and optionally ONNX Runtime / LiteRT) on one model.
    Bench(shadownet::bench::BenchArgs),
    /// Run the published attacks (fake-partner, mask-reuse) against a package and score
    /// them against the original model.
    Attack(shadownet::attack::AttackArgs),
    /// Compare a model's every intermediate output against ONNX Runtime and/or the secure
    /// pipeline of a package (opened with the device key), to find where they diverge.
    Trace(shadownet::trace::TraceArgs),
    /// Serve the trusted core on stdin/stdout (started by `run --enclave process`).
    #[command(hide = true)]
    Enclave {
        #[arg(long)]
        key: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The trusted core gets one thread, as it would on a TEE.
    let threads = if matches!(cli.cmd, Cmd::Enclave { .. }) {
        Some(1)
    } else {
        cli.threads
    };
    if let Some(n) = threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
        {
            eprintln!("error: cannot start {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    match dispatch(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_shapes(v: &[String]) -> Result<Vec<(String, Vec<usize>)>> {
    v.iter().map(|s| plain::parse_input_shape(s)).collect()
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run {
            model,
            inputs,
            output,
            input_shapes,
            key,
            enclave,
            allow_slow_masks,
            accelerator,
        } => {
            if model.is_dir() {
                let key =
                    key.context("running a package needs the device secret key: --key DEVICE.key")?;
                cmd_run_secure(
                    &model,
                    &key,
                    enclave,
                    accelerator,
                    allow_slow_masks,
                    &inputs,
                    output.as_deref(),
                )
            } else {
                cmd_run(&model, &inputs, output.as_deref(), &input_shapes)
            }
        }
        Cmd::Convert {
            model,
            to,
            output,
            scheme,
            ratio,
            seed,
            input_shapes,
        } => {
            let device_pub = keys::read_public_key(&to)?;
            let m = load(&model, &parse_shapes(&input_shapes)?)?;
            let opts = shadownet_protect::Options {
                scheme: match scheme {
                    SchemeArg::Shadownet => shadownet_trusted::Scheme::ShadowNet,
                    SchemeArg::Hardened => shadownet_trusted::Scheme::Hardened,
                },
                ratio,
                seed,
                ..Default::default()
            };
            let t0 = Instant::now();
            let n = secure::convert_to_dir(&m.graph, &device_pub, &output, &opts, true)?;
            println!(
                "wrote package {} ({n} outsourced layers, scheme {}) in {:.1} s",
                output.display(),
                opts.scheme.name(),
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Keygen { output, force } => {
            let (sk, pk) = keys::keygen(&output, force)?;
            println!("secret key (keep on the device): {}", sk.display());
            println!("public key (give to vendors):    {}", pk.display());
            Ok(())
        }
        Cmd::Inspect {
            model,
            input_shapes,
            key,
        } => {
            if model.is_dir() {
                return cmd_inspect_package(&model, key.as_deref());
            }
            let m = load(&model, &parse_shapes(&input_shapes)?)?;
            print!("{}", plain::inspect(&m));
            Ok(())
        }
        Cmd::Demo => cmd_demo(),
        Cmd::Precompute {
            package,
            key,
            count,
            enclave,
        } => {
            let mut sm = secure::open_cpu(&package, &key, enclave)?;
            let t0 = Instant::now();
            let mut last = 0;
            let bytes = sm.precompute(count, &mut |done, total| {
                // A line per tenth, so long runs show progress in logs too.
                if done * 10 / total.max(1) != last || done == total {
                    last = done * 10 / total.max(1);
                    eprintln!("precompute: {done}/{total}");
                }
            })?;
            let dt = t0.elapsed().as_secs_f64();
            println!(
                "{count} one-time mask sets added ({} in the pool): {bytes} bytes and {:.1} ms of trusted-core time per inference",
                sm.pool_len(),
                1e3 * dt / count.max(1) as f64
            );
            Ok(())
        }
        Cmd::Attack(a) => shadownet::attack::cmd(&a),
        Cmd::Bench(args) => shadownet::bench::run(&args),
        Cmd::Trace(args) => shadownet::trace::run(&args),
        Cmd::Enclave { key } => {
            let k = keys::read_secret_key(&key)?;
            let platform = shadownet_untrusted::FilePlatform::beside_key(&key);
            let mut core = shadownet_trusted::TrustedCore::new(k, Box::new(platform));
            // The pipes as plain files: stdout's line buffering would cut binary frames at
            // every 0x0A byte.
            use std::os::fd::AsFd;
            let pipe = |fd: std::io::Result<std::os::fd::OwnedFd>| {
                fd.map(std::fs::File::from)
                    .context("cannot take over the enclave pipes")
            };
            let mut input = std::io::BufReader::with_capacity(
                1 << 16,
                pipe(std::io::stdin().as_fd().try_clone_to_owned())?,
            );
            let mut output = pipe(std::io::stdout().as_fd().try_clone_to_owned())?;
            shadownet_untrusted::enclave::serve(&mut core, &mut input, &mut output)
                .context("enclave channel failed")
        }
    }
}

fn load(path: &Path, shapes: &[(String, Vec<usize>)]) -> Result<Model> {
    shadownet_import::load_model(path, shapes)
        .with_context(|| format!("cannot load model {}", path.display()))
}

fn write_outputs(output: Option<&Path>, names: &[String], outs: &[Tensor]) -> Result<()> {
    for (n, t) in names.iter().zip(outs) {
        println!("{}", plain::summarize(n, t));
    }
    if let Some(p) = output {
        let arrays: Vec<(String, &Tensor)> = names.iter().cloned().zip(outs.iter()).collect();
        npy::write_npz(p, &arrays)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn cmd_run(
    model: &Path,
    inputs: &[String],
    output: Option<&Path>,
    input_shapes: &[String],
) -> Result<()> {
    let mut shapes = parse_shapes(input_shapes)?;
    let args: Vec<_> = inputs.iter().map(|s| plain::parse_input_arg(s)).collect();
    // Free dimensions default to the given arrays' shapes.
    let m = match load(model, &shapes) {
        Ok(m) => m,
        Err(e) if shapes.is_empty() && dynamic_input_name(&e).is_some() => {
            for (name, path) in &args {
                let t = npy::read_npy(path)?;
                let name = name
                    .clone()
                    .or_else(|| dynamic_input_name(&e))
                    .unwrap_or_default();
                shapes.push((name, t.shape));
            }
            load(model, &shapes)?
        }
        Err(e) => return Err(e),
    };
    let bound = plain::bind_inputs(&plain::input_names(&m), &args)?;
    let t0 = Instant::now();
    let outs = plain::run(&m, &bound)?;
    eprintln!("inference took {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
    write_outputs(output, &plain::output_names(&m), &outs)
}

fn cmd_run_secure(
    pkg: &Path,
    key: &Path,
    mode: EnclaveMode,
    accelerator: shadownet::accel::AcceleratorKind,
    allow_slow_masks: bool,
    inputs: &[String],
    output: Option<&Path>,
) -> Result<()> {
    let accel = shadownet::accel::make(accelerator)?;
    if accelerator != shadownet::accel::AcceleratorKind::Cpu {
        eprintln!("accelerator: {}", accel.device);
    }
    let mut sm = secure::open(pkg, key, mode, accel.backend)?;
    sm.allow_slow_masks = allow_slow_masks;
    let names: Vec<String> = sm.public.inputs.iter().map(|(n, _)| n.clone()).collect();
    let args: Vec<_> = inputs.iter().map(|s| plain::parse_input_arg(s)).collect();
    let bound = plain::bind_inputs(&names, &args)?;
    for ((name, t), (_, want)) in bound.iter().zip(&sm.public.inputs) {
        if &t.shape != want {
            bail!(
                "input '{name}' has shape {:?}, but the model expects {want:?}",
                t.shape
            );
        }
    }
    let t0 = Instant::now();
    let outs = sm.infer(bound.into_iter().map(|(_, t)| t).collect())?;
    eprintln!(
        "secure inference took {:.2} ms ({} accelerator round trips)",
        t0.elapsed().as_secs_f64() * 1e3,
        sm.last_round_trips
    );
    let out_names: Vec<String> = sm.public.outputs.iter().map(|(n, _)| n.clone()).collect();
    write_outputs(output, &out_names, &outs)
}

fn cmd_inspect_package(pkg: &Path, key: Option<&Path>) -> Result<()> {
    let public_path = pkg.join(shadownet_trusted::format::PUBLIC_FILE);
    let bytes = std::fs::read(&public_path)
        .with_context(|| format!("cannot read {}", public_path.display()))?;
    let p = shadownet_trusted::decode_public(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", public_path.display()))?;
    println!("package: {} (scheme {})", pkg.display(), p.scheme.name());
    println!(
        "conversion id: {}",
        p.conversion_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    for (n, s) in &p.inputs {
        println!("input  {n} {s:?}");
    }
    for (n, s) in &p.outputs {
        println!("output {n} {s:?}");
    }
    let weights: usize = p.layers.iter().map(|l| l.weight.len()).sum();
    println!(
        "public part: {} bytes, {} outsourced layers, {weights} public weights",
        bytes.len(),
        p.layers.len()
    );
    for (k, l) in p.layers.iter().enumerate() {
        println!(
            "  L{k:<4} {:<14} weight {:?}  {:?} -> {:?}",
            l.kind.op().name(),
            l.weight.shape,
            l.input_shape,
            l.output_shape
        );
    }
    match key {
        Some(k) => {
            let sm = secure::open_cpu(pkg, k, EnclaveMode::Inproc)?;
            let total = sm.resident_bytes + sm.peak_activation_bytes;
            println!(
                "trusted core: {} bytes resident (secret model), {} bytes peak activations, {} bytes peak in all ({:.2} MiB)",
                sm.resident_bytes,
                sm.peak_activation_bytes,
                total,
                total as f64 / (1 << 20) as f64
            );
        }
        None => {
            println!("trusted core memory: pass --key DEVICE.key to open the secret and report it")
        }
    }
    Ok(())
}

fn dynamic_input_name(e: &anyhow::Error) -> Option<String> {
    match e.downcast_ref::<shadownet_import::Error>() {
        Some(shadownet_import::Error::DynamicInput { name, .. }) => Some(name.clone()),
        _ => None,
    }
}

fn cmd_demo() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/demo");
    let dir = dir.canonicalize().unwrap_or(dir);
    let model_path = dir.join("ppocr_cls.onnx");
    let m = load(&model_path, &[("x".to_string(), vec![1, 3, 48, 192])])?;
    println!(
        "model: {} (PP-OCR mobile v2.0 text direction classifier, Apache-2.0)",
        model_path.display()
    );
    for (file, truth) in [("text_upright.npy", "0°"), ("text_flipped.npy", "180°")] {
        let x = npy::read_npy(&dir.join(file))?;
        let t0 = Instant::now();
        let y = plain::run(&m, &[("x".to_string(), x)])?;
        let p = &y[0].data;
        let (label, conf) = if p[0] >= p[1] {
            ("0°", p[0])
        } else {
            ("180°", p[1])
        };
        println!(
            "{file}: predicted {label} (p = {conf:.4}), truth {truth}  [{:.2} ms]",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

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
        /// Packages only: append everything the accelerator received and returned to DIR
        /// (.npy per layer and run, manifest.json; README "Auditing").
        #[arg(long, value_name = "DIR")]
        record_untrusted: Option<PathBuf>,
        /// With --record-untrusted: the source model, to name each layer's node and weight.
        #[arg(long, value_name = "MODEL")]
        reference: Option<PathBuf>,
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
    /// Convert a model into a protected package sealed to one device and signed by the
    /// vendor.
    Convert {
        model: PathBuf,
        /// The device's public key (from `shadownet keygen`).
        #[arg(long)]
        to: PathBuf,
        /// The vendor's signing key (from `shadownet keygen --vendor`); the device must
        /// have been provisioned to trust its public key.
        #[arg(long = "sign-with")]
        sign_with: PathBuf,
        /// Package directory to write.
        #[arg(long, short = 'o')]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "hardened")]
        scheme: SchemeArg,
        /// Public output channels per real channel (fakes beside the real filters).
        #[arg(long, default_value_t = 1.2)]
        ratio: f32,
        /// Hardened: largest group of filters mixed together.
        #[arg(long, default_value_t = 16)]
        group: usize,
        /// Layers to run whole inside the TEE, by node name (comma-separated or repeated);
        /// `none` keeps none, not even the scheme's default (hardened: depthwise convs);
        /// `auto` audits the conversion with the static attacks (`attack --kind unmix`,
        /// scored against the real weights) and keeps every layer where one beats the
        /// floor, converting again until none does (PKG/audit.json says why).
        #[arg(long = "keep-in-tee", value_delimiter = ',')]
        keep_in_tee: Vec<String>,
        /// Seed the transform's randomness, for reproducible tests. INSECURE: whoever knows
        /// the seed can redo the transform (keys and ids still come from the OS).
        #[arg(long = "insecure-reproducible-seed")]
        insecure_seed: Option<u64>,
        #[arg(long = "input-shape")]
        input_shapes: Vec<String>,
    },
    /// Create a key pair: a device's (DIR/device.key, secret, and DIR/device.pub), or with
    /// --vendor a vendor's signing key (DIR/vendor.key and DIR/vendor.pub).
    Keygen {
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Make a vendor signing key instead of a device key.
        #[arg(long)]
        vendor: bool,
        /// Device keys: vendor public keys the device trusts (repeatable; provisioning).
        #[arg(long = "trust")]
        trust: Vec<PathBuf>,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Provision a device to trust more vendor public keys.
    Trust {
        /// The device's key file.
        #[arg(long)]
        key: PathBuf,
        /// Vendor public keys (from `shadownet keygen --vendor`).
        #[arg(required = true)]
        vendors: Vec<PathBuf>,
    },
    /// Describe a model (ops, parameters, FLOPs per layer, linear layers) or a package
    /// (public layers; with --key also the trusted core's memory).
    Inspect {
        model: PathBuf,
        #[arg(long = "input-shape")]
        input_shapes: Vec<String>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// Packages only: write every public layer's weights to DIR (.npy, manifest.json).
        #[arg(long, value_name = "DIR")]
        export_public: Option<PathBuf>,
        /// With --export-public: the source model, to name each layer's node and weight.
        #[arg(long, value_name = "MODEL")]
        reference: Option<PathBuf>,
    },
    /// Classify the orientation of two bundled real text-line crops with the bundled
    /// PP-OCR direction classifier.
    Demo,
    /// Time plain vs secure inference (and optionally ONNX Runtime / LiteRT) on one model.
    Bench(shadownet::bench::BenchArgs),
    /// Compare a model's every intermediate output against ONNX Runtime and/or the secure
    /// pipeline of a package (opened with the device key), to find where they diverge.
    Trace(shadownet::trace::TraceArgs),
    /// Run the attack suite (fake-partner, mask-reuse, averaging, unmix, seed, ...)
    /// against a package and score it against the original model (docs/security.md).
    Attack(shadownet::attack::AttackArgs),
}

fn main() -> ExitCode {
    shadownet_enclave::keep_freed_memory();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
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
            record_untrusted,
            reference,
        } => {
            if !model.is_dir() && record_untrusted.is_some() {
                bail!("--record-untrusted records a package's accelerator traffic: {} is a plain model", model.display());
            }
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
                    record_untrusted
                        .as_deref()
                        .map(|d| (d, reference.as_deref())),
                )
            } else {
                cmd_run(&model, &inputs, output.as_deref(), &input_shapes)
            }
        }
        Cmd::Convert {
            model,
            to,
            sign_with,
            output,
            scheme,
            ratio,
            group,
            keep_in_tee,
            insecure_seed,
            input_shapes,
        } => {
            let device_pub = keys::read_device_public(&to)?;
            let vendor = keys::read_vendor_secret(&sign_with)?;
            let m = load(&model, &parse_shapes(&input_shapes)?)?;
            let auto = matches!(keep_in_tee.as_slice(), [one] if one == "auto");
            let keep = match keep_in_tee.as_slice() {
                [] => shadownet_protect::Keep::Default,
                [one] if one == "auto" => shadownet_protect::Keep::Default,
                [one] if one == "none" => shadownet_protect::Keep::None,
                names => shadownet_protect::Keep::Names(names.to_vec()),
            };
            let opts = shadownet_protect::Options {
                scheme: match scheme {
                    SchemeArg::Shadownet => shadownet_trusted::Scheme::ShadowNet,
                    SchemeArg::Hardened => shadownet_trusted::Scheme::Hardened,
                },
                ratio,
                group,
                insecure_seed,
                keep,
                ..Default::default()
            };
            if insecure_seed.is_some() {
                eprintln!("warning: --insecure-reproducible-seed: anyone who knows the seed can redo this package's transform; never ship it");
            }
            let t0 = Instant::now();
            let c = if auto {
                let (c, audit) =
                    shadownet::audit::convert_auto(&m.graph, &opts, &device_pub, &vendor, &output)?;
                println!(
                    "audit: {} outsourced layers at the floor of {} after {} conversion(s) (written to {})",
                    audit.outsourced.len(),
                    audit.methods.join(", "),
                    audit.rounds,
                    output.join(shadownet::audit::AUDIT_FILE).display()
                );
                c
            } else {
                let c = secure::convert(&m.graph, &opts, true)?;
                secure::write(&c, &device_pub, &vendor, &output)?;
                // A report of an earlier `auto` conversion no longer describes this one.
                let stale = output.join(shadownet::audit::AUDIT_FILE);
                if stale.exists() {
                    std::fs::remove_file(&stale)?;
                }
                c
            };
            println!(
                "wrote package {} ({} outsourced layers, {} kept in the TEE, scheme {}) in {:.1} s",
                output.display(),
                c.header.layers.len(),
                c.kept.len(),
                opts.scheme.name(),
                t0.elapsed().as_secs_f64()
            );
            for (name, why) in &c.kept {
                println!("  kept in the TEE: {name} ({why})");
            }
            Ok(())
        }
        Cmd::Keygen {
            output,
            vendor,
            trust,
            force,
        } => {
            if vendor {
                if !trust.is_empty() {
                    bail!(
                        "--trust pins vendor keys into a device key; it does not go with --vendor"
                    );
                }
                let (sk, pk) = keys::vendor_keygen(&output, force)?;
                println!("vendor signing key (keep it secret): {}", sk.display());
                println!("vendor public key (pin into devices): {}", pk.display());
            } else {
                let pins = trust
                    .iter()
                    .map(|p| keys::read_vendor_public(p))
                    .collect::<Result<Vec<_>>>()?;
                let (sk, pk) = keys::device_keygen(&output, &pins, force)?;
                println!("device key (stays on the device): {}", sk.display());
                println!("device public key (give to vendors): {}", pk.display());
                if pins.is_empty() {
                    println!("note: this device trusts no vendor yet; add one with `shadownet trust --key {} VENDOR.pub`", sk.display());
                } else {
                    println!("trusts {} vendor key(s)", pins.len());
                }
            }
            Ok(())
        }
        Cmd::Trust { key, vendors } => {
            let pins = vendors
                .iter()
                .map(|p| keys::read_vendor_public(p))
                .collect::<Result<Vec<_>>>()?;
            let n = keys::device_trust(&key, &pins)?;
            println!("{} now trusts {n} vendor key(s)", key.display());
            Ok(())
        }
        Cmd::Inspect {
            model,
            input_shapes,
            key,
            export_public,
            reference,
        } => {
            if let Some(dir) = &export_public {
                if !model.is_dir() {
                    bail!(
                        "--export-public exports a package's public layers: {} is a plain model",
                        model.display()
                    );
                }
                return cmd_export_public(&model, dir, reference.as_deref());
            }
            if model.is_dir() {
                return cmd_inspect_package(&model, key.as_deref());
            }
            // Every unsupported op up front, not just the first one an import trips on.
            let missing = shadownet_import::unsupported_ops(&model)?;
            if !missing.is_empty() {
                let list: Vec<String> = missing
                    .iter()
                    .map(|u| format!("  {} ({} nodes, first '{}')", u.op, u.count, u.first_node))
                    .collect();
                bail!(
                    "{} uses {} unsupported ops (see docs/ops.md):\n{}",
                    model.display(),
                    missing.len(),
                    list.join("\n")
                );
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
        Cmd::Bench(args) => shadownet::bench::run(&args),
        Cmd::Trace(args) => shadownet::trace::run(&args),
        Cmd::Attack(args) => shadownet::attack::cmd(&args),
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

#[allow(clippy::too_many_arguments)]
fn cmd_run_secure(
    pkg: &Path,
    key: &Path,
    mode: EnclaveMode,
    accelerator: shadownet::accel::AcceleratorKind,
    allow_slow_masks: bool,
    inputs: &[String],
    output: Option<&Path>,
    record: Option<(&Path, Option<&Path>)>,
) -> Result<()> {
    let accel = shadownet::accel::make(accelerator)?;
    if accelerator != shadownet::accel::AcceleratorKind::Cpu {
        eprintln!("accelerator: {}", accel.device);
    }
    let (backend, seen): (Box<dyn shadownet_untrusted::Accelerator>, _) = if record.is_some() {
        let spy = shadownet_untrusted::SpyAccelerator::new(accel.backend);
        let seen = spy.seen.clone();
        (Box::new(spy), Some(seen))
    } else {
        (accel.backend, None)
    };
    let mut sm = secure::open(pkg, key, mode, backend)?;
    sm.allow_slow_masks = allow_slow_masks;
    let names: Vec<String> = sm
        .public
        .header
        .inputs
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let args: Vec<_> = inputs.iter().map(|s| plain::parse_input_arg(s)).collect();
    let bound = plain::bind_inputs(&names, &args)?;
    for ((name, t), (_, want)) in bound.iter().zip(&sm.public.header.inputs) {
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
        sm.last.round_trips
    );
    if let (Some((dir, reference)), Some(seen)) = (record, seen) {
        let g = load_reference(reference, &sm.public.header.inputs)?;
        let sources = shadownet::record::sources(g.as_ref(), &sm.public)?;
        let observed = seen
            .lock()
            .map_err(|_| anyhow::anyhow!("spy records poisoned"))?
            .clone();
        let run = shadownet::record::record_run(dir, pkg, &sm.public, &sources, &observed)?;
        eprintln!(
            "recorded run {run} of the accelerator traffic in {}",
            dir.display()
        );
    }
    let out_names: Vec<String> = sm
        .public
        .header
        .outputs
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    write_outputs(output, &out_names, &outs)
}

/// The source model named by `--reference`, loaded with the package's input shapes.
fn load_reference(
    reference: Option<&Path>,
    inputs: &[(String, Vec<usize>)],
) -> Result<Option<shadownet_ir::Graph>> {
    reference
        .map(|p| {
            shadownet_import::load_model(p, inputs)
                .map(|m| m.graph)
                .with_context(|| format!("cannot load reference model {}", p.display()))
        })
        .transpose()
}

fn cmd_export_public(pkg: &Path, dir: &Path, reference: Option<&Path>) -> Result<()> {
    let path = pkg.join(shadownet_trusted::format::PUBLIC_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (public, _) = shadownet_untrusted::PublicModel::decode(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let g = load_reference(reference, &public.header.inputs)?;
    let sources = shadownet::record::sources(g.as_ref(), &public)?;
    let m = shadownet::record::export_public(dir, pkg, &public, &sources)?;
    println!("exported the public layers to {}", m.display());
    Ok(())
}

fn cmd_inspect_package(pkg: &Path, key: Option<&Path>) -> Result<()> {
    let public_path = pkg.join(shadownet_trusted::format::PUBLIC_FILE);
    let bytes = std::fs::read(&public_path)
        .with_context(|| format!("cannot read {}", public_path.display()))?;
    let (p, header_len) = shadownet_untrusted::PublicModel::decode(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", public_path.display()))?;
    let h = &p.header;
    println!(
        "package: {} (scheme {}, format v3)",
        pkg.display(),
        h.scheme.name()
    );
    println!(
        "package id: {}",
        h.package_id
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let sig = std::fs::read(pkg.join(shadownet_trusted::format::SIGNATURE_FILE))
        .ok()
        .and_then(|b| shadownet_trusted::format::SignatureFile::decode(&b).ok());
    match sig {
        Some(s) => println!(
            "signed by vendor key {}",
            s.vendor
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        None => {
            println!("signature: missing or corrupt (the trusted core will refuse the package)")
        }
    }
    for (n, s) in &h.inputs {
        println!("input  {n} {s:?}");
    }
    for (n, s) in &h.outputs {
        println!("output {n} {s:?}");
    }
    let weights: usize = h
        .layers
        .iter()
        .map(|l| l.weight.shape.iter().product::<usize>())
        .sum();
    println!(
        "public part: {} bytes ({header_len} header), {} outsourced layers, {weights} public weights",
        bytes.len(),
        h.layers.len()
    );
    for (k, l) in h.layers.iter().enumerate() {
        println!(
            "  L{k:<4} {:<14} weight {:?} {:?}  {:?} -> {:?}",
            l.kind.op().name(),
            l.weight.dtype,
            l.weight.shape,
            l.input_shape,
            l.output_shape
        );
    }
    match shadownet::audit::read(pkg)? {
        Some(a) => {
            println!(
                "vendor's audit (audit.json, unsigned): {} rounds of {} (groups of {:?}); kept in the TEE:",
                a.rounds,
                a.methods.join(", "),
                a.group_sizes
            );
            for (name, why) in &a.kept {
                println!("  {name}: {why}");
            }
            let worst = a.outsourced.iter().max_by(|x, y| {
                (x.recovered, x.mean_cos - x.floor_mean_cos)
                    .partial_cmp(&(y.recovered, y.mean_cos - y.floor_mean_cos))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            if let Some(w) = worst {
                println!(
                    "  outsourced layers: all {} at the floor; most recovered: {} {:.1}% (floor {:.1}%)",
                    a.outsourced.len(),
                    w.node,
                    100.0 * w.recovered,
                    100.0 * w.floor_recovered
                );
            }
        }
        None => println!("kept layers: not recorded (converted without --keep-in-tee auto)"),
    }
    match key {
        Some(k) => {
            // Measured, not computed: the enclave process's counting allocator after one
            // inference (masks made on the spot, so the pool is left alone).
            let mut sm = secure::open_cpu(pkg, k, EnclaveMode::Process)?;
            sm.allow_slow_masks = true;
            let opened = sm.enclave_memory()?.unwrap_or_default();
            let zeros = h.inputs.iter().map(|(_, s)| Tensor::zeros(s)).collect();
            sm.infer(zeros)?;
            let after = sm.enclave_memory()?.unwrap_or_default();
            println!(
                "trusted core: {} bytes of resident model ({:.2} MiB); enclave process heap: {:.2} MiB live once opened, {:.2} MiB peak over one inference (counting allocator)",
                sm.resident_bytes,
                sm.resident_bytes as f64 / (1 << 20) as f64,
                opened.live as f64 / (1 << 20) as f64,
                after.peak as f64 / (1 << 20) as f64
            );
        }
        None => println!(
            "trusted core memory: pass --key DEVICE.key to open the package and measure it"
        ),
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
    use shadownet_trusted::Payload;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/demo");
    let dir = dir.canonicalize().unwrap_or(dir);
    let model_path = dir.join("ppocr_cls.onnx");
    let m = load(&model_path, &[("x".to_string(), vec![1, 3, 48, 192])])?;
    println!(
        "model: {} (PP-OCR mobile v2.0 text direction classifier, Apache-2.0)",
        model_path.display()
    );
    // 1. Provisioning: a vendor key, and a device that trusts it (a temporary directory).
    let tmp = std::env::temp_dir().join(format!("shadownet-demo-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(tmp.clone());
    let dev = keys::TestDevice::new(&tmp)?;
    println!(
        "provisioned a device key and a vendor key the device trusts in {}",
        tmp.display()
    );
    // 2. The vendor converts the model for that device, hardened, and signs it.
    let t0 = Instant::now();
    let opts = shadownet_protect::Options::default();
    let c = secure::convert(&m.graph, &opts, false)?;
    let pkg = tmp.join("pkg");
    secure::write(&c, &dev.device_pub, &dev.vendor_secret, &pkg)?;
    println!(
        "converted (scheme {}): {} linear layers outsourced, {} kept in the TEE, in {:.2} s",
        opts.scheme.name(),
        c.header.layers.len(),
        c.kept.len(),
        t0.elapsed().as_secs_f64()
    );
    // 3. The device opens it in the enclave process; the host's accelerator is watched.
    let spy = shadownet_untrusted::SpyAccelerator::new(shadownet_untrusted::CpuAccelerator::new());
    let seen = spy.seen.clone();
    let mut sm = secure::open(&pkg, &dev.device_key, EnclaveMode::Process, Box::new(spy))?;
    let t0 = Instant::now();
    sm.precompute(4, &mut |_, _| {})?;
    println!(
        "the trusted core precomputed 4 one-time mask sets offline in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    // 4. Plain and secure inference side by side.
    for (file, truth) in [("text_upright.npy", "0°"), ("text_flipped.npy", "180°")] {
        let x = npy::read_npy(&dir.join(file))?;
        // An untimed run of each first, so both are timed warm.
        plain::run(&m, &[("x".to_string(), x.clone())])?;
        sm.infer(vec![x.clone()])?;
        let t0 = Instant::now();
        let y = plain::run(&m, &[("x".to_string(), x.clone())])?;
        let plain_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let ys = sm.infer(vec![x])?;
        let secure_ms = t0.elapsed().as_secs_f64() * 1e3;
        let label = |p: &[f32]| {
            if p[0] >= p[1] {
                ("0°", p[0])
            } else {
                ("180°", p[1])
            }
        };
        let (pl, pc) = label(&y[0].data);
        let (sl, sc) = label(&ys[0].data);
        println!(
            "{file}: truth {truth} | plain {pl} (p = {pc:.4}) in {plain_ms:.2} ms | secure {sl} (p = {sc:.4}) in {secure_ms:.2} ms ({:.1}x)",
            secure_ms / plain_ms
        );
    }
    // 5. What the untrusted side saw of the first outsourced layer's input.
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("spy records poisoned"))?;
    if let Some(first) = seen.first() {
        if let Payload::Ring(r) = &first.input {
            let n = r.data.len() as f64;
            let top = r.data.iter().filter(|&&v| v >> 63 == 1).count() as f64 / n;
            let mean = r
                .data
                .iter()
                .map(|&v| v as f64 / u64::MAX as f64)
                .sum::<f64>()
                / n;
            println!(
                "the accelerator saw layer {}'s input as {} values spread over the whole ring Z/2^64 (mean {:.3} of the range, top bit set in {:.1}%): a one-time mask hides the image",
                first.layer,
                r.data.len(),
                mean,
                100.0 * top
            );
        }
    }
    Ok(())
}

/// A temporary directory removed when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

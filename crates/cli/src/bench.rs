//! `shadownet bench`: plain vs secure inference latency of one model in one process,
//! optionally against ONNX Runtime / LiteRT (through `scripts/bench_ref.py`).
//!
//! The model is converted in memory once per scheme and sealed to a fresh device key; each
//! package is opened with the trusted core in this process and in a child process. The
//! variants are timed one after another; within a variant every timed secure run follows
//! its own timed plain run, each right after an untimed run of its own, and the variant's
//! ratio is its median over the median of those plain runs. A shared plain median, or
//! variants interleaved run by run, let one variant's aftermath (a child process freeing
//! memory, a plain run after a heavy variant) land on another's numbers.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use shadownet_ir::Tensor;
use shadownet_trusted::Scheme;
use shadownet_untrusted::SecureModel;

use crate::accel::{AcceleratorKind, SplitReader};
use crate::secure::{self, EnclaveMode};
use crate::{keys, plain};

/// Every scheme the bench converts to. A new scheme only needs adding here.
pub const SCHEMES: &[Scheme] = &[Scheme::ShadowNet, Scheme::Hardened];

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The model (.onnx or .tflite).
    pub model: PathBuf,
    /// Timed runs per variant.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Untimed runs per variant before the timed ones.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Print one JSON object with every number instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also time ONNX Runtime (.onnx) or LiteRT (.tflite) via scripts/bench_ref.py.
    #[arg(long)]
    pub reference: bool,
    /// Size of an input with free dimensions: NAME=1,3,224,224 (repeatable).
    #[arg(long = "input-shape")]
    pub input_shapes: Vec<String>,
    /// Seed of the N(0,1) input and of the conversion.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Conversion: public output channels per real channel.
    #[arg(long, default_value_t = 1.2)]
    pub ratio: f32,
    /// Conversion (hardened): largest group of filters mixed together.
    #[arg(long, default_value_t = 16)]
    pub group: usize,
    /// Schemes to time (default: all).
    #[arg(long, value_delimiter = ',')]
    pub schemes: Vec<String>,
    /// Where the trusted core runs: inproc, process (default: both).
    #[arg(long, value_delimiter = ',')]
    pub enclaves: Vec<String>,
    /// What runs the secure variants' public layers. With gpu the report splits the
    /// accelerator's time into upload, compute and download.
    #[arg(long, value_enum, default_value = "cpu")]
    pub accelerator: AcceleratorKind,
    /// Plain engine only, as a long-lived worker of `scripts/bench.sh --peers`: compile
    /// once, then answer one command per stdin line (`warm N`, `time`, `save DIR`,
    /// `profile N`, `quit`).
    #[arg(long)]
    pub serve: bool,
    /// With --serve: an input array, NAME=FILE.npy or FILE.npy (repeatable; default a
    /// seeded N(0,1) input).
    #[arg(long = "input")]
    pub inputs: Vec<String>,
}

/// Latency summary in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Stats {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                mean: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        Stats {
            median,
            min: v[0],
            max: v[n - 1],
            mean: v.iter().sum::<f64>() / n as f64,
        }
    }

    fn json(&self) -> Value {
        json!({
            "median_ms": self.median,
            "min_ms": self.min,
            "max_ms": self.max,
            "mean_ms": self.mean,
        })
    }
}

/// A seeded N(0,1) source (SplitMix64 + Box–Muller): reproducible, no extra dependency.
struct Normal(u64);

impl Normal {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        // (0, 1]: never 0, so ln() is finite.
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
    fn sample(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

fn random_input(shape: &[usize], rng: &mut Normal) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|_| rng.sample()).collect();
    Tensor::new(shape.to_vec(), data).map_err(|e| anyhow::anyhow!("input tensor: {e}"))
}

/// One secure configuration being timed.
struct SecureVariant {
    name: String,
    scheme: Scheme,
    enclave: &'static str,
    model: SecureModel,
    outsourced_layers: usize,
    convert_s: f64,
    /// Hardened: trusted-core time to precompute one inference's masks, and their size.
    precompute_ms_per_inference: Option<f64>,
    pool_bytes_per_inference: Option<usize>,
    samples: Vec<f64>,
    /// The plain run timed just before each of this variant's timed runs.
    paired_plain: Vec<f64>,
    /// Accelerator time per timed run, and the rest (trusted core, transport, host).
    accel: Vec<f64>,
    rest: Vec<f64>,
    /// Time inside enclave calls per timed run (the core, and the transport in process).
    enclave_ms: Vec<f64>,
    /// Paper scheme: the values the trusted pass restores per inference and the bytes it
    /// moves (see [`paper_pass`]).
    pass: Option<(u64, u64)>,
    max_rel_err: f32,
    kept_layers: usize,
    /// Peak heap of the enclave process (counting allocator), process mode only.
    /// The enclave process's heap peak while inferring (the secret model resident, the
    /// activations, the buffers of one layer).
    trusted_peak: Option<u64>,
    /// Its peak while opening the package and precomputing the pool.
    trusted_setup_peak: Option<u64>,
    /// GPU: reads the accelerator's [upload, compute, download] ms, and their samples.
    split: Option<SplitReader>,
    split_samples: Vec<[f64; 3]>,
}

/// A temporary directory removed on drop (holds the device key for the enclave process).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let d =
            std::env::temp_dir().join(format!("shadownet-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d)
            .with_context(|| format!("cannot create temporary directory {}", d.display()))?;
        Ok(TempDir(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rel_err(a: &[Tensor], b: &[Tensor]) -> f32 {
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        if x.shape != y.shape {
            return f32::INFINITY;
        }
        let scale = y
            .data
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let d = x
            .data
            .iter()
            .zip(&y.data)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        worst = worst.max(d / scale);
    }
    worst
}

/// What the paper scheme's trusted pass touches per inference: (values restored, bytes).
/// Per outsourced layer it reads the accelerator's result (every public channel, fakes
/// included, 4 bytes), writes each restored value (4), and with a fixed mask reads the
/// value's correction (4) and each input value's bf16 mask (2). Sealed chunks still
/// streamed are counted apart (they are opened, not just read).
fn paper_pass(c: &shadownet_protect::Converted) -> Option<(u64, u64)> {
    if c.header.scheme != Scheme::ShadowNet {
        return None;
    }
    let g = &c.secret.graph;
    let numel = |s: &[usize]| s.iter().product::<usize>() as u64;
    let (mut values, mut bytes) = (0u64, 0u64);
    for (pl, sl) in c.header.layers.iter().zip(&c.secret.layers) {
        let real = numel(g.shape(*g.nodes[sl.node as usize].outputs.first()?));
        let fixed = matches!(
            &sl.restore,
            shadownet_trusted::format::LayerRestore::Paper { fixed: Some(_), .. }
        );
        values += real;
        bytes += 4 * numel(&pl.output_shape) + 4 * real;
        if fixed {
            bytes += 4 * real + 2 * numel(&pl.input_shape);
        }
    }
    Some((values, bytes))
}

/// One thread's streaming bandwidth, GB/s: the best of five STREAM-triad passes
/// (a = b + s·c, 12 bytes an element) over 64 MiB arrays, the trusted pass's access
/// pattern (read the result and the correction, write the value).
fn stream_gbps() -> f64 {
    let n = 16 << 20;
    let (b, c) = (vec![1f32; n], vec![2f32; n]);
    let mut a = vec![0f32; n];
    let mut best = f64::MAX;
    for k in 0..5 {
        let s = 0.5 + k as f32;
        let t0 = Instant::now();
        for ((a, b), c) in a.iter_mut().zip(&b).zip(&c) {
            *a = b + s * c;
        }
        std::hint::black_box(&a);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    12.0 * n as f64 / best / 1e9
}

/// One thread's speed at opening sealed chunks (the trusted core's own function, into a
/// reused buffer as the core does), GB/s.
fn chunk_open_gbps() -> f64 {
    let key = [7u8; 32];
    let sealed = shadownet_trusted::crypto::seal_chunk(&key, 1, b"bench", &vec![3u8; 4 << 20]);
    let mut buf = Vec::new();
    let mut best = f64::MAX;
    for _ in 0..10 {
        let t0 = Instant::now();
        let r = shadownet_trusted::crypto::open_chunk_into(&key, 1, b"bench", &sealed, &mut buf);
        std::hint::black_box((&r, &buf));
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (4 << 20) as f64 / best / 1e9
}

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// Runs the benchmark and prints a table (or JSON with `--json`).
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.serve {
        return serve(args);
    }
    let report = bench(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Runs the benchmark and returns every number as JSON.
pub fn bench(args: &BenchArgs) -> Result<Value> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    // An accelerator this build lacks is an error before any conversion.
    crate::accel::make(args.accelerator)?;
    let threads = rayon::current_num_threads();
    let shapes = args
        .input_shapes
        .iter()
        .map(|s| plain::parse_input_shape(s))
        .collect::<Result<Vec<_>>>()?;
    let m = shadownet_import::load_model(&args.model, &shapes)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let g = &m.graph;
    let input_shapes: Vec<(String, Vec<usize>)> = g
        .inputs
        .iter()
        .map(|&i| (g.values[i].name.clone(), g.values[i].shape.clone()))
        .collect();
    let mut rng = Normal(args.seed ^ 0x5eed_5eed_5eed_5eed);
    let xs = input_shapes
        .iter()
        .map(|(_, s)| random_input(s, &mut rng))
        .collect::<Result<Vec<_>>>()?;
    // The plain engine as a user runs it: compiled once, then run.
    let mut plan = shadownet_cpu::Plan::compile(g).context("cannot compile the plain plan")?;
    let want = plan.run(&xs).context("plain inference failed")?;

    // One device (trusting one vendor) for every package; the enclave process reads its
    // key from a file.
    let tmp = TempDir::new()?;
    let dev = keys::TestDevice::new(&tmp.0)?;

    let mut variants: Vec<SecureVariant> = Vec::new();
    let mut device = String::from("cpu");
    for &scheme in SCHEMES {
        if !args.schemes.is_empty() && !args.schemes.iter().any(|s| s == scheme.name()) {
            continue;
        }
        let opts = shadownet_protect::Options {
            scheme,
            insecure_seed: Some(args.seed),
            ratio: args.ratio,
            group: args.group,
            ..Default::default()
        };
        eprintln!(
            "bench: converting {} with scheme {}",
            args.model.display(),
            scheme.name()
        );
        let t0 = Instant::now();
        let c = shadownet_protect::convert(g, &opts, &mut |_, _| {})?;
        let convert_s = t0.elapsed().as_secs_f64();
        let layers = c.header.layers.len();
        // The package goes to disk so hardened runs can draw on a precomputed mask pool,
        // as they would on a device.
        let pkg_dir = tmp.0.join(scheme.name());
        secure::write(&c, &dev.device_pub, &dev.vendor_secret, &pkg_dir)?;
        for mode in [EnclaveMode::Inproc, EnclaveMode::Process] {
            let mode_name = match mode {
                EnclaveMode::Inproc => "inproc",
                EnclaveMode::Process => "process",
            };
            if !args.enclaves.is_empty() && !args.enclaves.iter().any(|e| e == mode_name) {
                continue;
            }
            let made = crate::accel::make(args.accelerator)?;
            device = made.device.clone();
            let mut model = secure::open(&pkg_dir, &dev.device_key, mode, made.backend)
                .with_context(|| {
                    format!("cannot open the {} package ({mode_name})", scheme.name())
                })?;
            let (mut precompute_ms_per_inference, mut pool_bytes_per_inference) = (None, None);
            if scheme == Scheme::Hardened {
                // Two inferences per iteration: the untimed one and the timed one.
                let n = 2 * (args.warmup + args.runs);
                let t0 = Instant::now();
                let bytes = model.precompute(n, &mut |_, _| {})?;
                precompute_ms_per_inference = Some(ms(t0) / n.max(1) as f64);
                pool_bytes_per_inference = Some(bytes as usize);
            }
            variants.push(SecureVariant {
                name: format!("{}-{mode_name}", scheme.name()),
                scheme,
                enclave: mode_name,
                model,
                outsourced_layers: layers,
                kept_layers: c.kept.len(),
                convert_s,
                precompute_ms_per_inference,
                pool_bytes_per_inference,
                samples: Vec::with_capacity(args.runs),
                paired_plain: Vec::with_capacity(args.runs),
                accel: Vec::with_capacity(args.runs),
                rest: Vec::with_capacity(args.runs),
                enclave_ms: Vec::with_capacity(args.runs),
                pass: paper_pass(&c),
                max_rel_err: 0.0,
                trusted_peak: None,
                trusted_setup_peak: None,
                split: made.split,
                split_samples: Vec::with_capacity(args.runs),
            });
        }
    }

    eprintln!(
        "bench: {} warm-up + {} timed runs per variant, {threads} threads",
        args.warmup, args.runs
    );
    let mut plain_samples = Vec::with_capacity(args.runs * variants.len());
    // One variant at a time: what a heavy variant leaves behind (a child process freeing
    // memory, page cache work after spent pool entries are deleted) outlasts its own
    // runs, and interleaved with it MiniVGG's shadownet runs took 1.4 ms instead of 1.1.
    for v in &mut variants {
        // Opening and precomputing the pool end one peak window; the next is inference.
        v.trusted_setup_peak = v.model.enclave_memory()?.map(|m| m.peak);
        for it in 0..args.warmup + args.runs {
            let timed = it >= args.warmup;
            // An untimed plain run first brings the plain model's data into cache.
            plan.run(&xs).context("plain inference failed")?;
            let t0 = Instant::now();
            let y = plan.run(&xs).context("plain inference failed")?;
            let plain_dt = ms(t0);
            drop(y);
            if timed {
                plain_samples.push(plain_dt);
            }
            // Likewise an untimed secure run, so each is timed with its own data in cache,
            // as when a device runs the same model over and over.
            v.model
                .infer(xs.clone())
                .with_context(|| format!("{} inference failed", v.name))?;
            let inputs = xs.clone();
            if let Some(split) = &mut v.split {
                split(); // only the timed run's share
            }
            let t0 = Instant::now();
            let y = v
                .model
                .infer(inputs)
                .with_context(|| format!("{} inference failed", v.name))?;
            let dt = ms(t0);
            if it == 0 {
                v.max_rel_err = rel_err(&y, &want);
            }
            if timed {
                v.samples.push(dt);
                v.paired_plain.push(plain_dt);
                let accel = v.model.last.accel.as_secs_f64() * 1e3;
                v.accel.push(accel);
                v.rest.push(dt - accel);
                v.enclave_ms.push(v.model.last.enclave.as_secs_f64() * 1e3);
                if let Some(split) = &mut v.split {
                    v.split_samples.push(split());
                }
            }
        }
    }

    for v in &mut variants {
        v.trusted_peak = v.model.enclave_memory()?.map(|m| m.peak);
    }
    let plain_stats = Stats::of(&plain_samples);
    let (mem_gbps, aead_gbps) = (stream_gbps(), chunk_open_gbps());
    let mut reference = Value::Null;
    let mut reference_note = Value::Null;
    let mut ref_median = None;
    if args.reference {
        match run_reference(&args.model, &input_shapes, threads, args) {
            Ok(r) => {
                ref_median = r.get("median_ms").and_then(Value::as_f64);
                reference = r;
            }
            Err(e) => {
                let note = format!("reference runtime unavailable: {e:#}");
                eprintln!("bench: {note}");
                reference_note = Value::String(note);
            }
        }
    }
    let ratio = |a: f64, b: Option<f64>| match b {
        Some(b) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };

    let mut plain_json = plain_stats.json();
    plain_json["name"] = json!("plain");
    plain_json["ratio_vs_reference"] = ratio(plain_stats.median, ref_median);
    let mut out_variants = vec![plain_json];
    for v in &variants {
        let s = Stats::of(&v.samples);
        let mut j = s.json();
        j["name"] = json!(v.name);
        j["scheme"] = json!(v.scheme.name());
        j["enclave"] = json!(v.enclave);
        j["ratio_vs_plain"] = json!(s.median / Stats::of(&v.paired_plain).median);
        j["ratio_vs_reference"] = ratio(s.median, ref_median);
        j["accel_median_ms"] = json!(Stats::of(&v.accel).median);
        j["rest_median_ms"] = json!(Stats::of(&v.rest).median);
        let enclave_ms = Stats::of(&v.enclave_ms).median;
        j["enclave_median_ms"] = json!(enclave_ms);
        j["chunk_bytes_per_inference"] = json!(v.model.last.chunk_bytes);
        if let Some((values, bytes)) = v.pass {
            // The floor: the pass's bytes at one core's streaming bandwidth, plus the
            // chunks still streamed at one core's chunk-opening speed.
            let floor = bytes as f64 / (mem_gbps * 1e6)
                + v.model.last.chunk_bytes as f64 / (aead_gbps * 1e6);
            j["restored_values"] = json!(values);
            j["pass_bytes"] = json!(bytes);
            j["pass_bytes_per_value"] = json!(bytes as f64 / values.max(1) as f64);
            j["floor_ms"] = json!(floor);
        }
        j["round_trips"] = json!(v.model.last.round_trips);
        j["outsourced_layers"] = json!(v.outsourced_layers);
        j["kept_layers"] = json!(v.kept_layers);
        j["resident_bytes"] = json!(v.model.resident_bytes);
        j["trusted_peak_bytes"] = json!(v.trusted_peak);
        j["trusted_setup_peak_bytes"] = json!(v.trusted_setup_peak);
        j["trusted_mib"] = json!(v.trusted_peak.map(|b| b as f64 / (1u64 << 20) as f64));
        j["convert_s"] = json!(v.convert_s);
        j["precompute_ms_per_inference"] = json!(v.precompute_ms_per_inference);
        j["pool_bytes_per_inference"] = json!(v.pool_bytes_per_inference);
        j["max_rel_err"] = json!(v.max_rel_err);
        if !v.split_samples.is_empty() {
            let med = |i: usize| {
                Stats::of(&v.split_samples.iter().map(|s| s[i]).collect::<Vec<_>>()).median
            };
            j["upload_median_ms"] = json!(med(0));
            j["compute_median_ms"] = json!(med(1));
            j["download_median_ms"] = json!(med(2));
        }
        out_variants.push(j);
    }
    let total_macs: u64 = g.nodes.iter().map(|n| g.macs(n)).sum();
    Ok(json!({
        "model": args.model.display().to_string(),
        "format": format!("{:?}", m.format).to_lowercase(),
        "inputs": input_shapes
            .iter()
            .map(|(n, s)| json!({"name": n, "shape": s}))
            .collect::<Vec<_>>(),
        "gflops": 2.0 * total_macs as f64 / 1e9,
        "threads": threads,
        "accelerator": args.accelerator.name(),
        "accelerator_device": device,
        "runs": args.runs,
        "warmup": args.warmup,
        "seed": args.seed,
        "variants": out_variants,
        "memory_gbps_one_thread": mem_gbps,
        "chunk_open_gbps_one_thread": aead_gbps,
        "reference": reference,
        "reference_note": reference_note,
    }))
}

/// `--serve`: the plain engine as a long-lived benchmark worker (see [`BenchArgs::serve`]).
/// `time` answers the wall time of one inference in ms; `profile N` one JSON line with
/// every plan step's median time over N runs.
fn serve(args: &BenchArgs) -> Result<()> {
    use std::io::{BufRead, Write};
    let shapes = args
        .input_shapes
        .iter()
        .map(|s| plain::parse_input_shape(s))
        .collect::<Result<Vec<_>>>()?;
    let m = shadownet_import::load_model(&args.model, &shapes)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let g = &m.graph;
    let xs: Vec<Tensor> = if args.inputs.is_empty() {
        let mut rng = Normal(args.seed ^ 0x5eed_5eed_5eed_5eed);
        g.inputs
            .iter()
            .map(|&i| random_input(&g.values[i].shape, &mut rng))
            .collect::<Result<_>>()?
    } else {
        let files: Vec<_> = args
            .inputs
            .iter()
            .map(|s| plain::parse_input_arg(s))
            .collect();
        plain::bind_inputs(&plain::input_names(&m), &files)?
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    };
    let mut plan = shadownet_cpu::Plan::compile(g).context("cannot compile the plain plan")?;
    plan.run(&xs).context("plain inference failed")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready shadownet {} threads", shadownet_cpu::threads())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("warm") => {
                let n: usize = words.next().unwrap_or("1").parse()?;
                for _ in 0..n {
                    plan.run(&xs)?;
                }
                writeln!(out, "ok")?;
            }
            Some("time") => {
                let t0 = Instant::now();
                let y = plan.run(&xs)?;
                let dt = ms(t0);
                drop(y);
                writeln!(out, "{dt}")?;
            }
            Some("save") => {
                let dir = PathBuf::from(words.next().context("save needs a directory")?);
                let y = plan.run(&xs)?;
                for (i, t) in y.iter().enumerate() {
                    crate::npy::write_npy(&dir.join(format!("out{i}.npy")), t)?;
                }
                writeln!(out, "ok")?;
            }
            Some("profile") => {
                let n: usize = words.next().unwrap_or("10").parse::<usize>()?.max(1);
                let mut per_step: Vec<Vec<f64>> = Vec::new();
                let mut names = Vec::new();
                let mut macs = Vec::new();
                for _ in 0..n {
                    let (_, prof) = plan.run_profiled(&xs)?;
                    if per_step.is_empty() {
                        per_step = vec![Vec::with_capacity(n); prof.len()];
                        names = prof.iter().map(|p| p.name.clone()).collect();
                        macs = prof.iter().map(|p| p.macs).collect();
                    }
                    for (v, p) in per_step.iter_mut().zip(&prof) {
                        v.push(p.ms);
                    }
                }
                let steps: Vec<Value> = per_step
                    .iter()
                    .zip(&names)
                    .zip(&macs)
                    .map(|((v, n), m)| json!({"name": n, "ms": Stats::of(v).median, "macs": m}))
                    .collect();
                writeln!(out, "{}", json!({ "steps": steps }))?;
            }
            Some("quit") | None => break,
            Some(other) => bail!("unknown command '{other}'"),
        }
        out.flush()?;
    }
    Ok(())
}

/// The repository root (holds `scripts/bench_ref.py`): from the build, else near the binary.
fn repo_root() -> Option<PathBuf> {
    let has = |p: &Path| p.join("scripts/bench_ref.py").is_file();
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if has(&built) {
        return Some(built.canonicalize().unwrap_or(built));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors().find(|p| has(p)).map(Path::to_path_buf)
}

/// Times the model in ONNX Runtime or LiteRT; returns the script's JSON.
fn run_reference(
    model: &Path,
    inputs: &[(String, Vec<usize>)],
    threads: usize,
    args: &BenchArgs,
) -> Result<Value> {
    let root = repo_root().context("cannot find scripts/bench_ref.py")?;
    let python = root.join(".venv/bin/python");
    if !python.is_file() {
        eprintln!("bench: creating the Python environment (scripts/setup-venv.sh)");
        let st = Command::new(root.join("scripts/setup-venv.sh"))
            .status()
            .context("cannot run scripts/setup-venv.sh")?;
        if !st.success() || !python.is_file() {
            bail!("scripts/setup-venv.sh failed; no {}", python.display());
        }
    }
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("scripts/bench_ref.py"))
        .arg("--model")
        .arg(model)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--runs")
        .arg(args.runs.to_string())
        .arg("--warmup")
        .arg(args.warmup.to_string())
        .arg("--seed")
        .arg(args.seed.to_string());
    for (n, s) in inputs {
        let dims: Vec<String> = s.iter().map(usize::to_string).collect();
        cmd.arg("--input-shape")
            .arg(format!("{n}={}", dims.join(",")));
    }
    eprintln!("bench: timing the reference runtime");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("no message");
        bail!("scripts/bench_ref.py failed: {last}");
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .context("scripts/bench_ref.py printed no JSON object")?;
    if v.get("median_ms").and_then(Value::as_f64).is_none() {
        bail!("scripts/bench_ref.py printed no median_ms");
    }
    Ok(v)
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn fmt_ratio(v: &Value, k: &str) -> String {
    num(v, k).map_or("-".into(), |r| format!("{r:.2}x"))
}

/// The human-readable report.
pub fn table(r: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let inputs: Vec<String> = r["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| format!("{} {}", i["name"].as_str().unwrap_or("?"), i["shape"]))
        .collect();
    let _ = writeln!(
        s,
        "model {} ({}, {:.3} GFLOPs), inputs {}",
        r["model"].as_str().unwrap_or("?"),
        r["format"].as_str().unwrap_or("?"),
        num(r, "gflops").unwrap_or(0.0),
        inputs.join(", ")
    );
    let _ = writeln!(
        s,
        "{} threads, {} timed runs after {} warm-up; each secure run follows its own plain run, vs plain = median / median of those plain runs",
        r["threads"], r["runs"], r["warmup"]
    );
    let _ = writeln!(
        s,
        "{:<24} {:>10} {:>10} {:>10} {:>9} {:>9} {:>8} {:>12}",
        "variant", "median ms", "min ms", "max ms", "vs plain", "vs ref", "trips", "trusted MiB"
    );
    let mut rows: Vec<&Value> = r["variants"].as_array().into_iter().flatten().collect();
    let reference_row;
    if r["reference"].is_object() {
        let mut v = r["reference"].clone();
        v["name"] = json!(format!(
            "{} (reference)",
            v["runtime"].as_str().unwrap_or("reference")
        ));
        reference_row = v;
        rows.push(&reference_row);
    }
    for v in rows {
        let f = |k: &str| num(v, k).map_or("-".into(), |x| format!("{x:.2}"));
        let _ = writeln!(
            s,
            "{:<24} {:>10} {:>10} {:>10} {:>9} {:>9} {:>8} {:>12}",
            v["name"].as_str().unwrap_or("?"),
            f("median_ms"),
            f("min_ms"),
            f("max_ms"),
            fmt_ratio(v, "ratio_vs_plain"),
            fmt_ratio(v, "ratio_vs_reference"),
            v.get("round_trips").map_or("-".into(), Value::to_string),
            num(v, "trusted_mib").map_or("-".into(), |x| format!("{x:.2}")),
        );
    }
    for v in r["variants"].as_array().into_iter().flatten().skip(1) {
        let _ = writeln!(
            s,
            "{}: accelerator {:.2} ms + trusted core, transport and host {:.2} ms (medians); {} outsourced layers, {} kept in the TEE, trusted core {} B resident model, enclave heap peak {} B, converted in {:.2} s, max rel. error vs plain {:.2e}",
            v["name"].as_str().unwrap_or("?"),
            num(v, "accel_median_ms").unwrap_or(f64::NAN),
            num(v, "rest_median_ms").unwrap_or(f64::NAN),
            v["outsourced_layers"],
            v["kept_layers"],
            v["resident_bytes"],
            v["trusted_peak_bytes"],
            num(v, "convert_s").unwrap_or(0.0),
            num(v, "max_rel_err").unwrap_or(0.0),
        );
        let _ = write!(
            s,
            "  in enclave calls {:.2} ms; {:.2} MB of chunks streamed per inference",
            num(v, "enclave_median_ms").unwrap_or(f64::NAN),
            num(v, "chunk_bytes_per_inference").unwrap_or(0.0) / 1e6,
        );
        if let Some(floor) = num(v, "floor_ms") {
            let _ = write!(
                s,
                "; trusted pass {:.1} bytes per restored value, floor {:.2} ms ({:.1} GB/s memory, {:.2} GB/s chunk opening, one thread)",
                num(v, "pass_bytes_per_value").unwrap_or(f64::NAN),
                floor,
                num(r, "memory_gbps_one_thread").unwrap_or(f64::NAN),
                num(r, "chunk_open_gbps_one_thread").unwrap_or(f64::NAN),
            );
        }
        let _ = writeln!(s);
    }
    if r["accelerator"].as_str().is_some_and(|a| a != "cpu") {
        let _ = writeln!(
            s,
            "accelerator: {} ({})",
            r["accelerator"].as_str().unwrap_or("?"),
            r["accelerator_device"].as_str().unwrap_or("?")
        );
    }
    for v in r["variants"].as_array().into_iter().flatten() {
        if let Some(up) = num(v, "upload_median_ms") {
            let _ = writeln!(
                s,
                "{}: accelerator time split (medians): upload {up:.2} ms, compute {:.2} ms, download {:.2} ms",
                v["name"].as_str().unwrap_or("?"),
                num(v, "compute_median_ms").unwrap_or(f64::NAN),
                num(v, "download_median_ms").unwrap_or(f64::NAN),
            );
        }
    }
    if let Some(note) = r["reference_note"].as_str() {
        let _ = writeln!(s, "note: {note}");
    }
    s
}

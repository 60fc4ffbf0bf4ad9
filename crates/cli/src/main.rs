use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shadownet::{npy, plain};
use shadownet_import::Model;

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

#[derive(Subcommand)]
enum Cmd {
    /// Run plain inference on an ONNX or TFLite model.
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
    },
    /// Describe a model: inputs, outputs, ops, parameters, FLOPs per layer, linear layers.
    Inspect {
        model: PathBuf,
        #[arg(long = "input-shape")]
        input_shapes: Vec<String>,
    },
    /// Classify the orientation of two bundled real text-line crops with the bundled
    /// PP-OCR direction classifier.
    Demo,
}

fn main() -> ExitCode {
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

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run {
            model,
            inputs,
            output,
            input_shapes,
        } => cmd_run(&model, &inputs, output.as_deref(), &input_shapes),
        Cmd::Inspect {
            model,
            input_shapes,
        } => {
            let shapes = input_shapes
                .iter()
                .map(|s| plain::parse_input_shape(s))
                .collect::<Result<Vec<_>>>()?;
            let m = load(&model, &shapes)?;
            print!("{}", shadownet::plain::inspect(&m));
            Ok(())
        }
        Cmd::Demo => cmd_demo(),
    }
}

fn load(path: &Path, shapes: &[(String, Vec<usize>)]) -> Result<Model> {
    shadownet_import::load_model(path, shapes)
        .with_context(|| format!("cannot load model {}", path.display()))
}

fn cmd_run(
    model: &Path,
    inputs: &[String],
    output: Option<&Path>,
    input_shapes: &[String],
) -> Result<()> {
    let mut shapes = input_shapes
        .iter()
        .map(|s| plain::parse_input_shape(s))
        .collect::<Result<Vec<_>>>()?;
    let args: Vec<_> = inputs.iter().map(|s| plain::parse_input_arg(s)).collect();
    // Free dimensions default to the given arrays' shapes: the model's own input names
    // are needed to pair them, so peek at named args, and the first for an unnamed one.
    let first = match load(model, &shapes) {
        Ok(m) => m,
        Err(e) if is_dynamic(&e) && shapes.is_empty() => {
            for (name, path) in &args {
                let t = npy::read_npy(path)?;
                let name = match name {
                    Some(n) => n.clone(),
                    None => dynamic_input_name(&e).unwrap_or_default(),
                };
                shapes.push((name, t.shape));
            }
            load(model, &shapes)?
        }
        Err(e) => return Err(e),
    };
    let names = plain::input_names(&first);
    let bound = plain::bind_inputs(&names, &args)?;
    let t0 = Instant::now();
    let outs = plain::run(&first, &bound)?;
    let dt = t0.elapsed();
    let out_names = plain::output_names(&first);
    for (n, t) in out_names.iter().zip(&outs) {
        println!("{}", plain::summarize(n, t));
    }
    eprintln!("inference took {:.2} ms", dt.as_secs_f64() * 1e3);
    if let Some(p) = output {
        let arrays: Vec<(String, &shadownet_ir::Tensor)> =
            out_names.into_iter().zip(outs.iter()).collect();
        npy::write_npz(p, &arrays)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn is_dynamic(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<shadownet_import::Error>(),
        Some(shadownet_import::Error::DynamicInput { .. })
    )
}

fn dynamic_input_name(e: &anyhow::Error) -> Option<String> {
    match e.downcast_ref::<shadownet_import::Error>() {
        Some(shadownet_import::Error::DynamicInput { name, .. }) => Some(name.clone()),
        _ => None,
    }
}

fn cmd_demo() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/demo");
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

//! tract as a long-lived benchmark worker for `scripts/bench.sh --peers`.
//!
//!   shadownet-peers --model M.onnx --input NAME=FILE.npy [...] --threads T [--multithread]
//!
//! Loads and optimises the model once (input facts fixed to the given arrays' shapes), then
//! answers one command per stdin line, as the other engines' workers do:
//!   `warm N`  N untimed runs, answers `ok`
//!   `time`    one timed run, answers its wall time in milliseconds
//!   `save DIR` writes each output to DIR/out{i}.npy, answers `ok`
//!   `quit`
//! `--multithread` runs tract's `multithread-mm` executor with T threads; without it tract
//! runs single-threaded.
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tract_onnx::prelude::*;

fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{}: not an .npy file", path.display());
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[hstart..hstart + hlen])?;
    if !header.contains("'descr': '<f4'") || header.contains("'fortran_order': True") {
        bail!("{}: only little-endian float32 C-order arrays", path.display());
    }
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .context("npy header without a shape")?;
    let shape = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().context("bad npy shape"))
        .collect::<Result<Vec<_>>>()?;
    let data: Vec<f32> = bytes[hstart + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if data.len() != shape.iter().product::<usize>() {
        bail!("{}: data does not match the shape", path.display());
    }
    Ok((shape, data))
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

struct Args {
    model: PathBuf,
    inputs: Vec<(String, PathBuf)>,
    threads: usize,
    multithread: bool,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let (mut model, mut inputs, mut threads, mut multithread) = (None, Vec::new(), 1, false);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(it.next().context("--model needs a path")?)),
            "--input" => {
                let v = it.next().context("--input needs NAME=FILE.npy")?;
                let (n, p) = v.split_once('=').context("--input needs NAME=FILE.npy")?;
                inputs.push((n.to_string(), PathBuf::from(p)));
            }
            "--threads" => threads = it.next().context("--threads needs N")?.parse()?,
            "--multithread" => multithread = true,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(Args {
        model: model.context("--model is required")?,
        inputs,
        threads,
        multithread,
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if args.multithread {
        tract_linalg::multithread::set_default_executor(
            tract_linalg::multithread::Executor::multithread(args.threads.max(1)),
        );
    }
    let mut model = tract_onnx::onnx()
        .model_for_path(&args.model)
        .with_context(|| format!("tract cannot load {}", args.model.display()))?;
    let mut values = TVec::new();
    let names: Vec<String> = model
        .input_outlets()?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    for (ix, name) in names.iter().enumerate() {
        let (_, path) = args
            .inputs
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no --input for the model's input {name}"))?;
        let (shape, data) = read_npy(path)?;
        model.set_input_fact(ix, f32::fact(&shape).into())?;
        values.push(tract_ndarray::ArrayD::from_shape_vec(shape, data)?.into_tensor().into_tvalue());
    }
    let plan = model.into_optimized()?.into_runnable()?;
    let mut state = plan.spawn()?;
    state.run(values.clone())?;
    println!("ready tract {}", if args.multithread { "multithread" } else { "single" });
    std::io::stdout().flush()?;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("warm") => {
                let n: usize = words.next().unwrap_or("1").parse()?;
                for _ in 0..n {
                    state.run(values.clone())?;
                }
                println!("ok");
            }
            Some("time") => {
                let inputs = values.clone();
                let t0 = Instant::now();
                let out = state.run(inputs)?;
                let dt = t0.elapsed().as_secs_f64() * 1e3;
                drop(out);
                println!("{dt}");
            }
            Some("save") => {
                let dir = PathBuf::from(words.next().context("save needs a directory")?);
                let out = state.run(values.clone())?;
                for (i, t) in out.iter().enumerate() {
                    let v = t.to_plain_array_view::<f32>()?;
                    let data: Vec<f32> = v.iter().copied().collect();
                    write_npy(&dir.join(format!("out{i}.npy")), v.shape(), &data)?;
                }
                println!("ok");
            }
            Some("quit") | None => break,
            Some(other) => bail!("unknown command {other}"),
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}

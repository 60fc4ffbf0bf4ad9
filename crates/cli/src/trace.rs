//! `shadownet trace`: where does a converted model start to give a different answer?
//!
//! Runs the imported graph node by node with the plain engine and compares every node's
//! outputs against ONNX Runtime's intermediate values (`--reference onnxruntime`) and/or
//! the secure pipeline itself (`--package PKG --key KEY`, a debugging session on a
//! development device): the package runs through the real trusted core, in this process,
//! with an observer that shows every node's plain value (a build with `--features
//! debug-trace` only; a deployed core has no such hook).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use shadownet_import::Model;
use shadownet_ir::{Graph, Tensor};
use shadownet_trusted::Scheme;

use crate::{npy, plain};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Reference {
    /// ONNX Runtime (CPU, graph optimizations off) through the repository's .venv Python.
    Onnxruntime,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    /// The model (.onnx or .tflite) to trace.
    pub model: PathBuf,
    /// Input tensor as float32 .npy in the model's layout: FILE.npy or NAME=FILE.npy (repeatable).
    #[arg(long = "input", short = 'i', required = true)]
    pub inputs: Vec<String>,
    /// Size of an input with free dimensions: NAME=1,3,224,224 (repeatable). Defaults to
    /// the package's input shapes, else to the .npy's shape.
    #[arg(long = "input-shape")]
    pub input_shapes: Vec<String>,
    /// A package converted from MODEL: compare plain against the secure pipeline.
    #[arg(long, requires = "key")]
    pub package: Option<PathBuf>,
    /// Device secret key that opens the package's secret.
    #[arg(long, requires = "package")]
    pub key: Option<PathBuf>,
    /// Compare plain against a reference engine's intermediate outputs (ONNX models only).
    #[arg(long, value_enum)]
    pub reference: Option<Reference>,
    /// Print every number as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A node diverges when max|a−b|/max|b| exceeds this.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
}

/// Difference of one node's outputs against another engine's.
#[derive(Clone, Copy, Debug)]
struct Diff {
    max_abs: f64,
    max_rel: f64,
    /// The other engine's value has another number of elements.
    shape_mismatch: bool,
}

impl Diff {
    fn of(a: &Tensor, b: &Tensor) -> Diff {
        if a.data.len() != b.data.len() {
            return Diff {
                max_abs: f64::INFINITY,
                max_rel: f64::INFINITY,
                shape_mismatch: true,
            };
        }
        let mut abs = 0f64;
        let mut scale = 0f64;
        for (&x, &y) in a.data.iter().zip(&b.data) {
            let d = (x as f64 - y as f64).abs();
            // NaN or infinity on either side counts as an unbounded difference.
            abs = if d.is_finite() {
                abs.max(d)
            } else {
                f64::INFINITY
            };
            if y.is_finite() {
                scale = scale.max((y as f64).abs());
            }
        }
        let rel = if abs == 0.0 {
            0.0
        } else if scale > 0.0 {
            abs / scale
        } else {
            f64::INFINITY
        };
        Diff {
            max_abs: abs,
            max_rel: rel,
            shape_mismatch: false,
        }
    }

    /// Worst of two (for nodes with several outputs).
    fn max(self, o: Diff) -> Diff {
        Diff {
            max_abs: self.max_abs.max(o.max_abs),
            max_rel: self.max_rel.max(o.max_rel),
            shape_mismatch: self.shape_mismatch || o.shape_mismatch,
        }
    }

    fn json(&self) -> Value {
        json!({
            "max_abs": num(self.max_abs),
            "max_rel": num(self.max_rel),
            "shape_mismatch": self.shape_mismatch,
        })
    }
}

/// A JSON number, or a string for the non-finite values JSON cannot hold.
fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(format!("{v}"))
    }
}

struct Row {
    name: String,
    op: &'static str,
    shapes: Vec<Vec<usize>>,
    /// The outsourced layer this node is in the package, if any.
    layer: Option<usize>,
    max_plain: f64,
    ort: Option<Diff>,
    secure: Option<Diff>,
}

/// One comparison column: its label and how to read a row's value.
struct Column {
    key: &'static str,
    label: &'static str,
    get: fn(&Row) -> Option<Diff>,
}

const ORT: Column = Column {
    key: "onnxruntime",
    label: "ort",
    get: |r| r.ort,
};
const SECURE: Column = Column {
    key: "secure",
    label: "secure",
    get: |r| r.secure,
};

pub fn run(a: &TraceArgs) -> Result<()> {
    if !a.tolerance.is_finite() || a.tolerance < 0.0 {
        bail!("--tolerance must be a non-negative number");
    }
    let pkg = match (&a.package, &a.key) {
        (Some(p), Some(_)) => Some(package_header(p)?),
        (None, None) => None,
        _ => bail!("--package and --key go together"),
    };
    let args: Vec<_> = a.inputs.iter().map(|s| plain::parse_input_arg(s)).collect();
    let mut shapes: Vec<(String, Vec<usize>)> = a
        .input_shapes
        .iter()
        .map(|s| plain::parse_input_shape(s))
        .collect::<Result<_>>()?;
    if shapes.is_empty() {
        if let Some(h) = &pkg {
            shapes = h.inputs.clone();
        }
    }
    let m = load_model(&a.model, &mut shapes, &args)?;
    let g = &m.graph;
    let names = plain::input_names(&m);
    let bound = plain::bind_inputs(&names, &args)?;
    for ((name, t), &id) in bound.iter().zip(&g.inputs) {
        if t.shape != g.values[id].shape {
            bail!(
                "input '{name}' has shape {:?}, but the model expects {:?}",
                t.shape,
                g.values[id].shape
            );
        }
    }
    let inputs: Vec<Tensor> = bound.iter().map(|(_, t)| t.clone()).collect();

    let reference = match a.reference {
        Some(Reference::Onnxruntime) => {
            if m.format != shadownet_import::Format::Onnx {
                bail!("--reference onnxruntime needs an ONNX model");
            }
            Some(onnxruntime_reference(&a.model, g, &bound)?)
        }
        None => None,
    };
    let secure = match (&a.package, &a.key) {
        (Some(p), Some(k)) => {
            let seen = secure_values(p, k, &inputs)?;
            // Node k of the package's graph must be node k of this model.
            let fits = seen.iter().all(|(&k, (_, ys))| {
                g.nodes.get(k).is_some_and(|n| {
                    ys.is_empty()
                        || (ys.len() == n.outputs.len()
                            && ys
                                .iter()
                                .zip(&n.outputs)
                                .all(|(y, &o)| y.shape == g.values[o].shape))
                })
            }) && seen.keys().max().is_some_and(|&k| k + 1 == g.nodes.len());
            if !fits {
                bail!(
                    "the package was not converted from this model: its graph differs from {}",
                    a.model.display()
                );
            }
            Some(seen)
        }
        _ => None,
    };

    let mut rows: Vec<Row> = Vec::with_capacity(g.nodes.len());
    shadownet_cpu::run_graph_observed(g, &inputs, |k, outs| {
        let node = &g.nodes[k];
        let max_plain = outs
            .iter()
            .flat_map(|t| t.data.iter())
            .fold(0f64, |m, &v| m.max((v as f64).abs()));
        let ort = reference.as_ref().and_then(|r| {
            node.outputs
                .iter()
                .zip(outs)
                .filter_map(|(&o, t)| r.get(&g.values[o].name).map(|b| Diff::of(t, b)))
                .reduce(Diff::max)
        });
        let seen = secure.as_ref().and_then(|s| s.get(&k));
        let secure_diff = seen.and_then(|(_, ys)| {
            outs.iter()
                .zip(ys)
                .map(|(t, y)| Diff::of(y, t))
                .reduce(Diff::max)
        });
        rows.push(Row {
            name: node.name.clone(),
            op: node.op.name(),
            shapes: outs.iter().map(|t| t.shape.clone()).collect(),
            layer: seen.and_then(|(l, _)| l.map(|l| l as usize)),
            max_plain,
            ort,
            secure: secure_diff,
        });
    })
    .context("plain inference failed")?;

    let mut columns = Vec::new();
    if reference.is_some() {
        columns.push(ORT);
    }
    if pkg.is_some() {
        columns.push(SECURE);
    }
    let ctx = Context_ {
        model: &a.model,
        package: a.package.as_deref(),
        scheme: pkg.as_ref().map(|h| h.scheme),
        tolerance: a.tolerance,
    };
    if a.json {
        println!("{}", to_json(&ctx, &rows, &columns));
    } else {
        print!("{}", table(&ctx, &rows, &columns));
    }
    Ok(())
}

struct Context_<'a> {
    model: &'a Path,
    package: Option<&'a Path>,
    scheme: Option<Scheme>,
    tolerance: f64,
}

/// Index of the first row whose relative error in `col` exceeds the tolerance.
fn first_divergence(rows: &[Row], col: &Column, tol: f64) -> Option<usize> {
    rows.iter()
        .position(|r| (col.get)(r).is_some_and(|d| d.max_rel.is_nan() || d.max_rel > tol))
}

fn to_json(ctx: &Context_, rows: &[Row], columns: &[Column]) -> Value {
    let nodes: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = json!({
                "index": i,
                "name": r.name,
                "op": r.op,
                "shapes": r.shapes,
                "outsourced_layer": r.layer,
                "max_abs_plain": num(r.max_plain),
            });
            for c in columns {
                v[c.key] = (c.get)(r).map_or(Value::Null, |d| d.json());
            }
            v
        })
        .collect();
    let mut first = serde_json::Map::new();
    for c in columns {
        let f = first_divergence(rows, c, ctx.tolerance).map_or(Value::Null, |i| {
            let r = &rows[i];
            let d = (c.get)(r).map_or(Value::Null, |d| d.json());
            json!({
                "index": i,
                "name": r.name,
                "op": r.op,
                "outsourced_layer": r.layer,
                "max_rel": d["max_rel"],
                "max_abs": d["max_abs"],
            })
        });
        first.insert(c.key.to_string(), f);
    }
    json!({
        "model": ctx.model.display().to_string(),
        "package": ctx.package.map(|p| p.display().to_string()),
        "scheme": ctx.scheme.map(|s| s.name()),
        "tolerance": ctx.tolerance,
        "comparisons": columns.iter().map(|c| c.key).collect::<Vec<_>>(),
        "nodes": nodes,
        "first_divergence": first,
    })
}

fn fmt_shapes(s: &[Vec<usize>]) -> String {
    s.iter()
        .map(|d| {
            let inner: Vec<String> = d.iter().map(|x| x.to_string()).collect();
            format!("[{}]", inner.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn table(ctx: &Context_, rows: &[Row], columns: &[Column]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = write!(s, "model: {}", ctx.model.display());
    if let (Some(p), Some(sc)) = (ctx.package, ctx.scheme) {
        let _ = write!(s, "; package: {} (scheme {})", p.display(), sc.name());
    }
    let _ = writeln!(s, "; tolerance {:.1e} (max|a-b| / max|b|)", ctx.tolerance);
    if columns.is_empty() {
        let _ = writeln!(
            s,
            "(no comparison asked for: pass --reference onnxruntime and/or --package PKG --key KEY)"
        );
    }
    let firsts: Vec<Option<usize>> = columns
        .iter()
        .map(|c| first_divergence(rows, c, ctx.tolerance))
        .collect();
    let nw = rows
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 40);
    let ow = rows.iter().map(|r| r.op.len()).max().unwrap_or(2).max(2);
    let shapes: Vec<String> = rows.iter().map(|r| fmt_shapes(&r.shapes)).collect();
    let sw = shapes.iter().map(|x| x.len()).max().unwrap_or(5).max(5);
    let _ = write!(
        s,
        "   {:>4}  {:<nw$}  {:<ow$}  {:<5}  {:<sw$}  {:>10}",
        "#", "node", "op", "layer", "shape", "max|plain|"
    );
    for c in columns {
        let _ = write!(
            s,
            "  {:>10}  {:>11}",
            format!("{} abs", c.label),
            format!("{} rel", c.label)
        );
    }
    let _ = writeln!(s);
    for (i, r) in rows.iter().enumerate() {
        let mark = if firsts.contains(&Some(i)) {
            ">>"
        } else {
            "  "
        };
        let layer = r.layer.map_or(String::new(), |l| format!("L{l}"));
        let _ = write!(
            s,
            "{mark} {i:>4}  {:<nw$}  {:<ow$}  {layer:<5}  {:<sw$}  {:>10.3e}",
            r.name, r.op, shapes[i], r.max_plain
        );
        for c in columns {
            match (c.get)(r) {
                Some(d) if d.shape_mismatch => {
                    let _ = write!(s, "  {:>10}  {:>11}", "size", "mismatch!");
                }
                Some(d) => {
                    let flag = if d.max_rel <= ctx.tolerance { ' ' } else { '!' };
                    let _ = write!(s, "  {:>10.3e}  {:>10.3e}{flag}", d.max_abs, d.max_rel);
                }
                None => {
                    let _ = write!(s, "  {:>10}  {:>11}", "-", "- ");
                }
            }
        }
        let _ = writeln!(s);
    }
    for (c, f) in columns.iter().zip(&firsts) {
        let against = match c.key {
            "secure" => "plain vs secure",
            _ => "plain vs onnxruntime",
        };
        match f {
            Some(i) => {
                let r = &rows[*i];
                let rel = (c.get)(r).map_or(f64::NAN, |d| d.max_rel);
                let layer = r
                    .layer
                    .map_or(String::new(), |l| format!(", outsourced layer {l}"));
                let _ = writeln!(
                    s,
                    "first divergence ({against}): node {} (#{i}, op {}{layer}): rel err {rel:.3e}",
                    r.name, r.op
                );
            }
            None => {
                let compared: Vec<(usize, f64)> = rows
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| (c.get)(r).map(|d| (i, d.max_rel)))
                    .collect();
                let worst = compared.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
                match worst {
                    Some((i, rel)) => {
                        let _ = writeln!(
                            s,
                            "no divergence ({against}) over {} compared nodes: largest rel err {rel:.3e} at node {}",
                            compared.len(),
                            rows[i].name
                        );
                    }
                    None => {
                        let _ = writeln!(s, "no node could be compared ({against})");
                    }
                }
            }
        }
    }
    s
}

/// Loads the model; free input dimensions default to the given arrays' shapes.
fn load_model(
    path: &Path,
    shapes: &mut Vec<(String, Vec<usize>)>,
    args: &[(Option<String>, PathBuf)],
) -> Result<Model> {
    let load = |shapes: &[(String, Vec<usize>)]| {
        shadownet_import::load_model(path, shapes)
            .with_context(|| format!("cannot load model {}", path.display()))
    };
    match load(shapes) {
        Ok(m) => Ok(m),
        Err(e) => {
            let dynamic = match e.downcast_ref::<shadownet_import::Error>() {
                Some(shadownet_import::Error::DynamicInput { name, .. }) => Some(name.clone()),
                _ => None,
            };
            let Some(dynamic) = dynamic.filter(|_| shapes.is_empty()) else {
                return Err(e);
            };
            for (name, file) in args {
                let t = npy::read_npy(file)?;
                shapes.push((name.clone().unwrap_or_else(|| dynamic.clone()), t.shape));
            }
            load(shapes)
        }
    }
}

/// The public header of a package.
fn package_header(pkg: &Path) -> Result<shadownet_trusted::PublicHeader> {
    let path = pkg.join(shadownet_trusted::format::PUBLIC_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(shadownet_trusted::format::split_public(&bytes)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .header)
}

/// Every node's plain value in one secure inference, as the trusted core computed it, with
/// the public layer of the nodes it outsourced.
type Seen = BTreeMap<usize, (Option<u32>, Vec<Tensor>)>;

#[cfg(feature = "debug-trace")]
fn secure_values(pkg: &Path, key: &Path, inputs: &[Tensor]) -> Result<Seen> {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut enclave = shadownet_untrusted::InProcEnclave::with_file_counters(key)?;
    let sink = seen.clone();
    enclave
        .core_mut()
        .set_observer(Box::new(move |node, layer, outs| {
            if let Ok(mut s) = sink.lock() {
                let e = s.entry(node).or_insert((None, Vec::new()));
                e.0 = e.0.or(layer);
                if !outs.is_empty() {
                    e.1 = outs.iter().map(|t| (*t).clone()).collect();
                }
            }
        }));
    let mut sm = shadownet_untrusted::SecureModel::open(
        pkg,
        Box::new(enclave),
        Box::new(shadownet_untrusted::CpuAccelerator::new()),
    )
    .with_context(|| format!("cannot open package {}", pkg.display()))?;
    // One-time masks made on the spot: a trace leaves the package's pool alone.
    sm.allow_slow_masks = true;
    sm.infer(inputs.to_vec())
        .context("secure inference failed")?;
    drop(sm);
    let out = std::mem::take(&mut *seen.lock().map_err(|_| anyhow!("trace records poisoned"))?);
    Ok(out)
}

#[cfg(not(feature = "debug-trace"))]
fn secure_values(_pkg: &Path, _key: &Path, _inputs: &[Tensor]) -> Result<Seen> {
    bail!("`trace --package` runs the trusted core with an observer that a deployed core must not have: build with `cargo build --release --features debug-trace` to use it")
}

/// ONNX Runtime's value of every node output of `g` that the ONNX graph also has, by name.
fn onnxruntime_reference(
    model: &Path,
    g: &Graph,
    inputs: &[(String, Tensor)],
) -> Result<BTreeMap<String, Tensor>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    let python = match std::env::var_os("SHADOWNET_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => root.join(".venv/bin/python"),
    };
    let script = root.join("scripts/trace_ref.py");
    if !python.exists() {
        bail!(
            "--reference onnxruntime needs the repository's Python environment with onnx and onnxruntime, but {} does not exist: run scripts/setup-venv.sh (or set SHADOWNET_PYTHON)",
            python.display()
        );
    }
    if !script.is_file() {
        bail!("--reference onnxruntime needs {}", script.display());
    }
    let dir = std::env::temp_dir().join(format!(
        "shadownet-trace-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let res = (|| -> Result<BTreeMap<String, Tensor>> {
        // Every node output once, in node order; names with line breaks cannot be listed.
        let mut names: Vec<String> = Vec::new();
        for n in &g.nodes {
            for &o in &n.outputs {
                let name = &g.values[o].name;
                if !name.contains('\n') && !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        let names_file = dir.join("names.txt");
        std::fs::write(&names_file, names.join("\n"))
            .with_context(|| format!("cannot write {}", names_file.display()))?;
        let out = dir.join("reference.npz");
        let mut cmd = std::process::Command::new(&python);
        cmd.arg(&script).arg(model).arg(&out).arg(&names_file);
        for (k, (name, t)) in inputs.iter().enumerate() {
            let f = dir.join(format!("input{k}.npy"));
            npy::write_npy(&f, t)?;
            cmd.arg(format!("{name}={}", f.display()));
        }
        let o = cmd
            .output()
            .with_context(|| format!("cannot run {}", python.display()))?;
        if !o.status.success() {
            bail!(
                "ONNX Runtime reference failed ({} {}): {}",
                python.display(),
                script.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let arrays = npy::read_npz(&out)?;
        Ok(names
            .into_iter()
            .enumerate()
            .filter_map(|(i, n)| arrays.get(&format!("v{i}")).map(|t| (n, t.clone())))
            .collect())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    res
}

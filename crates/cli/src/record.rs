//! Auditing what the untrusted side sees: `run PKG --record-untrusted DIR` writes every
//! tensor the accelerator received and returned, `inspect PKG --export-public DIR` every
//! public layer's weights, each as .npy with a `manifest.json` (format in README.md).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use npyz::WriterBuilder;
use serde::{Deserialize, Serialize};
use shadownet_ir::Graph;
use shadownet_trusted::format::PublicWeight;
use shadownet_trusted::Payload;
use shadownet_untrusted::{Observed, PublicModel};

pub const RECORD_FORMAT: &str = "shadownet-untrusted-record/2";
pub const EXPORT_FORMAT: &str = "shadownet-public-export/2";
pub const MANIFEST: &str = "manifest.json";

/// Where a public layer came from in the source model. The package does not say (the
/// secret graph is sealed to the trusted core); given the source model (`--reference`),
/// each public layer is matched to its node as the attack suite's scorer does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The source model's node name.
    pub node: Option<String>,
    /// Its weight tensor: the ONNX initializer or TFLite tensor name.
    pub weight: Option<String>,
}

/// Per public layer, the source names from the source model `g` (or unknown without it).
pub fn sources(g: Option<&Graph>, public: &PublicModel) -> Result<Vec<Source>> {
    let Some(g) = g else {
        return Ok(vec![Source::default(); public.header.layers.len()]);
    };
    let p = crate::attack::PublicPackage::from_model(public);
    let nodes = crate::attack::reference_layers(g, &p)?;
    Ok(nodes
        .iter()
        .map(|&n| {
            let node = &g.nodes[n];
            Source {
                node: Some(node.name.clone()),
                weight: node
                    .inputs
                    .get(1)
                    .and_then(|&v| g.values.get(v))
                    .map(|v| v.name.clone()),
            }
        })
        .collect())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedLayer {
    pub layer: usize,
    #[serde(flatten)]
    pub source: Source,
    /// Op name (Conv, ConvTranspose, MatMul).
    pub op: String,
    /// The op's attributes as the package stores them.
    pub kind: serde_json::Value,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub dtype: String,
    /// One file per recorded run, in run order (relative to the directory).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordManifest {
    pub format: String,
    pub package: String,
    pub scheme: String,
    pub package_id: String,
    pub runs: usize,
    pub layers: Vec<RecordedLayer>,
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `data` of `shape` as a little-endian .npy of the element type `T`.
pub fn write_npy<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[usize],
    data: &[T],
) -> Result<()> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(f))
        .begin_nd()
        .with_context(|| format!("cannot write {}", path.display()))?;
    w.extend(data.iter().copied())
        .with_context(|| format!("cannot write {}", path.display()))?;
    w.finish()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes a payload in its real dtype: float32, or uint64 for ring values (Z/2^64).
fn write_payload(path: &Path, p: &Payload) -> Result<()> {
    match p {
        Payload::F32(t) => write_npy(path, &t.shape, &t.data),
        Payload::Ring(t) => write_npy(path, &t.shape, &t.data),
    }
}

fn payload_dtype(p: &Payload) -> &'static str {
    match p {
        Payload::F32(_) => "float32",
        Payload::Ring(_) => "uint64",
    }
}

fn read_manifest<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Option<T>> {
    let p = dir.join(MANIFEST);
    if !p.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a manifest this version can append to",
            p.display()
        )
    })?))
}

fn write_manifest<T: Serialize>(dir: &Path, m: &T) -> Result<()> {
    let p = dir.join(MANIFEST);
    let tmp = dir.join(".manifest.json.partial");
    let text = serde_json::to_string_pretty(m).context("encoding the manifest")?;
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))
}

/// Appends one run's accelerator traffic (`seen`, in call order) to `dir`: files
/// `L{layer:03}.run{run:04}.in.npy` / `.out.npy`, and the manifest updated. A directory
/// holding another package's recording is refused.
pub fn record_run(
    dir: &Path,
    pkg: &Path,
    public: &PublicModel,
    sources: &[Source],
    seen: &[Observed],
) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let id = hex(&public.header.package_id);
    let dtype = seen.first().map_or("float32", |o| payload_dtype(&o.input));
    let mut m: RecordManifest = match read_manifest(dir)? {
        Some(m) => m,
        None => RecordManifest {
            format: RECORD_FORMAT.into(),
            package: pkg.display().to_string(),
            scheme: public.header.scheme.name().into(),
            package_id: id.clone(),
            runs: 0,
            layers: public
                .header
                .layers
                .iter()
                .enumerate()
                .map(|(k, l)| RecordedLayer {
                    layer: k,
                    source: sources.get(k).cloned().unwrap_or_default(),
                    op: l.kind.op().name().into(),
                    kind: serde_json::to_value(&l.kind).unwrap_or_default(),
                    input_shape: l.input_shape.clone(),
                    output_shape: l.output_shape.clone(),
                    dtype: dtype.into(),
                    inputs: Vec::new(),
                    outputs: Vec::new(),
                })
                .collect(),
        },
    };
    if m.format != RECORD_FORMAT
        || m.package_id != id
        || m.layers.len() != public.header.layers.len()
    {
        bail!(
            "{} holds a recording of another package (package id {}): record into a new directory",
            dir.display(),
            m.package_id
        );
    }
    let run = m.runs;
    let mut seen_layer = vec![false; public.header.layers.len()];
    for o in seen {
        let k = o.layer as usize;
        let Some(entry) = m.layers.get_mut(k) else {
            bail!("the accelerator ran layer {k}, which the package does not have");
        };
        // A layer is called once per inference; keep the first if it ever is not.
        if std::mem::replace(&mut seen_layer[k], true) {
            continue;
        }
        let (fi, fo) = (
            format!("L{k:03}.run{run:04}.in.npy"),
            format!("L{k:03}.run{run:04}.out.npy"),
        );
        write_payload(&dir.join(&fi), &o.input)?;
        write_payload(&dir.join(&fo), &o.output)?;
        entry.inputs.push(fi);
        entry.outputs.push(fo);
    }
    m.runs += 1;
    write_manifest(dir, &m)?;
    Ok(run)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportedLayer {
    pub layer: usize,
    #[serde(flatten)]
    pub source: Source,
    pub op: String,
    pub kind: serde_json::Value,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub dtype: String,
    pub weight_file: String,
    pub weight_shape: Vec<usize>,
    /// The weight axis that indexes filters (public output channels): 0 for Conv
    /// [O, C/g, kh, kw], 1 for ConvTranspose [C, O, kh, kw] and MatMul [K, N].
    pub filter_axis: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportManifest {
    pub format: String,
    pub package: String,
    pub scheme: String,
    pub package_id: String,
    pub layers: Vec<ExportedLayer>,
}

/// Writes every public layer's weights to `dir` (`L{layer:03}.weight.npy`, float32 or
/// int32 as the package stores them) with a manifest.
pub fn export_public(
    dir: &Path,
    pkg: &Path,
    public: &PublicModel,
    sources: &[Source],
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut layers = Vec::new();
    for (k, (l, w)) in public.header.layers.iter().zip(&public.weights).enumerate() {
        let f = format!("L{k:03}.weight.npy");
        let (dtype, shape) = match w {
            PublicWeight::F32(t) => {
                write_npy(&dir.join(&f), &t.shape, &t.data)?;
                ("float32", t.shape.clone())
            }
            PublicWeight::I32(t) => {
                write_npy(&dir.join(&f), &t.shape, &t.data)?;
                ("int32", t.shape.clone())
            }
        };
        layers.push(ExportedLayer {
            layer: k,
            source: sources.get(k).cloned().unwrap_or_default(),
            op: l.kind.op().name().into(),
            kind: serde_json::to_value(&l.kind).unwrap_or_default(),
            input_shape: l.input_shape.clone(),
            output_shape: l.output_shape.clone(),
            dtype: dtype.into(),
            weight_file: f,
            weight_shape: shape,
            filter_axis: l.kind.filter_axis(),
        });
    }
    let m = ExportManifest {
        format: EXPORT_FORMAT.into(),
        package: pkg.display().to_string(),
        scheme: public.header.scheme.name().into(),
        package_id: hex(&public.header.package_id),
        layers,
    };
    write_manifest(dir, &m)?;
    Ok(dir.join(MANIFEST))
}

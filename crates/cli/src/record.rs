//! Auditing what the untrusted side sees: `run PKG --record-untrusted DIR` writes every
//! tensor the accelerator received and returned, `inspect PKG --export-public DIR` every
//! public layer's weights, each as .npy with a `manifest.json` (format in README.md).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use npyz::WriterBuilder;
use serde::{Deserialize, Serialize};
use shadownet_ir::Tensor;
use shadownet_trusted::{PublicPackage, SecretModel};
use shadownet_untrusted::accel::Observed;

pub const RECORD_FORMAT: &str = "shadownet-untrusted-record/1";
pub const EXPORT_FORMAT: &str = "shadownet-public-export/1";
pub const MANIFEST: &str = "manifest.json";

/// Where a public layer came from in the source model (read from the secret on a
/// development device, or unknown).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The source model's node name.
    pub node: Option<String>,
    /// Its weight tensor: the ONNX initializer or TFLite tensor name.
    pub weight: Option<String>,
}

/// Per outsourced layer, the source names (from the opened secret: the audit runs on the
/// device owner's development device with its key).
pub fn sources(secret: Option<&SecretModel>, layers: usize) -> Vec<Source> {
    (0..layers)
        .map(|k| {
            let Some(s) = secret else {
                return Source::default();
            };
            let Some(n) = s
                .layers
                .get(k)
                .and_then(|l| s.graph.nodes.get(l.node as usize))
            else {
                return Source::default();
            };
            Source {
                node: Some(n.name.clone()),
                weight: n
                    .inputs
                    .get(1)
                    .and_then(|&v| s.graph.values.get(v))
                    .map(|v| v.name.clone()),
            }
        })
        .collect()
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
    pub conversion_id: String,
    pub runs: usize,
    pub layers: Vec<RecordedLayer>,
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `t` as a little-endian float32 .npy.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(f))
        .begin_nd()
        .with_context(|| format!("cannot write {}", path.display()))?;
    w.extend(t.data.iter().copied())
        .with_context(|| format!("cannot write {}", path.display()))?;
    w.finish()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
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
    public: &PublicPackage,
    sources: &[Source],
    seen: &[Observed],
) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let id = hex(&public.conversion_id);
    let mut m: RecordManifest = match read_manifest(dir)? {
        Some(m) => m,
        None => RecordManifest {
            format: RECORD_FORMAT.into(),
            package: pkg.display().to_string(),
            scheme: public.scheme.name().into(),
            conversion_id: id.clone(),
            runs: 0,
            layers: public
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
                    dtype: "float32".into(),
                    inputs: Vec::new(),
                    outputs: Vec::new(),
                })
                .collect(),
        },
    };
    if m.format != RECORD_FORMAT || m.conversion_id != id || m.layers.len() != public.layers.len() {
        bail!(
            "{} holds a recording of another package (conversion {}): record into a new directory",
            dir.display(),
            m.conversion_id
        );
    }
    let run = m.runs;
    let mut seen_layer = vec![false; public.layers.len()];
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
        write_npy(&dir.join(&fi), &o.input)?;
        write_npy(&dir.join(&fo), &o.output)?;
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
    pub conversion_id: String,
    pub layers: Vec<ExportedLayer>,
}

/// Writes every public layer's weights to `dir` (`L{layer:03}.weight.npy`) with a
/// manifest.
pub fn export_public(
    dir: &Path,
    pkg: &Path,
    public: &PublicPackage,
    sources: &[Source],
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut layers = Vec::new();
    for (k, l) in public.layers.iter().enumerate() {
        let f = format!("L{k:03}.weight.npy");
        write_npy(&dir.join(&f), &l.weight)?;
        layers.push(ExportedLayer {
            layer: k,
            source: sources.get(k).cloned().unwrap_or_default(),
            op: l.kind.op().name().into(),
            kind: serde_json::to_value(&l.kind).unwrap_or_default(),
            input_shape: l.input_shape.clone(),
            output_shape: l.output_shape.clone(),
            dtype: "float32".into(),
            weight_file: f,
            weight_shape: l.weight.shape.clone(),
            filter_axis: crate::attack::fake_partner::filter_axis(&l.kind),
        });
    }
    let m = ExportManifest {
        format: EXPORT_FORMAT.into(),
        package: pkg.display().to_string(),
        scheme: public.scheme.name().into(),
        conversion_id: hex(&public.conversion_id),
        layers,
    };
    write_manifest(dir, &m)?;
    Ok(dir.join(MANIFEST))
}

//! NumPy .npy / .npz reading and writing for f32 tensors.
//!
//! Inputs may be any common numeric dtype (converted to f32, since users often save
//! float64 arrays by accident); outputs are always written as little-endian float32.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Cursor, Read, Seek, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use shadownet_ir::Tensor;

pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_npy(&bytes).with_context(|| format!("{} is not a valid .npy file", path.display()))
}

pub fn parse_npy(b: &[u8]) -> Result<Tensor> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("missing the \\x93NUMPY magic");
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                bail!("truncated header");
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => bail!("unsupported .npy version {v}"),
    };
    let header = b
        .get(start..start + hlen)
        .ok_or_else(|| anyhow!("truncated header"))?;
    let header = std::str::from_utf8(header).context("header is not text")?;
    let descr = dict_value(header, "descr").ok_or_else(|| anyhow!("header has no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        bail!("Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let shape_s = dict_value(header, "shape").ok_or_else(|| anyhow!("header has no 'shape'"))?;
    let inner = shape_s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| anyhow!("malformed shape {shape_s}"))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| anyhow!("malformed shape dimension '{s}'"))
        })
        .collect::<Result<_>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow!("shape {shape:?} is too large"))?;
    let body = &b[start + hlen..];
    let (size, conv): (usize, fn(&[u8]) -> f32) = match descr {
        "<f4" => (4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        "<f8" => (8, |c| {
            f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32
        }),
        "<f2" => (2, |c| half_to_f32(u16::from_le_bytes([c[0], c[1]]))),
        "<i8" => (8, |c| {
            i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32
        }),
        "<i4" => (4, |c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32),
        "|u1" => (1, |c| c[0] as f32),
        "|i1" => (1, |c| c[0] as i8 as f32),
        d => bail!("unsupported dtype {d} (use float32)"),
    };
    let bytes = n
        .checked_mul(size)
        .ok_or_else(|| anyhow!("shape {shape:?} is too large"))?;
    if body.len() < bytes {
        bail!(
            "data is truncated: {} bytes for {n} elements of {descr}",
            body.len()
        );
    }
    let data = body[..bytes].chunks_exact(size).map(conv).collect();
    Ok(Tensor::new(shape, data)?)
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f32;
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// The text after `'key':` in a Python dict literal, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    Some(rest)
}

pub fn npy_bytes(t: &Tensor) -> Vec<u8> {
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary, as numpy does.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &t.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    std::fs::write(path, npy_bytes(t)).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads every array of an .npz archive, keyed by name (without the .npy suffix).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_npz(Cursor::new(bytes))
        .with_context(|| format!("{} is not a valid .npz file", path.display()))
}

pub fn parse_npz<R: Read + Seek>(r: R) -> Result<BTreeMap<String, Tensor>> {
    let mut zip = zip::ZipArchive::new(r)?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i)?;
        let name = f.name().trim_end_matches(".npy").to_string();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let t = parse_npy(&buf).with_context(|| format!("array '{name}'"))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Writes named arrays as an uncompressed .npz, like `np.savez`. The file is written
/// under a temporary name and renamed, so a failure never leaves a half-written archive.
pub fn write_npz(path: &Path, arrays: &[(String, &Tensor)]) -> Result<()> {
    let tmp = path.with_extension("npz.partial");
    let res = (|| -> Result<()> {
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut zip = zip::ZipWriter::new(BufWriter::new(f));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        for (name, t) in arrays {
            zip.start_file(format!("{name}.npy"), opts)?;
            zip.write_all(&npy_bytes(t))?;
        }
        zip.finish()?.flush()?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#![cfg_attr(not(feature = "debug-trace"), allow(unused_imports, dead_code))]
//! `shadownet trace`: a restoration error planted in one outsourced layer is reported as
//! the first divergence, a clean package shows none, and the plain engine agrees with ONNX
//! Runtime on every intermediate value of the demo model. The package traces run through
//! the real trusted core's observer, which only a `--features debug-trace` build has; the
//! default build must refuse them and say so.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use shadownet_ir::Tensor;
use shadownet_trusted::format::LayerRestore;
use shadownet_trusted::Scheme;

const TOLERANCE: &str = "1e-4";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    std::env::var_os("SHADOWNET_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/fixtures"))
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shadownet-trace-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `shadownet trace ARGS --json` and returns its parsed output.
fn trace(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_shadownet"))
        .arg("trace")
        .args(args)
        .args(["--json", "--tolerance", TOLERANCE])
        .output()
        .expect("cannot start the shadownet binary");
    assert!(
        out.status.success(),
        "shadownet trace {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "trace --json printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn compared(v: &Value, key: &str) -> usize {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| !n[key].is_null())
        .count()
}

fn write_package(dir: &Path, c: &shadownet_protect::Converted, dev: &shadownet::keys::TestDevice) {
    shadownet::secure::write(c, &dev.device_pub, &dev.vendor_secret, dir).unwrap();
}

#[cfg(feature = "debug-trace")]
#[test]
fn planted_restore_error_is_the_first_secure_divergence() {
    let model = fixtures().join("models/resnet44.onnx");
    let inputs_npz = fixtures().join("cases/resnet44/inputs.npz");
    assert!(
        model.is_file() && inputs_npz.is_file(),
        "missing fixture {} or {}: run scripts/make-fixtures.sh",
        model.display(),
        inputs_npz.display()
    );
    let dir = tmpdir("planted");
    let inputs = shadownet::npy::read_npz(&inputs_npz).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = inputs
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone()))
        .collect();
    let g = shadownet_import::load_model(&model, &shapes).unwrap().graph;
    let mut input_args = Vec::new();
    for (k, (name, t)) in inputs.iter().enumerate() {
        let f = dir.join(format!("input{k}.npy"));
        shadownet::npy::write_npy(&f, t).unwrap();
        input_args.push(format!("{name}={}", f.display()));
    }

    let opts = shadownet_protect::Options {
        scheme: Scheme::Hardened,
        insecure_seed: Some(44),
        ..Default::default()
    };
    let c = shadownet_protect::convert(&g, &opts, &mut |_, _| {}).unwrap();
    let dev = shadownet::keys::TestDevice::new(&dir.join("keys")).unwrap();
    let key = dev.device_key.clone();

    // Layer 10 gets one wrong restore coefficient: on its most active output channel, so
    // the error stands out at any tolerance.
    let layer = 10;
    let node = c.secret.layers[layer].node as usize;
    let xs: Vec<Tensor> = g
        .inputs
        .iter()
        .map(|&i| inputs[&g.values[i].name].clone())
        .collect();
    let mut channel_peak = Vec::new();
    shadownet_cpu::run_graph_observed(&g, &xs, |k, outs| {
        if k == node {
            let t = outs[0];
            let (c, inner) = (t.shape[1], t.shape[2..].iter().product::<usize>());
            channel_peak = (0..c)
                .map(|ch| {
                    (0..t.shape[0])
                        .flat_map(|o| &t.data[(o * c + ch) * inner..][..inner])
                        .fold(0f32, |m, v| m.max(v.abs()))
                })
                .collect();
        }
    })
    .unwrap();
    let channel = (0..channel_peak.len())
        .max_by(|&a, &b| channel_peak[a].total_cmp(&channel_peak[b]))
        .unwrap();
    let clean_pkg = dir.join("clean");
    let bad_pkg = dir.join("bad");
    write_package(&clean_pkg, &c, &dev);
    let mut c = c;
    if let LayerRestore::Exact(e) = &mut c.secret.layers[layer].restore {
        for g in &mut e.groups {
            let h = g.public.len();
            if let Some(ri) = g.real.iter().position(|&r| r as usize == channel) {
                for v in &mut g.coeffs[ri * h..(ri + 1) * h] {
                    *v *= 1.5;
                }
            }
        }
    }
    write_package(&bad_pkg, &c, &dev);

    let run = |pkg: &Path| {
        let mut args: Vec<String> = vec![model.display().to_string()];
        for a in &input_args {
            args.extend(["--input".to_string(), a.clone()]);
        }
        args.extend([
            "--package".to_string(),
            pkg.display().to_string(),
            "--key".to_string(),
            key.display().to_string(),
        ]);
        trace(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let clean = run(&clean_pkg);
    assert_eq!(compared(&clean, "secure"), g.nodes.len());
    assert!(
        clean["first_divergence"]["secure"].is_null(),
        "a clean package diverges: {}",
        clean["first_divergence"]["secure"]
    );

    let v = run(&bad_pkg);
    let first = &v["first_divergence"]["secure"];
    assert_eq!(
        first["name"].as_str(),
        Some(g.nodes[node].name.as_str()),
        "expected node {node} (layer {layer}) to diverge first, got {first}"
    );
    assert_eq!(first["index"].as_u64(), Some(node as u64));
    assert_eq!(first["outsourced_layer"].as_u64(), Some(layer as u64));
    let rel = first["max_rel"].as_f64().unwrap();
    assert!(rel > 0.1, "planted error shows as rel err {rel}");
    // Every node before it agrees.
    for n in &v["nodes"].as_array().unwrap()[..node] {
        let r = n["secure"]["max_rel"].as_f64().unwrap();
        assert!(
            r <= 1e-4,
            "node {} diverges before the planted one: {r}",
            n["name"]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_matches_onnxruntime_on_every_node_of_the_demo_model() {
    let model = repo().join("models/demo/ppocr_cls.onnx");
    let input = repo().join("models/demo/text_upright.npy");
    let model = model.display().to_string();
    let input = input.display().to_string();
    let v = trace(&[&model, "--input", &input, "--reference", "onnxruntime"]);
    let nodes = v["nodes"].as_array().unwrap().len();
    let n = compared(&v, "onnxruntime");
    // Every node output keeps its ONNX name, so ONNX Runtime has each of them.
    assert_eq!(n, nodes, "only {n} of {nodes} nodes matched an ONNX value");
    assert!(
        v["first_divergence"]["onnxruntime"].is_null(),
        "plain diverges from ONNX Runtime: {}",
        v["first_divergence"]["onnxruntime"]
    );
}

#[test]
fn package_of_another_model_is_refused() {
    let dir = tmpdir("other");
    let demo = repo().join("models/demo");
    let g = shadownet_import::load_model(
        &demo.join("ppocr_cls.onnx"),
        &[("x".to_string(), vec![1, 3, 48, 192])],
    )
    .unwrap()
    .graph;
    // The demo graph minus its last node stands for "another model".
    let mut other = g.clone();
    other.nodes.pop();
    let last = other.nodes.last().unwrap().outputs[0];
    other.outputs = vec![last];
    let opts = shadownet_protect::Options {
        insecure_seed: Some(1),
        ..Default::default()
    };
    let c = shadownet_protect::convert(&other, &opts, &mut |_, _| {}).unwrap();
    let dev = shadownet::keys::TestDevice::new(&dir.join("keys")).unwrap();
    write_package(&dir.join("pkg"), &c, &dev);
    let out = Command::new(env!("CARGO_BIN_EXE_shadownet"))
        .arg("trace")
        .arg(demo.join("ppocr_cls.onnx"))
        .arg("--input")
        .arg(demo.join("text_upright.npy"))
        .arg("--package")
        .arg(dir.join("pkg"))
        .arg("--key")
        .arg(&dev.device_key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let want = if cfg!(feature = "debug-trace") {
        "package was not converted from this model"
    } else {
        "--features debug-trace"
    };
    assert!(err.contains(want), "unexpected error: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! The binary's behaviour on bad input: a clear message and a non-zero exit, never a panic.
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shadownet"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn demo_model() -> PathBuf {
    repo().join("models/demo/ppocr_cls.onnx")
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shadownet-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs and returns (success, stderr), asserting the process did not panic.
fn run(args: &[&str]) -> (bool, String) {
    let out = bin().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    (out.status.success(), err)
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

#[test]
fn demo_runs_and_classifies_both_orientations() {
    let out = bin().arg("demo").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    // Each image: the truth, the plain run and the secure run all agree.
    for (file, deg) in [("text_upright.npy", "0°"), ("text_flipped.npy", "180°")] {
        let line = s
            .lines()
            .find(|l| l.starts_with(file))
            .unwrap_or_else(|| panic!("no line for {file}: {s}"));
        for part in ["truth", "plain", "secure"] {
            assert!(line.contains(&format!("{part} {deg}")), "{line}");
        }
    }
    // And the accelerator's view of the first layer is a uniform ring mask.
    assert!(s.contains("spread over the whole ring"), "{s}");
}

#[test]
fn run_writes_npz_keyed_by_output_name() {
    let d = tmpdir("run");
    let out = d.join("out.npz");
    let input = repo().join("models/demo/text_upright.npy");
    let (ok, err) = run(&[
        "run",
        p(&demo_model()),
        "--input",
        p(&input),
        "--output",
        p(&out),
    ]);
    assert!(ok, "{err}");
    let arrays = shadownet::npy::read_npz(&out).unwrap();
    let y = arrays.values().next().unwrap();
    assert_eq!(y.shape, vec![1, 2]);
    assert!(y.data[0] > 0.9);
}

#[test]
fn truncated_and_random_models_are_rejected() {
    let d = tmpdir("bad");
    let bytes = std::fs::read(demo_model()).unwrap();
    let input = repo().join("models/demo/text_upright.npy");
    let trunc = d.join("trunc.onnx");
    std::fs::write(&trunc, &bytes[..bytes.len() / 3]).unwrap();
    let (ok, err) = run(&["run", p(&trunc), "--input", p(&input)]);
    assert!(!ok && err.contains("ONNX"), "{err}");
    let mut s = 0x1234_5678u32;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s as u8
        })
        .collect();
    for (name, mut data) in [("noise.onnx", noise.clone()), ("noise.tflite", noise)] {
        if name.ends_with("tflite") {
            data[4..8].copy_from_slice(b"TFL3");
        }
        let f = d.join(name);
        std::fs::write(&f, &data).unwrap();
        let (ok, err) = run(&["run", p(&f), "--input", p(&input)]);
        assert!(!ok && err.contains("not a valid"), "{name}: {err}");
    }
}

#[test]
fn wrong_input_shape_is_named() {
    let d = tmpdir("shape");
    let f = d.join("x.npy");
    let t = shadownet_ir::Tensor::zeros(&[1, 3, 32, 32]);
    shadownet::npy::write_npy(&f, &t).unwrap();
    let (ok, err) = run(&[
        "run",
        p(&demo_model()),
        "--input",
        p(&f),
        "--input-shape",
        "x=1,3,48,192",
    ]);
    assert!(!ok && err.contains("shape"), "{err}");
    let f2 = d.join("bad.npy");
    std::fs::write(&f2, b"not numpy").unwrap();
    let (ok, err) = run(&["run", p(&demo_model()), "--input", p(&f2)]);
    assert!(!ok && err.contains(".npy"), "{err}");
}

#[test]
fn missing_and_unknown_inputs_are_named() {
    let input = repo().join("models/demo/text_upright.npy");
    let (ok, err) = run(&[
        "run",
        p(&demo_model()),
        "--input",
        &format!("nosuch={}", p(&input)),
        "--input-shape",
        "x=1,3,48,192",
    ]);
    assert!(!ok && err.contains("no input named 'nosuch'"), "{err}");
    let (ok, err) = run(&["inspect", p(&demo_model())]);
    assert!(!ok && err.contains("--input-shape"), "{err}");
    let (ok, err) = run(&["run", "/nonexistent/model.onnx", "--input", p(&input)]);
    assert!(!ok && err.contains("cannot read"), "{err}");
}

/// `--accelerator gpu` in a build without the GPU backend says how to get it.
#[cfg(not(feature = "gpu"))]
#[test]
fn gpu_accelerator_needs_the_gpu_build() {
    let d = tmpdir("gpu");
    let model = demo_model();
    for args in [
        vec![
            "run",
            p(&d),
            "--key",
            "k",
            "--input",
            "x.npy",
            "--accelerator",
            "gpu",
        ],
        vec!["bench", p(&model), "--accelerator", "gpu"],
    ] {
        let (ok, err) = run(&args);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("rebuild with --features gpu"),
            "{args:?}: {err}"
        );
    }
}

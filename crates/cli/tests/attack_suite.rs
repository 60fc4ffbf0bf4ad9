//! The attack suite on today's schemes, pinned in both directions: what must break does
//! (averaging on the paper's scheme; depthwise unmixing and seed recovery on today's
//! hardened scheme), and what must not recover anything does not (one masked
//! observation, ICA on Gaussian weights, a conversion seeded from the OS). Small models
//! and few runs keep each case to seconds. Also the audit formats (`run
//! --record-untrusted`, `inspect --export-public`) and the JSON reports, parsed field by
//! field.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use shadownet::attack::{self, AttackArgs, AttackKind, Report};
use shadownet_protect::Options;
use shadownet_trusted::Scheme;

fn fixtures() -> PathBuf {
    std::env::var_os("SHADOWNET_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fixtures"))
}

fn model_path(model: &str) -> PathBuf {
    let p = ["onnx", "tflite"]
        .iter()
        .map(|e| fixtures().join("models").join(format!("{model}.{e}")))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("fixture model {model} is missing: run scripts/make-fixtures.sh")
        });
    p
}

fn shapes(model: &str) -> Vec<(String, Vec<usize>)> {
    match model {
        "ppocr_cls" => vec![("x".into(), vec![1, 3, 48, 192])],
        _ => Vec::new(),
    }
}

struct Pkg {
    dir: PathBuf,
    pkg: PathBuf,
    key: PathBuf,
    model: PathBuf,
}

impl Drop for Pkg {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn package(model: &str, scheme: Scheme, seed: Option<u64>, tag: &str) -> Pkg {
    let path = model_path(model);
    let g = shadownet_import::load_model(&path, &shapes(model))
        .unwrap()
        .graph;
    let dir = std::env::temp_dir().join(format!(
        "shadownet-suite-{tag}-{model}-{}-{}",
        scheme.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let (sk, pk) = shadownet::keys::keygen(&dir.join("keys"), false).unwrap();
    let pub_key = shadownet::keys::read_public_key(&pk).unwrap();
    let pkg = dir.join("pkg");
    let opts = Options {
        scheme,
        seed,
        ..Default::default()
    };
    shadownet::secure::convert_to_dir(&g, &pub_key, &pkg, &opts, false).unwrap();
    Pkg {
        dir,
        pkg,
        key: sk,
        model: path,
    }
}

fn args(p: &Pkg, kind: AttackKind) -> AttackArgs {
    AttackArgs {
        pkg: p.pkg.clone(),
        key: p.key.clone(),
        reference: p.model.clone(),
        kind,
        json: true,
        queries: 16,
        seed: 3,
        runs: 2,
        inputs: 4,
        max_features: 1024,
        group_sizes: vec![8],
        no_whole_layer: true,
        methods: vec!["pca".into()],
        templates: None,
        layers: Vec::new(),
        seed_bits: 16,
    }
}

fn run(a: &AttackArgs) -> Report {
    let r = attack::run_with(a).unwrap();
    eprintln!("{}", r.to_table());
    r
}

/// The paper's scheme: averaging (with the fixed masks removed by their anchors) recovers
/// every masked activation of MiniVGG, and the regression recovers the filters of the
/// layers whose output reaches the next layer without pooling.
#[test]
fn averaging_breaks_the_paper_scheme() {
    let p = package("minivgg", Scheme::ShadowNet, Some(7), "avg");
    let r = run(&args(&p, AttackKind::Averaging));
    let a = r.averaging.as_ref().unwrap();
    assert_eq!(a.recovered_corr, a.masked_layers, "{}", r.to_table());
    assert!(a.layers.iter().skip(1).all(|l| l.fixed_mask));
    // Measured (seed 3): layer 0 100%, layer 2 78% of filters at |cos| ≥ 0.95.
    for k in [0, 2] {
        let l = &a.layers[k];
        assert!(
            l.filters.score.fraction >= 0.6 && !l.filters.verdict.at_floor,
            "layer {k}: {:?}",
            l.filters
        );
    }
}

/// Today's hardened scheme: one masked observation says little (correlation ≈ 0.3), and
/// 16 runs of the same input average the fresh masks away to ≈ 0.8: the σ/√T law that
/// breaks any zero-mean real-valued mask. A report of recovery from one observation would
/// mean a broken attack; no gain from averaging would mean a broken averaging.
#[test]
fn averaging_on_fresh_masks_follows_one_over_sqrt_t() {
    let p = package("minivgg", Scheme::Hardened, Some(7), "avgh");
    let mut a = args(&p, AttackKind::Averaging);
    a.inputs = 1;
    a.runs = 1;
    let one = run(&a).averaging.unwrap();
    a.runs = 16;
    let many = run(&a).averaging.unwrap();
    assert_eq!(one.recovered_corr, 0);
    assert!(
        one.median_corr < 0.5,
        "T=1: median corr {}",
        one.median_corr
    );
    assert!(
        many.median_corr > 0.7,
        "T=16: median corr {}",
        many.median_corr
    );
    assert!(one.layers.iter().all(|l| !l.fixed_mask));
    // The attacker recognises the layer fed by its own (masked) input.
    assert!(many.layers[0].model_input);
}

/// Today's hardened depthwise layers: each real filter is published inside a signed 2×2
/// DCT mixture with a fake, and P₀ ± P₁ gives it back exactly (PP-OCR's trained
/// classifier, public.bin alone), far above both floors.
#[test]
fn unmix_pairs_break_hardened_depthwise() {
    let p = package("ppocr_cls", Scheme::Hardened, Some(5), "dw");
    let r = run(&args(&p, AttackKind::Unmix));
    let u = r.unmix.as_ref().unwrap();
    let t = &u.depthwise;
    assert!(t.layers > 0 && t.filters > 0);
    assert!(
        t.exact as f64 >= 0.99 * t.filters as f64,
        "depthwise: {t:?}"
    );
    assert!(
        t.random_floor_fraction < 0.5 && t.public_floor_fraction < 0.5,
        "{t:?}"
    );
    assert_eq!(t.layers_at_floor, 0);
    for l in u.layers.iter().filter(|l| l.depthwise) {
        assert!(
            l.best.starts_with("pairs"),
            "layer {}: best {}",
            l.layer,
            l.best
        );
    }
}

/// ICA and the sparsity search cannot pull Gaussian (He-random) filters out of mixtures:
/// on ResNet-44's random weights they recover nothing, whatever the grouping.
#[test]
fn ica_finds_nothing_in_gaussian_weights() {
    let p = package("resnet44", Scheme::Hardened, Some(5), "ica");
    let mut a = args(&p, AttackKind::Unmix);
    a.methods = vec!["ica-logcosh-sym".into(), "sparse-l4".into()];
    a.layers = vec![31, 40];
    a.no_whole_layer = false;
    let r = run(&a);
    let u = r.unmix.as_ref().unwrap();
    assert_eq!(u.layers.len(), 2);
    for l in &u.layers {
        for s in &l.sets {
            // Candidates of a group lie in its span (≤ 8 dimensions for the converter's
            // groups), where random guesses also reach 0.95 now and then: the bound is
            // that span floor plus 3σ and one filter.
            let h = if s.grouping.starts_with("whole") {
                l.dim
            } else {
                8
            };
            let groups = l.public_filters.div_ceil(h.min(l.public_filters)).max(1);
            let f = shadownet_attacks::score::iid_floor(
                l.real_filters,
                h,
                s.candidates.div_ceil(groups),
            );
            let limit = l.real_filters as f64 * (f.fraction + 3.0 * f.sd_fraction) + 1.0;
            assert!(
                s.judged.score.recovered as f64 <= limit && s.judged.score.exact == 0,
                "layer {} {} / {}: {:?} vs span floor {f:?}",
                l.layer,
                s.method,
                s.grouping,
                s.judged.score
            );
        }
    }
}

/// A conversion seeded with `--seed` gives its seed away through the public conversion id,
/// and with it every filter; one seeded from the OS is out of the search's reach.
#[test]
fn seed_search_both_ways() {
    let p = package("ppocr_cls", Scheme::Hardened, Some(4242), "seed");
    let r = run(&args(&p, AttackKind::Seed));
    let s = r.seed.as_ref().unwrap();
    assert_eq!(s.search.found, Some(4242));
    assert!(s.reconverted && s.public_values_from_seed == ["conversion_id"]);
    for t in [&s.dense, &s.depthwise] {
        assert!(t.filters > 0 && t.exact == t.filters, "{t:?}");
    }
    let q = package("ppocr_cls", Scheme::Hardened, None, "noseed");
    let r = run(&args(&q, AttackKind::Seed));
    let s = r.seed.as_ref().unwrap();
    assert_eq!(s.search.found, None);
    assert_eq!(s.search.tried, 1 << 16);
    assert!(!s.reconverted && s.public_values_from_seed.is_empty());
    assert_eq!(s.dense.recovered + s.depthwise.recovered, 0);
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shadownet"))
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `attack --json` from the command line: every field of the seed report, by name.
#[test]
fn attack_json_from_the_cli() {
    let p = package("resnet44", Scheme::ShadowNet, Some(99), "json");
    let out = ok(bin()
        .args(["attack"])
        .arg(&p.pkg)
        .arg("--key")
        .arg(&p.key)
        .arg("--reference")
        .arg(&p.model)
        .args(["--kind", "seed", "--seed-bits", "8", "--json"]));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["scheme"], "shadownet");
    let s = &v["seed"];
    assert_eq!(s["found"], 99);
    assert_eq!(s["tried"], 100);
    assert_eq!(s["range"], serde_json::json!([0, 256]));
    assert_eq!(s["reconverted"], true);
    assert!(s["seconds"].is_number() && s["ratio"].is_number());
    let d = &s["dense"];
    assert_eq!(d["layers"], 46);
    assert_eq!(d["filters"], 1690);
    assert_eq!(d["recovered"], 1690);
    assert!(d["mean_cos"].as_f64().unwrap() > 0.999);
    assert!(d["public_floor_mean_cos"].as_f64().unwrap() < 0.5);
    let l0 = &s["layers"][0];
    for f in [
        "layer",
        "op",
        "depthwise",
        "real_filters",
        "public_floor",
        "score",
        "random_floor",
        "verdict",
    ] {
        assert!(!l0[f].is_null(), "layer field {f} missing: {l0}");
    }
    assert_eq!(l0["verdict"]["at_floor"], false);
    assert_eq!(l0["score"]["exact"], l0["real_filters"]);
}

fn npy(p: &Path) -> shadownet_ir::Tensor {
    shadownet::npy::read_npy(p).unwrap()
}

/// `run --record-untrusted` writes what the accelerator saw, appending runs;
/// `inspect --export-public` writes the public weights; both with manifests naming the
/// source nodes and weights.
#[test]
fn audit_formats() {
    let p = package("resnet44", Scheme::ShadowNet, Some(3), "rec");
    let x = p.dir.join("x.npy");
    let t = shadownet_ir::Tensor {
        shape: vec![1, 3, 32, 32],
        data: (0..3072)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect(),
    };
    {
        use std::io::Write;
        // A minimal float32 .npy.
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 32, 32), }";
        let pad = 64 - (10 + header.len() + 1) % 64;
        let mut h = header.to_string();
        h.push_str(&" ".repeat(pad % 64));
        h.push('\n');
        let mut f = std::fs::File::create(&x).unwrap();
        f.write_all(b"\x93NUMPY\x01\x00").unwrap();
        f.write_all(&(h.len() as u16).to_le_bytes()).unwrap();
        f.write_all(h.as_bytes()).unwrap();
        for v in &t.data {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    let rec = p.dir.join("rec");
    for _ in 0..2 {
        ok(bin()
            .arg("run")
            .arg(&p.pkg)
            .arg("--key")
            .arg(&p.key)
            .arg("--input")
            .arg(&x)
            .arg("--record-untrusted")
            .arg(&rec));
    }
    let m: Value =
        serde_json::from_slice(&std::fs::read(rec.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["format"], "shadownet-untrusted-record/1");
    assert_eq!(m["scheme"], "shadownet");
    assert_eq!(m["runs"], 2);
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 46);
    for l in layers {
        assert!(l["node"].as_str().is_some_and(|s| !s.is_empty()), "{l}");
        assert!(l["weight"].as_str().is_some_and(|s| !s.is_empty()), "{l}");
        assert_eq!(l["dtype"], "float32");
        let ins = l["inputs"].as_array().unwrap();
        let outs = l["outputs"].as_array().unwrap();
        assert_eq!((ins.len(), outs.len()), (2, 2));
        let k = l["layer"].as_u64().unwrap();
        assert_eq!(ins[1], format!("L{k:03}.run0001.in.npy"));
        let a = npy(&rec.join(ins[0].as_str().unwrap()));
        let shape: Vec<usize> = serde_json::from_value(l["input_shape"].clone()).unwrap();
        assert_eq!(a.shape, shape);
        let o = npy(&rec.join(outs[1].as_str().unwrap()));
        let shape: Vec<usize> = serde_json::from_value(l["output_shape"].clone()).unwrap();
        assert_eq!(o.shape, shape);
    }
    // The paper's scheme leaves the first layer's input unmasked: it is the model input.
    assert_eq!(npy(&rec.join("L000.run0000.in.npy")).data, t.data);
    // Another package's recording directory is refused, not mixed.
    let q = package("resnet44", Scheme::ShadowNet, Some(4), "rec2");
    let out = bin()
        .arg("run")
        .arg(&q.pkg)
        .arg("--key")
        .arg(&q.key)
        .arg("--input")
        .arg(&x)
        .arg("--record-untrusted")
        .arg(&rec)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another package"));

    let exp = p.dir.join("public");
    ok(bin()
        .arg("inspect")
        .arg(&p.pkg)
        .arg("--key")
        .arg(&p.key)
        .arg("--export-public")
        .arg(&exp));
    let m: Value =
        serde_json::from_slice(&std::fs::read(exp.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["format"], "shadownet-public-export/1");
    let public =
        shadownet_trusted::decode_public(&std::fs::read(p.pkg.join("public.bin")).unwrap())
            .unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), public.layers.len());
    for (l, pl) in layers.iter().zip(&public.layers) {
        let w = npy(&exp.join(l["weight_file"].as_str().unwrap()));
        assert_eq!(w, pl.weight);
        let axis = if l["op"] == "MatMul" { 1 } else { 0 };
        assert_eq!(l["filter_axis"], axis, "{l}");
        assert!(l["weight"].as_str().is_some());
    }
    // Without the key the names are unknown, the weights the same.
    let exp2 = p.dir.join("public2");
    ok(bin()
        .arg("inspect")
        .arg(&p.pkg)
        .arg("--export-public")
        .arg(&exp2));
    let m: Value =
        serde_json::from_slice(&std::fs::read(exp2.join("manifest.json")).unwrap()).unwrap();
    assert!(m["layers"][0]["node"].is_null());
}

//! The attack suite on today's schemes (format v3), pinned in both directions: what must
//! break does (fake-partner, mask-reuse, averaging and unmixing on the paper's scheme; seed
//! recovery on a conversion seeded with a small `--insecure-reproducible-seed`, both
//! schemes), and what today's hardened scheme resists is reported at the floor (its masks
//! are uniform over Z/2^64, so averaging gives nothing; fake partners do not exist; an
//! unseeded conversion is out of the seed search's reach; ICA finds nothing in Gaussian
//! weights). Small models and few runs keep each case to seconds. Also the audit formats
//! (`run --record-untrusted`, `inspect --export-public`) and the JSON reports, parsed field
//! by field.
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use shadownet::attack::{self, AttackArgs, AttackKind, Report};
use shadownet_protect::{Keep, Options};
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
    package_with(model, scheme, seed, tag, Keep::Default)
}

fn package_with(model: &str, scheme: Scheme, seed: Option<u64>, tag: &str, keep: Keep) -> Pkg {
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
    let dev = shadownet::keys::TestDevice::new(&dir.join("keys")).unwrap();
    let pkg = dir.join("pkg");
    let opts = Options {
        scheme,
        insecure_seed: seed,
        keep,
        ..Default::default()
    };
    let c = shadownet_protect::convert(&g, &opts, &mut |_, _| {}).unwrap();
    shadownet::secure::write(&c, &dev.device_pub, &dev.vendor_secret, &pkg).unwrap();
    Pkg {
        dir,
        pkg,
        key: dev.device_key.clone(),
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
        device_pub: None,
    }
}

fn run(a: &AttackArgs) -> Report {
    let r = attack::run_with(a).unwrap();
    eprintln!("{}", r.to_table());
    r
}

/// The published attacks: on the paper's scheme the fake partners give back nearly every
/// MiniVGG filter and the reused masks every masked activation; on the hardened scheme
/// there are no partners to find and no mask repeats, so both find nothing.
#[test]
fn published_attacks_both_schemes() {
    let p = package("minivgg", Scheme::ShadowNet, None, "pub");
    let r = run(&args(&p, AttackKind::All));
    let (fp, mr) = (r.fake_partner.unwrap(), r.mask_reuse.unwrap());
    assert!(fp.fake_pairs.fraction() >= 0.95, "{fp:?}");
    assert_eq!(fp.fake_pairs.baseline_recovered, 0);
    assert!(mr.masked_layers >= 4);
    assert_eq!(mr.recovered_corr, mr.masked_layers, "{mr:?}");
    let p = package("minivgg", Scheme::Hardened, None, "pubh");
    let r = run(&args(&p, AttackKind::All));
    let (fp, mr) = (r.fake_partner.unwrap(), r.mask_reuse.unwrap());
    assert_eq!(fp.fake_pairs.recovered, 0, "{fp:?}");
    assert!(fp.fake_pairs.filters > 0);
    assert_eq!(mr.recovered_corr, 0, "{mr:?}");
    assert!(mr.layers.iter().all(|l| l.corr.abs() < 0.2), "{mr:?}");
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

/// Today's hardened scheme: masks uniform over Z/2^64 and never reused, so what the
/// accelerator receives, read as signed integers (the attacker's best real-valued
/// reading), is uncorrelated with the activation however many runs are averaged, and the
/// regression stays at the floor. (On the old real-valued masks 16 runs gave ≈ 0.8.)
#[test]
fn averaging_finds_nothing_in_ring_masks() {
    let p = package("minivgg", Scheme::Hardened, Some(7), "avgh");
    let mut a = args(&p, AttackKind::Averaging);
    a.inputs = 2;
    a.runs = 16;
    let r = run(&a).averaging.unwrap();
    assert_eq!(
        r.masked_layers,
        r.layers.len(),
        "the model input is masked too"
    );
    assert_eq!(r.recovered_corr, 0);
    // Uncorrelated: |corr| within 0.1 or five standard deviations of a mean over the
    // inputs of correlations of n independent values (MiniVGG's last layer has 512 values:
    // 0.1 alone was 3.2σ there, a false alarm in about one run in 700).
    let limit = |n: usize| (5.0 / ((n * a.inputs) as f64).sqrt()).max(0.1);
    assert!(
        r.layers
            .iter()
            .all(|l| l.corr.abs() < limit(l.elements) && !l.fixed_mask),
        "{r:?}"
    );
    assert_eq!(r.dense.recovered, 0, "{:?}", r.dense);
}

/// Depthwise layers. The paper's ShuffleChannel only scales and permutes them, so every
/// public filter is a real one (PP-OCR's trained classifier, public.bin alone). The
/// hardened scheme keeps them in the trusted core by default (none published). Forced out
/// (`--keep-in-tee none`), each real filter sits in a Haar-random 2×2 mixture with a fake
/// on its input channel, and with 9 taps that hides little: measured 95.8% at |cos| ≥ 0.95
/// (public floor 81.7%), pinned here as the reason the default keeps them in.
#[test]
fn unmix_depthwise_both_schemes() {
    let p = package("ppocr_cls", Scheme::ShadowNet, Some(5), "dw");
    let r = run(&args(&p, AttackKind::Unmix));
    let t = &r.unmix.as_ref().unwrap().depthwise;
    assert!(t.layers > 0 && t.filters > 0);
    assert!(
        t.exact as f64 >= 0.99 * t.filters as f64,
        "depthwise: {t:?}"
    );
    assert!(
        t.public_floor_fraction >= 0.99,
        "public filters are the real ones: {t:?}"
    );
    let p = package("ppocr_cls", Scheme::Hardened, Some(5), "dwh");
    let r = run(&args(&p, AttackKind::Unmix));
    assert_eq!(r.unmix.as_ref().unwrap().depthwise.layers, 0);
    let p = package_with("ppocr_cls", Scheme::Hardened, Some(5), "dwn", Keep::None);
    let mut a = args(&p, AttackKind::Unmix);
    a.methods = vec!["pca".into()];
    let r = run(&a);
    let t = &r.unmix.as_ref().unwrap().depthwise;
    assert!(t.layers > 0 && t.filters > 0);
    assert!(t.fraction >= 0.9, "depthwise: {t:?}");
    assert!(t.layers_at_floor < t.layers, "depthwise: {t:?}");
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

/// A transform seeded with a small `--insecure-reproducible-seed` is found by converting a
/// dummy of the architecture with each candidate and confirmed by re-protection, and gives
/// back every filter, on both schemes; one seeded from the OS is out of the search's
/// reach. No public header field follows the seed but the weights (the package id comes
/// from the OS).
#[test]
fn seed_search_both_ways() {
    for scheme in [Scheme::ShadowNet, Scheme::Hardened] {
        let p = package("minivgg", scheme, Some(5), "seed");
        let mut a = args(&p, AttackKind::Seed);
        a.seed_bits = 3;
        let r = run(&a);
        let s = r.seed.as_ref().unwrap();
        assert_eq!(s.search.found, Some(5));
        assert_eq!(
            s.public_values_from_seed,
            ["layer weights (the transform itself)"]
        );
        assert!(s.match_cos > 0.99, "{}", s.match_cos);
        assert!(
            s.dense.filters > 0 && s.dense.fraction >= 0.99,
            "{:?}",
            s.dense
        );
        let q = package("minivgg", scheme, None, "noseed");
        let r = run(&a_for(&q, &a));
        let s = r.seed.as_ref().unwrap();
        assert_eq!(s.search.found, None);
        assert_eq!(s.search.tried, 8);
        assert!(s.match_cos < 0.9, "{}", s.match_cos);
        assert_eq!(s.dense.recovered + s.depthwise.recovered, 0);
    }
}

fn a_for(p: &Pkg, a: &AttackArgs) -> AttackArgs {
    AttackArgs {
        pkg: p.pkg.clone(),
        key: p.key.clone(),
        reference: p.model.clone(),
        ..a.clone()
    }
}

/// The device owner's file attacks and a lying accelerator, both ways. Rolling back the
/// counter file and the pool of the file-backed platform makes the hardened core use one
/// entry again and again (the mask repeats, and mask-reuse on the ring recovers several
/// layers' inputs to correlation ≥ 0.95; measured 3 of 6 on MiniVGG, whose BatchNorm after
/// the ReLU leaves no exact zero to anchor on); on the paper scheme there is nothing to roll back. A lie of +1
/// in one ring value is never accepted by the hardened core; the paper scheme accepts every
/// lie, and about half or more change the top-1 (12 to 18 of 24 on six freshly converted
/// MiniVGG packages). The paper package is seeded: how many lies flip the top-1 depends on
/// its random transform, and six lies on an unseeded package flipped only two once in CI.
#[test]
fn rollback_and_liar_both_ways() {
    let p = package("minivgg", Scheme::Hardened, None, "rb");
    let mut a = args(&p, AttackKind::Rollback);
    a.queries = 16;
    let r = run(&a).rollback.unwrap();
    assert!(r.applicable && r.refused.is_none(), "{r:?}");
    assert_eq!(r.mask_reused, Some(true));
    let m = r.activations.as_ref().unwrap();
    assert!(m.layers[0].corr > 0.95, "{m:?}");
    assert!(m.recovered_corr >= 2, "{m:?}");
    a.kind = AttackKind::Liar;
    a.runs = 6;
    let l = run(&a).liar.unwrap();
    assert_eq!((l.accepted, l.false_alarms), (0, 0), "{l:?}");

    let q = package("minivgg", Scheme::ShadowNet, Some(8), "rbp");
    let mut a = args(&q, AttackKind::Rollback);
    assert!(!run(&a).rollback.unwrap().applicable);
    a.kind = AttackKind::Liar;
    a.runs = 24;
    let l = run(&a).liar.unwrap();
    assert_eq!(l.accepted, 24, "{l:?}");
    assert!(l.top1_changed >= 8, "{l:?}");
}

/// A package sealed to the device by the attacker with the victim's public.bin: refused
/// for its signer; once the owner trusts its own key it opens, but the core takes none of
/// the victim's pool entries (they belong to the victim's secret counter).
#[test]
fn forged_package_gets_no_victim_pool() {
    let p = package("minivgg", Scheme::Hardened, None, "forge");
    let mut a = args(&p, AttackKind::Forge);
    a.device_pub = Some(p.key.with_extension("pub"));
    let f = run(&a).forge.unwrap();
    assert!(f.public_identical);
    assert!(f.untrusted_signer.starts_with("refused"), "{f:?}");
    assert!(f.untrusted_signer.contains("does not trust"), "{f:?}");
    assert_eq!(f.own_signer, "accepted");
    assert!(f.victim_entries >= 2);
    assert!(
        f.victim_pool.starts_with("refused") && !f.victim_pool_used,
        "{f:?}"
    );
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
    let p = package("minivgg", Scheme::Hardened, Some(6), "json");
    let out = ok(bin()
        .args(["attack"])
        .arg(&p.pkg)
        .arg("--key")
        .arg(&p.key)
        .arg("--reference")
        .arg(&p.model)
        .args(["--kind", "seed", "--seed-bits", "3", "--json"]));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["scheme"], "hardened");
    let s = &v["seed"];
    assert_eq!(s["found"], 6);
    assert_eq!(s["tried"], 7);
    assert_eq!(s["range"], serde_json::json!([0, 8]));
    assert!(s["match_cos"].as_f64().unwrap() > 0.99);
    assert!(s["seconds"].is_number() && s["ratio"].is_number());
    let d = &s["dense"];
    assert_eq!(d["layers"], 6);
    assert_eq!(d["filters"], 714);
    assert!(d["recovered"].as_u64().unwrap() >= 700, "{d}");
    assert!(d["mean_cos"].as_f64().unwrap() > 0.99);
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
}

fn npy(p: &Path) -> shadownet_ir::Tensor {
    shadownet::npy::read_npy(p).unwrap()
}

/// Reads a .npy of any element type as (dtype descr, shape, values as i128).
fn npy_any(p: &Path) -> (String, Vec<usize>, Vec<i128>) {
    let bytes = std::fs::read(p).unwrap();
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = f.shape().iter().map(|&d| d as usize).collect();
    let descr = f.dtype().descr().to_string();
    let vals = if descr.contains("u8") {
        f.into_vec::<u64>()
            .unwrap()
            .into_iter()
            .map(i128::from)
            .collect()
    } else if descr.contains("i4") {
        f.into_vec::<i32>()
            .unwrap()
            .into_iter()
            .map(i128::from)
            .collect()
    } else {
        Vec::new()
    };
    (descr, shape, vals)
}

fn write_input(x: &Path) -> shadownet_ir::Tensor {
    let t = shadownet_ir::Tensor {
        shape: vec![1, 3, 32, 32],
        data: (0..3072)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect(),
    };
    shadownet::record::write_npy(x, &t.shape, &t.data).unwrap();
    t
}

/// `run --record-untrusted` writes what the accelerator saw in its real dtype (float32 on
/// the paper scheme, uint64 ring values on the hardened one), appending runs;
/// `inspect --export-public` writes the public weights (float32 / int32); both with
/// manifests naming the source nodes and weights when given the source model.
#[test]
fn audit_formats() {
    for (scheme, dtype, wtype) in [
        (Scheme::ShadowNet, "float32", "float32"),
        (Scheme::Hardened, "uint64", "int32"),
    ] {
        let p = package("minivgg", scheme, Some(3), "rec");
        let x = p.dir.join("x.npy");
        let t = write_input(&x);
        let rec = p.dir.join("rec");
        for _ in 0..2 {
            ok(bin()
                .arg("run")
                .arg(&p.pkg)
                .arg("--key")
                .arg(&p.key)
                .arg("--input")
                .arg(&x)
                .arg("--allow-slow-masks")
                .arg("--record-untrusted")
                .arg(&rec)
                .arg("--reference")
                .arg(&p.model));
        }
        let m: Value =
            serde_json::from_slice(&std::fs::read(rec.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m["format"], "shadownet-untrusted-record/2");
        assert_eq!(m["scheme"], scheme.name());
        assert_eq!(m["runs"], 2);
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 6);
        for l in layers {
            assert!(l["node"].as_str().is_some_and(|s| !s.is_empty()), "{l}");
            assert!(l["weight"].as_str().is_some_and(|s| !s.is_empty()), "{l}");
            assert_eq!(l["dtype"], dtype);
            let ins = l["inputs"].as_array().unwrap();
            let outs = l["outputs"].as_array().unwrap();
            assert_eq!((ins.len(), outs.len()), (2, 2));
            let k = l["layer"].as_u64().unwrap();
            assert_eq!(ins[1], format!("L{k:03}.run0001.in.npy"));
            let shape: Vec<usize> = serde_json::from_value(l["input_shape"].clone()).unwrap();
            let oshape: Vec<usize> = serde_json::from_value(l["output_shape"].clone()).unwrap();
            let fi = rec.join(ins[0].as_str().unwrap());
            let fo = rec.join(outs[1].as_str().unwrap());
            if scheme == Scheme::ShadowNet {
                assert_eq!(npy(&fi).shape, shape);
                assert_eq!(npy(&fo).shape, oshape);
            } else {
                let (d, s, _) = npy_any(&fi);
                assert!(d.contains("u8"), "{d}");
                assert_eq!(s, shape);
                assert_eq!(npy_any(&fo).1, oshape);
            }
        }
        if scheme == Scheme::ShadowNet {
            // The paper's scheme leaves the first layer's input unmasked: the model input.
            assert_eq!(npy(&rec.join("L000.run0000.in.npy")).data, t.data);
        } else {
            // Fresh one-time masks: the same input never crosses twice alike.
            let (_, _, a) = npy_any(&rec.join("L000.run0000.in.npy"));
            let (_, _, b) = npy_any(&rec.join("L000.run0001.in.npy"));
            let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
            assert!(same * 100 < a.len(), "{same} of {} equal", a.len());
        }
        // Another package's recording directory is refused, not mixed.
        let q = package("minivgg", scheme, Some(4), "rec2");
        let out = bin()
            .arg("run")
            .arg(&q.pkg)
            .arg("--key")
            .arg(&q.key)
            .arg("--input")
            .arg(&x)
            .arg("--allow-slow-masks")
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
            .arg("--export-public")
            .arg(&exp)
            .arg("--reference")
            .arg(&p.model));
        let m: Value =
            serde_json::from_slice(&std::fs::read(exp.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m["format"], "shadownet-public-export/2");
        let public = attack::PublicPackage::read(&p.pkg).unwrap();
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), public.layers.len());
        for (l, pl) in layers.iter().zip(&public.layers) {
            assert_eq!(l["dtype"], wtype);
            let f = exp.join(l["weight_file"].as_str().unwrap());
            if scheme == Scheme::ShadowNet {
                assert_eq!(npy(&f), pl.weight);
            } else {
                let (_, s, v) = npy_any(&f);
                assert_eq!(s, pl.weight.shape);
                assert!(v.iter().zip(&pl.weight.data).all(|(&a, &b)| a as f32 == b));
            }
            let axis = if l["op"] == "MatMul" { 1 } else { 0 };
            assert_eq!(l["filter_axis"], axis, "{l}");
            assert!(l["weight"].as_str().is_some());
        }
        // Without the source model the names are unknown, the weights the same.
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
}

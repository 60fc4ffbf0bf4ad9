//! The published attacks on ShadowNet packages: the fake-partner attack recovers the real
//! filters from the public banks and the mask-reuse attack recovers masked activations.
//! Each case pins the direction of the result for one (model, scheme) pair: the paper's
//! scheme falls to both, the hardened scheme to neither.
use std::path::PathBuf;

use shadownet::attack::{self, AttackKind, Report};
use shadownet_protect::Options;
use shadownet_trusted::Scheme;

fn fixtures() -> PathBuf {
    std::env::var_os("SHADOWNET_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fixtures"))
}

/// What a scheme is expected to leak.
#[derive(Clone, Copy)]
enum Expect {
    /// The attacks succeed (the paper's scheme).
    Broken,
    /// The attacks fail (the hardened scheme).
    Holds,
}

fn attack_package(model: &str, scheme: Scheme) -> Report {
    let path = fixtures().join("models").join(format!("{model}.onnx"));
    assert!(
        path.exists(),
        "fixture model {} is missing: run scripts/make-fixtures.sh (scripts/test.sh builds it)",
        path.display()
    );
    let g = shadownet_import::load_model(&path, &[]).unwrap().graph;
    let dir = std::env::temp_dir().join(format!(
        "shadownet-attack-{model}-{}-{}",
        scheme.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let (sk, pk) = shadownet::keys::keygen(&dir.join("keys"), false).unwrap();
    let pub_key = shadownet::keys::read_public_key(&pk).unwrap();
    let pkg = dir.join("pkg");
    let opts = Options {
        scheme,
        seed: Some(11),
        ..Default::default()
    };
    shadownet::secure::convert_to_dir(&g, &pub_key, &pkg, &opts, false).unwrap();
    let r = attack::run(&pkg, &sk, &path, AttackKind::All, 32, 3).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{}", r.to_table());
    r
}

fn check(model: &str, scheme: Scheme, expect: Expect) {
    let r = attack_package(model, scheme);
    let fp = r.fake_partner.as_ref().expect("fake-partner report");
    let mr = r.mask_reuse.as_ref().expect("mask-reuse report");
    let t = &fp.fake_pairs;
    let (frac, base) = (t.fraction(), t.baseline_fraction());
    let corr_frac = mr.recovered_corr as f32 / mr.masked_layers.max(1) as f32;
    match expect {
        Expect::Broken => {
            assert!(
                frac >= 0.8,
                "{model}: fake-partner recovered only {frac:.3} of filters"
            );
            assert!(
                base <= 0.05 && t.baseline_mean_cos < 0.5,
                "{model}: baseline too strong: {base:.3}"
            );
            assert!(
                t.mean_cos > t.baseline_mean_cos + 0.4,
                "{model}: attack not far above the floor"
            );
            assert!(
                corr_frac >= 0.75,
                "{model}: mask-reuse recovered only {corr_frac:.3} of layers"
            );
            assert!(
                mr.layers.iter().all(|l| l.corr > 0.5),
                "{model}: some layer's activation not recovered at all"
            );
        }
        Expect::Holds => {
            // Measured (convert seed 11, attacker seed 3, 32 queries): fake-partner 0/1690
            // filters on resnet44 and 0/714 on minivgg, the same as the N(0,1) baseline
            // (0%); the mixed banks have no fake partner to lean towards, so the clustering
            // finds next to nothing. 5% leaves room for other seeds without letting a
            // working attack (≥ 98% on the paper's scheme) through.
            assert!(
                frac <= 0.05 && frac <= base + 0.05,
                "{model}: fake-partner recovered {frac:.3} of filters (baseline {base:.3})"
            );
            // Measured: mask-reuse recovers 0 masked layers (corr ≥ 0.95) on both models;
            // the best correlation is ~0.8 (resnet44's final dense layer, 64 inputs) and
            // most layers sit at 0.4–0.6. That is what one observation x + m with a fresh
            // mask of the activation's size tells anyone, with no mask estimate at all:
            // the minima over queries anchor nothing (fresh masks never repeat). Allow 10%
            // (4 of resnet44's 46 layers) against ≥ 75% on the paper's scheme.
            assert!(
                corr_frac <= 0.10,
                "{model}: mask-reuse recovered {corr_frac:.3} of masked layers"
            );
            assert!(
                mr.recovered == 0,
                "{model}: mask-reuse recovered {} layers to rel err < 0.05",
                mr.recovered
            );
            // Every layer is masked, the first one included.
            assert_eq!(
                mr.masked_layers,
                mr.layers.len(),
                "{model}: an unmasked layer"
            );
        }
    }
    // The JSON report carries every number.
    let j = r.to_json();
    assert!(
        j.starts_with('{')
            && j.ends_with('}')
            && j.contains("\"fake_partner\"")
            && j.contains("\"mask_reuse\"")
    );
}

#[test]
fn shadownet_resnet44_falls() {
    check("resnet44", Scheme::ShadowNet, Expect::Broken);
}

#[test]
fn shadownet_minivgg_falls() {
    check("minivgg", Scheme::ShadowNet, Expect::Broken);
}

#[test]
fn hardened_resnet44_holds() {
    check("resnet44", Scheme::Hardened, Expect::Holds);
}

#[test]
fn hardened_minivgg_holds() {
    check("minivgg", Scheme::Hardened, Expect::Holds);
}

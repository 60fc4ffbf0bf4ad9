//! The published attacks on ShadowNet packages: the fake-partner attack recovers the real
//! filters from the public banks and the mask-reuse attack recovers masked activations.
//! Each case pins the direction of the result for one (model, scheme) pair.
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

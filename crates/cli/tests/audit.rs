//! `convert --keep-in-tee auto` in both directions: on the paper scheme the audit finds
//! that every layer leaks and says plainly that nothing would be left to outsource; on the
//! hardened scheme it ships only layers at the floor, having moved any that were not into
//! the trusted core (with the attack's numbers as the reason). The shipped package's report is readable, every
//! outsourced layer in it is at the floor, and the package computes what the plain model
//! does.
mod common;

use common::{assert_close, case, opts, tmpdir, use_built_enclave};
use shadownet::audit::{self, Audit};
use shadownet::keys::TestDevice;
use shadownet::secure::{self, EnclaveMode};
use shadownet_attacks::ica::{Contrast, Mode};
use shadownet_attacks::unmix::Method;
use shadownet_trusted::Scheme;

/// Two static attacks, to keep each case to seconds (the CLI runs them all).
fn methods() -> Vec<Method> {
    vec![Method::Pca, Method::Ica(Contrast::LogCosh, Mode::Symmetric)]
}

fn audited(model: &str, scheme: Scheme) -> anyhow::Result<(usize, Audit)> {
    use_built_enclave();
    let (g, xs) = case(model);
    let dir = tmpdir(&format!("audit-{model}-{}", scheme.name()));
    let dev = TestDevice::new(&dir.join("keys")).unwrap();
    let pkg = dir.join("pkg");
    let res = audit::convert_auto_with(
        &g,
        &opts(scheme),
        &dev.device_pub,
        &dev.vendor_secret,
        &pkg,
        methods(),
    );
    let (c, report) = match res {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    // The report on disk is the one returned, and it describes the shipped package.
    let on_disk = audit::read(&pkg).unwrap().expect("audit.json written");
    assert_eq!(on_disk.outsourced.len(), c.header.layers.len());
    assert_eq!(on_disk.kept, c.kept);
    assert!(on_disk.outsourced.iter().all(|l| l.at_floor), "{on_disk:?}");
    let plain = shadownet_cpu::run_graph(&g, &xs).unwrap();
    let mut sm = secure::open_cpu(&pkg, &dev.device_key, EnclaveMode::Inproc).unwrap();
    sm.allow_slow_masks = true;
    let outs = sm.infer(xs).unwrap();
    assert_close("audited package", &outs, &plain, 0.0, 1e-4);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((c.header.layers.len(), report))
}

#[test]
fn auto_says_when_every_layer_leaks() {
    // MiniVGG's paper-scheme banks all give filters away: nothing is left to outsource.
    let e = audited("minivgg", Scheme::ShadowNet).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("beat the floor on 6 layer(s)") && msg.contains("leaves no package"),
        "{msg}"
    );
}

#[test]
fn auto_on_hardened_ships_only_layers_at_the_floor() {
    // PP-OCR's trained filters: the attack suite's unmix run finds a few hardened layers
    // outside the noise band; whatever it flags here moves into the core, with its numbers.
    let (outsourced, audit) = audited("ppocr_cls", Scheme::Hardened).unwrap();
    assert_eq!(outsourced, audit.outsourced.len());
    assert!(outsourced >= 1, "{audit:?}");
    for (name, why) in &audit.kept {
        assert!(
            why.starts_with("audit round") || why.contains("depthwise"),
            "{name}: {why}"
        );
    }
}

//! `shadownet bench --json` on the bundled demo model: every variant is timed and the
//! secure ones report their round trips and the enclave's heap peak.
use std::path::Path;
use std::process::Command;

#[test]
fn bench_json_reports_every_variant() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/demo/ppocr_cls.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_shadownet"))
        .args(["--threads", "2", "bench"])
        .arg(&model)
        .args([
            "--runs",
            "2",
            "--warmup",
            "0",
            "--json",
            "--input-shape",
            "x=1,3,48,192",
        ])
        .output()
        .expect("cannot run shadownet");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    assert_eq!(v["threads"], 2, "--threads sets the pool the bench runs on");
    assert_eq!(v["runs"], 2);
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 3, 48, 192]));
    assert!(v["reference"].is_null());
    let variants = v["variants"].as_array().expect("variants array");
    let names: Vec<&str> = variants.iter().filter_map(|x| x["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "plain",
            "shadownet-inproc",
            "shadownet-process",
            "hardened-inproc",
            "hardened-process"
        ]
    );
    let pos = |x: &serde_json::Value, k: &str| {
        let n = x[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {x}"));
        assert!(n > 0.0 && n.is_finite(), "{k} = {n} in {x}");
        n
    };
    for x in variants {
        let (mn, med, mx) = (pos(x, "min_ms"), pos(x, "median_ms"), pos(x, "max_ms"));
        assert!(mn <= med && med <= mx, "{x}");
    }
    for x in &variants[1..] {
        pos(x, "ratio_vs_plain");
        pos(x, "round_trips");
        pos(x, "resident_bytes");
        // The enclave process reports its heap peak (counting allocator); in-process
        // cores share the host's heap and report none.
        if x["enclave"] == "process" {
            pos(x, "trusted_peak_bytes");
        } else {
            assert!(x["trusted_peak_bytes"].is_null(), "{x}");
        }
        // One round trip per outsourced layer at least (more when chunks are fetched).
        assert!(
            x["round_trips"].as_u64() >= x["outsourced_layers"].as_u64()
                && x["outsourced_layers"].as_u64() > Some(0),
            "{x}"
        );
        assert!(x["max_rel_err"].as_f64().is_some_and(|e| e < 1e-3), "{x}");
        pos(x, "enclave_median_ms");
        // The paper scheme's trusted pass: every restored value reads at least its
        // public result and writes itself (8 bytes), and its floor is a real time.
        if x["scheme"] == "shadownet" {
            pos(x, "restored_values");
            assert!(pos(x, "pass_bytes_per_value") >= 8.0, "{x}");
            pos(x, "floor_ms");
        } else {
            assert!(x["floor_ms"].is_null(), "{x}");
        }
    }
    pos(&v, "memory_gbps_one_thread");
    pos(&v, "chunk_open_gbps_one_thread");
}

//! docs/ops.md is generated from the importers' tables; a stale copy fails here.
//! `SHADOWNET_BLESS=1 cargo test -p shadownet-import --test ops_doc` rewrites it.
use std::path::PathBuf;

#[test]
fn ops_md_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/ops.md");
    let want = shadownet_import::coverage::ops_markdown();
    if std::env::var_os("SHADOWNET_BLESS").is_some() {
        std::fs::write(&path, &want).expect("writing docs/ops.md");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/ops.md differs from the importers' tables: rerun with SHADOWNET_BLESS=1"
    );
}

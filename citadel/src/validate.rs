//! `citadel validate -f FILE|DIR`: what Istio's Galley and `istioctl validate` do, with no
//! server: load and validate manifests, print every problem (file, object, field path), and
//! fail if any is an error. A directory is checked as `serve --config-dir` would load it.
use std::io::Write;
use std::path::{Path, PathBuf};

use mesh::ConfigError;
use mesh::mesh_config::{MESH_FILE, MeshConfig};

/// What one path held: objects found valid, and every problem.
fn check_path(path: &Path) -> (usize, Vec<ConfigError>) {
    if path.is_dir() {
        return match mesh::load_dir(path) {
            Ok(loaded) => (loaded.config.objects.len(), loaded.warnings),
            Err(problems) => (0, problems),
        };
    }
    if path.file_name().is_some_and(|n| n == MESH_FILE) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let problem = mesh::Problem::error("", format!("cannot read: {e}"));
                return (0, vec![located(path, problem)]);
            }
        };
        let problems = match MeshConfig::parse(&text) {
            Ok((_, warnings)) => warnings,
            Err(errors) => errors,
        };
        return (0, problems.into_iter().map(|p| located(path, p)).collect());
    }
    let (objects, problems) = mesh::load_file(path);
    (objects.len(), problems)
}

fn located(path: &Path, problem: mesh::Problem) -> ConfigError {
    ConfigError {
        file: Some(path.to_path_buf()),
        object: None,
        problem,
    }
}

/// Validates every path; prints problems to `err` and a summary to `out`. Fails if any error.
pub fn run(paths: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<()> {
    let mut valid = 0;
    let mut errors = 0;
    for path in paths {
        let (objects, problems) = check_path(path);
        valid += objects;
        for p in &problems {
            writeln!(err, "{p}")?;
            errors += usize::from(p.is_error());
        }
    }
    if errors > 0 {
        anyhow::bail!("{errors} error(s); nothing was applied");
    }
    writeln!(out, "{valid} object(s) valid")?;
    Ok(())
}

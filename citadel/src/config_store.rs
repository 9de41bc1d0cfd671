//! The mesh configuration citadel serves, behind a small trait so a Kubernetes store can come
//! later. The default is a directory of Istio YAML manifests, watched with `notify`: changes
//! are debounced, the directory is loaded as one snapshot, and a snapshot with any error is
//! rejected (logged, counted, its errors kept for `status`) while the last good one stays in
//! force. Snapshots are immutable and published over `watch`.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh::{Config, ConfigError};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::metrics::{Metrics, OutcomeLabels};

/// One configuration in force, numbered in the order it was applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub revision: u64,
    pub config: Config,
}

/// Where the mesh configuration comes from.
pub trait ConfigStore: Send + Sync {
    /// The configuration in force, and every later one.
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>>;
}

/// Quiet time before a burst of file changes is loaded: an editor's save or a `cp -r` emits
/// its events within a few milliseconds, and an endpoint change should reach proxies in well
/// under 100 ms. A file caught half-written fails validation, keeps the last good
/// configuration, and loads on its next event.
pub const DEBOUNCE: Duration = Duration::from_millis(25);
/// A directory that never goes quiet is still loaded this often.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// A watched directory of manifests.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    tx: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    rejected: std::sync::Mutex<Vec<ConfigError>>,
    /// The files as last parsed: a reload parses only those that changed.
    files: std::sync::Mutex<mesh::FileCache>,
}

impl ConfigStore for DirStore {
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}

/// Why the store could not start.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("config directory {}: {} error(s):\n{}", .dir.display(), .errors.len(), join(.errors))]
    Invalid {
        dir: PathBuf,
        errors: Vec<ConfigError>,
    },
    #[error("cannot watch config directory {}: {source}", .dir.display())]
    Watch { dir: PathBuf, source: notify::Error },
}

fn join(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl DirStore {
    /// Loads `dir`; an invalid directory at start is an error (there is no last good config).
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<Arc<Self>, StoreError> {
        let mut files = mesh::FileCache::default();
        let loaded =
            mesh::load_dir_cached(dir, &mut files).map_err(|errors| StoreError::Invalid {
                dir: dir.to_path_buf(),
                errors,
            })?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        metrics
            .config_objects
            .set(loaded.config.objects.len() as i64);
        metrics
            .config_loads
            .get_or_create(&OutcomeLabels { outcome: "applied" })
            .inc();
        let (tx, _) = watch::channel(Arc::new(Snapshot {
            revision: 1,
            config: loaded.config,
        }));
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            tx,
            metrics,
            rejected: Default::default(),
            files: std::sync::Mutex::new(files),
        }))
    }

    /// Loads the directory again: applied if valid and different, else the last good stays.
    pub fn reload(&self) -> Result<bool, Vec<ConfigError>> {
        let started = std::time::Instant::now();
        let loaded = mesh::load_dir_cached(
            &self.dir,
            &mut self.files.lock().unwrap_or_else(|e| e.into_inner()),
        );
        match loaded {
            Ok(loaded) => {
                self.rejected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                self.metrics.config_errors.set(0);
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                let config = loaded.config;
                let changed = self.tx.send_if_modified(move |current| {
                    if current.config == config {
                        return false;
                    }
                    *current = Arc::new(Snapshot {
                        revision: current.revision + 1,
                        config,
                    });
                    true
                });
                if changed {
                    let snapshot = self.tx.borrow().clone();
                    self.metrics
                        .config_objects
                        .set(snapshot.config.objects.len() as i64);
                    self.metrics
                        .config_loads
                        .get_or_create(&OutcomeLabels { outcome: "applied" })
                        .inc();
                    tracing::info!(
                        revision = snapshot.revision,
                        objects = snapshot.config.objects.len(),
                        load_ms = started.elapsed().as_secs_f64() * 1e3,
                        "config applied"
                    );
                }
                Ok(changed)
            }
            Err(errors) => {
                self.metrics
                    .config_loads
                    .get_or_create(&OutcomeLabels {
                        outcome: "rejected",
                    })
                    .inc();
                let count = errors.iter().filter(|e| e.is_error()).count();
                self.metrics.config_errors.set(count as i64);
                for e in &errors {
                    tracing::error!(
                        "config rejected, keeping revision {}: {e}",
                        self.tx.borrow().revision
                    );
                }
                *self.rejected.lock().unwrap_or_else(|e| e.into_inner()) = errors.clone();
                Err(errors)
            }
        }
    }

    /// The errors of the last rejected load, until a load is applied.
    pub fn rejected(&self) -> Vec<ConfigError> {
        self.rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Watches the directory until the returned guard is dropped; reloads after each quiet
    /// [`DEBOUNCE`] following changes, or [`DEBOUNCE_MAX`] after the first of them.
    pub fn watch(self: &Arc<Self>) -> Result<WatchGuard, StoreError> {
        let (events, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = events.send(());
                }
            })
            .map_err(|source| StoreError::Watch {
                dir: self.dir.clone(),
                source,
            })?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|source| StoreError::Watch {
                dir: self.dir.clone(),
                source,
            })?;
        let store = self.clone();
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let first = tokio::time::Instant::now();
                while first.elapsed() < DEBOUNCE_MAX {
                    match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                        Ok(Some(())) => {}
                        _ => break,
                    }
                }
                let store = store.clone();
                let _ = tokio::task::spawn_blocking(move || store.reload()).await;
            }
        });
        Ok(WatchGuard {
            _watcher: watcher,
            task,
        })
    }
}

/// Keeps the directory watched; dropping it stops watching.
#[derive(Debug)]
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: W1
    - destination: {host: reviews, subset: v2}
      weight: W2
";

    fn vs(w1: u32, w2: u32) -> String {
        VS.replace("W1", &w1.to_string())
            .replace("W2", &w2.to_string())
    }

    fn weights(s: &Snapshot) -> Vec<i32> {
        let mesh::Spec::VirtualService(vs) = &s.config.objects[0].spec else {
            panic!("a VirtualService")
        };
        vs.http[0].route.iter().map(|r| r.weight).collect()
    }

    #[test]
    fn a_bad_reload_keeps_the_last_good_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vs.yaml"), vs(90, 10)).unwrap();
        let metrics = Arc::new(Metrics::new());
        let store = DirStore::open(dir.path(), metrics.clone()).unwrap();
        let rx = store.subscribe();
        assert_eq!(weights(&rx.borrow()), [90, 10]);

        std::fs::write(dir.path().join("vs.yaml"), vs(50, 150)).unwrap();
        let errors = store.reload().unwrap_err();
        assert!(
            errors[0]
                .to_string()
                .contains("spec.http[0].route[1].weight: must be 0..=100")
        );
        assert_eq!(rx.borrow().revision, 1, "the last good config stays");
        assert_eq!(weights(&rx.borrow()), [90, 10]);
        assert_eq!(store.rejected().len(), 1);
        assert_eq!(metrics.config_errors.get(), 1);
        assert_eq!(
            metrics
                .config_loads
                .get_or_create(&OutcomeLabels {
                    outcome: "rejected"
                })
                .get(),
            1
        );

        std::fs::write(dir.path().join("vs.yaml"), vs(50, 50)).unwrap();
        assert_eq!(store.reload(), Ok(true));
        assert_eq!(rx.borrow().revision, 2);
        assert_eq!(weights(&rx.borrow()), [50, 50]);
        assert!(store.rejected().is_empty());
        assert_eq!(store.reload(), Ok(false), "unchanged: no new revision");
    }

    #[test]
    fn an_invalid_directory_refuses_to_start_naming_each_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vs.yaml"), vs(50, 150)).unwrap();
        let err = DirStore::open(dir.path(), Arc::new(Metrics::new())).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("1 error(s)")
                && text.contains(
                    "vs.yaml: VirtualService default/reviews: spec.http[0].route[1].weight"
                ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn edits_in_the_watched_directory_take_effect() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vs.yaml"), vs(90, 10)).unwrap();
        let store = DirStore::open(dir.path(), Arc::new(Metrics::new())).unwrap();
        let mut rx = store.subscribe();
        let _guard = store.watch().unwrap();
        // Written as editors do: a temporary file renamed over the old one.
        let tmp = dir.path().join(".vs.yaml.tmp");
        std::fs::write(&tmp, vs(50, 50)).unwrap();
        std::fs::rename(&tmp, dir.path().join("vs.yaml")).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(weights(&rx.borrow_and_update()), [50, 50]);
        assert_eq!(rx.borrow().revision, 2);
    }
}

//! Loading Kubernetes-style YAML manifests (multi-document files, a directory of them, and its
//! `mesh.yaml`) into typed, validated objects. Each problem names the file, the object and the
//! field path. A directory loads as one snapshot: all of it, or the list of what is wrong.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::error::{ConfigError, Problem};
use crate::mesh_config::{MESH_FILE, MeshConfig};
use crate::meta::{Kind, NETWORKING_GROUP, Object, ObjectMeta, Spec};

/// One consistent configuration: every object of a directory, and the mesh settings. Objects
/// are shared between the configurations that contain them unchanged, so a reload after a
/// one-file edit copies pointers, not objects, and comparing two configurations is mostly
/// comparing pointers.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub objects: Vec<Arc<Object>>,
    pub mesh: MeshConfig,
}

impl PartialEq for Config {
    fn eq(&self, other: &Self) -> bool {
        self.mesh == other.mesh
            && self.objects.len() == other.objects.len()
            && self
                .objects
                .iter()
                .zip(&other.objects)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

impl Config {
    /// The objects of one kind, in load order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.objects
            .iter()
            .map(Arc::as_ref)
            .filter(move |o| o.kind() == kind)
    }
}

/// A loaded directory and the warnings it produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigError>,
}

/// Groups whose kinds are Istio's: an unknown kind there is an error, not something to skip.
const ISTIO_GROUPS: [&str; 4] = [
    NETWORKING_GROUP,
    "security.istio.io",
    "telemetry.istio.io",
    "extensions.istio.io",
];

fn located(file: Option<&FsPath>, object: Option<String>, problem: Problem) -> ConfigError {
    ConfigError {
        file: file.map(FsPath::to_path_buf),
        object,
        problem,
    }
}

/// Parses every document of `text`. Returns the valid objects and every problem (errors and
/// warnings); an object with an error is not returned.
pub fn load_str(text: &str, file: Option<&FsPath>) -> (Vec<Object>, Vec<ConfigError>) {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let label = format!("document {}", i + 1);
        let value = match Value::deserialize(document) {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("invalid YAML: {e}");
                problems.push(located(file, Some(label), Problem::error("", msg)));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        match document_object(value) {
            Ok(None) => {}
            Ok(Some((object, warnings))) => {
                let name = object.describe();
                problems.extend(
                    warnings
                        .into_iter()
                        .map(|w| located(file, Some(name.clone()), w)),
                );
                objects.push(object);
            }
            Err((name, errs)) => {
                let name = name.unwrap_or(label);
                problems.extend(
                    errs.into_iter()
                        .map(|p| located(file, Some(name.clone()), p)),
                );
            }
        }
    }
    (objects, problems)
}

type DocumentResult = Result<Option<(Object, Vec<Problem>)>, (Option<String>, Vec<Problem>)>;

/// One document: `None` for a kind outside Istio's groups (skipped, with a warning from the
/// caller's view: see `skip_warning`).
fn document_object(value: Value) -> DocumentResult {
    let Value::Mapping(map) = value else {
        return Err((
            None,
            vec![Problem::error(
                "",
                "a manifest must be a mapping with apiVersion, kind, metadata and spec",
            )],
        ));
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
    let (Some(api_version), Some(kind_name)) = (text("apiVersion"), text("kind")) else {
        return Err((
            None,
            vec![Problem::error("", "apiVersion and kind are required")],
        ));
    };
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let meta: ObjectMeta = match map
        .get("metadata")
        .cloned()
        .map(serde_path_to_error::deserialize)
    {
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            return Err((
                None,
                vec![Problem::error(
                    format!("metadata.{}", e.path()),
                    e.inner().to_string(),
                )],
            ));
        }
        None => ObjectMeta::default(),
    };
    let describe = format!("{kind_name} {}/{}", meta.namespace(), meta.name);
    let core_secret = group.is_empty() && kind_name == Kind::Secret.as_str();
    if !ISTIO_GROUPS.contains(&group) && !core_secret {
        // Kubernetes Deployments, Services, ... in the same directory: not ours to load.
        return Ok(None);
    }
    let Some(kind) = Kind::parse(&kind_name).filter(|k| k.group() == group) else {
        return Err((
            Some(describe),
            vec![Problem::error(
                "kind",
                format!("{group}/{kind_name} is not supported by citadel yet"),
            )],
        ));
    };
    if !kind.versions().contains(&version) {
        return Err((
            Some(describe),
            vec![Problem::error(
                "apiVersion",
                format!(
                    "{api_version}: {group} serves {kind_name} as {}",
                    kind.versions().join(", ")
                ),
            )],
        ));
    }
    let mut problems = Vec::new();
    let envelope = ["apiVersion", "kind", "metadata"];
    let spec_value = if core_secret {
        // A Secret's payload is top-level (`type`, `data`, `stringData`), not under `spec`.
        let mut payload = map.clone();
        for key in envelope {
            payload.remove(key);
        }
        Value::Mapping(payload)
    } else {
        for key in map.keys() {
            let key = key.as_str().unwrap_or("");
            if !envelope.contains(&key) && !["spec", "status"].contains(&key) {
                problems.push(Problem::error(key, "unknown top-level field"));
            }
        }
        map.get("spec")
            .cloned()
            .unwrap_or(Value::Mapping(Default::default()))
    };
    let spec = match typed_spec(kind, spec_value) {
        Ok(spec) => spec,
        Err(p) => {
            problems.push(p);
            return Err((Some(describe), problems));
        }
    };
    let mut meta = meta;
    if kind == Kind::Secret {
        // `kubectl apply` copies the whole manifest, data included, into an annotation.
        meta.annotations.clear();
    }
    let object = Object {
        api_version,
        metadata: meta,
        spec,
    };
    problems.extend(crate::validate::object(&object));
    let (errors, warnings): (Vec<Problem>, Vec<Problem>) = problems
        .into_iter()
        .partition(|p| p.severity == crate::Severity::Error);
    if errors.is_empty() {
        Ok(Some((object, warnings)))
    } else {
        Err((Some(describe), errors.into_iter().chain(warnings).collect()))
    }
}

fn spec_of<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        Problem::error(path, e.into_inner().to_string())
    })
}

fn typed_spec(kind: Kind, value: Value) -> Result<Spec, Problem> {
    Ok(match kind {
        Kind::ServiceEntry => Spec::ServiceEntry(Box::new(spec_of(value)?)),
        Kind::WorkloadEntry => Spec::WorkloadEntry(Box::new(spec_of(value)?)),
        Kind::VirtualService => Spec::VirtualService(Box::new(spec_of(value)?)),
        Kind::DestinationRule => Spec::DestinationRule(Box::new(spec_of(value)?)),
        Kind::Sidecar => Spec::Sidecar(Box::new(spec_of(value)?)),
        Kind::Gateway => Spec::Gateway(Box::new(spec_of(value)?)),
        // Serde's message may quote the value, here key material: the path alone.
        Kind::Secret => Spec::Secret(Box::new(serde_path_to_error::deserialize(value).map_err(
            |e| {
                Problem::error(
                    e.path().to_string(),
                    "not a Secret's type, data or stringData (a string, or maps of strings)",
                )
            },
        )?)),
        Kind::PeerAuthentication => Spec::PeerAuthentication(Box::new(spec_of(value)?)),
        Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(Box::new(spec_of(value)?)),
    })
}

fn read(path: &FsPath) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        located(
            Some(path),
            None,
            Problem::error("", format!("cannot read: {e}")),
        )
    })
}

/// Loads one manifest file (or `mesh.yaml`, by name).
pub fn load_file(path: &FsPath) -> (Vec<Object>, Vec<ConfigError>) {
    match read(path) {
        Ok(text) => load_str(&text, Some(path)),
        Err(e) => (vec![], vec![e]),
    }
}

/// What the files of a directory parsed to, kept between loads so a reload reads only the
/// files whose size, inode or timestamps moved, and parses only those whose content differs.
/// A one-endpoint edit in a directory of a thousand manifests reads and parses one file, and
/// the other objects are the same `Arc`s as before.
#[derive(Debug, Default)]
pub struct FileCache {
    files: HashMap<PathBuf, CachedFile>,
    parsed: u64,
    read: u64,
    /// The wall clock that file timestamps are compared with (tests move it).
    clock: Option<fn() -> std::time::SystemTime>,
}

#[derive(Debug)]
struct CachedFile {
    /// `None` when the stamp cannot be trusted to show the next write.
    stamp: Option<Stamp>,
    content: u64,
    objects: Vec<Arc<Object>>,
    problems: Vec<ConfigError>,
}

/// What `stat` says of a file; a rewrite changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    inode: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// File timestamps move on a coarse clock: a write this soon after the one a stamp shows can
/// leave it unchanged, so a stamp this recent is not trusted (git's "racily clean" rule).
const STAMP_SETTLE_NS: i128 = 2_000_000_000;

impl Stamp {
    fn of(path: &FsPath) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(Self {
            len: m.len(),
            inode: m.ino(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }

    /// The stamp, if it is old enough at `now` to show any later write.
    fn settled(self, now: std::time::SystemTime) -> Option<Self> {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        (self.mtime_ns.max(self.ctime_ns) + STAMP_SETTLE_NS < now).then_some(self)
    }
}

impl FileCache {
    /// How many times a file was parsed through this cache.
    pub fn parsed(&self) -> u64 {
        self.parsed
    }

    /// How many times a file was read through this cache.
    pub fn read(&self) -> u64 {
        self.read
    }

    fn load_file(&mut self, path: &FsPath) -> (Vec<Arc<Object>>, Vec<ConfigError>) {
        // Before the stat: a write after it lands at least the settle time after a stamp
        // this clock trusts, so it moves the stamp.
        let now = self
            .clock
            .map_or_else(std::time::SystemTime::now, |clock| clock());
        let stamp = Stamp::of(path);
        if let Some(c) = self
            .files
            .get(path)
            .filter(|c| c.stamp.is_some() && c.stamp == stamp)
        {
            return (c.objects.clone(), c.problems.clone());
        }
        self.read += 1;
        let text = match read(path) {
            Ok(t) => t,
            Err(e) => return (vec![], vec![e]),
        };
        let settled = stamp.and_then(|s| s.settled(now));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        let content = h.finish();
        if let Some(c) = self.files.get_mut(path).filter(|c| c.content == content) {
            c.stamp = settled;
            return (c.objects.clone(), c.problems.clone());
        }
        let (objects, problems) = load_str(&text, Some(path));
        let objects: Vec<Arc<Object>> = objects.into_iter().map(Arc::new).collect();
        self.parsed += 1;
        self.files.insert(
            path.to_path_buf(),
            CachedFile {
                stamp: settled,
                content,
                objects: objects.clone(),
                problems: problems.clone(),
            },
        );
        (objects, problems)
    }
}

fn is_manifest(path: &FsPath) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The manifest files of a directory, in name order (hidden and editor backup files skipped).
pub fn manifest_files(dir: &FsPath) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        located(
            Some(dir),
            None,
            Problem::error("", format!("cannot read directory: {e}")),
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_manifest(p))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Loads a directory as one snapshot: every manifest, and `mesh.yaml` if present. Fails with
/// every problem (errors first) when any object is invalid or two objects share a name.
pub fn load_dir(dir: &FsPath) -> Result<Loaded, Vec<ConfigError>> {
    load_dir_cached(dir, &mut FileCache::default())
}

/// [`load_dir`], parsing only the files whose content differs from what `cache` holds.
pub fn load_dir_cached(dir: &FsPath, cache: &mut FileCache) -> Result<Loaded, Vec<ConfigError>> {
    let files = manifest_files(dir).map_err(|e| vec![e])?;
    let listed: HashSet<&PathBuf> = files.iter().collect();
    cache.files.retain(|p, _| listed.contains(p));
    let mut loaded = Loaded::default();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(Kind, String, String), PathBuf> = BTreeMap::new();
    for file in files {
        if file.file_name().is_some_and(|n| n == MESH_FILE) {
            match read(&file).map(|t| MeshConfig::parse(&t)) {
                Ok(Ok((mesh, warnings))) => {
                    loaded.config.mesh = mesh;
                    problems.extend(warnings.into_iter().map(|w| located(Some(&file), None, w)));
                }
                Ok(Err(errs)) => {
                    problems.extend(errs.into_iter().map(|p| located(Some(&file), None, p)))
                }
                Err(e) => problems.push(e),
            }
            continue;
        }
        let (objects, found) = cache.load_file(&file);
        problems.extend(found);
        for object in objects {
            let key = (
                object.kind(),
                object.metadata.namespace().to_string(),
                object.metadata.name.clone(),
            );
            if let Some(first) = seen.get(&key) {
                let msg = format!("defined twice: also in {}", first.display());
                problems.push(located(
                    Some(&file),
                    Some(object.describe()),
                    Problem::error("metadata.name", msg),
                ));
                continue;
            }
            seen.insert(key, file.clone());
            loaded.config.objects.push(object);
        }
    }
    if problems.iter().any(ConfigError::is_error) {
        problems.sort_by_key(|p| !p.is_error());
        return Err(problems);
    }
    loaded.warnings = problems;
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn vs(w1: i32, w2: i32) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {{host: r, subset: a}}\n      weight: {w1}\n    - destination: {{host: r, subset: b}}\n      weight: {w2}\n"
        )
    }

    proptest! {
        #[test]
        fn weights_are_refused_exactly_when_istio_refuses_them(w1 in -50i32..200, w2 in -50i32..200) {
            let (objects, problems) = load_str(&vs(w1, w2), None);
            let out_of_range = |w: i32| !(0..=100).contains(&w);
            let refused = out_of_range(w1) || out_of_range(w2) || (w1 == 0 && w2 == 0);
            prop_assert_eq!(objects.is_empty(), refused);
            prop_assert_eq!(problems.iter().any(ConfigError::is_error), refused);
            if out_of_range(w2) {
                prop_assert!(problems.iter().any(|p| p.problem.path == "spec.http[0].route[1].weight"));
            }
        }

        #[test]
        fn arbitrary_text_never_panics_and_loaded_objects_are_valid(text in "\\PC{0,200}") {
            let (objects, _) = load_str(&text, None);
            for o in &objects {
                prop_assert!(crate::validate::object(o).iter().all(|p| p.severity != crate::Severity::Error));
            }
        }
    }

    /// A directory of three VirtualServices, r0 to r2, one per file.
    fn three_virtual_services() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            std::fs::write(
                dir.path().join(format!("vs{i}.yaml")),
                vs(50, 50).replace("name: r}", &format!("name: r{i}}}")),
            )
            .unwrap();
        }
        dir
    }

    #[test]
    fn files_with_settled_stamps_are_not_read_again() {
        let dir = three_virtual_services();
        let mut cache = FileCache {
            clock: Some(|| std::time::SystemTime::now() + std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        let first = load_dir_cached(dir.path(), &mut cache).unwrap();
        assert_eq!(load_dir_cached(dir.path(), &mut cache).unwrap(), first);
        assert_eq!(cache.read(), 3, "a minute later, the stamps are trusted");
        std::fs::write(
            dir.path().join("vs1.yaml"),
            vs(90, 10).replace("name: r}", "name: r1}") + "# a longer file\n",
        )
        .unwrap();
        let edited = load_dir_cached(dir.path(), &mut cache).unwrap();
        assert_eq!(
            (cache.read(), cache.parsed()),
            (4, 4),
            "only the edited file"
        );
        assert_eq!(edited, load_dir(dir.path()).unwrap());
    }

    #[test]
    fn a_cached_reload_parses_only_the_files_that_changed() {
        let dir = three_virtual_services();
        let mut cache = FileCache::default();
        let first = load_dir_cached(dir.path(), &mut cache).unwrap();
        assert_eq!(cache.parsed(), 3);
        assert_eq!(load_dir_cached(dir.path(), &mut cache).unwrap(), first);
        assert_eq!(cache.parsed(), 3, "nothing changed, nothing parsed");
        assert_eq!(
            cache.read(),
            6,
            "files written just now are read again: their stamps may not show the next write"
        );
        let again = load_dir_cached(dir.path(), &mut cache).unwrap();
        assert!(
            again
                .config
                .objects
                .iter()
                .zip(&first.config.objects)
                .all(|(a, b)| Arc::ptr_eq(a, b)),
            "unchanged objects are shared, not copied"
        );
        std::fs::write(
            dir.path().join("vs1.yaml"),
            vs(90, 10).replace("name: r}", "name: r1}"),
        )
        .unwrap();
        let edited = load_dir_cached(dir.path(), &mut cache).unwrap();
        assert_eq!(cache.parsed(), 4, "only the edited file");
        assert_eq!(cache.read(), 12);
        assert_eq!(
            edited,
            load_dir(dir.path()).unwrap(),
            "the same as a fresh load"
        );
        assert_ne!(edited, first);
        std::fs::remove_file(dir.path().join("vs2.yaml")).unwrap();
        let fewer = load_dir_cached(dir.path(), &mut cache).unwrap();
        assert_eq!(fewer.config.objects.len(), 2);
        // A bad edit is reported as without the cache, and a fix parses again.
        std::fs::write(dir.path().join("vs0.yaml"), vs(101, 0)).unwrap();
        assert_eq!(
            load_dir_cached(dir.path(), &mut cache).unwrap_err(),
            load_dir(dir.path()).unwrap_err()
        );
    }
}

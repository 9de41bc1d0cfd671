//! Files both binaries keep: atomic writes with exact modes, and directories that must not be
//! controlled by another user (checked, never re-moded, when they already exist).
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode for private keys and state that must stay private to the owner.
pub const PRIVATE: u32 = 0o600;
/// Mode for public material (certificates, bundles).
pub const PUBLIC: u32 = 0o644;

/// Why a directory cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a directory (a symlink or file is there)")]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} is owned by uid {owner}, not by this process's uid {me}; another user could \
         replace what is in it. Remove it, or choose another location"
    )]
    WrongOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{path} has mode {mode:o}, writable by group or others; another user could replace \
         what is in it. Run `chmod go-w {path}` or choose another location"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error(
        "{path}, a parent of {dir}, is owned by uid {owner} or writable by others without the \
         sticky bit (mode {mode:o}); another user could replace {dir}. Choose another location"
    )]
    UnsafeParent {
        path: PathBuf,
        dir: PathBuf,
        owner: u32,
        mode: u32,
    },
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Ensures `path` is a directory this process alone controls: created with `mode` (parents
/// with the default mode) when missing; when it already exists it must be a real directory
/// owned by the effective uid and not writable by group or others. An existing directory's
/// mode is never changed. Returns whether the directory was created.
pub fn owned_dir(path: &Path, mode: u32) -> Result<bool, DirError> {
    let io_err = |source| DirError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| DirError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let created = match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_err(e)),
    };
    let meta = fs::symlink_metadata(path).map_err(io_err)?;
    if !meta.file_type().is_dir() {
        return Err(DirError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    let me = effective_uid();
    if meta.uid() != me {
        return Err(DirError::WrongOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    if created {
        // The umask may have narrowed the mode; this is the directory we just made.
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err)?;
    } else if meta.mode() & 0o022 != 0 {
        return Err(DirError::Writable {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    check_parents(path, me)?;
    Ok(created)
}

/// Like ssh's StrictModes: every parent must belong to root or to us, and one that others may
/// write must be sticky (as `/tmp` is), or the directory could be renamed away and replaced.
fn check_parents(dir: &Path, me: u32) -> Result<(), DirError> {
    let full = fs::canonicalize(dir).map_err(|source| DirError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for parent in full.ancestors().skip(1) {
        let meta = fs::metadata(parent).map_err(|source| DirError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        let writable_by_others = mode & 0o022 != 0 && mode & 0o1000 == 0;
        if (meta.uid() != 0 && meta.uid() != me) || writable_by_others {
            return Err(DirError::UnsafeParent {
                path: parent.to_path_buf(),
                dir: dir.to_path_buf(),
                owner: meta.uid(),
                mode,
            });
        }
    }
    Ok(())
}

/// Writes `data` to `path` so that a crash leaves either the old or the new content, never a
/// mix, and the file never exists with a wider mode than `mode`.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The process umask may have narrowed the mode; make it exact.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_with_the_requested_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        atomic_write(&path, b"one", PRIVATE).unwrap();
        atomic_write(&path, b"two", PRIVATE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn owned_dir_creates_with_mode_and_refuses_what_others_could_control() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        assert!(owned_dir(&fresh, 0o700).unwrap());
        assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        assert!(!owned_dir(&fresh, 0o755).unwrap(), "exists already");
        assert_eq!(
            fs::metadata(&fresh).unwrap().mode() & 0o777,
            0o700,
            "an existing directory keeps its mode"
        );

        let open = root.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = owned_dir(&open, 0o755).unwrap_err();
        assert!(
            matches!(err, DirError::Writable { mode: 0o777, .. }),
            "{err}"
        );
        assert_eq!(fs::metadata(&open).unwrap().mode() & 0o777, 0o777);

        let loose = root.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o777)).unwrap();
        let err = owned_dir(&loose.join("inner"), 0o755).unwrap_err();
        assert!(matches!(err, DirError::UnsafeParent { .. }), "{err}");
        let sticky = root.path().join("sticky");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        owned_dir(&sticky.join("inner"), 0o755).expect("a sticky parent, like /tmp, is fine");

        let link = root.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(matches!(
            owned_dir(&link, 0o755).unwrap_err(),
            DirError::NotADirectory { .. }
        ));
    }
}

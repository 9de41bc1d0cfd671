//! Workload attestation from the Unix socket peer: SO_PEERCRED gives pid, uid and gid; `/proc`
//! gives the binary path, and the process start time (read before and after) guards against the
//! pid being reused while we look. The result belongs to the connection: every later request
//! re-checks that the same process (start time) still runs the same executable, so a process
//! cannot hand its connection on and then `exec` into a binary an entry selects.
use std::path::{Path, PathBuf};

use citadel_api::Selector;

/// The kernel-reported peer of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
}

/// What attestation learned about a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
    pub path: Option<PathBuf>,
    pub selectors: Vec<Selector>,
    /// The process image seen at attestation, when `/proc` showed it.
    pub image: Option<ProcessImage>,
}

/// One process image: a pid at one start time running one executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessImage {
    pub pid: i32,
    pub start_time: u64,
    pub exe: Option<PathBuf>,
}

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    #[error("caller's credentials are unavailable (not a Unix socket peer)")]
    NoCredentials,
    #[error("process {0} changed identity while being attested (pid reused)")]
    PidReused(i32),
    #[error("process {pid}, which opened this connection, has exited")]
    ProcessGone { pid: i32 },
    #[error(
        "process {pid}, which opened this connection as {was}, now runs {now}; a connection \
         keeps the identity it was opened with and is refused after exec"
    )]
    ProcessChanged { pid: i32, was: String, now: String },
}

fn show(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "an unknown executable".into())
}

/// Where the attestor reads process and account data; tests point it at a fake tree.
#[derive(Debug, Clone)]
pub struct Attestor {
    proc_root: PathBuf,
    etc_root: PathBuf,
}

impl Default for Attestor {
    fn default() -> Self {
        Self {
            proc_root: "/proc".into(),
            etc_root: "/etc".into(),
        }
    }
}

impl Attestor {
    pub fn new(proc_root: impl Into<PathBuf>, etc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            etc_root: etc_root.into(),
        }
    }

    /// Attests the peer. The path selector is present only when `/proc/PID/exe` is readable
    /// (the agent runs with enough privilege to see other users' processes).
    pub fn attest(&self, cred: PeerCred) -> Result<Workload, AttestError> {
        let mut path = None;
        let mut image = None;
        if let Some(pid) = cred.pid {
            let before = self.start_time(pid);
            path = self.exe(pid);
            let after = self.start_time(pid);
            if before.is_some() && before != after {
                return Err(AttestError::PidReused(pid));
            }
            match before {
                Some(start_time) => {
                    image = Some(ProcessImage {
                        pid,
                        start_time,
                        exe: path.clone(),
                    })
                }
                // The process is gone; only the kernel's uid/gid are trustworthy now.
                None => path = None,
            }
        }
        let mut selectors = vec![
            sel("uid", cred.uid.to_string()),
            sel("gid", cred.gid.to_string()),
        ];
        if let Some(user) = lookup(&self.etc_root.join("passwd"), 2, cred.uid) {
            selectors.push(sel("user", user));
        }
        if let Some(group) = lookup(&self.etc_root.join("group"), 2, cred.gid) {
            selectors.push(sel("group", group));
        }
        if let Some(p) = &path {
            selectors.push(sel("path", p.to_string_lossy().into_owned()));
        }
        selectors.retain(|s| !s.value().is_empty());
        Ok(Workload {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            path,
            selectors,
            image,
        })
    }

    /// Whether the process that was attested still runs, as the same image.
    pub fn verify_unchanged(&self, workload: &Workload) -> Result<(), AttestError> {
        let Some(image) = &workload.image else {
            return Ok(());
        };
        let pid = image.pid;
        let before = self.start_time(pid);
        let exe = self.exe(pid);
        let after = self.start_time(pid);
        if before != Some(image.start_time) || after != before {
            return Err(AttestError::ProcessGone { pid });
        }
        if exe != image.exe {
            return Err(AttestError::ProcessChanged {
                pid,
                was: show(&image.exe),
                now: show(&exe),
            });
        }
        Ok(())
    }

    fn exe(&self, pid: i32) -> Option<PathBuf> {
        std::fs::read_link(self.proc_root.join(pid.to_string()).join("exe")).ok()
    }

    /// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
    fn start_time(&self, pid: i32) -> Option<u64> {
        let stat =
            std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat")).ok()?;
        // The command name may contain spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(19)?.parse().ok()
    }
}

fn sel(key: &str, value: String) -> Selector {
    Selector::new("unix", key, value.clone())
        .unwrap_or_else(|_| Selector::new("unix", key, "?").expect("static selector"))
}

/// The name whose numeric field `id_field` (passwd/group format) equals `id`.
fn lookup(file: &Path, id_field: usize, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.get(id_field).and_then(|v| v.parse::<u32>().ok()) == Some(id))
        .and_then(|f| f.first().map(|s| s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("proc/42")).unwrap();
        std::fs::create_dir_all(p.join("etc")).unwrap();
        let stat =
            "42 (my (odd) prog) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        std::fs::write(p.join("proc/42/stat"), stat).unwrap();
        std::os::unix::fs::symlink("/usr/bin/envoy", p.join("proc/42/exe")).unwrap();
        std::fs::write(
            p.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1000::/home/web:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(p.join("etc/group"), "root:x:0:\nweb:x:1000:\n").unwrap();
        dir
    }

    #[test]
    fn attests_uid_gid_names_and_path() {
        let tree = fake_tree();
        let a = Attestor::new(tree.path().join("proc"), tree.path().join("etc"));
        let w = a
            .attest(PeerCred {
                pid: Some(42),
                uid: 1000,
                gid: 1000,
            })
            .unwrap();
        let sels: Vec<String> = w.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(
            sels,
            [
                "unix:uid:1000",
                "unix:gid:1000",
                "unix:user:web",
                "unix:group:web",
                "unix:path:/usr/bin/envoy"
            ]
        );
        assert_eq!(a.start_time(42), Some(987654));
    }

    #[test]
    fn a_vanished_process_keeps_only_kernel_credentials() {
        let tree = fake_tree();
        let a = Attestor::new(tree.path().join("proc"), tree.path().join("etc"));
        let w = a
            .attest(PeerCred {
                pid: Some(7),
                uid: 5,
                gid: 5,
            })
            .unwrap();
        let sels: Vec<String> = w.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(sels, ["unix:uid:5", "unix:gid:5"]);
        assert!(w.path.is_none());
    }

    #[test]
    fn a_connection_is_refused_once_its_process_execs_or_exits() {
        let tree = fake_tree();
        let a = Attestor::new(tree.path().join("proc"), tree.path().join("etc"));
        let cred = PeerCred {
            pid: Some(42),
            uid: 1000,
            gid: 1000,
        };
        let w = a.attest(cred).unwrap();
        a.verify_unchanged(&w).unwrap();
        let exe = tree.path().join("proc/42/exe");
        std::fs::remove_file(&exe).unwrap();
        std::os::unix::fs::symlink("/usr/bin/sleep", &exe).unwrap();
        let err = a.verify_unchanged(&w).unwrap_err();
        assert!(
            matches!(&err, AttestError::ProcessChanged { pid: 42, now, .. } if now == "/usr/bin/sleep"),
            "{err}"
        );
        let stat = tree.path().join("proc/42/stat");
        let text = std::fs::read_to_string(&stat)
            .unwrap()
            .replace("987654", "987999");
        std::fs::write(&stat, text).unwrap();
        assert_eq!(
            a.verify_unchanged(&w).unwrap_err(),
            AttestError::ProcessGone { pid: 42 },
            "same pid, another process"
        );
    }

    #[test]
    fn attests_this_very_process() {
        let me = Attestor::default()
            .attest(PeerCred {
                pid: Some(std::process::id() as i32),
                uid: 0,
                gid: 0,
            })
            .unwrap();
        assert_eq!(me.path.as_deref(), std::env::current_exe().ok().as_deref());
    }
}

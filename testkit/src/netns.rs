//! Network namespaces for tests: a hub namespace holding a bridge, and one namespace per pod
//! joined to it by a veth pair, with an address from 198.18.0.0/15 and its own `/etc/hosts`
//! (`/etc/netns/NAME/hosts`, which `ip netns exec` mounts). Nothing is ever created in or
//! attached to the host's namespace; every namespace and hosts file goes on drop, and those of a
//! test process that died (with the processes still running in them) are removed by the next.
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace name starts with this and the creating process's pid.
const PREFIX: &str = "citt";

/// Runs `ip ARGS`; panics with its stderr on failure, naming what is missing.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("`ip` from iproute2 (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root; scripts/test.sh installs iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Removes the namespaces (and hosts files) of test processes that no longer run.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for name in dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
    {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // A test killed by a signal never ran its drops: stop what it left running inside.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
                let pids = String::from_utf8_lossy(&out.stdout);
                let pids: Vec<&str> = pids.split_whitespace().collect();
                if !pids.is_empty() {
                    let _ = Command::new("kill").arg("-9").args(&pids).output();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
        }
    }
}

/// One test's network: a hub namespace with bridge `br0`. Pods made from it share one L2.
pub struct Network {
    hub: String,
    tag: String,
    links: AtomicU32,
}

impl Network {
    /// `tag` keeps the namespaces of tests running at once apart.
    pub fn new(tag: &str) -> Self {
        remove_stale();
        let hub = format!("{PREFIX}{}-{tag}-hub", std::process::id());
        ip(&["netns", "add", &hub]);
        let net = Network {
            hub,
            tag: tag.to_string(),
            links: AtomicU32::new(0),
        };
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &net.hub, "link", "set", "br0", "up"]);
        net
    }

    /// A pod namespace at `addr` (a /16 on the hub's bridge), with loopback up, a default route
    /// through its interface (so service VIPs route, to be redirected before they leave) and
    /// `hosts` as its `/etc/hosts`.
    pub fn pod(&self, name: &str, addr: Ipv4Addr, hosts: &[(Ipv4Addr, &str)]) -> Pod {
        assert!(
            (u32::from(addr) >> 17) == (u32::from(Ipv4Addr::new(198, 18, 0, 0)) >> 17),
            "test addresses come from 198.18.0.0/15, not {addr}"
        );
        let netns = format!("{PREFIX}{}-{}-{name}", std::process::id(), self.tag);
        ip(&["netns", "add", &netns]);
        // From here on, dropping the pod removes its namespace.
        let mut pod = Pod {
            netns,
            addr,
            hosts_dir: PathBuf::new(),
        };
        // The veth is made inside the hub and its peer moved straight into the pod.
        let link = format!("v{}", self.links.fetch_add(1, Ordering::Relaxed));
        ip(&[
            "-n", &self.hub, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns",
            &pod.netns,
        ]);
        ip(&["-n", &self.hub, "link", "set", &link, "master", "br0", "up"]);
        ip(&["-n", &pod.netns, "link", "set", "lo", "up"]);
        ip(&["-n", &pod.netns, "link", "set", "eth0", "up"]);
        let cidr = format!("{addr}/16");
        ip(&["-n", &pod.netns, "addr", "add", &cidr, "dev", "eth0"]);
        ip(&["-n", &pod.netns, "route", "add", "default", "dev", "eth0"]);
        let hosts_dir = PathBuf::from(format!("/etc/netns/{}", pod.netns));
        std::fs::create_dir_all(&hosts_dir).expect("creating /etc/netns/NAME");
        pod.hosts_dir = hosts_dir.clone();
        let mut text = String::from("127.0.0.1 localhost\n");
        for (a, names) in hosts {
            text += &format!("{a} {names}\n");
        }
        std::fs::write(hosts_dir.join("hosts"), text).expect("writing the pod's hosts file");
        pod
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .output();
    }
}

/// A pod's network namespace. Processes started in it must stop before it drops.
pub struct Pod {
    pub netns: String,
    pub addr: Ipv4Addr,
    hosts_dir: PathBuf,
}

impl Pod {
    /// `program` to run inside the pod's namespace, seeing its hosts file.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }

    /// `program` run inside the pod as `uid`/`gid`, with no supplementary groups.
    pub fn command_as(&self, uid: u32, program: impl AsRef<OsStr>) -> Command {
        let mut c = self.command("setpriv");
        c.args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
        ])
        .arg(program);
        c
    }

    /// Runs `program ARGS` in the pod to completion; panics unless it succeeds.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} in {}: {e}", self.netns));
        assert!(
            out.status.success(),
            "{program} {} in {}: {}{}",
            args.join(" "),
            self.netns,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts a process in the pod that prints `ready` once it serves, and waits for that.
    pub fn spawn_ready(&self, mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading the readiness line");
        let proc = Proc(child);
        assert_eq!(line.trim(), "ready", "{command:?} did not start");
        proc
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        if !self.hosts_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.hosts_dir);
        }
    }
}

/// A child process, killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

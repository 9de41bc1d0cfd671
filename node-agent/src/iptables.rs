//! `node-agent iptables`: the traffic redirect istio-init sets up in a workload's network
//! namespace (outbound TCP to the sidecar's 15001, inbound to 15006, the sidecar's own traffic
//! and loopback untouched), with istio-iptables' flags, applied atomically by `iptables-restore`.
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::str::FromStr;

use clap::Args;

/// Chains of the `nat` table this command owns; named apart from Istio's so both can coexist.
const INBOUND: &str = "CITADEL_INBOUND";
const IN_REDIRECT: &str = "CITADEL_IN_REDIRECT";
const OUTPUT: &str = "CITADEL_OUTPUT";
const REDIRECT: &str = "CITADEL_REDIRECT";
const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];
/// The jumps from the built-in chains into ours.
const JUMPS: [(&str, &str); 2] = [("PREROUTING", INBOUND), ("OUTPUT", OUTPUT)];
/// Where the sidecar's inbound passthrough connections come from (the discovery server binds
/// `InboundPassthroughCluster` to it), so they are not redirected back into 15006.
const PASSTHROUGH_SOURCE: &str = "127.0.0.6/32";

/// Flags of `node-agent iptables`, named as istio-iptables names them.
#[derive(Debug, Clone, Args)]
pub struct RedirectArgs {
    /// Port all outbound TCP is redirected to (Envoy's virtualOutbound).
    #[arg(short = 'p', long, default_value_t = 15001)]
    pub envoy_port: u16,
    /// Port all inbound TCP is redirected to (Envoy's virtualInbound).
    #[arg(short = 'z', long, default_value_t = 15006)]
    pub inbound_capture_port: u16,
    /// Comma-separated uids of the sidecar, whose own traffic is never redirected.
    #[arg(short = 'u', long, value_delimiter = ',', default_value = "1337")]
    pub proxy_uid: Vec<u32>,
    /// Comma-separated gids of the sidecar (default: none besides the uids).
    #[arg(short = 'g', long, value_delimiter = ',')]
    pub proxy_gid: Vec<u32>,
    /// Inbound ports to capture: `*` for all, a comma-separated list, or empty for none.
    #[arg(short = 'b', long, default_value = "*")]
    pub inbound_ports: PortSet,
    /// Inbound ports never captured (the sidecar's own status and metrics ports).
    #[arg(short = 'd', long, default_value = "15090,15021,15020")]
    pub local_exclude_ports: PortSet,
    /// Outbound destinations to capture: `*` for all, comma-separated CIDRs, or empty for none.
    #[arg(short = 'i', long, default_value = "*")]
    pub outbound_ip_ranges: CidrSet,
    /// Outbound destinations never captured, comma-separated CIDRs.
    #[arg(short = 'x', long, default_value = "")]
    pub outbound_exclude_ip_ranges: CidrSet,
    /// Outbound ports never captured.
    #[arg(short = 'o', long, default_value = "")]
    pub outbound_exclude_ports: PortSet,
    /// Print the rules instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove the rules and chains this command installs, then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// The iptables binary (its `-restore` sibling applies the rules).
    #[arg(long, default_value = "iptables")]
    pub iptables: String,
}

/// Why the redirect could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// A set of TCP ports: all, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSet {
    All,
    Only(Vec<u16>),
}

impl PortSet {
    fn ports(&self) -> &[u16] {
        match self {
            PortSet::All => &[],
            PortSet::Only(p) => p,
        }
    }
}

impl FromStr for PortSet {
    type Err = IptablesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            return Ok(PortSet::All);
        }
        list(s)
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|n| *n != 0)
                    .ok_or_else(|| IptablesError::Invalid(format!("{p:?} is not a port 1..=65535")))
            })
            .collect::<Result<_, _>>()
            .map(PortSet::Only)
    }
}

/// An IPv4 network, `a.b.c.d/len` (a bare address is a /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl FromStr for Cidr {
    type Err = IptablesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IptablesError::Invalid(format!("{s:?} is not an IPv4 CIDR (a.b.c.d/len)"));
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(IptablesError::Invalid(format!(
                "{s:?} has host bits set; the network is {}/{len}",
                Ipv4Addr::from(u32::from(addr) & mask)
            )));
        }
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A set of IPv4 networks: all, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrSet {
    All,
    Only(Vec<Cidr>),
}

impl FromStr for CidrSet {
    type Err = IptablesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "*" {
            return Ok(CidrSet::All);
        }
        list(s)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(CidrSet::Only)
    }
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// The `iptables-restore --noflush` input that installs the redirect. Declaring our chains
/// empties them, so with [`cleanup`] first, applying twice gives the same rules.
pub fn rules(args: &RedirectArgs) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let mut rule = |r: String| {
        out.push_str(&r);
        out.push('\n');
    };
    let inbound = args.inbound_ports != PortSet::Only(Vec::new());
    rule(format!(
        "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        args.inbound_capture_port
    ));
    rule(format!(
        "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        args.envoy_port
    ));
    if inbound {
        rule(format!("-A PREROUTING -p tcp -j {INBOUND}"));
        for p in args.local_exclude_ports.ports() {
            rule(format!("-A {INBOUND} -p tcp --dport {p} -j RETURN"));
        }
        match &args.inbound_ports {
            PortSet::All => rule(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}")),
            PortSet::Only(ports) => {
                for p in ports {
                    rule(format!("-A {INBOUND} -p tcp --dport {p} -j {IN_REDIRECT}"));
                }
            }
        }
    }
    rule(format!("-A OUTPUT -p tcp -j {OUTPUT}"));
    for p in args.outbound_exclude_ports.ports() {
        rule(format!("-A {OUTPUT} -p tcp --dport {p} -j RETURN"));
    }
    rule(format!(
        "-A {OUTPUT} -s {PASSTHROUGH_SOURCE} -o lo -j RETURN"
    ));
    let owners = args
        .proxy_uid
        .iter()
        .map(|u| ("--uid-owner", u))
        .chain(args.proxy_gid.iter().map(|g| ("--gid-owner", g)));
    for (flag, id) in owners {
        // The sidecar calling its own pod's address (a service it is an endpoint of) goes
        // through the inbound path, as from any other client.
        if inbound {
            rule(format!(
                "-A {OUTPUT} ! -d 127.0.0.1/32 -o lo -m owner {flag} {id} -j {IN_REDIRECT}"
            ));
        }
        rule(format!(
            "-A {OUTPUT} -o lo -m owner ! {flag} {id} -j RETURN"
        ));
        rule(format!("-A {OUTPUT} -m owner {flag} {id} -j RETURN"));
    }
    rule(format!("-A {OUTPUT} -d 127.0.0.1/32 -j RETURN"));
    if let CidrSet::Only(excluded) = &args.outbound_exclude_ip_ranges {
        for c in excluded {
            rule(format!("-A {OUTPUT} -d {c} -j RETURN"));
        }
    }
    match &args.outbound_ip_ranges {
        CidrSet::All => rule(format!("-A {OUTPUT} -j {REDIRECT}")),
        CidrSet::Only(ranges) => {
            for c in ranges {
                rule(format!("-A {OUTPUT} -d {c} -j {REDIRECT}"));
            }
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// Removes what [`apply`] installs; what is already gone is not an error.
pub fn cleanup(iptables: &str) -> Result<(), IptablesError> {
    for (builtin, chain) in JUMPS {
        // A jump added twice (by hand, or by an older run) is removed twice.
        while run(
            iptables,
            &["-t", "nat", "-D", builtin, "-p", "tcp", "-j", chain],
        )
        .is_ok()
        {}
    }
    for verb in ["-F", "-X"] {
        for chain in CHAINS {
            let exists = run(iptables, &["-t", "nat", "-S", chain]).is_ok();
            if exists {
                run(iptables, &["-t", "nat", verb, chain])?;
            }
        }
    }
    Ok(())
}

/// Installs the redirect, replacing an earlier one, in one `iptables-restore` transaction.
pub fn apply(args: &RedirectArgs) -> Result<(), IptablesError> {
    cleanup(&args.iptables)?;
    let program = format!("{}-restore", args.iptables);
    let spawn = |source| IptablesError::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = Command::new(&program)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(rules(args).as_bytes())
        .map_err(spawn)?;
    let out = child.wait_with_output().map_err(spawn)?;
    check(&program, out)
}

fn run(program: &str, args: &[&str]) -> Result<(), IptablesError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| IptablesError::Spawn {
            program: program.to_string(),
            source,
        })?;
    check(program, out)
}

fn check(program: &str, out: std::process::Output) -> Result<(), IptablesError> {
    if out.status.success() {
        return Ok(());
    }
    Err(IptablesError::Failed {
        program: program.to_string(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// What `node-agent iptables` does with its flags.
pub fn execute(args: &RedirectArgs) -> Result<(), IptablesError> {
    if args.cleanup {
        return if args.dry_run {
            Ok(())
        } else {
            cleanup(&args.iptables)
        };
    }
    if args.dry_run {
        print!("{}", rules(args));
        return Ok(());
    }
    apply(args)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RedirectArgs,
    }

    fn parse(argv: &[&str]) -> Result<RedirectArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("iptables").chain(argv.iter().copied())).map(|c| c.args)
    }

    fn rule_lines(argv: &[&str]) -> Vec<String> {
        rules(&parse(argv).unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_defaults_capture_everything_but_the_proxy_and_loopback() {
        let lines = rule_lines(&["-u", "20001"]);
        let at = |r: &str| {
            lines
                .iter()
                .position(|l| l == r)
                .unwrap_or_else(|| panic!("missing {r:?} in {lines:#?}"))
        };
        at("-A PREROUTING -p tcp -j CITADEL_INBOUND");
        at("-A CITADEL_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006");
        at("-A CITADEL_REDIRECT -p tcp -j REDIRECT --to-ports 15001");
        // Status ports stay reachable; every other inbound port is captured after them.
        assert!(
            at("-A CITADEL_INBOUND -p tcp --dport 15021 -j RETURN")
                < at("-A CITADEL_INBOUND -p tcp -j CITADEL_IN_REDIRECT")
        );
        // The order is what makes it work: passthrough source, then the proxy's own traffic,
        // then loopback, and only then the redirect.
        let passthrough = at("-A CITADEL_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN");
        let own = at("-A CITADEL_OUTPUT -m owner --uid-owner 20001 -j RETURN");
        let lo = at("-A CITADEL_OUTPUT -d 127.0.0.1/32 -j RETURN");
        let redirect = at("-A CITADEL_OUTPUT -j CITADEL_REDIRECT");
        assert!(passthrough < own && own < lo && lo < redirect, "{lines:#?}");
        assert_eq!(lines.first().map(String::as_str), Some("*nat"));
        assert_eq!(lines.last().map(String::as_str), Some("COMMIT"));
    }

    #[test]
    fn lists_of_ports_and_ranges_narrow_the_capture() {
        let lines = rule_lines(&[
            "-u",
            "1,2",
            "-g",
            "7",
            "-b",
            "9080, 9443",
            "-i",
            "198.19.0.0/16",
            "-x",
            "198.19.9.0/24",
            "-o",
            "5432",
        ]);
        for want in [
            "-A CITADEL_INBOUND -p tcp --dport 9080 -j CITADEL_IN_REDIRECT",
            "-A CITADEL_INBOUND -p tcp --dport 9443 -j CITADEL_IN_REDIRECT",
            "-A CITADEL_OUTPUT -m owner --uid-owner 2 -j RETURN",
            "-A CITADEL_OUTPUT -m owner --gid-owner 7 -j RETURN",
            "-A CITADEL_OUTPUT -d 198.19.9.0/24 -j RETURN",
            "-A CITADEL_OUTPUT -d 198.19.0.0/16 -j CITADEL_REDIRECT",
            "-A CITADEL_OUTPUT -p tcp --dport 5432 -j RETURN",
        ] {
            assert!(lines.iter().any(|l| l == want), "missing {want:?}");
        }
        assert!(
            !lines
                .iter()
                .any(|l| l == "-A CITADEL_OUTPUT -j CITADEL_REDIRECT")
        );
        assert!(
            !lines
                .iter()
                .any(|l| l == "-A CITADEL_INBOUND -p tcp -j CITADEL_IN_REDIRECT")
        );
    }

    #[test]
    fn an_empty_inbound_list_leaves_inbound_alone() {
        let lines = rule_lines(&["-b", ""]);
        assert!(!lines.iter().any(|l| l.contains("PREROUTING")));
        assert!(!lines.iter().any(|l| l.contains("-j CITADEL_IN_REDIRECT")));
        assert!(
            lines
                .iter()
                .any(|l| l == "-A CITADEL_OUTPUT -j CITADEL_REDIRECT")
        );
    }

    #[test]
    fn bad_flags_are_refused_with_the_value() {
        for (argv, want) in [
            (["-b", "80,http"], "\"http\" is not a port"),
            (["-b", "0"], "\"0\" is not a port"),
            (["-i", "10.0.0.0/33"], "not an IPv4 CIDR"),
            (
                ["-x", "198.19.0.1/16"],
                "host bits set; the network is 198.19.0.0/16",
            ),
            (["-u", "root"], "invalid digit"),
        ] {
            let err = parse(&argv).unwrap_err().to_string();
            assert!(err.contains(want), "{argv:?}: {err}");
        }
    }
}

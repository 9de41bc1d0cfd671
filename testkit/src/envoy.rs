//! A real Envoy on a static bootstrap (binary protobuf), on loopback: started with its admin
//! address written to a file, waited for until ready, read through the admin API, and killed
//! on drop.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Proc;
use crate::envoy_binary;

pub struct StaticEnvoy {
    _proc: Proc,
    admin: String,
    log: PathBuf,
}

impl StaticEnvoy {
    /// Starts Envoy on `bootstrap` (an encoded `envoy.config.bootstrap.v3.Bootstrap`) in `dir`
    /// and waits until its admin `/ready` answers (every static listener is bound).
    pub fn start(dir: &Path, bootstrap: &[u8]) -> Self {
        let config = dir.join("bootstrap.pb");
        std::fs::write(&config, bootstrap).expect("write bootstrap");
        let admin_file = dir.join("admin.txt");
        let log = dir.join("envoy.log");
        let base_id = (std::process::id() % 10_000 + 20_000).to_string();
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args([
                "--base-id",
                &base_id,
                "--disable-hot-restart",
                "--concurrency",
                "1",
            ])
            .args(["--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("envoy log"))
            .spawn()
            .expect("start envoy");
        let mut envoy = Self {
            _proc: Proc(child),
            admin: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(a) = std::fs::read_to_string(&admin_file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
            {
                envoy.admin = a;
                if envoy.get("/ready").is_some_and(|(code, _)| code == 200) {
                    return envoy;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = envoy.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "envoy did not become ready; the end of its log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// `GET path` on the admin API: status code and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(&self.admin).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    /// Every counter and gauge whose name matches the regex `filter`, by name.
    pub fn stats(&self, filter: &str) -> Vec<(String, u64)> {
        let (_, body) = self
            .get(&format!("/stats?filter={filter}"))
            .unwrap_or_default();
        body.lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

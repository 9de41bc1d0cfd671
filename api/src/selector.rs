//! Workload selectors (`type:key:value`, e.g. `unix:uid:1000`), parsed once at the boundary.
use std::fmt;
use std::str::FromStr;

/// A selector that a workload must match for a registration entry to apply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    key: String,
    value: String,
}

/// Why a selector string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: {reason}")]
pub struct SelectorError {
    pub input: String,
    pub reason: &'static str,
}

/// Selector kinds and keys the node agent can attest today.
const KNOWN: &[(&str, &[&str])] = &[("unix", &["uid", "gid", "user", "group", "path"])];

impl Selector {
    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    pub fn new(kind: &str, key: &str, value: impl Into<String>) -> Result<Self, SelectorError> {
        format!("{kind}:{key}:{}", value.into()).parse()
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, SelectorError> {
        let err = |reason| SelectorError {
            input: s.to_string(),
            reason,
        };
        let mut parts = s.splitn(3, ':');
        let (Some(kind), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(err("want type:key:value"));
        };
        let keys = KNOWN
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, keys)| *keys)
            .ok_or_else(|| err("unknown selector type (want unix)"))?;
        if !keys.contains(&key) {
            return Err(err(
                "unknown unix selector key (want uid, gid, user, group or path)",
            ));
        }
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(err("value must be non-empty printable text"));
        }
        if matches!(key, "uid" | "gid") && value.parse::<u32>().is_err() {
            return Err(err("uid and gid must be decimal numbers"));
        }
        if key == "path" && !value.starts_with('/') {
            return Err(err("path must be absolute"));
        }
        Ok(Selector {
            kind: kind.into(),
            key: key.into(),
            value: value.into(),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.key, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_unix_selectors() {
        for ok in [
            "unix:uid:1000",
            "unix:gid:0",
            "unix:user:www-data",
            "unix:group:staff",
            "unix:path:/usr/bin/envoy",
        ] {
            let s: Selector = ok.parse().unwrap();
            assert_eq!(s.to_string(), ok);
        }
        assert_eq!(
            "unix:path:/a:b".parse::<Selector>().unwrap().value(),
            "/a:b"
        );
    }

    #[test]
    fn refuses_malformed_selectors() {
        for bad in [
            "",
            "unix",
            "unix:uid",
            "unix:uid:",
            "unix:uid:abc",
            "k8s:ns:default",
            "unix:pid:1",
            "unix:path:relative",
            "unix:user:a\nb",
        ] {
            assert!(bad.parse::<Selector>().is_err(), "{bad:?}");
        }
    }
}

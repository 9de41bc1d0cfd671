//! Gateway: the servers (port, hosts, TLS) a gateway proxy exposes at the edge of the mesh.
use serde::Deserialize;

use super::{Labels, ServerTlsSettings};

/// `Gateway.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    #[serde(default)]
    pub servers: Vec<Server>,
    /// The gateway proxies (by their labels) that expose these servers; empty selects all.
    #[serde(default)]
    pub selector: Labels,
}

/// `Server`: one port of a gateway and the hosts it serves there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    pub port: Option<ServerPort>,
    /// The IP (or `unix://` path) to bind; every address when unset.
    pub bind: Option<String>,
    /// `namespace/dnsName` or `dnsName` (any namespace): which VirtualServices may bind.
    #[serde(default)]
    pub hosts: Vec<String>,
    pub tls: Option<ServerTlsSettings>,
    #[serde(default)]
    pub default_endpoint: Option<String>,
    /// Unique across the gateways of one proxy; names the server's route configuration.
    #[serde(default)]
    pub name: Option<String>,
}

/// `Port` of a gateway server: the same fields as a ServiceEntry's port.
pub type ServerPort = super::ServicePort;

impl Server {
    /// The server's hosts split into (namespace filter, host): `*` for any namespace, `.` for
    /// the gateway's own.
    pub fn namespaced_hosts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.hosts
            .iter()
            .map(|h| h.split_once('/').unwrap_or(("*", h.as_str())))
    }
}

//! The service registry of one configuration: ServiceEntries with their endpoints (inline, or
//! WorkloadEntries they select), plus the lookups translation needs — which services a proxy
//! sees (`exportTo`, Sidecar egress hosts), host names resolved as Istio resolves them, and the
//! DestinationRule and VirtualServices that apply to a host.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use mesh::networking::{
    DestinationRule, Location, Resolution, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use mesh::{Config, Kind, Object, Spec};

use super::proxy::Proxy;

/// Kubernetes' service domain; short names resolve under it.
pub const DOMAIN_SUFFIX: &str = "svc.cluster.local";

/// `host` as Istio resolves it in `namespace`: a short name becomes
/// `host.namespace.svc.cluster.local`; names with a dot and wildcards stay.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.{DOMAIN_SUFFIX}")
    }
}

/// Whether `pattern` (possibly `*.suffix` or `*`) covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    pattern == host
        || pattern == "*"
        || pattern
            .strip_prefix('*')
            .is_some_and(|suffix| host.ends_with(suffix) && host.len() > suffix.len())
}

/// How a port's traffic is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    /// Not declared: treated as TCP until protocol detection exists.
    Unknown,
}

impl Protocol {
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "http" | "http_proxy" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" | "grpc-web" => Protocol::Grpc,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" | "mongo" | "redis" | "mysql" => Protocol::Tcp,
            _ => Protocol::Unknown,
        }
    }

    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// One service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub number: u32,
    pub name: String,
    pub protocol: Protocol,
    pub target_port: Option<u32>,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    pub service_account: String,
    pub locality: String,
    pub weight: u32,
}

impl Endpoint {
    fn from_entry(e: &WorkloadEntry, namespace: &str) -> Self {
        Self {
            address: e.address.clone(),
            ports: e.ports.clone(),
            labels: e.labels.clone(),
            namespace: namespace.to_string(),
            service_account: if e.service_account.is_empty() {
                "default".into()
            } else {
                e.service_account.clone()
            },
            locality: e.locality.clone(),
            weight: e.weight.unwrap_or(1).max(1),
        }
    }

    /// The endpoint's port for a service port: its named port, else the target port, else the
    /// service port itself.
    pub fn port_for(&self, port: &Port) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }

    /// Whether the endpoint has every label of `selector`.
    pub fn selected_by(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// The SPIFFE ID the endpoint's workload presents.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// A service: one host of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub hostname: String,
    pub namespace: String,
    pub addresses: Vec<String>,
    pub ports: Vec<Port>,
    pub resolution: Resolution,
    pub location: Location,
    pub export_to: Vec<String>,
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// Whether the two differ at most in their endpoints.
    pub fn same_but_endpoints(&self, other: &Self) -> bool {
        let Service {
            hostname,
            namespace,
            addresses,
            ports,
            resolution,
            location,
            export_to,
            endpoints: _,
        } = self;
        *hostname == other.hostname
            && *namespace == other.namespace
            && *addresses == other.addresses
            && *ports == other.ports
            && *resolution == other.resolution
            && *location == other.location
            && *export_to == other.export_to
    }

    /// Whether a proxy in `namespace` may see this service (`exportTo`; default everyone).
    pub fn exported_to(&self, namespace: &str) -> bool {
        self.export_to.is_empty()
            || self
                .export_to
                .iter()
                .any(|e| e == "*" || (e == "." && self.namespace == namespace) || e == namespace)
    }

    pub fn port(&self, number: u32) -> Option<&Port> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// Every service of a configuration, by hostname.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub services: Vec<Service>,
    /// Where each endpoint address appears: (service, endpoint) indices, in registry order.
    by_address: HashMap<String, Vec<(usize, usize)>>,
}

fn specs<'a, T: 'a>(
    config: &'a Config,
    kind: Kind,
    pick: impl Fn(&'a Spec) -> Option<&'a T> + 'a,
) -> impl Iterator<Item = (&'a Object, &'a T)> + 'a {
    config
        .of_kind(kind)
        .filter_map(move |o| pick(&o.spec).map(|s| (o, s)))
}

impl Registry {
    pub fn build(config: &Config) -> Self {
        let workload_entries: Vec<(&Object, &WorkloadEntry)> =
            specs(config, Kind::WorkloadEntry, |s| match s {
                Spec::WorkloadEntry(w) => Some(w.as_ref()),
                _ => None,
            })
            .collect();
        let mut services = Vec::new();
        for (object, se) in specs(config, Kind::ServiceEntry, |s| match s {
            Spec::ServiceEntry(se) => Some(se.as_ref()),
            _ => None,
        }) {
            let ns = object.metadata.namespace();
            let endpoints = endpoints_of(se, ns, &workload_entries);
            for host in &se.hosts {
                services.push(Service {
                    hostname: host.clone(),
                    namespace: ns.to_string(),
                    addresses: se.addresses.clone(),
                    ports: se
                        .ports
                        .iter()
                        .map(|p| Port {
                            number: p.number,
                            name: p.name.clone(),
                            protocol: Protocol::parse(&p.protocol),
                            target_port: p.target_port,
                        })
                        .collect(),
                    resolution: se.resolution,
                    location: se.location,
                    export_to: se
                        .export_to
                        .iter()
                        .map(|e| if e == "." { ns.to_string() } else { e.clone() })
                        .collect(),
                    endpoints: endpoints.clone(),
                });
            }
        }
        // The first declaration of a host wins, as in Istio (oldest first; here load order).
        let mut seen = std::collections::BTreeSet::new();
        services.retain(|s| seen.insert(s.hostname.clone()));
        services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        let mut by_address: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (si, s) in services.iter().enumerate() {
            for (ei, e) in s.endpoints.iter().enumerate() {
                by_address
                    .entry(e.address.clone())
                    .or_default()
                    .push((si, ei));
            }
        }
        Self {
            services,
            by_address,
        }
    }

    /// The (service, endpoint) pairs whose endpoint has one of `addresses`, in registry order.
    pub fn endpoints_at<'a>(
        &'a self,
        addresses: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(&'a Service, &'a Endpoint)> {
        let mut at: Vec<(usize, usize)> = addresses
            .into_iter()
            .filter_map(|a| self.by_address.get(a))
            .flatten()
            .copied()
            .collect();
        at.sort_unstable();
        at.dedup();
        at.into_iter()
            .map(|(s, e)| (&self.services[s], &self.services[s].endpoints[e]))
            .collect()
    }

    /// The hostnames whose endpoints alone changed from `previous`, or `None` when anything
    /// else about the services changed (one added, removed, or with other ports, say).
    pub fn endpoint_changes(&self, previous: &Registry) -> Option<Vec<String>> {
        if self.services.len() != previous.services.len() {
            return None;
        }
        let mut changed = Vec::new();
        for (now, before) in self.services.iter().zip(&previous.services) {
            if !now.same_but_endpoints(before) {
                return None;
            }
            if now.endpoints != before.endpoints {
                changed.push(now.hostname.clone());
            }
        }
        Some(changed)
    }

    pub fn find(&self, host: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.hostname == host)
    }

    /// The services `proxy` sees: exported to its namespace and, with a Sidecar, listed in its
    /// egress hosts.
    pub fn visible_to<'a>(&'a self, proxy: &Proxy, sidecar: Option<&Sidecar>) -> Vec<&'a Service> {
        self.services
            .iter()
            .filter(|s| s.exported_to(&proxy.namespace))
            .filter(|s| sidecar.is_none_or(|sc| egress_allows(sc, &proxy.namespace, s)))
            .collect()
    }
}

fn endpoints_of(
    se: &ServiceEntry,
    ns: &str,
    workload_entries: &[(&Object, &WorkloadEntry)],
) -> Vec<Endpoint> {
    match &se.workload_selector {
        Some(sel) => workload_entries
            .iter()
            .filter(|(o, w)| {
                o.metadata.namespace() == ns
                    && sel.labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .map(|(o, w)| Endpoint::from_entry(w, o.metadata.namespace()))
            .collect(),
        None => se
            .endpoints
            .iter()
            .map(|e| Endpoint::from_entry(e, ns))
            .collect(),
    }
}

/// Whether a Sidecar's egress hosts (`namespace/host`) include `service`.
fn egress_allows(sc: &Sidecar, proxy_ns: &str, service: &Service) -> bool {
    if sc.egress.is_empty() {
        return true;
    }
    sc.egress.iter().flat_map(|e| &e.hosts).any(|h| {
        let Some((ns, host)) = h.split_once('/') else {
            return false;
        };
        let ns_ok = match ns {
            "*" => true,
            "." => service.namespace == proxy_ns,
            "~" => false,
            other => service.namespace == other,
        };
        ns_ok && host_matches(host, &service.hostname)
    })
}

/// The Sidecar that applies to `proxy`: one selecting its labels in its namespace, else its
/// namespace's default (no selector), else the root namespace's default.
pub fn sidecar_for<'a>(config: &'a Config, proxy: &Proxy) -> Option<&'a Sidecar> {
    let sidecars: Vec<(&Object, &Sidecar)> = specs(config, Kind::Sidecar, |s| match s {
        Spec::Sidecar(sc) => Some(sc.as_ref()),
        _ => None,
    })
    .collect();
    let in_ns = |ns: &str| -> Vec<&'a Sidecar> {
        sidecars
            .iter()
            .filter(|(o, _)| o.metadata.namespace() == ns)
            .map(|(_, sc)| *sc)
            .collect()
    };
    let own = in_ns(&proxy.namespace);
    let selects_proxy = |sc: &&&Sidecar| {
        sc.workload_selector.as_ref().is_some_and(|sel| {
            !sel.labels.is_empty()
                && sel
                    .labels
                    .iter()
                    .all(|(k, v)| proxy.labels.get(k) == Some(v))
        })
    };
    own.iter()
        .find(selects_proxy)
        .or_else(|| own.iter().find(|sc| sc.workload_selector.is_none()))
        .copied()
        .or_else(|| {
            in_ns(&config.mesh.root_namespace)
                .into_iter()
                .find(|sc| sc.workload_selector.is_none())
        })
}

/// Whether `dr` (in `ns`) has a `workloadSelector` that selects the proxy: such a rule applies
/// only to the workloads it selects in its own namespace, as in Istio.
pub fn selects_proxy(dr: &DestinationRule, ns: &str, proxy: &Proxy) -> bool {
    dr.workload_selector.as_ref().is_some_and(|sel| {
        ns == proxy.namespace
            && sel
                .match_labels
                .iter()
                .all(|(k, v)| proxy.labels.get(k) == Some(v))
    })
}

/// The DestinationRule for `host` seen from `proxy`: the proxy's namespace first (a rule whose
/// `workloadSelector` selects the proxy before one without), then the service's, then the
/// root namespace (Istio's precedence); exact hosts before wildcards. A rule with a selector
/// applies to nothing else.
pub fn destination_rule_for<'a>(
    config: &'a Config,
    proxy: &Proxy,
    service: &Service,
) -> Option<&'a DestinationRule> {
    let proxy_ns = proxy.namespace.as_str();
    let all: Vec<(&Object, &DestinationRule)> = specs(config, Kind::DestinationRule, |s| match s {
        Spec::DestinationRule(dr) => Some(dr.as_ref()),
        _ => None,
    })
    .filter(|(o, dr)| {
        let ns = o.metadata.namespace();
        dr.export_to.is_empty()
            || dr
                .export_to
                .iter()
                .any(|e| e == "*" || e == proxy_ns || (e == "." && ns == proxy_ns))
    })
    .collect();
    let (selecting, rules): (Vec<_>, Vec<_>) = all
        .into_iter()
        .filter(|(o, dr)| {
            dr.workload_selector.is_none() || selects_proxy(dr, o.metadata.namespace(), proxy)
        })
        .partition(|(_, dr)| dr.workload_selector.is_some());
    let resolved =
        |dr: &DestinationRule, o: &Object| resolve_host(&dr.host, o.metadata.namespace());
    if let Some((_, dr)) = selecting
        .iter()
        .find(|(o, dr)| resolved(dr, o) == service.hostname)
        .or_else(|| {
            selecting
                .iter()
                .find(|(o, dr)| host_matches(&resolved(dr, o), &service.hostname))
        })
    {
        return Some(dr);
    }
    for ns in [
        proxy_ns,
        service.namespace.as_str(),
        config.mesh.root_namespace.as_str(),
    ] {
        let here = || rules.iter().filter(|(o, _)| o.metadata.namespace() == ns);
        if let Some((_, dr)) = here().find(|(o, dr)| resolved(dr, o) == service.hostname) {
            return Some(dr);
        }
        if let Some((_, dr)) =
            here().find(|(o, dr)| host_matches(&resolved(dr, o), &service.hostname))
        {
            return Some(dr);
        }
    }
    None
}

/// `vs` with its delegating routes replaced by the delegates' routes, as istiod merges them:
/// a delegate is a VirtualService with no hosts, named by `delegate` (its namespace defaults
/// to the root's), exported to the root's namespace; one that is missing or not exported
/// drops just that route (logged). Short names in a delegate are its namespace's.
pub fn with_delegates<'a>(
    config: &'a Config,
    object: &'a Object,
    vs: &'a VirtualService,
) -> Cow<'a, VirtualService> {
    if !vs.http.iter().any(|r| r.delegate.is_some()) {
        return Cow::Borrowed(vs);
    }
    let root_ns = object.metadata.namespace();
    let delegate_of = |name: &str, ns: &str| {
        let found = specs(config, Kind::VirtualService, |s| match s {
            Spec::VirtualService(vs) => Some(vs.as_ref()),
            _ => None,
        })
        .find(|(o, d)| {
            o.metadata.name == name && o.metadata.namespace() == ns && d.hosts.is_empty()
        });
        let Some((o, d)) = found else {
            tracing::warn!(root = %object.describe(), delegate = %format!("{ns}/{name}"), "delegate VirtualService not found (a delegate has no hosts); its route is left out");
            return None;
        };
        let exported = d.export_to.is_empty()
            || d.export_to
                .iter()
                .any(|e| e == "*" || e == root_ns || (e == "." && ns == root_ns));
        if !exported {
            tracing::warn!(root = %object.describe(), delegate = %format!("{ns}/{name}"), "delegate VirtualService not exported to the root's namespace; its route is left out");
            return None;
        }
        Some((o.metadata.namespace(), d))
    };
    Cow::Owned(mesh::networking::delegate::merge_delegates(
        vs,
        root_ns,
        delegate_of,
        resolve_host,
    ))
}

/// The VirtualServices for the mesh that `proxy_ns` sees, with their hosts resolved and their
/// delegates merged in.
pub fn mesh_virtual_services<'a>(
    config: &'a Config,
    proxy_ns: &str,
) -> Vec<(Vec<String>, &'a Object, Cow<'a, VirtualService>)> {
    specs(config, Kind::VirtualService, |s| match s {
        Spec::VirtualService(vs) => Some(vs.as_ref()),
        _ => None,
    })
    .filter(|(_, vs)| vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh"))
    .filter(|(o, vs)| {
        let ns = o.metadata.namespace();
        vs.export_to.is_empty()
            || vs
                .export_to
                .iter()
                .any(|e| e == "*" || e == proxy_ns || (e == "." && ns == proxy_ns))
    })
    .map(|(o, vs)| {
        let hosts = vs
            .hosts
            .iter()
            .map(|h| resolve_host(h, o.metadata.namespace()))
            .collect();
        (hosts, o, with_delegates(config, o, vs))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_namespace() {
        assert_eq!(
            resolve_host("reviews", "bookinfo"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(resolve_host("httpbin.org", "x"), "httpbin.org");
        assert_eq!(resolve_host("*.example.com", "x"), "*.example.com");
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*", "anything"));
    }

    #[test]
    fn a_selecting_destination_rule_applies_to_the_workloads_it_selects_only() {
        let (objects, problems) = mesh::load_str(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: app}
spec: {hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: everyone, namespace: app}
spec: {host: api.example.com, trafficPolicy: {tls: {mode: DISABLE}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: billing-only, namespace: app}
spec:
  host: api.example.com
  workloadSelector: {matchLabels: {app: billing}}
  trafficPolicy: {tls: {mode: SIMPLE}}
",
            None,
        );
        assert!(problems.iter().all(|p| !p.is_error()), "{problems:?}");
        let config = Config {
            objects: objects.into_iter().map(std::sync::Arc::new).collect(),
            mesh: Default::default(),
        };
        let registry = Registry::build(&config);
        let service = registry.find("api.example.com").unwrap();
        let proxy = |ns: &str, app: &str| Proxy {
            kind: super::super::proxy::ProxyType::Sidecar,
            id: format!("sidecar~198.18.0.9~p.{ns}~{ns}.svc.cluster.local"),
            namespace: ns.into(),
            service_account: "default".into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec!["198.18.0.9".parse().unwrap()],
            workload_name: "p".into(),
            interception: super::super::proxy::Interception::Redirect,
        };
        let mode = |p: &Proxy| {
            destination_rule_for(&config, p, service)
                .and_then(|dr| dr.traffic_policy.as_ref()?.tls.as_ref())
                .map(|t| t.mode)
        };
        use mesh::networking::ClientTlsMode;
        assert_eq!(mode(&proxy("app", "billing")), Some(ClientTlsMode::Simple));
        assert_eq!(mode(&proxy("app", "web")), Some(ClientTlsMode::Disable));
        assert_eq!(
            mode(&proxy("other", "billing")),
            Some(ClientTlsMode::Disable),
            "a selector selects in its own namespace only"
        );
        assert_ne!(
            super::super::class_of(&config, &registry, &proxy("app", "billing")),
            super::super::class_of(&config, &registry, &proxy("app", "web")),
            "a selecting rule makes its own class"
        );
    }
}

//! VirtualService delegation, as istiod merges it before translating: a root HTTP route with
//! `delegate` becomes the delegate's routes, each with its matches narrowed by the root's (a
//! delegate match must fit inside a root match: same exact value, or a prefix or exact value
//! under the root's prefix; regex conflicts; source labels, source namespace and gateways
//! inherited and never widened), and with the root's timeout, retries, rewrite, fault,
//! mirrors, direct response, CORS and headers where it sets none. A delegate route with no match that
//! fits is dropped.
use super::{HttpMatchRequest, HttpRoute, StringMatch, VirtualService};

/// `root` with each delegating HTTP route replaced by its delegate's routes merged into it.
/// `delegate_of` finds the delegate VirtualService a route names (already checked to be a
/// delegate exported to the root's namespace) with its namespace; `resolve` turns a host
/// written in a namespace into its full name, since the delegate's short names are its own.
pub fn merge_delegates<'a>(
    root: &VirtualService,
    root_ns: &str,
    delegate_of: impl Fn(&str, &str) -> Option<(&'a str, &'a VirtualService)>,
    resolve: impl Fn(&str, &str) -> String,
) -> VirtualService {
    let mut merged = root.clone();
    merged.http = Vec::new();
    for route in &root.http {
        let Some(d) = &route.delegate else {
            merged.http.push(route.clone());
            continue;
        };
        let ns = d.namespace.as_deref().unwrap_or(root_ns);
        let Some((child_ns, child)) = delegate_of(&d.name, ns) else {
            continue;
        };
        for sub in &child.http {
            // The delegate's own short names are its namespace's; what it inherits from the
            // root stays the root's.
            let mut sub = sub.clone();
            resolve_hosts(&mut sub, |h| resolve(h, child_ns));
            if let Some(m) = merge_route(route, &sub) {
                merged.http.push(m);
            }
        }
    }
    merged
}

/// The delegate's destinations, mirrors included, by their full names.
fn resolve_hosts(route: &mut HttpRoute, resolve: impl Fn(&str) -> String) {
    for d in &mut route.route {
        d.destination.host = resolve(&d.destination.host);
    }
    if let Some(m) = &mut route.mirror {
        m.host = resolve(&m.host);
    }
    for m in &mut route.mirrors {
        m.destination.host = resolve(&m.destination.host);
    }
}

/// `sub` inside `root`, or `None` when one of `sub`'s matches fits in none of `root`'s.
pub fn merge_route(root: &HttpRoute, sub: &HttpRoute) -> Option<HttpRoute> {
    let matches = merge_matches(&root.matches, &sub.matches)?;
    let mut out = sub.clone();
    out.matches = matches;
    out.name = match (&root.name, &sub.name) {
        (Some(r), Some(s)) => Some(format!("{r}-{s}")),
        (r, s) => s.clone().or_else(|| r.clone()),
    };
    out.rewrite = out.rewrite.or_else(|| root.rewrite.clone());
    out.timeout = out.timeout.or(root.timeout);
    out.retries = out.retries.or_else(|| root.retries.clone());
    out.fault = out.fault.or_else(|| root.fault.clone());
    out.mirror = out.mirror.or_else(|| root.mirror.clone());
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    out.direct_response = out.direct_response.or_else(|| root.direct_response.clone());
    out.mirror_percent = out.mirror_percent.or(root.mirror_percent);
    out.mirror_percentage = out.mirror_percentage.or(root.mirror_percentage);
    out.cors_policy = out.cors_policy.or_else(|| root.cors_policy.clone());
    out.headers = out.headers.or_else(|| root.headers.clone());
    Some(out)
}

fn merge_matches(
    root: &[HttpMatchRequest],
    sub: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(sub.to_vec());
    }
    if sub.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for s in sub {
        let fitting: Vec<HttpMatchRequest> = root
            .iter()
            .filter(|r| !conflicts(r, s))
            .map(|r| merge_match(r, s))
            .collect();
        if fitting.is_empty() {
            return None;
        }
        out.extend(fitting);
    }
    Some(out)
}

fn merge_match(root: &HttpMatchRequest, sub: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = sub.clone();
    out.name = match (&root.name, &sub.name) {
        (Some(r), Some(s)) => Some(format!("{r}-{s}")),
        (r, s) => s.clone().or_else(|| r.clone()),
    };
    out.uri = out.uri.or_else(|| root.uri.clone());
    out.scheme = out.scheme.or_else(|| root.scheme.clone());
    out.method = out.method.or_else(|| root.method.clone());
    out.authority = out.authority.or_else(|| root.authority.clone());
    for (map, root_map) in [
        (&mut out.headers, &root.headers),
        (&mut out.without_headers, &root.without_headers),
        (&mut out.query_params, &root.query_params),
    ] {
        for (k, v) in root_map {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    out.port = out.port.or(root.port);
    for (k, v) in &root.source_labels {
        out.source_labels
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    out.source_namespace = out
        .source_namespace
        .or_else(|| root.source_namespace.clone());
    out.stat_prefix = out.stat_prefix.or_else(|| root.stat_prefix.clone());
    out
}

fn conflicts(root: &HttpMatchRequest, sub: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &sub.uri),
        (&root.scheme, &sub.scheme),
        (&root.method, &sub.method),
        (&root.authority, &sub.authority),
    ];
    pairs
        .iter()
        .any(|(r, s)| string_conflict(r.as_ref(), s.as_ref()))
        || sub
            .headers
            .iter()
            .any(|(k, v)| string_conflict(root.headers.get(k), Some(v)))
        || sub
            .without_headers
            .iter()
            .any(|(k, v)| string_conflict(root.without_headers.get(k), Some(v)))
        || sub
            .query_params
            .iter()
            .any(|(k, v)| string_conflict(root.query_params.get(k), Some(v)))
        || root.ignore_uri_case != sub.ignore_uri_case
        || matches!((root.port, sub.port), (Some(r), Some(s)) if r != s)
        || matches!((&root.source_namespace, &sub.source_namespace), (Some(r), Some(s)) if r != s)
        || sub
            .source_labels
            .iter()
            .any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v))
        // A delegate may narrow the gateways a root match names, never widen them.
        || (!root.gateways.is_empty()
            && !sub.gateways.is_empty()
            && !sub.gateways.iter().all(|g| root.gateways.contains(g)))
}

/// Whether `sub` can not be narrower than `root`: regexes never nest; an exact root takes the
/// same exact value only; a prefix root takes a prefix or exact value under it.
fn string_conflict(root: Option<&StringMatch>, sub: Option<&StringMatch>) -> bool {
    let (Some(root), Some(sub)) = (root, sub) else {
        return false;
    };
    if root.regex.is_some() || sub.regex.is_some() {
        return true;
    }
    if let Some(exact) = &root.exact {
        return sub.prefix.is_some() || sub.exact.as_ref() != Some(exact);
    }
    if let Some(prefix) = &root.prefix {
        if let Some(p) = &sub.prefix {
            return !p.starts_with(prefix.as_str());
        }
        if let Some(e) = &sub.exact {
            return !e.starts_with(prefix.as_str());
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> HttpMatchRequest {
        HttpMatchRequest {
            uri: Some(StringMatch {
                prefix: Some(p.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn delegate_matches_must_fit_inside_the_roots() {
        let root = HttpRoute {
            name: Some("root".into()),
            matches: vec![prefix("/productpage")],
            timeout: Some("5s".parse().unwrap()),
            ..Default::default()
        };
        let fits = HttpRoute {
            matches: vec![prefix("/productpage/v1")],
            ..Default::default()
        };
        let merged = merge_route(&root, &fits).unwrap();
        assert_eq!(merged.matches, [prefix("/productpage/v1")]);
        assert_eq!(merged.timeout, root.timeout, "inherited");
        assert_eq!(merged.name.as_deref(), Some("root"));
        assert!(
            merge_route(
                &root,
                &HttpRoute {
                    matches: vec![prefix("/reviews")],
                    ..Default::default()
                }
            )
            .is_none(),
            "outside the root's prefix"
        );
        let open = merge_route(&root, &HttpRoute::default()).unwrap();
        assert_eq!(open.matches, root.matches, "no match: the root's");

        // What the root's match limits, the delegate's match keeps.
        let gated = HttpRoute {
            matches: vec![HttpMatchRequest {
                gateways: vec!["edge/public".into()],
                source_labels: [("app".to_string(), "web".to_string())].into(),
                ..prefix("/productpage")
            }],
            ..Default::default()
        };
        let merged = merge_route(&gated, &fits).unwrap();
        assert_eq!(merged.matches[0].gateways, ["edge/public"]);
        assert_eq!(merged.matches[0].source_labels["app"], "web");
        let wider = HttpRoute {
            matches: vec![HttpMatchRequest {
                gateways: vec!["mesh".into()],
                ..prefix("/productpage/v1")
            }],
            ..Default::default()
        };
        assert!(
            merge_route(&gated, &wider).is_none(),
            "may not widen the gateways"
        );
    }

    #[test]
    fn a_delegates_short_names_are_its_own_and_the_roots_stay_the_roots() {
        use crate::networking::{Delegate, Destination, HttpRouteDestination};
        let dest = |h: &str| Destination {
            host: h.into(),
            ..Default::default()
        };
        let root = VirtualService {
            hosts: vec!["bookinfo.com".into()],
            http: vec![HttpRoute {
                delegate: Some(Delegate {
                    name: "child".into(),
                    namespace: None,
                }),
                mirror: Some(dest("shadow")),
                ..Default::default()
            }],
            ..Default::default()
        };
        let child = VirtualService {
            http: vec![HttpRoute {
                route: vec![HttpRouteDestination {
                    destination: dest("reviews"),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let merged = merge_delegates(
            &root,
            "root-ns",
            |name, ns| (name == "child" && ns == "root-ns").then_some(("child-ns", &child)),
            |h, ns| format!("{h}.{ns}"),
        );
        let r = &merged.http[0];
        assert_eq!(r.route[0].destination.host, "reviews.child-ns");
        assert_eq!(
            r.mirror.as_ref().unwrap().host,
            "shadow",
            "inherited as written: the root's namespace resolves it"
        );
    }
}

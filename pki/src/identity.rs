//! SPIFFE IDs and trust domains (the `spiffe` crate's validated types) plus Citadel's naming scheme.
pub use spiffe::{SpiffeId, TrustDomain};

use crate::error::Error;

/// Parses a SPIFFE ID, mapping the crate's error into ours.
pub fn parse_spiffe_id(s: &str) -> Result<SpiffeId, Error> {
    SpiffeId::new(s).map_err(|e| Error::SpiffeId(format!("{s:?}: {e}")))
}

/// Parses a trust domain name (`example.org`) or trust domain ID (`spiffe://example.org`).
pub fn parse_trust_domain(s: &str) -> Result<TrustDomain, Error> {
    TrustDomain::new(s).map_err(|e| Error::SpiffeId(format!("{s:?}: {e}")))
}

/// `spiffe://TD/ns/NS/sa/SA`, the Istio workload identity form.
pub fn workload_id(
    td: &TrustDomain,
    namespace: &str,
    service_account: &str,
) -> Result<SpiffeId, Error> {
    parse_spiffe_id(&format!(
        "spiffe://{td}/ns/{namespace}/sa/{service_account}"
    ))
}

/// `spiffe://TD/citadel/node/NAME`, the identity of an attested node agent. `NAME` must be a
/// single path segment.
pub fn node_id(td: &TrustDomain, node: &str) -> Result<SpiffeId, Error> {
    if node.is_empty() || node.contains('/') {
        return Err(Error::SpiffeId(format!(
            "node name {node:?} must be one non-empty path segment"
        )));
    }
    parse_spiffe_id(&format!("spiffe://{td}/citadel/node/{node}"))
}

/// `spiffe://TD/citadel/server`, the identity citadel's own API presents.
pub fn server_id(td: &TrustDomain) -> SpiffeId {
    parse_spiffe_id(&format!("spiffe://{td}/citadel/server"))
        .expect("a valid trust domain always yields a valid server ID")
}

/// The node name if `id` is a node identity of trust domain `td`.
pub fn node_name<'a>(id: &'a SpiffeId, td: &TrustDomain) -> Option<&'a str> {
    if id.trust_domain() != td {
        return None;
    }
    let name = id.path().strip_prefix("/citadel/node/")?;
    (!name.contains('/')).then_some(name)
}

/// The trust domain ID (`spiffe://TD`) as a SPIFFE ID with no path.
pub fn trust_domain_id(td: &TrustDomain) -> SpiffeId {
    parse_spiffe_id(&td.id_string()).expect("a trust domain ID is a valid SPIFFE ID")
}

/// Istio's principal form of an ID: `TD/path` without the scheme (`cluster.local/ns/a/sa/b`).
pub fn istio_principal(id: &SpiffeId) -> String {
    format!("{}{}", id.trust_domain(), id.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn td(s: &str) -> TrustDomain {
        parse_trust_domain(s).unwrap()
    }

    #[test]
    fn workload_and_node_ids_follow_the_conventions() {
        let id = workload_id(&td("cluster.local"), "default", "web").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(istio_principal(&id), "cluster.local/ns/default/sa/web");
        let node = node_id(&td("cluster.local"), "n1").unwrap();
        assert_eq!(node_name(&node, &td("cluster.local")), Some("n1"));
        assert_eq!(node_name(&node, &td("other.org")), None);
        assert_eq!(node_name(&id, &td("cluster.local")), None);
        assert_eq!(
            server_id(&td("example.org")).to_string(),
            "spiffe://example.org/citadel/server"
        );
    }

    #[test]
    fn rejects_ids_the_standard_forbids() {
        for bad in [
            "",
            "http://example.org/a",
            "spiffe://",
            "spiffe:///path",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/",
            "spiffe://example.org/./a",
            "spiffe://example.org/../a",
            "spiffe://exa mple.org/a",
            "spiffe://example.org/a?q=1",
            "spiffe://example.org/a#frag",
            "spiffe://user@example.org/a",
            "spiffe://example.org:8080/a",
            "spiffe://example.org/a%20b",
        ] {
            assert!(parse_spiffe_id(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse_spiffe_id(&s);
            let _ = parse_trust_domain(&s);
        }

        #[test]
        fn valid_ids_round_trip(
            td in "[a-z0-9][a-z0-9._-]{0,30}",
            segs in proptest::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,12}", 0..5),
        ) {
            let path: String = segs.iter().map(|s| format!("/{s}")).collect();
            // Dot segments are invalid even when the characters are allowed.
            prop_assume!(!segs.iter().any(|s| s == "." || s == ".."));
            let text = format!("spiffe://{td}{path}");
            let id = parse_spiffe_id(&text).unwrap();
            prop_assert_eq!(id.to_string(), text.clone());
            prop_assert_eq!(id.path(), path.as_str());
            prop_assert_eq!(parse_spiffe_id(&id.to_string()).unwrap(), id);
        }

        #[test]
        fn arbitrary_uris_parse_only_to_consistent_ids(s in "spiffe://[a-zA-Z0-9./%:@_-]{0,40}") {
            if let Ok(id) = parse_spiffe_id(&s) {
                prop_assert_eq!(parse_spiffe_id(&id.to_string()).unwrap(), id.clone());
                prop_assert!(!id.path().ends_with('/'));
                prop_assert!(!id.path().contains("//"));
            }
        }
    }
}

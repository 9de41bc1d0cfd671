//! The xDS resource types this engine knows by name: their type URLs, which of them the protocol
//! lets a client subscribe to by wildcard, and the order ADS pushes them in.
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// LDS.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// RDS.
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// CDS.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// EDS.
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// SDS.
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Whether `*` and the legacy empty-list wildcard apply: Listener and Cluster only, as the xDS
/// protocol says. For every other type an empty list means "none" and `*` is just a name.
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// Whether a state-of-the-world response of this type must list every resource (absence means
/// deletion): Listener and Cluster, as the xDS protocol defines.
pub fn is_full_state_type(type_url: &str) -> bool {
    is_wildcard_type(type_url)
}

/// Where a type goes in one round of ADS pushes: make-before-break, so a client never holds a
/// listener whose clusters, endpoints or secrets it has not seen yet. Clusters, their endpoints,
/// then listeners and their routes (xDS protocol, "Eventual consistency considerations");
/// secrets, which clusters and listeners wait for while warming, and then anything else.
pub fn push_rank(type_url: &str) -> u8 {
    match type_url {
        CLUSTER => 0,
        ENDPOINT => 1,
        LISTENER => 2,
        ROUTE => 3,
        SECRET => 4,
        _ => 5,
    }
}

/// The name of a resource of one of the types above (EDS: `cluster_name`), decoding the `Any`.
pub fn resource_name(any: &Any) -> Result<String, String> {
    use envoy_types::pb::envoy::config;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    let bytes = any.value.as_slice();
    let name = match any.type_url.as_str() {
        LISTENER => config::listener::v3::Listener::decode(bytes).map(|m| m.name),
        ROUTE => config::route::v3::RouteConfiguration::decode(bytes).map(|m| m.name),
        CLUSTER => config::cluster::v3::Cluster::decode(bytes).map(|m| m.name),
        ENDPOINT => {
            config::endpoint::v3::ClusterLoadAssignment::decode(bytes).map(|m| m.cluster_name)
        }
        SECRET => Secret::decode(bytes).map(|m| m.name),
        other => return Err(format!("unknown resource type {other}")),
    };
    name.map_err(|e| format!("cannot decode {}: {e}", any.type_url))
}

#[cfg(test)]
mod tests {
    use prost::Name;

    use super::*;

    #[test]
    fn type_urls_are_the_protos_own() {
        use envoy_types::pb::envoy::config;
        assert_eq!(LISTENER, config::listener::v3::Listener::type_url());
        assert_eq!(ROUTE, config::route::v3::RouteConfiguration::type_url());
        assert_eq!(CLUSTER, config::cluster::v3::Cluster::type_url());
        assert_eq!(
            ENDPOINT,
            config::endpoint::v3::ClusterLoadAssignment::type_url()
        );
        assert_eq!(
            SECRET,
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::type_url()
        );
    }

    #[test]
    fn pushes_go_clusters_endpoints_listeners_routes() {
        let mut types = [ROUTE, SECRET, LISTENER, ENDPOINT, CLUSTER, "x"];
        types.sort_by_key(|t| push_rank(t));
        assert_eq!(types, [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, "x"]);
        assert!(is_wildcard_type(LISTENER) && is_wildcard_type(CLUSTER));
        assert!(
            !is_wildcard_type(ROUTE) && !is_wildcard_type(ENDPOINT) && !is_wildcard_type(SECRET)
        );
    }
}

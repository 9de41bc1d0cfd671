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

/// The first field of every type above: its name (EDS: `cluster_name`). Decoding a resource
/// as this message reads the name and skips the rest unparsed, so naming the resources of a
/// response costs a few bytes per resource, not a decode of each.
#[derive(Clone, PartialEq, prost::Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

/// The name of a resource of one of the types above (EDS: `cluster_name`).
pub fn resource_name(any: &Any) -> Result<String, String> {
    if ![LISTENER, ROUTE, CLUSTER, ENDPOINT, SECRET].contains(&any.type_url.as_str()) {
        return Err(format!("unknown resource type {}", any.type_url));
    }
    NameOnly::decode(any.value.as_slice())
        .map(|m| m.name)
        .map_err(|e| format!("cannot decode {}: {e}", any.type_url))
}

#[cfg(test)]
mod tests {
    use prost::Name;

    use super::*;

    proptest::proptest! {
        #[test]
        fn a_resource_is_named_as_a_full_decode_names_it(name in "\\PC{0,40}", port in 0u32..65536) {
            use envoy_types::pb::envoy::config;
            use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
            let address = Some(config::core::v3::Address {
                address: Some(config::core::v3::address::Address::SocketAddress(
                    config::core::v3::SocketAddress {
                        address: "198.18.0.1".into(),
                        port_specifier: Some(config::core::v3::socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    },
                )),
            });
            let any = |type_url: &str, value: Vec<u8>| Any { type_url: type_url.into(), value };
            let cases = [
                any(LISTENER, config::listener::v3::Listener { address: address.clone(), name: name.clone(), ..Default::default() }.encode_to_vec()),
                any(ROUTE, config::route::v3::RouteConfiguration { name: name.clone(), ..Default::default() }.encode_to_vec()),
                any(CLUSTER, config::cluster::v3::Cluster { name: name.clone(), alt_stat_name: "x".into(), ..Default::default() }.encode_to_vec()),
                any(ENDPOINT, config::endpoint::v3::ClusterLoadAssignment { cluster_name: name.clone(), ..Default::default() }.encode_to_vec()),
                any(SECRET, Secret { name: name.clone(), ..Default::default() }.encode_to_vec()),
            ];
            for case in &cases {
                proptest::prop_assert_eq!(resource_name(case), Ok(name.clone()));
            }
            proptest::prop_assert!(resource_name(&any("type.googleapis.com/x.Y", vec![])).is_err());
            proptest::prop_assert!(resource_name(&any(CLUSTER, vec![0x0a, 0x05, b'a'])).is_err(), "truncated");
        }
    }

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

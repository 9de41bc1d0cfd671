//! Citadel's mTLS data plane. Reserved in the workspace layout; it has no code yet — the proxy
//! issue builds it (xDS client of the discovery server, SDS client of the node agent, inbound
//! and outbound mTLS with SPIFFE authorization).
#![forbid(unsafe_code)]

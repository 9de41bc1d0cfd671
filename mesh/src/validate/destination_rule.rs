//! DestinationRule rules: host, subsets, and every part of a traffic policy.
use std::collections::BTreeSet;

use super::common::{
    Path, Report, dns_label, export_to, int_percent, optional_duration, port, selector_labels,
    wildcard_domain,
};
use crate::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, TrafficPolicy,
};

pub(super) fn validate(report: &mut Report, path: &Path, dr: &DestinationRule) {
    if dr.host.is_empty() {
        report.error(&path.field("host"), "required");
    } else {
        report.check(&path.field("host"), wildcard_domain(&dr.host));
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(report, &path.field("trafficPolicy"), tp);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let p = path.field("subsets").index(i);
        if subset.name.is_empty() {
            report.error(&p.field("name"), "subset name cannot be empty");
        } else if !dns_label(&subset.name) {
            report.error(
                &p.field("name"),
                format!("subset name {:?} is invalid (DNS-1123 label)", subset.name),
            );
        }
        if !names.insert(subset.name.as_str()) {
            report.error(
                &p.field("name"),
                format!("duplicate subset name {:?}", subset.name),
            );
        }
        super::common::labels(report, &p.field("labels"), &subset.labels);
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(report, &p.field("trafficPolicy"), tp);
        }
    }
    export_to(report, &path.field("exportTo"), &dr.export_to, false);
    if let Some(sel) = &dr.workload_selector {
        selector_labels(
            report,
            &path.field("workloadSelector").field("matchLabels"),
            &sel.match_labels,
        );
        if dr.export_to.len() > 1 || dr.export_to.iter().any(|e| e != ".") {
            report.error(&path.field("exportTo"), "a destination rule with a workload selector cannot be exported beyond its namespace");
        }
    }
}

fn traffic_policy(report: &mut Report, path: &Path, tp: &TrafficPolicy) {
    let empty = tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none();
    if empty {
        report.error(path, "traffic policy must have at least one field");
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        report.error(path, "tunnel and proxyProtocol must not be set together");
    }
    if let Some(t) = &tp.tunnel {
        let p = path.field("tunnel");
        if let Some(proto) = &t.protocol
            && proto != "CONNECT"
            && proto != "POST"
        {
            report.error(
                &p.field("protocol"),
                "tunnel protocol must be \"CONNECT\" or \"POST\"",
            );
        }
        if t.target_host.is_empty() {
            report.error(&p.field("targetHost"), "required");
        }
        report.check(&p.field("targetPort"), port(t.target_port));
    }
    if let Some(b) = &tp.retry_budget
        && let Some(pc) = b.percent
        && !(0.0..=100.0).contains(&pc)
    {
        report.error(
            &path.field("retryBudget").field("percent"),
            "must be 0..=100",
        );
    }
    policy_parts(
        report,
        path,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = path.field("portLevelSettings").index(i);
        match &pl.port {
            Some(sel) => {
                report.check(&p.field("port").field("number"), port(sel.number));
                if !ports.insert(sel.number) {
                    report.error(
                        &p.field("port"),
                        format!("port {} has more than one policy", sel.number),
                    );
                }
            }
            None => report.error(&p.field("port"), "portTrafficPolicy must have a valid port"),
        }
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            report.error(&p, "port traffic policy must have at least one field");
        }
        policy_parts(
            report,
            &p,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
}

fn policy_parts(
    report: &mut Report,
    path: &Path,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        load_balancer(report, &path.field("loadBalancer"), lb);
    }
    if let Some(pool) = pool {
        connection_pool(report, &path.field("connectionPool"), pool);
    }
    if let Some(o) = outlier {
        outlier_detection(report, &path.field("outlierDetection"), o);
    }
    if let Some(t) = tls {
        client_tls(report, &path.field("tls"), t);
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn load_balancer(report: &mut Report, path: &Path, lb: &LoadBalancerSettings) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        report.error(path, "set only one of simple and consistentHash");
    }
    if let Some(ch) = &lb.consistent_hash {
        let p = path.field("consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip.is_some(),
            ch.http_query_parameter_name.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if keys != 1 {
            report.error(&p, "set exactly one of httpHeaderName, httpCookie, useSourceIp and httpQueryParameterName");
        }
        if let Some(cookie) = &ch.http_cookie
            && cookie.name.is_empty()
        {
            report.error(
                &p.field("httpCookie").field("name"),
                "name required for httpCookie",
            );
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            report.error(&p, "set only one of ringHash and maglev");
        }
        if ch.minimum_ring_size.is_some() {
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                report.error(
                    &p.field("minimumRingSize"),
                    "only one of minimumRingSize or maglev/ringHash can be specified",
                );
            }
            report.warning(
                &p.field("minimumRingSize"),
                "deprecated: use ringHash.minimumRingSize",
            );
        }
        if let Some(m) = &ch.maglev {
            let q = p.field("maglev").field("tableSize");
            match m.table_size {
                None => report.error(&q, "tableSize must be set for maglev"),
                Some(t) if t >= 5_000_011 => {
                    report.error(&q, "tableSize must be less than 5000011 for maglev")
                }
                Some(t) if !is_prime(t) => {
                    report.error(&q, "tableSize must be a prime number for maglev")
                }
                Some(_) => {}
            }
        }
    }
    if let Some(loc) = &lb.locality_lb_setting {
        let p = path.field("localityLbSetting");
        if !loc.distribute.is_empty() && !loc.failover.is_empty() {
            report.error(
                &p,
                "can not simultaneously specify 'distribute' and 'failover'",
            );
        }
        for (i, d) in loc.distribute.iter().enumerate() {
            let q = p.field("distribute").index(i);
            let mut total = 0u64;
            for (to, w) in &d.to {
                if !(1..=100).contains(w) {
                    report.error(
                        &q.field("to").key(to),
                        "locality weight must be in range [1, 100]",
                    );
                }
                total += u64::from(*w);
            }
            if total != 100 {
                report.error(
                    &q.field("to"),
                    format!("total locality weight {total} != 100"),
                );
            }
        }
    }
    if let Some(w) = &lb.warmup {
        let p = path.field("warmup");
        match w.duration {
            Some(d) => report.check(&p.field("duration"), super::common::duration(d)),
            None => report.error(&p.field("duration"), "duration is required"),
        }
        if w.minimum_percent
            .is_some_and(|m| !(0.0..=100.0).contains(&m))
        {
            report.error(&p.field("minimumPercent"), "minimumPercent must be 0..=100");
        }
        if w.aggression.is_some_and(|a| a < 1.0) {
            report.error(
                &p.field("aggression"),
                "aggression should be greater than or equal to 1",
            );
        }
    }
}

fn non_negative(report: &mut Report, path: &Path, value: Option<i32>) {
    if value.is_some_and(|v| v < 0) {
        report.error(path, "must be non-negative");
    }
}

fn connection_pool(report: &mut Report, path: &Path, pool: &ConnectionPoolSettings) {
    if pool.tcp.is_none() && pool.http.is_none() {
        report.error(path, "connection pool must have at least one field");
    }
    if let Some(http) = &pool.http {
        let p = path.field("http");
        non_negative(
            report,
            &p.field("http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        );
        non_negative(
            report,
            &p.field("http2MaxRequests"),
            http.http2_max_requests,
        );
        non_negative(
            report,
            &p.field("maxRequestsPerConnection"),
            http.max_requests_per_connection,
        );
        non_negative(report, &p.field("maxRetries"), http.max_retries);
        non_negative(
            report,
            &p.field("maxConcurrentStreams"),
            http.max_concurrent_streams,
        );
        optional_duration(report, &p.field("idleTimeout"), http.idle_timeout);
        if http.use_client_protocol == Some(true)
            && http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
        {
            report.error(
                &p,
                "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE",
            );
        }
    }
    if let Some(tcp) = &pool.tcp {
        let p = path.field("tcp");
        non_negative(report, &p.field("maxConnections"), tcp.max_connections);
        optional_duration(report, &p.field("connectTimeout"), tcp.connect_timeout);
        optional_duration(
            report,
            &p.field("maxConnectionDuration"),
            tcp.max_connection_duration,
        );
        // 0 disables the idle timeout.
        if let Some(idle) = tcp.idle_timeout
            && !idle.as_duration().is_zero()
        {
            report.check(&p.field("idleTimeout"), super::common::duration(idle));
        }
        if let Some(k) = &tcp.tcp_keepalive {
            optional_duration(report, &p.field("tcpKeepalive").field("time"), k.time);
            optional_duration(
                report,
                &p.field("tcpKeepalive").field("interval"),
                k.interval,
            );
        }
    }
}

fn outlier_detection(report: &mut Report, path: &Path, o: &OutlierDetection) {
    optional_duration(report, &path.field("interval"), o.interval);
    optional_duration(
        report,
        &path.field("baseEjectionTime"),
        o.base_ejection_time,
    );
    if o.consecutive_errors.is_some() {
        report.warning(
            &path.field("consecutiveErrors"),
            "deprecated: use consecutiveGatewayErrors or consecutive5xxErrors",
        );
    }
    non_negative(
        report,
        &path.field("consecutiveErrors"),
        o.consecutive_errors,
    );
    if o.consecutive_local_origin_failures.is_some()
        && o.split_external_local_origin_errors != Some(true)
    {
        report.error(
            &path.field("consecutiveLocalOriginFailures"),
            "set, but splitExternalLocalOriginErrors is false",
        );
    }
    for (field, v) in [
        ("maxEjectionPercent", o.max_ejection_percent),
        ("minHealthPercent", o.min_health_percent),
    ] {
        if let Some(v) = v {
            report.check(&path.field(field), int_percent(i64::from(v)));
        }
    }
}

fn client_tls(report: &mut Report, path: &Path, t: &ClientTlsSettings) {
    let skip = t.insecure_skip_verify == Some(true);
    match t.mode {
        ClientTlsMode::Simple | ClientTlsMode::Mutual
            if t.credential_name.is_some()
                && (t.client_certificate.is_some()
                    || t.private_key.is_some()
                    || t.ca_certificates.is_some()
                    || t.ca_crl.is_some()) =>
        {
            report.error(path, "cannot specify client certificates or CA certificate or CA CRL if credentialName is set");
        }
        ClientTlsMode::Mutual if t.credential_name.is_none() => {
            if t.client_certificate.is_none() {
                report.error(
                    &path.field("clientCertificate"),
                    "client certificate required for mutual tls",
                );
            }
            if t.private_key.is_none() {
                report.error(
                    &path.field("privateKey"),
                    "private key required for mutual tls",
                );
            }
        }
        _ => {}
    }
    if skip && (t.ca_certificates.is_some() || !t.subject_alt_names.is_empty()) {
        report.error(
            path,
            "cannot specify caCertificates or subjectAltNames when insecureSkipVerify is true",
        );
    }
}

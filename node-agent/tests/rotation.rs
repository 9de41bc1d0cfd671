//! Rotation and backoff under paused tokio time, against a fake CA: rotation at half-life ±10 %,
//! the last valid SVID kept while the CA fails, withdrawal at expiry, recovery within the cap.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use node_agent::ca::Ca;
use node_agent::clock::TokioClock;
use node_agent::manager::{BackoffPolicy, Manager, ManagerConfig};
use node_agent::metrics::Metrics;
use node_agent::state::Entry;
use pki::identity::{SpiffeId, parse_spiffe_id, parse_trust_domain};
use pki::issue::SigningCaParams;
use pki::verify::SharedBundles;
use pki::{CertificateAuthority, Clock, Csr, KeyAlgorithm, PrivateKey, SvidParams, TrustBundle};
use rustls_pki_types::CertificateDer;

const TTL: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct FakeCa {
    ca: CertificateAuthority,
    clock: TokioClock,
    failing: AtomicBool,
    calls: AtomicUsize,
}

#[tonic::async_trait]
impl Ca for FakeCa {
    async fn mint_x509(&self, csr: Vec<u8>) -> Result<Vec<CertificateDer<'static>>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("citadel is down"));
        }
        let csr = Csr::parse(&csr).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let svid = self
            .ca
            .issue_svid(
                &csr,
                &SvidParams::ttl(TTL),
                self.clock.now(),
                &pki::SystemRandom,
            )
            .unwrap();
        Ok(svid.chain().to_vec())
    }

    async fn renew_node(
        &self,
        csr: Vec<u8>,
    ) -> Result<Vec<CertificateDer<'static>>, tonic::Status> {
        self.mint_x509(csr).await
    }

    async fn mint_jwt(
        &self,
        _: &SpiffeId,
        _: &[String],
    ) -> Result<(String, SystemTime), tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

fn setup() -> (Arc<Manager>, Arc<FakeCa>, TokioClock, Arc<Metrics>) {
    let clock = TokioClock::new(SystemTime::now());
    let td = parse_trust_domain("cluster.local").unwrap();
    let params = SigningCaParams {
        common_name: "fake".into(),
        organization: "test".into(),
        ttl: Duration::from_secs(86400),
        path_len: None,
    };
    let ca = CertificateAuthority::self_signed_root(
        td.clone(),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        &params,
        clock.now(),
        &pki::SystemRandom,
    )
    .unwrap();
    let mut bundle = TrustBundle::new(td);
    bundle.add_x509_authority(ca.certificate().clone()).unwrap();
    let fake = Arc::new(FakeCa {
        ca,
        clock: clock.clone(),
        failing: AtomicBool::new(false),
        calls: AtomicUsize::new(0),
    });
    let metrics = Arc::new(Metrics::new());
    let manager = Manager::new(
        fake.clone(),
        bundle.clone(),
        Arc::new(SharedBundles::new([bundle])),
        Arc::new(clock.clone()),
        Arc::new(pki::SystemRandom),
        ManagerConfig {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            backoff: BackoffPolicy {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(8),
            },
        },
        metrics.clone(),
    );
    (manager, fake, clock, metrics)
}

fn web() -> SpiffeId {
    parse_spiffe_id("spiffe://cluster.local/ns/default/sa/web").unwrap()
}

fn current_serial(m: &Manager) -> Option<String> {
    m.snapshot().svid(&web()).map(|s| s.serial().to_string())
}

/// Waits for the first SVID of `web`: a rotation moves only its slot, not the snapshot.
async fn first_svid(m: &Manager) {
    let slot = m
        .snapshot()
        .svids
        .get(&web())
        .cloned()
        .expect("a slot per entry");
    let mut rx = slot.subscribe();
    rx.wait_for(Option::is_some).await.unwrap();
}

/// Lets spawned tasks run; paused time advances only through sleeps.
async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn rotates_at_half_life_keeps_the_last_svid_and_recovers_within_the_cap() {
    let (manager, ca, clock, metrics) = setup();
    manager.set_entries(vec![Arc::new(Entry {
        id: "e1".into(),
        spiffe_id: web(),
        selectors: vec!["unix:uid:1".parse().unwrap()],
        ttl_seconds: 60,
    })]);
    first_svid(&manager).await;
    let first = current_serial(&manager).unwrap();
    let issued = clock.now();

    // Nothing before 27 s (half-life minus 10 %); a new SVID by 33 s (plus 10 %).
    advance(Duration::from_secs(26)).await;
    assert_eq!(current_serial(&manager).unwrap(), first);
    advance(Duration::from_secs(8)).await;
    let second = current_serial(&manager).unwrap();
    assert_ne!(second, first, "rotated between 27 s and 34 s");
    let second_not_after = manager.snapshot().svid(&web()).unwrap().not_after();
    assert!(second_not_after > issued + Duration::from_secs(80));

    // citadel fails: the current SVID keeps being served while valid, with retries backing off.
    ca.failing.store(true, Ordering::SeqCst);
    let calls_before = ca.calls.load(Ordering::SeqCst);
    advance(Duration::from_secs(34)).await;
    assert_eq!(
        current_serial(&manager).unwrap(),
        second,
        "still serving the last valid SVID"
    );
    let tries = ca.calls.load(Ordering::SeqCst) - calls_before;
    assert!(
        (1..=8).contains(&tries),
        "backed off exponentially: {tries} tries"
    );
    assert!(metrics.rotation_failures.get() >= 1);

    // Past expiry it is withdrawn rather than served expired.
    let until_expiry = second_not_after.duration_since(clock.now()).unwrap();
    advance(until_expiry + Duration::from_secs(9)).await;
    assert!(
        current_serial(&manager).is_none(),
        "an expired SVID is not served"
    );

    // citadel is back: a new SVID arrives within the backoff cap (8 s).
    ca.failing.store(false, Ordering::SeqCst);
    advance(Duration::from_secs(9)).await;
    let third = current_serial(&manager).expect("recovered within the cap");
    assert_ne!(third, second);
}

#[tokio::test(start_paused = true)]
async fn removing_an_entry_withdraws_its_svid_at_once() {
    let (manager, _ca, _clock, _metrics) = setup();
    let entry = Entry {
        id: "e1".into(),
        spiffe_id: web(),
        selectors: vec!["unix:uid:1".parse().unwrap()],
        ttl_seconds: 60,
    };
    manager.set_entries(vec![Arc::new(entry)]);
    first_svid(&manager).await;
    manager.set_entries(vec![]);
    assert!(current_serial(&manager).is_none());
    advance(Duration::from_secs(120)).await;
    assert!(
        current_serial(&manager).is_none(),
        "its rotation task is gone too"
    );
}

//! Discovery: static lists, a watched file that goes bad and good again, DNS
//! through a fake resolver (no network), a failing source that keeps the last
//! good set, and backends that drain while their permits live.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detour_core::Backend;
use detour_lb::discovery::{Resolve, SrvRecord};
use detour_lb::{
    refresh, run_discovery, BackendSpec, DiscoveryError, DiscoveryErrorKind, DnsDiscovery,
    DnsTarget, FileDiscovery, LoadBalancer, RoundRobin, ServiceDiscovery, StaticDiscovery,
};
use tokio::time::Instant;

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 2, 0, last], 80))
}

fn addrs<S: detour_lb::Selection>(lb: &LoadBalancer<S>) -> Vec<SocketAddr> {
    lb.backends().iter().map(|b| b.addr()).collect()
}

#[tokio::test]
async fn a_static_list_is_the_set() {
    let lb = LoadBalancer::new(RoundRobin);
    let source = StaticDiscovery::new([
        BackendSpec::new(addr(2)).with_weight(3),
        BackendSpec::new(addr(1))
            .with_priority(1)
            .with_locality("eu"),
    ]);
    let changes = refresh(&lb, &source).await.unwrap();
    assert_eq!(changes.added.len(), 2);
    assert_eq!(addrs(&lb), [addr(1), addr(2)]);
    let set = lb.backends();
    assert_eq!((set[0].priority(), set[0].locality()), (1, Some("eu")));
    assert_eq!(set[1].weight(), 3);
    // Asking again changes nothing.
    assert!(refresh(&lb, &source).await.unwrap().is_empty());
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        TempFile(std::env::temp_dir().join(format!("detour-lb-{}-{name}.toml", std::process::id())))
    }
    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn a_bad_file_keeps_the_old_set_until_it_is_fixed() {
    let file = TempFile::new("good-bad-good");
    let source = FileDiscovery::new(&file.0);
    let lb = LoadBalancer::new(RoundRobin);

    let missing = refresh(&lb, &source).await.unwrap_err();
    assert_eq!(missing.kind(), DiscoveryErrorKind::Io);

    file.write(
        r#"
        [[backends]]
        addr = "10.2.0.1:80"
        [[backends]]
        addr = "10.2.0.2:80"
        weight = 2
        "#,
    );
    refresh(&lb, &source).await.unwrap();
    assert_eq!(addrs(&lb), [addr(1), addr(2)]);
    let first = Arc::clone(&lb.backends()[0]);

    file.write("[[backends]]\naddr = \"10.2.0.3:80\"\nwieght = 1\n");
    let err = refresh(&lb, &source).await.unwrap_err();
    assert_eq!(err.kind(), DiscoveryErrorKind::Parse);
    assert!(
        err.to_string().contains("wieght"),
        "the reason names the field: {err}"
    );
    assert_eq!(addrs(&lb), [addr(1), addr(2)], "the old set stays");

    file.write("[[backends]]\naddr = \"10.2.0.1:80\"\n[[backends]]\naddr = \"10.2.0.1:80\"\n");
    let dup = refresh(&lb, &source).await.unwrap_err();
    assert!(dup.to_string().contains("listed twice"), "{dup}");
    assert_eq!(addrs(&lb), [addr(1), addr(2)]);

    file.write(
        "[[backends]]\naddr = \"10.2.0.1:80\"\n[[backends]]\naddr = \"10.2.0.3:80\"\nlocality = \"eu\"\n",
    );
    let changes = refresh(&lb, &source).await.unwrap();
    assert_eq!(addrs(&lb), [addr(1), addr(3)]);
    assert!(
        Arc::ptr_eq(&lb.backends()[0], &first),
        "a remaining backend keeps its state"
    );
    assert_eq!(changes.removed[0].addr(), addr(2));
    assert!(changes.removed[0].state().is_draining());
}

/// A source that answers from a script, then repeats its last answer.
struct Scripted(Mutex<VecDeque<Result<Vec<SocketAddr>, ()>>>);

impl ServiceDiscovery for Scripted {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        let mut script = self.0.lock().unwrap();
        let next = if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script.front().cloned().unwrap()
        };
        next.map(|a| a.into_iter().map(Backend::new).collect())
            .map_err(|()| DiscoveryError::new(DiscoveryErrorKind::Other, "registry unreachable"))
    }
}

#[tokio::test(start_paused = true)]
async fn the_discovery_task_keeps_the_last_good_set_and_stops_on_shutdown() {
    let lb = Arc::new(LoadBalancer::new(RoundRobin));
    let source = Scripted(Mutex::new(VecDeque::from([
        Ok(vec![addr(1), addr(2)]),
        Err(()),
        Ok(vec![addr(2), addr(3)]),
    ])));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_discovery(
        Arc::clone(&lb),
        source,
        Duration::from_secs(10),
        async move {
            let _ = stopped.await;
        },
    ));
    // The first round runs at once.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(addrs(&lb), [addr(1), addr(2)]);
    let one = Arc::clone(&lb.backends()[0]);

    // Second round fails: the set stays.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(addrs(&lb), [addr(1), addr(2)]);
    assert!(!one.state().is_draining());

    // Third round: 1 leaves and drains, 3 joins.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(addrs(&lb), [addr(2), addr(3)]);
    assert!(one.state().is_draining());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the task stops on shutdown")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_discovery_task_ends_when_the_load_balancer_is_dropped() {
    let lb = Arc::new(LoadBalancer::new(RoundRobin));
    let source = Scripted(Mutex::new(VecDeque::from([Ok(vec![addr(1)])])));
    let task = tokio::spawn(run_discovery(
        Arc::clone(&lb),
        source,
        Duration::from_secs(1),
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(lb);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends with its load balancer")
        .unwrap();
}

#[tokio::test]
async fn a_removed_backend_drains_while_its_permit_lives() {
    let lb = LoadBalancer::new(RoundRobin);
    lb.update([Backend::new(addr(1)), Backend::new(addr(2))]);
    let now = Instant::now();
    let permit = lb
        .select_with(0, |b| b.addr() == addr(1))
        .unwrap()
        .try_admit(now)
        .unwrap();
    lb.update([Backend::new(addr(2))]);

    let gone = permit.backend();
    assert!(gone.state().is_draining());
    assert_eq!(gone.state().in_flight(), 1, "the attempt carries on");
    assert!(gone.try_admit(now).is_none(), "no new request");
    for _ in 0..20 {
        assert_eq!(lb.select(0, &[], now).unwrap().backend().addr(), addr(2));
    }
    let gone = Arc::clone(gone);
    drop(permit);
    assert_eq!(gone.state().in_flight(), 0);
}

/// A resolver answering from tables; a name missing from them fails.
#[derive(Default)]
struct FakeResolver {
    ips: Mutex<HashMap<String, Vec<IpAddr>>>,
    srv: Mutex<HashMap<String, Vec<SrvRecord>>>,
}

impl FakeResolver {
    fn set_ips(&self, host: &str, ips: &[&str]) {
        let ips = ips.iter().map(|s| s.parse().unwrap()).collect();
        self.ips.lock().unwrap().insert(host.into(), ips);
    }
    fn fail(&self, host: &str) {
        self.ips.lock().unwrap().remove(host);
    }
}

impl Resolve for FakeResolver {
    async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        self.ips.lock().unwrap().get(host).cloned().ok_or_else(|| {
            DiscoveryError::new(DiscoveryErrorKind::Resolve, format!("A/AAAA {host}"))
        })
    }
    async fn lookup_srv(&self, name: &str) -> Result<Vec<SrvRecord>, DiscoveryError> {
        self.srv
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| DiscoveryError::new(DiscoveryErrorKind::Resolve, format!("SRV {name}")))
    }
}

#[tokio::test]
async fn dns_hosts_and_srv_records_become_backends() {
    let dns = Arc::new(FakeResolver::default());
    dns.set_ips("api.internal", &["10.3.0.1", "fd00::1"]);
    dns.set_ips("a.internal", &["10.3.1.1"]);
    dns.set_ips("b.internal", &["10.3.1.2"]);
    dns.srv.lock().unwrap().insert(
        "_http._tcp.api.internal".into(),
        vec![
            SrvRecord::new(0, 5, 8080, "a.internal"),
            SrvRecord::new(1, 0, 8081, "b.internal"),
        ],
    );
    let source = DnsDiscovery::new(
        Arc::clone(&dns),
        [
            "api.internal:443"
                .parse::<DnsTarget>()
                .unwrap()
                .with_locality("eu"),
            "srv:_http._tcp.api.internal".parse().unwrap(),
        ],
    );
    let lb = LoadBalancer::new(RoundRobin);
    refresh(&lb, &source).await.unwrap();
    let set = lb.backends();
    let find = |a: &str| set.iter().find(|b| b.addr() == a.parse().unwrap()).unwrap();
    assert_eq!(set.len(), 4);
    assert_eq!(find("10.3.0.1:443").locality(), Some("eu"));
    assert_eq!(find("[fd00::1]:443").weight(), 1);
    assert_eq!(
        (
            find("10.3.1.1:8080").weight(),
            find("10.3.1.1:8080").priority()
        ),
        (5, 0)
    );
    assert_eq!(
        (
            find("10.3.1.2:8081").weight(),
            find("10.3.1.2:8081").priority()
        ),
        (1, 1),
        "SRV weight 0 is read as 1, not drained"
    );
}

#[tokio::test]
async fn a_failing_dns_name_keeps_its_last_good_answer() {
    let dns = Arc::new(FakeResolver::default());
    dns.set_ips("one.internal", &["10.4.0.1"]);
    dns.set_ips("two.internal", &["10.4.0.2", "10.4.0.3"]);
    let source = DnsDiscovery::new(
        Arc::clone(&dns),
        [
            DnsTarget::host("one.internal", 80),
            DnsTarget::host("two.internal", 80),
        ],
    );
    let lb = LoadBalancer::new(RoundRobin);
    refresh(&lb, &source).await.unwrap();
    assert_eq!(lb.backends().len(), 3);

    // two.internal fails: its answer is kept; one.internal's change applies.
    dns.fail("two.internal");
    dns.set_ips("one.internal", &["10.4.0.9"]);
    refresh(&lb, &source).await.unwrap();
    let now: Vec<String> = lb.backends().iter().map(|b| b.addr().to_string()).collect();
    assert_eq!(now, ["10.4.0.2:80", "10.4.0.3:80", "10.4.0.9:80"]);

    // An empty answer is a failure too, not "no backends".
    dns.set_ips("one.internal", &[]);
    refresh(&lb, &source).await.unwrap();
    assert_eq!(lb.backends().len(), 3);

    // Everything fails: the round fails and the set stays as it was.
    let fresh = DnsDiscovery::new(Arc::clone(&dns), [DnsTarget::host("nowhere.internal", 80)]);
    let err = refresh(&lb, &fresh).await.unwrap_err();
    assert_eq!(err.kind(), DiscoveryErrorKind::Resolve);
    assert_eq!(lb.backends().len(), 3);
}

#[tokio::test]
async fn the_system_resolver_answers_ip_literals_itself() {
    // No query leaves the machine for an IP literal.
    let source = DnsDiscovery::system([
        DnsTarget::host("127.0.0.1", 8080),
        "[::1]:8081".parse().unwrap(),
    ])
    .unwrap();
    let found: Vec<SocketAddr> = source
        .discover()
        .await
        .unwrap()
        .iter()
        .map(Backend::addr)
        .collect();
    assert_eq!(
        found,
        [
            "127.0.0.1:8080".parse().unwrap(),
            "[::1]:8081".parse().unwrap()
        ]
    );
}

#[test]
fn dns_targets_parse() {
    assert_eq!(
        "srv:_x._tcp.a".parse::<DnsTarget>().unwrap(),
        DnsTarget::srv("_x._tcp.a")
    );
    assert_eq!(
        "a.b:80".parse::<DnsTarget>().unwrap(),
        DnsTarget::host("a.b", 80)
    );
    for bad in ["a.b", "a.b:http", ":80", "srv:"] {
        assert_eq!(bad.parse::<DnsTarget>().unwrap_err().field, "dns", "{bad}");
    }
}

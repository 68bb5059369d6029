//! A fleet of three `detour` processes fed by one etcd prefix (a real etcd,
//! Debian's `etcd-server`, started on loopback ports):
//!
//! - a backend added or removed reaches all three (measured, printed; bound
//!   3 s, the target is 1 s);
//! - etcd killed under load: no client error, every set unchanged (through
//!   a reload too), the source `failing` in `/status`; etcd back: all three
//!   converge;
//! - the configuration from one key: a new document reloads all three, a
//!   bad one is refused by all three, which serve on; etcd gone, a new
//!   instance starts from its cached last good document;
//! - a wiped prefix keeps the last set and says `degraded`;
//! - with the same backends, consistent hashing sends each key to the same
//!   backend on every instance.
//!
//! The tests run one at a time (a lock): each starts four processes.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use detour_testkit::etcd::Etcd;
use detour_testkit::{Behavior, Upstream};
use etcd_client::Client;
use tokio::time::Instant;

use support::Detour;

/// One multi-process test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PREFIX: &str = "/detour/app/";

/// A configuration: loopback listeners, the admin API on, one upstream
/// `app` (`upstream`: its table's body) routed to.
fn with_upstream(upstream: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1
grace_period = "1s"
[admin]
listen = "127.0.0.1:0"
[log]
access_log = false
[[routes]]
upstream = "app"
[upstreams.app]
{upstream}
"#
    )
}

/// Backends from `etcd`'s prefix (`upstream_extra`: more of the table).
fn config(etcd: &Etcd, upstream_extra: &str) -> String {
    let endpoint = etcd.endpoint();
    with_upstream(&format!(
        "{upstream_extra}\n[upstreams.app.discovery]\ninterval = \"30s\"\n\
         etcd = {{ endpoints = [\"{endpoint}\"], prefix = \"{PREFIX}\", timeout = \"1s\", \
         progress_interval = \"500ms\" }}"
    ))
}

/// Three backends, each naming itself in `x-backend`.
async fn backends() -> Vec<Upstream> {
    let mut v = Vec::new();
    for i in 0..3 {
        let b = Behavior::ok().with_header("x-backend", format!("b{i}"));
        v.push(Upstream::start(b).await.unwrap());
    }
    v
}

fn key(b: &Upstream) -> String {
    format!("{PREFIX}{}", b.addr())
}

fn value(b: &Upstream) -> String {
    format!(r#"{{"addr": "{}"}}"#, b.addr())
}

/// What every test starts with: its turn, an etcd, a client of it and three
/// backends.
struct Rig {
    _one: tokio::sync::MutexGuard<'static, ()>,
    etcd: Etcd,
    client: Client,
    b: Vec<Upstream>,
}

async fn rig() -> Rig {
    let one = ONE_AT_A_TIME.lock().await;
    let etcd = Etcd::start().await;
    let client = Client::connect([etcd.endpoint()], None).await.unwrap();
    Rig {
        _one: one,
        etcd,
        client,
        b: backends().await,
    }
}

/// Three `detour` processes on `text`.
fn fleet(text: &str, name: &str) -> (Vec<Detour>, std::path::PathBuf) {
    let dir = support::temp_dir(name);
    let file = dir.join("detour.toml");
    std::fs::write(&file, text).unwrap();
    let procs = (0..3).map(|_| support::start(&file)).collect();
    (procs, dir)
}

/// The `/status` document of `d`.
async fn status(d: &Detour) -> serde_json::Value {
    let r = support::admin(d.admin.unwrap(), "GET", "/status", &[]).await;
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

async fn members(d: &Detour) -> Vec<SocketAddr> {
    let s = status(d).await;
    let mut v: Vec<SocketAddr> = s["upstreams"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_str().unwrap().parse().unwrap())
        .collect();
    v.sort();
    v
}

/// How long until every process's set is `want` (at most 3 s).
async fn until_all(fleet: &[Detour], want: &[&Upstream]) -> Duration {
    until_all_within(fleet, want, Duration::from_secs(3)).await
}

/// [`until_all`], at most `bound`.
async fn until_all_within(fleet: &[Detour], want: &[&Upstream], bound: Duration) -> Duration {
    let mut want: Vec<SocketAddr> = want.iter().map(|b| b.addr()).collect();
    want.sort();
    let start = Instant::now();
    for d in fleet {
        loop {
            if members(d).await == want {
                break;
            }
            assert!(
                start.elapsed() < bound,
                "instance {} still has {:?}, want {want:?}",
                d.pid,
                members(d).await
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    start.elapsed()
}

async fn source_state(d: &Detour) -> String {
    let s = status(d).await;
    s["upstreams"]["app"]["discovery"][0]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_etcd_reaches_every_instance() {
    let Rig {
        _one,
        etcd,
        mut client,
        b,
    } = rig().await;
    client.put(key(&b[0]), value(&b[0]), None).await.unwrap();
    let (fleet, _dir) = fleet(&config(&etcd, ""), "fleet-propagation");
    until_all(&fleet, &[&b[0]]).await;

    let mut added = Vec::new();
    let mut removed = Vec::new();
    for _ in 0..5 {
        client.put(key(&b[1]), value(&b[1]), None).await.unwrap();
        added.push(until_all(&fleet, &[&b[0], &b[1]]).await);
        client.delete(key(&b[1]), None).await.unwrap();
        removed.push(until_all(&fleet, &[&b[0]]).await);
    }
    let worst = added.iter().chain(&removed).max().unwrap();
    println!(
        "etcd → 3 instances: added in {added:?}, removed in {removed:?} (worst {worst:?}; \
         measured through each /status in turn)"
    );

    // The source in /status: ok, its revision and age.
    let s = status(&fleet[0]).await;
    let source = &s["upstreams"]["app"]["discovery"][0];
    assert_eq!(source["state"], "ok", "{source}");
    assert!(source["revision"].as_i64().unwrap() > 1, "{source}");
    assert!(
        source["source"].as_str().unwrap().starts_with("etcd "),
        "{source}"
    );
    assert!(source["age_s"].as_f64().unwrap() < 5.0, "{source}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_under_load_changes_nothing_and_etcd_back_converges() {
    let Rig {
        _one,
        mut etcd,
        mut client,
        b,
    } = rig().await;
    client.put(key(&b[0]), value(&b[0]), None).await.unwrap();
    client.put(key(&b[1]), value(&b[1]), None).await.unwrap();
    let (fleet, _dir) = fleet(&config(&etcd, ""), "fleet-etcd-down");
    until_all(&fleet, &[&b[0], &b[1]]).await;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(support::keep_sending(
        fleet.iter().map(|d| d.addr).collect(),
        stop,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.kill();
    let down_at = Instant::now();
    for d in &fleet {
        while source_state(d).await != "failing" {
            assert!(
                down_at.elapsed() < Duration::from_secs(5),
                "{}",
                status(d).await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let noticed = down_at.elapsed();
    // Down for 2 s under load: every set stays as it was, through a reload
    // too (its new upstream starts from what the old one learnt).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = support::admin(fleet[0].admin.unwrap(), "POST", "/reload", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for d in &fleet {
        assert_eq!(members(d).await.len(), 2, "{}", status(d).await);
    }
    assert_eq!(status(&fleet[0]).await["config_generation"], 2);
    stop_tx.send_replace(true);
    let (ok, failed) = traffic.await.unwrap();
    println!("etcd down {:?} under load: {ok} requests answered 200, {failed} failed; all three instances said failing within {noticed:?}", down_at.elapsed());
    assert_eq!(failed, 0);
    assert!(ok > 100, "{ok}");

    etcd.restart().await;
    let back_at = Instant::now();
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.delete(key(&b[0]), None).await.unwrap();
    client.put(key(&b[2]), value(&b[2]), None).await.unwrap();
    // The watchers retry with a backoff that reaches 5 s: converged within it.
    let converged = until_all_within(&fleet, &[&b[1], &b[2]], Duration::from_secs(7)).await;
    for d in &fleet {
        assert_eq!(source_state(d).await, "ok");
    }
    println!(
        "etcd back: all three converged {converged:?} after the writes ({:?} after the restart)",
        back_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_prefix_keeps_the_last_set() {
    let Rig {
        _one,
        etcd,
        mut client,
        b,
    } = rig().await;
    client.put(key(&b[0]), value(&b[0]), None).await.unwrap();
    let dir = support::temp_dir("fleet-wiped");
    let file = dir.join("detour.toml");
    std::fs::write(&file, config(&etcd, "")).unwrap();
    let d = support::start(&file);
    until_all(std::slice::from_ref(&d), &[&b[0]]).await;

    client
        .delete(
            PREFIX,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let start = Instant::now();
    while source_state(&d).await != "degraded" {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{}",
            status(&d).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(members(&d).await, [b[0].addr()]);
    let r = support::send(d.addr, "GET", "/", &["host: app".into()]).await;
    assert_eq!(r.status, 200);
    let s = status(&d).await;
    let error = s["upstreams"]["app"]["discovery"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("empty"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_agrees_across_instances() {
    let Rig {
        _one,
        etcd,
        mut client,
        b,
    } = rig().await;
    // Written in a different order than the addresses sort.
    for x in b.iter().rev() {
        client.put(key(x), value(x), None).await.unwrap();
    }
    let extra = "lb = \"consistent_hash\"\nhash_key = \"header:x-user\"";
    let (fleet, _dir) = fleet(&config(&etcd, extra), "fleet-hash");
    until_all(&fleet, &[&b[0], &b[1], &b[2]]).await;

    let mut spread = std::collections::BTreeMap::new();
    for user in 0..60 {
        let mut answers = Vec::new();
        for d in &fleet {
            let h = [String::from("host: app"), format!("x-user: u{user}")];
            let r = support::send(d.addr, "GET", "/", &h).await;
            assert_eq!(r.status, 200);
            answers.push(r.header("x-backend").unwrap().to_string());
        }
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "user u{user}: {answers:?}"
        );
        *spread.entry(answers[0].clone()).or_insert(0) += 1;
    }
    println!("60 keys, the same backend on all three instances for each; spread {spread:?}");
    assert_eq!(spread.len(), 3, "every backend takes some keys: {spread:?}");
}

/// The whole configuration in one key, serving `b` with the admin API on.
fn document(b: &Upstream) -> String {
    with_upstream(&format!("backends = [{{ addr = \"{}\" }}]", b.addr()))
}

async fn config_state(d: &Detour) -> (String, u64) {
    let s = status(d).await;
    let state = s["config_source"]["state"]
        .as_str()
        .unwrap_or("none")
        .to_string();
    (state, s["config_generation"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_configuration_comes_from_one_key() {
    let Rig {
        _one,
        mut etcd,
        mut client,
        b,
    } = rig().await;
    const KEY: &str = "/detour/config";
    client.put(KEY, document(&b[0]), None).await.unwrap();
    let dir = support::temp_dir("fleet-config");
    let url = format!("etcd://{}{KEY}", etcd.addr());
    let cache = |i: usize| dir.join(format!("cache-{i}.toml"));
    let start = |i: usize| {
        let cache = cache(i);
        support::start_args(
            std::path::Path::new(&url),
            &["--config-cache", cache.to_str().unwrap()],
        )
    };
    let fleet: Vec<Detour> = (0..3).map(start).collect();
    until_all(&fleet, &[&b[0]]).await;
    for d in &fleet {
        assert_eq!(config_state(d).await, ("ok".to_string(), 1));
    }

    // One write reconfigures the fleet.
    let written = Instant::now();
    client.put(KEY, document(&b[1]), None).await.unwrap();
    let took = until_all(&fleet, &[&b[1]]).await;
    for d in &fleet {
        let r = support::send(d.addr, "GET", "/", &["host: app".into()]).await;
        assert_eq!(r.header("x-backend"), Some("b1"));
        assert_eq!(config_state(d).await, ("ok".to_string(), 2));
    }
    println!(
        "a new document in etcd: all three instances reloaded within {took:?} ({:?} after the write)",
        written.elapsed()
    );

    // A bad document: every instance refuses it, says so, and serves on.
    client
        .put(KEY, "[upstreams.app]\nlb = \"fastest\"\n", None)
        .await
        .unwrap();
    let refused_at = Instant::now();
    for d in &fleet {
        while config_state(d).await.0 != "refused" {
            assert!(
                refused_at.elapsed() < Duration::from_secs(3),
                "{}",
                status(d).await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = status(d).await;
        let error = s["config_source"]["error"].as_str().unwrap();
        assert!(error.contains("upstreams.app.lb"), "{error}");
        assert_eq!(s["config_generation"], 2);
        let r = support::send(d.addr, "GET", "/", &["host: app".into()]).await;
        assert_eq!(r.header("x-backend"), Some("b1"));
    }
    println!(
        "a bad document: all three refused it within {:?} and serve on",
        refused_at.elapsed()
    );

    // etcd gone: a new instance starts from its cache (the last good
    // document, not the bad one) and says so.
    etcd.kill();
    std::fs::copy(cache(0), cache(3)).unwrap();
    let late = start(3);
    let r = support::send(late.addr, "GET", "/", &["host: app".into()]).await;
    assert_eq!(r.header("x-backend"), Some("b1"));
    let s = status(&late).await;
    assert_eq!(s["config_source"]["state"], "cached", "{s}");
    let why = s["config_source"]["error"].as_str().unwrap();
    assert!(
        why.contains("etcd unreachable") && why.contains("cache-3.toml"),
        "{why}"
    );
    // The running ones notice etcd is gone, and serve on.
    for d in &fleet {
        let deadline = Instant::now() + Duration::from_secs(5);
        while config_state(d).await.0 != "failing" {
            assert!(Instant::now() < deadline, "{}", status(d).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // etcd back, still holding the bad document: every instance, the one
    // from the cache too, says it refuses it; a good one is applied.
    etcd.restart().await;
    let all: Vec<&Detour> = fleet.iter().chain(std::iter::once(&late)).collect();
    for d in &all {
        let deadline = Instant::now() + Duration::from_secs(8);
        while config_state(d).await.0 != "refused" {
            assert!(Instant::now() < deadline, "{}", status(d).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.put(KEY, document(&b[2]), None).await.unwrap();
    let all: Vec<Detour> = fleet.into_iter().chain(std::iter::once(late)).collect();
    until_all(&all, &[&b[2]]).await;
    for d in &all {
        assert_eq!(config_state(d).await.0, "ok", "{}", status(d).await);
    }
}

//! A fleet of three `detour` processes fed by one etcd prefix (a real etcd,
//! Debian's `etcd-server`, started on loopback ports):
//!
//! - a backend added or removed reaches all three (measured, printed; bound
//!   3 s, the target is 1 s);
//! - etcd killed under load: no client error, every set unchanged, the
//!   source `failing` in `/status`; etcd back: all three converge;
//! - a wiped prefix keeps the last set and says `degraded`;
//! - with the same backends, consistent hashing sends each key to the same
//!   backend on every instance.
//!
//! The tests run one at a time (a lock): each starts four processes.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use detour_testkit::client::RawConnection;
use detour_testkit::etcd::Etcd;
use detour_testkit::{Behavior, Upstream};
use etcd_client::Client;
use tokio::time::Instant;

use support::Detour;

/// One multi-process test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PREFIX: &str = "/detour/app/";

fn config(etcd: &Etcd, upstream_extra: &str) -> String {
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
[upstreams.app]
{upstream_extra}
[upstreams.app.discovery]
interval = "30s"
etcd = {{ endpoints = ["{}"], prefix = "{PREFIX}", timeout = "1s", progress_interval = "500ms" }}
[[routes]]
upstream = "app"
"#,
        etcd.endpoint()
    )
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
    let mut want: Vec<SocketAddr> = want.iter().map(|b| b.addr()).collect();
    want.sort();
    let start = Instant::now();
    for d in fleet {
        loop {
            if members(d).await == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
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

/// Send GETs through every instance until `stop`; the failures.
async fn load(addrs: Vec<SocketAddr>, stop: tokio::sync::watch::Receiver<bool>) -> (u64, u64) {
    let mut tasks = Vec::new();
    for addr in addrs {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut conn = RawConnection::connect(addr).await.unwrap();
            while !*stop.borrow() {
                let sent = conn.send(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n").await;
                let answer = match sent {
                    Ok(()) => conn.read_response().await.ok(),
                    Err(_) => None,
                };
                match answer {
                    Some(r) if r.status == 200 => ok += 1,
                    _ => {
                        failed += 1;
                        conn = RawConnection::connect(addr).await.unwrap();
                    }
                }
            }
            (ok, failed)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        let (ok, failed) = t.await.unwrap();
        total = (total.0 + ok, total.1 + failed);
    }
    total
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
    let traffic = tokio::spawn(load(fleet.iter().map(|d| d.addr).collect(), stop));
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
    // Down for 2 s under load: every set stays as it was.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for d in &fleet {
        assert_eq!(members(d).await.len(), 2, "{}", status(d).await);
    }
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
    let converged = until_all(&fleet, &[&b[1], &b[2]]).await;
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

//! Reloading the `detour` binary as a process: `POST /reload` answers with
//! the outcome, `GET /config` shows what runs, changes that need a restart
//! are named, and a reload (admin API or SIGHUP) keeps what the proxy learnt
//! about its backends: open breakers, ejections, drain marks.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use detour_testkit::client::{RawConnection, RawResponse};
use detour_testkit::{Behavior, Upstream};
use serde_json::Value;

const TOKEN: &str = "authorization: Bearer t0ken-s3cret";

fn header(extra_server: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
grace_period = "1s"
{extra_server}
[admin]
listen = "127.0.0.1:0"
token = "t0ken-s3cret"
[log]
access_log = false
"#
    )
}

fn one_upstream(backend: SocketAddr, extra_server: &str) -> String {
    format!(
        "{}\n[upstreams.app]\nbackends = [{{ addr = \"{backend}\" }}]\n[[routes]]\nupstream = \"app\"\n",
        header(extra_server)
    )
}

async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    let mut c = RawConnection::connect(addr).await.unwrap();
    let raw = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    c.send(raw.as_bytes()).await.unwrap();
    c.read_response().await.unwrap()
}

async fn answered_by(addr: SocketAddr) -> String {
    let r = get(addr, "/").await;
    assert_eq!(r.status, 200);
    r.header("x-upstream").unwrap().to_string()
}

fn json(r: &RawResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn text(r: &RawResponse) -> String {
    String::from_utf8(r.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_answers_with_the_outcome_and_get_config_shows_what_runs() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = support::temp_dir("post-reload");
    let file = dir.join("detour.toml");
    std::fs::write(&file, one_upstream(a.addr(), "")).unwrap();
    let d = support::start(&file);
    let admin = d.admin.unwrap();

    // /config wants the token like every admin endpoint, and shows no secret.
    assert_eq!(
        support::admin(admin, "GET", "/config", &[]).await.status,
        401
    );
    let shown = support::admin(admin, "GET", "/config", &[TOKEN]).await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.header("content-type"), Some("application/toml"));
    let body = text(&shown);
    assert!(body.contains("(generation 1)"), "{body}");
    assert!(body.contains(&a.addr().to_string()), "{body}");
    assert!(
        body.contains("max_retries = 3"),
        "defaults written out: {body}"
    );
    assert!(!body.contains("t0ken-s3cret"), "{body}");
    assert_eq!(
        support::admin(admin, "POST", "/reload", &[]).await.status,
        401
    );

    // A bad file is refused, naming the field; the old one keeps serving.
    let broken = one_upstream(a.addr(), "").replace("upstream = \"app\"", "upstream = \"gone\"");
    std::fs::write(&file, broken).unwrap();
    let refused = support::admin(admin, "POST", "/reload", &[TOKEN]).await;
    assert_eq!(refused.status, 422);
    let report = json(&refused);
    assert_eq!(report["outcome"], "refused");
    assert_eq!(report["generation"], 1);
    assert_eq!(report["error"]["field"], "routes[0].upstream");
    assert_eq!(answered_by(d.addr).await, a.addr().to_string());

    // A good one applies at once, and names what needs a restart.
    let next = one_upstream(b.addr(), "threads = 2").replace(
        "[log]\naccess_log = false",
        "[log]\naccess_log = false\nlevel = \"debug\"",
    );
    std::fs::write(&file, next).unwrap();
    let applied = support::admin(admin, "POST", "/reload", &[TOKEN]).await;
    assert_eq!(applied.status, 200, "{}", text(&applied));
    let report = json(&applied);
    assert_eq!(report["outcome"], "applied");
    assert_eq!(report["generation"], 2);
    assert_eq!(
        report["not_applied_live"],
        serde_json::json!(["log.level", "server.threads"])
    );
    assert_eq!(answered_by(d.addr).await, b.addr().to_string());
    let lines: Vec<String> = d.lines.try_iter().collect();
    let said = lines
        .iter()
        .filter(|l| l.contains("need a restart") && l.contains("log.level, server.threads"))
        .count();
    assert_eq!(said, 1, "one line names them: {lines:#?}");

    // /config shows what runs: the new backends, the old thread count.
    let body = text(&support::admin(admin, "GET", "/config", &[TOKEN]).await);
    assert!(body.contains("(generation 2)"), "{body}");
    assert!(body.contains(&b.addr().to_string()), "{body}");
    assert!(body.contains("threads = 1"), "{body}");
    assert!(body.contains("level = \"info\""), "{body}");

    stop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

fn stop(mut d: support::Detour) {
    d.child.kill().unwrap();
    let _ = d.child.wait();
}

/// Two upstreams on two routes: `/brk` has a breaker that opens after two
/// 503s (outlier detection off), `/ej` ejects after two 503s (breakers off).
/// Panic mode is off, so a removed backend stays removed.
fn learning(brk: [SocketAddr; 2], ej: [SocketAddr; 3]) -> String {
    let list = |addrs: &[SocketAddr]| {
        let v: Vec<String> = addrs
            .iter()
            .map(|a| format!("{{ addr = \"{a}\" }}"))
            .collect();
        v.join(", ")
    };
    format!(
        r#"{}
[upstreams.brk]
backends = [{}]
panic_threshold = 0
breaker = {{ consecutive_failures = 2, open_for = "10m", max_open_for = "10m" }}
outlier = {{ consecutive_5xx = 0, consecutive_gateway_failure = 0, consecutive_local_origin_failure = 0 }}
[upstreams.ej]
backends = [{}]
panic_threshold = 0
breaker = {{ enabled = false }}
outlier = {{ consecutive_5xx = 2, base_ejection = "5m" }}
[[routes]]
path_prefix = "/brk"
upstream = "brk"
[[routes]]
path_prefix = "/ej"
upstream = "ej"
"#,
        header(""),
        list(&brk),
        list(&ej)
    )
}

/// Each backend's (health, breaker) in `/status`, by address.
async fn status(admin: SocketAddr) -> Vec<(String, String, String)> {
    let doc = json(&support::admin(admin, "GET", "/status", &[TOKEN]).await);
    let mut all = Vec::new();
    for (_, up) in doc["upstreams"].as_object().unwrap() {
        for b in up["backends"].as_array().unwrap() {
            let s = |k: &str| b[k].as_str().unwrap().to_string();
            all.push((s("addr"), s("health"), s("breaker")));
        }
    }
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_open_breakers_ejections_and_drain_marks() {
    let failing_b = Upstream::start(Behavior::status(503)).await.unwrap();
    let healthy_b = Upstream::start(Behavior::ok()).await.unwrap();
    let failing_e = Upstream::start(Behavior::status(503)).await.unwrap();
    let healthy_e = Upstream::start(Behavior::ok()).await.unwrap();
    let drained = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = support::temp_dir("keeps");
    let file = dir.join("detour.toml");
    let text = learning(
        [failing_b.addr(), healthy_b.addr()],
        [failing_e.addr(), healthy_e.addr(), drained.addr()],
    );
    std::fs::write(&file, &text).unwrap();
    let d = support::start(&file);
    let admin = d.admin.unwrap();

    // Teach it: the failing backends fail until removed (each 503 is
    // retried on a healthy one), and an operator drains one.
    for path in ["/brk", "/ej"] {
        for _ in 0..6 {
            assert_eq!(get(d.addr, path).await.status, 200);
        }
    }
    let drain = format!("/upstreams/ej/backends/{}/drain", drained.addr());
    assert_eq!(
        support::admin(admin, "POST", &drain, &[TOKEN]).await.status,
        200
    );
    let learnt = status(admin).await;
    let of = |all: &[(String, String, String)], a: SocketAddr| {
        let found = all
            .iter()
            .find(|(addr, ..)| *addr == a.to_string())
            .unwrap();
        (found.1.clone(), found.2.clone())
    };
    assert_eq!(of(&learnt, failing_b.addr()).1, "open");
    assert_eq!(of(&learnt, failing_e.addr()).0, "ejected");
    assert_eq!(of(&learnt, drained.addr()).0, "draining");

    // Reload both ways; each time everything learnt is still in force.
    for how in ["admin", "SIGHUP"] {
        let generation = json(&support::admin(admin, "GET", "/status", &[TOKEN]).await)
            ["config_generation"]
            .as_u64()
            .unwrap();
        match how {
            "admin" => {
                let r = support::admin(admin, "POST", "/reload", &[TOKEN]).await;
                assert_eq!(json(&r)["outcome"], "applied", "{}", self::text(&r));
            }
            _ => support::signal(d.pid, "-HUP"),
        }
        let mut reloaded = false;
        for _ in 0..100 {
            let doc = json(&support::admin(admin, "GET", "/status", &[TOKEN]).await);
            if doc["config_generation"].as_u64() == Some(generation + 1) {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(reloaded, "{how}: no new generation");
        assert_eq!(
            status(admin).await,
            learnt,
            "{how}: what was learnt is kept"
        );
        let seen = (
            failing_b.requests(),
            failing_e.requests(),
            drained.requests(),
        );
        for path in ["/brk", "/ej"] {
            for _ in 0..10 {
                assert_eq!(get(d.addr, path).await.status, 200);
            }
        }
        assert_eq!(
            (
                failing_b.requests(),
                failing_e.requests(),
                drained.requests()
            ),
            seen,
            "{how}: the removed backends got no request after the reload"
        );
    }
    stop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two backends behind round robin with active checks; `a`'s weight in the
/// file is `weight_a`.
fn weighted(a: SocketAddr, b: SocketAddr, weight_a: u32) -> String {
    format!(
        "{}\n[upstreams.app]\nbackends = [{{ addr = \"{a}\", weight = {weight_a} }}, {{ addr = \"{b}\" }}]\n\
         health = {{ kind = \"tcp\", interval = \"200ms\" }}\n[[routes]]\nupstream = \"app\"\n",
        header("")
    )
}

/// How many of `n` requests `backend` answered.
async fn share(addr: SocketAddr, backend: SocketAddr, n: usize) -> usize {
    let mut got = 0;
    for _ in 0..n {
        if answered_by(addr).await == backend.to_string() {
            got += 1;
        }
    }
    got
}

/// `/status`'s weight of the backend at `addr` in `app`.
async fn weight_in_status(admin: SocketAddr, addr: SocketAddr) -> u64 {
    let doc = json(&support::admin(admin, "GET", "/status", &[TOKEN]).await);
    let all = doc["upstreams"]["app"]["backends"]
        .as_array()
        .unwrap()
        .clone();
    let b = all.iter().find(|b| b["addr"] == addr.to_string()).unwrap();
    b["weight"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_s_weight_changes_live_and_survives_a_reload() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = support::temp_dir("weight");
    let file = dir.join("detour.toml");
    std::fs::write(&file, weighted(a.addr(), b.addr(), 1)).unwrap();
    let d = support::start(&file);
    let admin = d.admin.unwrap();
    let path = format!("/upstreams/app/backends/{}/weight", a.addr());
    assert_eq!(share(d.addr, a.addr(), 8).await, 4);

    // Query or form body; 0 takes it out of rotation, live.
    let set = support::admin(admin, "POST", &format!("{path}?weight=0"), &[TOKEN]).await;
    assert_eq!(
        (set.status, text(&set)),
        (200, format!("app/{}: weight 0\n", a.addr()))
    );
    assert_eq!(weight_in_status(admin, a.addr()).await, 0);
    assert_eq!(share(d.addr, a.addr(), 6).await, 0);
    let mut c = RawConnection::connect(admin).await.unwrap();
    let raw = format!(
        "POST {path} HTTP/1.1\r\nhost: {admin}\r\n{TOKEN}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 8\r\nconnection: close\r\n\r\nweight=3"
    );
    c.send(raw.as_bytes()).await.unwrap();
    assert_eq!(c.read_response().await.unwrap().status, 200);
    assert_eq!(share(d.addr, a.addr(), 8).await, 6, "3 of every 4");

    // A reload of the same file keeps it; one that changes a's weight wins.
    let reload = support::admin(admin, "POST", "/reload", &[TOKEN]).await;
    assert_eq!(reload.status, 200, "{}", text(&reload));
    assert_eq!(weight_in_status(admin, a.addr()).await, 3);
    assert_eq!(share(d.addr, a.addr(), 8).await, 6);
    std::fs::write(&file, weighted(a.addr(), b.addr(), 2)).unwrap();
    assert_eq!(
        support::admin(admin, "POST", "/reload", &[TOKEN])
            .await
            .status,
        200
    );
    assert_eq!(weight_in_status(admin, a.addr()).await, 2);
    stop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_is_refused_with_the_reason() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = support::temp_dir("weight-refused");
    let file = dir.join("detour.toml");
    std::fs::write(&file, one_upstream(a.addr(), "")).unwrap();
    let d = support::start(&file);
    let admin = d.admin.unwrap();
    let path = format!("/upstreams/app/backends/{}/weight", a.addr());
    for (query, why) in [
        ("", "give weight=N (0 to 10000)"),
        ("?weight=10001", "from 0 to 10000"),
        ("?weight=-1", "from 0 to 10000"),
        ("?weight=x", "from 0 to 10000"),
    ] {
        let got = support::admin(admin, "POST", &format!("{path}{query}"), &[TOKEN]).await;
        assert_eq!(got.status, 400, "{query}");
        assert!(text(&got).contains(why), "{query}: {}", text(&got));
    }
    let got = support::admin(admin, "POST", &format!("{path}?weight=1"), &[]).await;
    assert_eq!(got.status, 401, "the admin token is required");
    let got = support::admin(admin, "GET", &format!("{path}?weight=1"), &[TOKEN]).await;
    assert_eq!((got.status, got.header("allow")), (405, Some("POST")));
    let other = "/upstreams/app/backends/127.0.0.1:1/weight?weight=1";
    assert_eq!(
        support::admin(admin, "POST", other, &[TOKEN]).await.status,
        404
    );
    assert_eq!(weight_in_status(admin, a.addr()).await, 1);
    stop(d);
}

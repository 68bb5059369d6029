//! The `detour` proxy end to end, in-process, against testkit upstreams:
//! the admin API, reload under load, and every failure mode.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use detour_cli::app::{self, Config, Running};
use detour_server::Stop;
use detour_testkit::client::{RawConnection, RawResponse};
use detour_testkit::{Behavior, Upstream};

fn config(backends: &[SocketAddr], extra: &str) -> Config {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
grace_period = "2s"

[admin]
listen = "127.0.0.1:0"

[log]
access_log = false

[upstreams.app]
backends = [{}]

[upstreams.app.retry]
base_delay = "10ms"
per_try_timeout = "300ms"

{extra}

[[routes]]
upstream = "app"
"#,
        list.join(", ")
    );
    Config::from_toml(&text, None).unwrap()
}

async fn start(c: &Config) -> Running {
    let c = c.clone();
    tokio::task::spawn_blocking(move || app::start(&c, None, None, None).unwrap())
        .await
        .unwrap()
}

async fn stop(r: Running) {
    tokio::task::spawn_blocking(move || r.stop(Stop::Immediate))
        .await
        .unwrap();
}

async fn fetch(addr: SocketAddr, raw: &str) -> RawResponse {
    let mut c = RawConnection::connect(addr).await.unwrap();
    c.send(raw.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), c.read_response())
        .await
        .unwrap()
        .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    let raw = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    fetch(addr, &raw).await
}

async fn admin(r: &Running, method: &str, path: &str, token: Option<&str>) -> RawResponse {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let addr = r.admin_addr.unwrap();
    let raw = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n");
    fetch(addr, &raw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_and_control_backends() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = config(&[a.addr(), b.addr()], "");
    c.admin.token = Some("s3cret".into());
    let r = start(&c).await;
    assert_eq!(admin(&r, "GET", "/healthz", None).await.status, 200);
    assert_eq!(admin(&r, "GET", "/status", None).await.status, 401);
    let status = admin(&r, "GET", "/status", Some("s3cret")).await;
    assert_eq!(status.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let backends = doc["upstreams"]["app"]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    assert_eq!(backends[0]["health"], "healthy");
    assert_eq!(backends[0]["breaker"], "closed");
    assert!(backends[0]["in_flight"].is_number());

    // Drain a: no new request reaches it; enable: it takes traffic again.
    let path = format!("/upstreams/app/backends/{}/drain", a.addr());
    assert_eq!(admin(&r, "POST", &path, Some("s3cret")).await.status, 200);
    let before = a.requests();
    for _ in 0..10 {
        assert_eq!(get(r.addr(), "/x").await.status, 200);
    }
    assert_eq!(a.requests(), before, "a drained backend gets nothing new");
    let path = format!("/upstreams/app/backends/{}/maintenance", b.addr());
    assert_eq!(admin(&r, "POST", &path, Some("s3cret")).await.status, 200);
    let doc: serde_json::Value =
        serde_json::from_slice(&admin(&r, "GET", "/status", Some("s3cret")).await.body).unwrap();
    let of = |addr: SocketAddr| {
        doc["upstreams"]["app"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == addr.to_string())
            .unwrap()["health"]
            .clone()
    };
    assert_eq!(of(b.addr()), "maintenance");
    assert_eq!(of(a.addr()), "draining");
    assert_eq!(get(r.addr(), "/x").await.status, 503, "nothing in service");
    for addr in [a.addr(), b.addr()] {
        let path = format!("/upstreams/app/backends/{addr}/enable");
        assert_eq!(admin(&r, "POST", &path, Some("s3cret")).await.status, 200);
    }
    for _ in 0..10 {
        assert_eq!(get(r.addr(), "/x").await.status, 200);
    }
    assert!(a.requests() > before, "enabled again");
    assert_eq!(
        admin(
            &r,
            "POST",
            "/upstreams/app/backends/10.9.9.9:1/drain",
            Some("s3cret")
        )
        .await
        .status,
        404
    );
    assert_eq!(admin(&r, "GET", "/nope", Some("s3cret")).await.status, 404);
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_modes_end_to_end() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let c = config(&[a.addr(), b.addr()], "");
    let r = start(&c).await;
    // Every GET succeeds whatever one backend does, as long as the other is fine.
    for bad in [
        Behavior::refuse(),
        Behavior::reset_after_request(),
        Behavior::hang(),
        Behavior::status(503),
        Behavior::blackhole(),
    ] {
        a.set_behavior(bad);
        for i in 0..6 {
            let resp = get(r.addr(), &format!("/g{i}")).await;
            assert_eq!(resp.status, 200, "a GET failed over");
        }
        a.set_behavior(Behavior::ok());
    }
    // A POST to a backend that resets after reading it is never sent again.
    a.set_behavior(Behavior::reset_after_request());
    b.set_behavior(Behavior::reset_after_request());
    let raw = "POST /p HTTP/1.1\r\nhost: t\r\nx-request-id: once\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";
    let resp = fetch(r.addr(), raw).await;
    assert_eq!(resp.status, 502);
    assert_eq!(
        a.count_for("once") + b.count_for("once"),
        1,
        "delivered once"
    );
    // Everything down: a clean 502/503 with Proxy-Status, not a hang.
    a.kill().await;
    b.kill().await;
    let resp = get(r.addr(), "/down").await;
    assert!(resp.status == 502 || resp.status == 503, "{}", resp.status);
    assert!(resp.header("proxy-status").is_some());
    // No route: 404.
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let c1 = config(&[a.addr()], "");
    let r = start(&c1).await;
    let addr = r.addr();
    let stop_load = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop_load, ok, bad) = (stop_load.clone(), ok.clone(), bad.clone());
        load.push(tokio::spawn(async move {
            let mut conn = RawConnection::connect(addr).await.unwrap();
            while !stop_load.load(Ordering::Relaxed) {
                conn.send(b"GET /r HTTP/1.1\r\nhost: t\r\n\r\n")
                    .await
                    .unwrap();
                match conn.read_response().await {
                    Ok(resp) if resp.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Move all traffic from a to b, then back, under load.
    let g = r.reload_from(&config(&[b.addr()], "")).await.unwrap();
    assert_eq!(g.generation, 2);
    assert!(g.not_applied_live.is_empty(), "{:?}", g.not_applied_live);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b_mid = b.requests();
    assert!(b_mid > 0, "the new backend set serves");
    // An invalid config is refused and the old one keeps serving.
    let mut broken = config(&[b.addr()], "");
    broken.routes[0].upstream = "missing".into();
    assert!(r.reload_from(&broken).await.is_err());
    assert_eq!(r.app.current().generation, 2);
    r.reload_from(&config(&[a.addr(), b.addr()], ""))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_load.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "no request lost across reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pick_upstreams_by_host_and_path_and_retry_overrides_apply() {
    let api = Upstream::start(Behavior::status(503)).await.unwrap();
    let web = Upstream::start(Behavior::ok()).await.unwrap();
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
[admin]
enabled = false
[log]
access_log = false
[upstreams.api]
backends = [{{ addr = "{api}" }}]
[upstreams.api.retry]
base_delay = "1ms"
max_delay = "2ms"
[upstreams.web]
backends = [{{ addr = "{web}" }}]
[[routes]]
host = "api.example.com"
path_prefix = "/v1"
upstream = "api"
retry = {{ max_retries = 0 }}
[[routes]]
upstream = "web"
"#,
        api = api.addr(),
        web = web.addr()
    );
    let c = Config::from_toml(&text, None).unwrap();
    let r = start(&c).await;
    let raw = "GET /v1/x HTTP/1.1\r\nhost: API.example.com:80\r\nconnection: close\r\n\r\n";
    let resp = fetch(r.addr(), raw).await;
    assert_eq!(resp.status, 503, "the upstream's own 503 passes through");
    assert_eq!(api.requests(), 1, "the route's max_retries = 0 applies");
    let raw = "GET /v1/x HTTP/1.1\r\nhost: www.example.com\r\nconnection: close\r\n\r\n";
    let resp = fetch(r.addr(), raw).await;
    assert_eq!(resp.status, 200);
    assert_eq!(web.requests(), 1);
    stop(r).await;
}

/// Three upstreams behind `/admin`, a raw `/store` route and a catch-all,
/// with `[server.paths]` as `paths` says.
fn path_config(admin: SocketAddr, store: SocketAddr, web: SocketAddr, paths: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
[server.paths]
{paths}
[admin]
enabled = false
[log]
access_log = false
[upstreams.admin]
backends = [{{ addr = "{admin}" }}]
[upstreams.store]
backends = [{{ addr = "{store}" }}]
[upstreams.web]
backends = [{{ addr = "{web}" }}]
[[routes]]
path_prefix = "/admin"
upstream = "admin"
[[routes]]
path_prefix = "/store"
upstream = "store"
raw_path = true
[[routes]]
upstream = "web"
"#
    );
    Config::from_toml(&text, None).unwrap()
}

fn paths_seen(up: &Upstream) -> Vec<String> {
    up.received().into_iter().map(|r| r.path).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_the_backend_see_one_normalized_path() {
    let admin = Upstream::start(Behavior::ok()).await.unwrap();
    let store = Upstream::start(Behavior::ok()).await.unwrap();
    let web = Upstream::start(Behavior::ok()).await.unwrap();
    let c = path_config(admin.addr(), store.addr(), web.addr(), "");
    let r = start(&c).await;

    for target in ["/x/../admin", "/%61dmin?q=%2e%2e", "/admin/./a/%7Eb/"] {
        assert_eq!(get(r.addr(), target).await.status, 200, "{target}");
    }
    assert_eq!(
        paths_seen(&admin),
        ["/admin", "/admin?q=%2e%2e", "/admin/a/~b/"],
        "matched the /admin route and forwarded as matched"
    );
    for target in [
        "/../etc",
        "/a/../../b",
        "/%2e%2e/etc",
        "/a%2Fb",
        "/a%5cb",
        "/a%00",
        "/a%zz",
    ] {
        assert_eq!(get(r.addr(), target).await.status, 400, "{target}");
    }

    // The raw route matches and forwards the client's path...
    assert_eq!(get(r.addr(), "/store/k/../%6B").await.status, 200);
    assert_eq!(paths_seen(&store), ["/store/k/../%6B"]);
    // ...and only the raw path: this one is /store/k once normalized, but
    // raw it is not under /store, so the catch-all takes it, normalized.
    assert_eq!(get(r.addr(), "/x/../store/k").await.status, 200);
    assert_eq!(paths_seen(&web), ["/store/k"]);
    assert_eq!(store.requests(), 1);
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_encoded_slashes_reach_a_raw_route_and_merging_is_an_opt_in() {
    let admin = Upstream::start(Behavior::ok()).await.unwrap();
    let store = Upstream::start(Behavior::ok()).await.unwrap();
    let web = Upstream::start(Behavior::ok()).await.unwrap();
    let paths = "encoded_slashes = \"keep\"\nmerge_slashes = true";
    let c = path_config(admin.addr(), store.addr(), web.addr(), paths);
    let r = start(&c).await;

    assert_eq!(get(r.addr(), "/store/a%2Fb//c").await.status, 200);
    assert_eq!(paths_seen(&store), ["/store/a%2Fb//c"]);
    assert_eq!(get(r.addr(), "//admin///x").await.status, 200);
    assert_eq!(get(r.addr(), "/admin/a%2F..%2Fsecret").await.status, 200);
    assert_eq!(
        paths_seen(&admin),
        ["/admin/x", "/admin/a%2F..%2Fsecret"],
        "an encoded slash is kept, never decoded into a separator"
    );
    // Routing sees `%2F`, not `/`: this is not under /admin.
    assert_eq!(get(r.addr(), "/admin%2Fx").await.status, 200);
    assert_eq!(paths_seen(&web), ["/admin%2Fx"]);
    assert_eq!(get(r.addr(), "/../etc").await.status, 400);
    stop(r).await;
}

//! Path normalization through real sockets: the hooks and the backend see
//! the one normalized path, the client's target stays readable, refused
//! paths never reach a hook or a backend.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use detour_core::{Backend, HttpPeer, ProxyHttp, Result, Session};
use detour_server::config::EncodedSlashes;
use detour_server::{HttpProxy, Server, ServerConfig, ServerHandle};
use detour_testkit::{Behavior, Upstream};
use support::{config, send};

/// Forwards to one backend and notes, in the first hook, the target the
/// hooks see and the client's raw one.
struct Seeing {
    backend: Arc<Backend>,
    seen: Mutex<Vec<(String, String)>>,
}

impl ProxyHttp for Seeing {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn early_request_filter(&self, s: &mut Session, _: &mut ()) -> Result<()> {
        let seen = (s.uri().to_string(), s.raw_uri().to_string());
        self.seen.lock().unwrap().push(seen);
        Ok(())
    }
    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<HttpPeer> {
        Ok(HttpPeer::for_backend(Arc::clone(&self.backend), "app"))
    }
}

fn start(backend: SocketAddr, config: ServerConfig) -> (ServerHandle, HttpProxy<Seeing>) {
    let proxy = HttpProxy::builder(Seeing {
        backend: Arc::new(Backend::new(backend)),
        seen: Mutex::new(Vec::new()),
    })
    .config(config.clone())
    .build();
    let handle = Server::new(config).start(proxy.clone()).unwrap();
    (handle, proxy)
}

async fn status(addr: SocketAddr, target: &str) -> u16 {
    let raw = format!("GET {target} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
    send(addr, &raw).await.unwrap().status
}

fn seen_by_hooks(proxy: &HttpProxy<Seeing>) -> Vec<(String, String)> {
    std::mem::take(&mut *proxy.hooks().seen.lock().unwrap())
}

fn seen_by_backend(up: &Upstream) -> Vec<String> {
    up.received().into_iter().map(|r| r.path).collect()
}

#[tokio::test]
async fn hooks_and_the_backend_see_the_normalized_path() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let (handle, proxy) = start(up.addr(), config());
    for target in [
        "/x/../admin",
        "/%61dmin?a=%2e%2e/",
        "http://h/a/./b",
        "/plain",
    ] {
        assert_eq!(status(handle.addr(), target).await, 200, "{target}");
    }
    assert_eq!(
        seen_by_backend(&up),
        ["/admin", "/admin?a=%2e%2e/", "/a/b", "/plain"]
    );
    let pair = |uri: &str, raw: &str| (uri.to_string(), raw.to_string());
    assert_eq!(
        seen_by_hooks(&proxy),
        [
            pair("/admin", "/x/../admin"),
            pair("/admin?a=%2e%2e/", "/%61dmin?a=%2e%2e/"),
            pair("http://h/a/b", "http://h/a/./b"),
            pair("/plain", "/plain"),
        ]
    );
    handle.stop(detour_server::Stop::Immediate);
}

#[tokio::test]
async fn refused_paths_get_400_before_any_hook() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let (handle, proxy) = start(up.addr(), config());
    for target in [
        "/../etc",
        "/a/%2E%2e/../b",
        "/a%2fb",
        "/a\\b",
        "/a%00",
        "/a%zz",
        "/public/..;/admin",
        "/public/%2e%2e;x/admin",
    ] {
        assert_eq!(status(handle.addr(), target).await, 400, "{target}");
    }
    assert!(seen_by_hooks(&proxy).is_empty());
    assert_eq!(up.requests(), 0);
    handle.stop(detour_server::Stop::Immediate);
}

#[tokio::test]
async fn the_rules_are_configurable() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let mut c = config();
    c.paths.merge_slashes = true;
    c.paths.encoded_slashes = EncodedSlashes::Keep;
    let (handle, _proxy) = start(up.addr(), c);
    assert_eq!(status(handle.addr(), "//a///b%2Fc").await, 200);
    let mut off = config();
    off.paths.normalize = false;
    off.paths.encoded_slashes = EncodedSlashes::Keep;
    let (untouched, _proxy) = start(up.addr(), off);
    assert_eq!(status(untouched.addr(), "/x/../%61%2F").await, 200);
    assert_eq!(seen_by_backend(&up), ["/a/b%2Fc", "/x/../%61%2F"]);
    handle.stop(detour_server::Stop::Immediate);
    untouched.stop(detour_server::Stop::Immediate);
}

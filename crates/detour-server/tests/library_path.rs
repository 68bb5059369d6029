//! The library user's path through real sockets: an upstream the server
//! does not run says so on its first selection (once), and panic mode is
//! announced on entry and on exit.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use detour_server::{HttpProxy, Server};
use detour_testkit::{Behavior, Upstream as Backend};
use support::{config, get, send, shut, upstream, Selecting};

/// Everything logged in this test binary (one subscriber for the process:
/// the workers log from their own threads).
static LOG: Mutex<String> = Mutex::new(String::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// Lines logged so far that contain every one of `words`.
fn logged(words: &[&str]) -> usize {
    LOG.lock()
        .unwrap()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .count()
}

/// Wait (10 s at most) until `logged(words)` reaches `n`.
async fn until_logged(words: &[&str], n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while logged(words) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {n} lines with {words:?} in:\n{}",
            LOG.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_the_server_does_not_run_says_so_once() {
    capture_logs();
    let b = Backend::start(Behavior::ok()).await.unwrap();
    let up = upstream("lonely", &[b.addr()], "");
    // Built without `.upstream(..)`: nothing runs its services.
    let proxy = HttpProxy::builder(Selecting { up })
        .config(config())
        .build();
    let h = Server::new(config()).start(proxy).unwrap();
    for i in 0..3 {
        let r = send(h.addr(), &get("/", &i.to_string())).await.unwrap();
        assert_eq!(r.status, 200);
    }
    let words = [
        "ERROR",
        "upstream=lonely",
        "without its background services",
    ];
    assert_eq!(logged(&words), 1, "{}", LOG.lock().unwrap());
    shut(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_is_announced_on_entry_and_on_exit() {
    capture_logs();
    let a = Backend::start(Behavior::ok()).await.unwrap();
    let b = Backend::start(Behavior::ok()).await.unwrap();
    let checks = "[health]\nkind = \"http\"\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"40ms\"\nrise = 1\nfall = 1\n";
    let up = upstream("panicky", &[a.addr(), b.addr()], checks);
    let proxy = HttpProxy::builder(Selecting {
        up: Arc::clone(&up),
    })
    .upstream(Arc::clone(&up))
    .config(config())
    .build();
    let h = Server::new(config()).start(proxy).unwrap();
    let r = send(h.addr(), &get("/", "before")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(logged(&["upstream=\"panicky\"", "panic mode"]), 0);

    a.set_behavior(Behavior::status(503));
    b.set_behavior(Behavior::status(503));
    let entering = ["WARN", "entering panic mode", "upstream=\"panicky\""];
    until_logged(&entering, 1).await;
    assert!(up.load_balancer().in_panic(tokio::time::Instant::now()));

    a.set_behavior(Behavior::ok());
    b.set_behavior(Behavior::ok());
    let leaving = ["WARN", "leaving panic mode", "upstream=\"panicky\""];
    until_logged(&leaving, 1).await;
    assert_eq!(logged(&entering), 1, "one entry, one exit");
    let r = send(h.addr(), &get("/", "after")).await.unwrap();
    assert_eq!(r.status, 200);
    shut(h).await;
}

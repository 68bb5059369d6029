//! GETs under load while one of three backends dies: it stops listening and
//! resets its open connections. No GET whose response had not started may fail.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use detour_testkit::client::RawConnection;
use detour_testkit::{Behavior, Upstream};
use support::{config, get, start};
use tokio::time::Instant;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Failed before any response byte reached the client.
    unstarted: AtomicU64,
    /// A response head arrived, then the response broke.
    started: AtomicU64,
}

async fn client(
    addr: std::net::SocketAddr,
    keep_alive: bool,
    until: Instant,
    id: usize,
    tally: Arc<Tally>,
) {
    let mut conn: Option<RawConnection> = None;
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let c = match conn.take() {
            Some(c) => c,
            None => match RawConnection::connect(addr).await {
                Ok(c) => c,
                Err(_) => {
                    tally.unstarted.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        let mut c = c;
        if c.send(get("/", &format!("c{id}-{n}")).as_bytes())
            .await
            .is_err()
        {
            tally.unstarted.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let head = match c.read_response_head().await {
            Ok(h) => h,
            Err(_) => {
                tally.unstarted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if head.status != 200 {
            tally.unstarted.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match c.read_exact(len).await {
            Ok(_) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if keep_alive && head.header("connection") != Some("close") {
                    conn = Some(c);
                }
            }
            Err(_) => {
                tally.started.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_backends_under_load_loses_no_get() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let c = Upstream::start(Behavior::ok()).await.unwrap();
    let p = start(&[a.addr(), b.addr(), c.addr()], config());
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_millis(1500);
    let mut clients = Vec::new();
    for id in 0..8 {
        let keep_alive = id % 2 == 0;
        clients.push(tokio::spawn(client(
            p.addr(),
            keep_alive,
            until,
            id,
            Arc::clone(&tally),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = b.requests();
    b.kill().await;
    for c in clients {
        c.await.unwrap();
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let unstarted = tally.unstarted.load(Ordering::Relaxed);
    let started = tally.started.load(Ordering::Relaxed);
    println!("ok {ok}, unstarted errors {unstarted}, broken after start {started}");
    assert!(before_kill > 0, "B had traffic before it died");
    assert!(ok > 300, "the load ran: {ok}");
    assert_eq!(unstarted, 0, "no GET lost before its response started");
    // At most the requests in flight at the moment of the kill reached B late.
    assert!(
        b.requests() <= before_kill + 8,
        "B got traffic after it died"
    );
    let retried = p
        .recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(addr, _, status)| *addr == b.addr() && status.is_none())
        .count();
    println!("attempts to the dead backend that failed over: {retried}");
    assert!(retried > 0, "the kill was felt and routed around");
}

//! Starting, changing, killing, restarting and dropping upstreams.

mod support;

use detour_testkit::client::RawConnection;
use detour_testkit::{Behavior, Upstream};

use support::{assert_refused, assert_reset, get, soon};

async fn ask(upstream_addr: std::net::SocketAddr) -> u16 {
    let mut conn = soon(RawConnection::connect(upstream_addr))
        .await
        .expect("connect");
    conn.send(&get("/", &["connection: close"]))
        .await
        .expect("send");
    soon(conn.read_response()).await.expect("response").status
}

#[tokio::test]
async fn kill_resets_open_connections_and_refuses_new_ones() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    let mut idle = soon(RawConnection::connect(upstream.addr())).await.unwrap();
    idle.send(&get("/", &[])).await.unwrap();
    soon(idle.read_response()).await.unwrap();

    soon(upstream.kill()).await;
    assert_reset(soon(idle.read_to_end()).await);
    assert_refused(upstream.addr()).await;

    soon(upstream.kill()).await; // idempotent
    assert_refused(upstream.addr()).await;
}

#[tokio::test]
async fn restart_listens_again_on_the_same_address() {
    let upstream = Upstream::start(Behavior::status(503)).await.unwrap();
    let addr = upstream.addr();
    assert_eq!(ask(addr).await, 503);
    soon(upstream.kill()).await;

    // While killed, a new behavior does not bring it back; restart does.
    upstream.set_behavior(Behavior::ok());
    assert_refused(addr).await;
    upstream.restart().await.unwrap();
    assert_eq!(upstream.addr(), addr);
    assert_eq!(ask(addr).await, 200);
    upstream.restart().await.unwrap(); // already listening: nothing to do
    assert_eq!(ask(addr).await, 200);
    assert_eq!(upstream.requests(), 3);
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test]
async fn restart_keeps_refusing_under_refuse() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    soon(upstream.kill()).await;
    upstream.set_behavior(Behavior::refuse());
    upstream.restart().await.unwrap();
    assert_refused(upstream.addr()).await;
    upstream.set_behavior(Behavior::ok());
    assert_eq!(ask(upstream.addr()).await, 200);
}

#[tokio::test]
async fn start_on_brings_a_dropped_backend_back() {
    let first = Upstream::start(Behavior::ok()).await.unwrap();
    let addr = first.addr();
    assert_eq!(ask(addr).await, 200);
    drop(first);
    assert_refused(addr).await;

    let second = Upstream::start_on(addr, Behavior::status(201))
        .await
        .unwrap();
    assert_eq!(second.addr(), addr);
    assert_eq!(ask(addr).await, 201);
    assert_eq!(
        second.requests(),
        1,
        "a new upstream starts with a new journal"
    );
}

#[tokio::test]
async fn dropping_the_upstream_closes_its_connections() {
    let upstream = Upstream::start(Behavior::hang()).await.unwrap();
    let mut conn = soon(RawConnection::connect(upstream.addr())).await.unwrap();
    conn.send(&get("/", &[])).await.unwrap();
    soon(upstream.wait_for_requests(1)).await;
    let addr = upstream.addr();
    drop(upstream);
    assert!(soon(conn.read_to_end()).await.unwrap().is_empty());
    assert_refused(addr).await;
}

#[tokio::test]
async fn a_new_behavior_applies_to_the_next_request_on_an_open_connection() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    let mut conn = soon(RawConnection::connect(upstream.addr())).await.unwrap();
    conn.send(&get("/", &[])).await.unwrap();
    assert_eq!(soon(conn.read_response()).await.unwrap().status, 200);
    upstream.set_behavior(Behavior::status(429).with_header("retry-after", "1"));
    conn.send(&get("/", &[])).await.unwrap();
    let res = soon(conn.read_response()).await.unwrap();
    assert_eq!((res.status, res.header("retry-after")), (429, Some("1")));
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_all_counted() {
    let upstream = Upstream::start(Behavior::ok()).await.unwrap();
    let addr = upstream.addr();
    let clients: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move {
                let mut conn = RawConnection::connect(addr).await.unwrap();
                for _ in 0..5 {
                    conn.send(&get("/", &[&format!("x-request-id: c{i}")]))
                        .await
                        .unwrap();
                    assert_eq!(conn.read_response().await.unwrap().status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        soon(client).await.unwrap();
    }
    assert_eq!(upstream.requests(), 100);
    assert_eq!(upstream.connections(), 20);
    assert_eq!(upstream.count_for("c7"), 5);
}

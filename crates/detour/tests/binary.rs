//! The `detour` binary as a process: serve, reload on SIGHUP (a bad file is
//! refused), drain on SIGTERM.
#![allow(clippy::unwrap_used)]

mod support;

use support::signal;

use std::net::SocketAddr;
use std::time::Duration;

use detour::testkit::client::RawConnection;
use detour::testkit::{Behavior, Upstream};

fn config(backend: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
grace_period = "2s"
[admin]
enabled = false
[log]
access_log = false
level = "info"
[upstreams.app]
backends = [{{ addr = "{backend}" }}]
[[routes]]
upstream = "app"
"#
    )
}

async fn answered_by(addr: SocketAddr) -> String {
    let mut c = RawConnection::connect(addr).await.unwrap();
    c.send(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = c.read_response().await.unwrap();
    assert_eq!(r.status, 200);
    r.header("x-upstream").unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_reloads_on_sighup_and_drains_on_sigterm() {
    let a = Upstream::start(Behavior::ok()).await.unwrap();
    let b = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("detour-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("detour.toml");
    std::fs::write(&file, config(a.addr())).unwrap();

    let support::Detour {
        mut child,
        pid,
        addr,
        ..
    } = support::start(&file);
    assert_eq!(answered_by(addr).await, a.addr().to_string());

    // A broken file is refused on SIGHUP; the old configuration keeps serving.
    std::fs::write(&file, "[upstreams.app]\nbackends = []").unwrap();
    signal(pid, "-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(answered_by(addr).await, a.addr().to_string());

    // A good one swaps in.
    std::fs::write(&file, config(b.addr())).unwrap();
    signal(pid, "-HUP");
    let mut moved = false;
    for _ in 0..50 {
        if answered_by(addr).await == b.addr().to_string() {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved, "SIGHUP swapped the backends");

    signal(pid, "-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

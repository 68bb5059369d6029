//! A binary upgrade through real processes: a second `detour --upgrade`
//! takes the first one's listening sockets over (`[server] upgrade_socket`)
//! while clients keep sending on keep-alive connections, the first drains
//! and exits, and no request fails. A second process started by mistake on
//! the same addresses refuses to start.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use detour_testkit::client::RawConnection;
use detour_testkit::{Behavior, Upstream};

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config(listen: SocketAddr, admin: SocketAddr, socket: &Path, backend: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["{listen}"]
threads = 2
grace_period = "5s"
upgrade_socket = "{socket}"
[admin]
listen = "{admin}"
[log]
access_log = false
level = "info"
[upstreams.app]
backends = [{{ addr = "{backend}" }}]
[[routes]]
upstream = "app"
"#,
        socket = socket.display()
    )
}

/// A backend, and a configuration file for it in a directory of its own.
struct Site {
    backend: Upstream,
    dir: std::path::PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    file: std::path::PathBuf,
}

async fn site(name: &str) -> Site {
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("detour-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, admin) = (free_port(), free_port());
    let file = dir.join("detour.toml");
    let socket = dir.join("upgrade.sock");
    std::fs::write(&file, config(listen, admin, &socket, backend.addr())).unwrap();
    Site {
        backend,
        dir,
        listen,
        admin,
        file,
    }
}

/// Counts of a client loop.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
}

/// One keep-alive client: requests back to back, a new connection when
/// the server closes one after an answer; a request without an answer is
/// an error.
async fn client(addr: SocketAddr, load: Arc<Load>, stop: Arc<AtomicBool>) {
    let mut conn: Option<RawConnection> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match RawConnection::connect(addr).await {
                Ok(c) => {
                    load.reconnects.fetch_add(1, Ordering::Relaxed);
                    conn.insert(c)
                }
                Err(e) => {
                    eprintln!("connect: {e}");
                    load.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        let sent = c.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
        match (sent, c.read_response().await) {
            (Ok(()), Ok(r)) if r.status == 200 => {
                load.ok.fetch_add(1, Ordering::Relaxed);
                if r.header("connection") == Some("close") {
                    conn = None;
                }
            }
            (_, r) => {
                eprintln!("request failed: {r:?}");
                load.errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_fails_no_request() {
    let Site {
        backend,
        dir,
        listen,
        admin,
        file,
    } = site("upgrade").await;

    let mut old = support::start(&file);
    assert_eq!(old.addr, listen);

    // A second process started by mistake on the same addresses.
    let out = support::detour()
        .args(["--config", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a second process started: {text}");
    // The admin listener is bound first, so it is the one named.
    assert!(text.contains("another process listens on"), "{text}");
    assert!(text.contains("--upgrade"), "{text}");

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|_| tokio::spawn(client(listen, Arc::clone(&load), Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = load.ok.load(Ordering::Relaxed);

    let started = Instant::now();
    let new = support::start_args(&file, &["--upgrade"]);
    assert_eq!(new.addr, listen);
    // The old process drains and exits on its own.
    let exited = tokio::task::spawn_blocking(move || {
        let status = old.child.wait().unwrap();
        (status, old)
    });
    let (status, _old) = tokio::time::timeout(Duration::from_secs(10), exited)
        .await
        .expect("the old process exits after the upgrade")
        .unwrap();
    let handover = started.elapsed();
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, errors) = (
        load.ok.load(Ordering::Relaxed),
        load.errors.load(Ordering::Relaxed),
    );
    println!(
        "upgrade under load: {ok} requests ({before} before the upgrade), {errors} errors, \
         {} connections, old process gone {handover:?} after the new one started",
        load.reconnects.load(Ordering::Relaxed)
    );
    assert_eq!(errors, 0);
    assert!(ok > before, "requests went on after the upgrade");

    // The new process serves, its admin listener is the inherited one, and
    // it can be upgraded in turn.
    let mut c = RawConnection::connect(admin).await.unwrap();
    c.send(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.read_response().await.unwrap().status, 200);

    // A successor that fails to start (its admin address is taken) leaves
    // the running process serving, and upgradable.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = dir.join("bad.toml");
    let bad_admin = taken.local_addr().unwrap();
    std::fs::write(
        &bad,
        config(listen, bad_admin, &dir.join("upgrade.sock"), backend.addr()),
    )
    .unwrap();
    let out = support::detour()
        .args(["--config", bad.to_str().unwrap(), "--upgrade"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(answered(listen).await, 200);
    let newer = support::start_args(&file, &["--upgrade"]);
    assert_eq!(newer.addr, listen);
    assert_eq!(answered(listen).await, 200);
    drop(new);
}

async fn answered(addr: SocketAddr) -> u16 {
    let mut c = RawConnection::connect(addr).await.unwrap();
    c.send(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    c.read_response().await.unwrap().status
}

/// Under systemd (`Type=notify`, `NotifyAccess=all`): SIGUSR2 makes the
/// running process start its successor itself, so the successor is the
/// service's; the successor tells the manager it is the main process now,
/// and the old one drains without a word (a STOPPING=1 from it would stop
/// the service). The manager's socket is played by a datagram socket here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_under_a_service_manager() {
    let Site {
        backend: _backend,
        dir,
        listen,
        admin: _,
        file,
    } = site("usr2").await;
    let manager_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&manager_path);
    let manager = std::os::unix::net::UnixDatagram::bind(&manager_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let said = || {
        let mut buf = [0u8; 256];
        let n = manager.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };

    let mut old = support::start_env(&file, &[("NOTIFY_SOCKET", manager_path.to_str().unwrap())]);
    assert_eq!(said(), "READY=1");
    support::signal(old.pid, "-USR2");
    let took = said();
    let new_pid: u32 = took
        .strip_prefix("MAINPID=")
        .and_then(|rest| rest.strip_suffix("\nREADY=1"))
        .unwrap_or_else(|| panic!("{took:?}"))
        .parse()
        .unwrap();
    assert_ne!(new_pid, old.pid);
    let status = tokio::task::spawn_blocking(move || old.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The old process said nothing more: a STOPPING=1 from it would make
    // systemd stop the service, successor and all.
    manager.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    assert!(
        manager.recv(&mut buf).is_err(),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(answered(listen).await, 200);
    // The successor is not this test's child: stop it by its pid.
    support::signal(new_pid, "-INT");
}

//! A real etcd server for tests: [`Etcd`] starts Debian's `etcd` binary on
//! free loopback ports with a data directory of its own, and can kill,
//! freeze and restart it.
//!
//! ```no_run
//! # async fn f() {
//! let etcd = detour_testkit::etcd::Etcd::start().await;
//! let endpoint = etcd.endpoint(); // "http://127.0.0.1:PORT"
//! # }
//! ```
//!
//! The binary is `etcd` on the `PATH`, or the one `DETOUR_ETCD` names.
//! Without it [`Etcd::start`] panics saying how to install it (`apt-get
//! install etcd-server`): a test that needs etcd fails rather than passing
//! without it.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A running etcd, killed (and its data removed) on drop.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

/// Numbers each server's directory within this process.
static NEXT: AtomicU32 = AtomicU32::new(0);

impl Etcd {
    /// Start an etcd on free loopback ports and wait until it answers.
    ///
    /// # Panics
    /// When the binary is missing or the server does not answer within 20 s.
    pub async fn start() -> Etcd {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("detour-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the etcd directory");
        let log = dir.join("etcd.log");
        let mut etcd = Etcd {
            child: None,
            client: free_port(),
            peer: free_port(),
            dir,
            log,
        };
        etcd.spawn();
        etcd.wait_ready().await;
        etcd
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.client
    }

    /// Kill the server (SIGKILL); its data stays for [`restart`](Etcd::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same ports and data, and wait until it answers.
    ///
    /// # Panics
    /// As [`start`](Etcd::start).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// Freeze (SIGSTOP) or thaw (SIGCONT) the server: frozen, its
    /// connections stay open and nothing answers — a silent partition.
    ///
    /// # Panics
    /// When the server is not running or `kill` cannot be run.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("etcd is running").id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let binary = std::env::var_os("DETOUR_ETCD").unwrap_or_else(|| "etcd".into());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the etcd log");
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let child = Command::new(&binary)
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {binary:?} ({e}): these tests need a real etcd; \
                     install it with `apt-get install etcd-server` or set DETOUR_ETCD"
                )
            });
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited ({status}) while starting:\n{}", self.log());
            }
            if health(self.client).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd did not answer within 20 s:\n{}", self.log());
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // SIGKILL ends a frozen (stopped) process too.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether etcd's `/health` answers `"health":"true"`.
async fn health(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    else {
        return false;
    };
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && String::from_utf8_lossy(&answer).contains("\"health\":\"true\"")
}

/// A loopback port free now (bound, then released).
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("a bound listener has an address")
}

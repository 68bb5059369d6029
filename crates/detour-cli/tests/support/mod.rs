//! The `detour` binary as a process, for the tests that drive it with files
//! and signals.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// A running `detour --config FILE`.
pub struct Detour {
    pub child: Child,
    pub pid: u32,
    /// Where it serves, from its "detour serving" line.
    pub addr: SocketAddr,
    /// Where its admin API listens, when it is on.
    pub admin: Option<SocketAddr>,
    /// Its further stdout lines.
    pub lines: Receiver<String>,
}

/// A test that ends, passing or failing, stops the process it started:
/// nothing outlives the test run.
impl Drop for Detour {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary, run from `/` as a service manager runs it: nothing may
/// depend on the working directory.
pub fn detour() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_detour"));
    c.current_dir("/");
    c
}

/// Start the binary on `file` and wait (30 s at most) for the line naming
/// its address.
pub fn start(file: &Path) -> Detour {
    start_env(file, &[])
}

/// [`start`] with `env` set (`RUST_LOG`, ...).
pub fn start_env(file: &Path, env: &[(&str, &str)]) -> Detour {
    start_with(file, &[], env)
}

/// [`start`] with more arguments (`--upgrade`).
pub fn start_args(file: &Path, args: &[&str]) -> Detour {
    start_with(file, args, &[])
}

fn start_with(file: &Path, args: &[&str], env: &[(&str, &str)]) -> Detour {
    let mut child = detour()
        .args(["--config", file.to_str().unwrap()])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let serving = loop {
        let line = lines.recv_timeout(Duration::from_secs(30)).unwrap();
        if line.contains("detour serving") {
            break line;
        }
    };
    // `[log] format = "json"`: one object with flat fields.
    let json: Option<serde_json::Value> = serde_json::from_str(&serving).ok();
    let field = |name: &str| match &json {
        Some(j) => j[name].as_str().map(str::to_string),
        None => serving
            .split(&format!(" {name}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string),
    };
    let addr = field("addr").unwrap().parse().unwrap();
    let admin = field("admin").map(|a| a.parse().unwrap());
    Detour {
        child,
        pid,
        addr,
        admin,
        lines,
    }
}

/// Send `sig` (`-HUP`, `-TERM`) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A fresh directory under the system's temporary one, named after `what`
/// and this process.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("detour-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Send `method path` with `headers` (a Host among them, or none) on a new
/// connection and read the answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
) -> detour_testkit::client::RawResponse {
    let mut c = detour_testkit::client::RawConnection::connect(addr)
        .await
        .unwrap();
    let mut raw = format!("{method} {path} HTTP/1.1\r\ncontent-length: 0\r\nconnection: close\r\n");
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    c.send(raw.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), c.read_response())
        .await
        .unwrap()
        .unwrap()
}

/// `method path` to the admin API at `admin`, with its own Host and
/// `headers`, and the answer.
pub async fn admin(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
) -> detour_testkit::client::RawResponse {
    let mut all = vec![format!("host: {admin}")];
    all.extend(headers.iter().map(|h| h.to_string()));
    send(admin, method, path, &all).await
}

/// Send `GET /` (Host `app`) on one keep-alive connection to each of
/// `addrs` until `stop` says `true`; the answers that were 200, and the
/// rest (each failure opens a new connection).
pub async fn keep_sending(
    addrs: Vec<SocketAddr>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, u64) {
    let mut tasks = Vec::new();
    for addr in addrs {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut conn = detour_testkit::client::RawConnection::connect(addr)
                .await
                .unwrap();
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
                        conn = detour_testkit::client::RawConnection::connect(addr)
                            .await
                            .unwrap();
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

//! The documented minimal program (`minimal.rs`, shown in the book's
//! introduction) as a process: its upstream's health checks run, a backend
//! that fails them gets no client request, nothing falls into panic mode,
//! and SIGTERM ends it cleanly.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use detour_proxy::testkit::client::RawConnection;
use detour_proxy::testkit::{Behavior, Upstream};

/// `line` without ANSI colour sequences (`ESC [ … m`).
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().take_while(|c| *c != 'm').for_each(drop);
        } else {
            out.push(c);
        }
    }
    out
}

/// The program, killed if the test ends before it exits (a failed
/// assertion must not leave it running).
struct Program(Child);

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait (30 s at most) for the "listening" line and read the address.
fn listening(lines: &Receiver<String>, seen: &mut Vec<String>) -> SocketAddr {
    loop {
        let line = plain(&lines.recv_timeout(Duration::from_secs(30)).unwrap());
        seen.push(line.clone());
        if let Some(rest) = line.split("addrs=[").nth(1) {
            return rest.split([']', ',']).next().unwrap().parse().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minimal_program_runs_its_health_checks() {
    let good = Upstream::start(Behavior::ok()).await.unwrap();
    let failing = Upstream::start(Behavior::status(503)).await.unwrap();
    let dir = std::env::temp_dir().join(format!("detour-minimal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(&file, "[server]\nlisten = [\"127.0.0.1:0\"]\n").unwrap();
    let mut program = Program(
        Command::new(env!("CARGO_BIN_EXE_minimal"))
            .args(["-c", file.to_str().unwrap()])
            .env("BACKENDS", format!("{},{}", good.addr(), failing.addr()))
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = program.0.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let addr = listening(&lines, &mut seen);

    for i in 0..20 {
        let mut c = RawConnection::connect(addr).await.unwrap();
        let req = format!("GET /item/{i} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
        c.send(req.as_bytes()).await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), c.read_response())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status, 200, "request {i}");
    }
    let client_requests = |b: &Upstream| {
        b.received()
            .iter()
            .filter(|r| !r.path.starts_with("/healthz"))
            .count()
    };
    assert_eq!(client_requests(&good), 20);
    assert_eq!(
        client_requests(&failing),
        0,
        "a backend failing its checks takes no request (no panic mode)"
    );
    assert!(failing.received().iter().any(|r| r.path == "/healthz"));

    let term = Command::new("kill")
        .args(["-TERM", &program.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || program.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    seen.extend(lines.try_iter().map(|l| plain(&l)));
    let all = seen.join("\n");
    assert!(!all.contains("panic mode"), "{all}");
    assert!(!all.contains("without its background services"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}

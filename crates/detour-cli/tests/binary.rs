//! The `detour` binary as a process: serve, reload on SIGHUP (a bad file is
//! refused), drain on SIGTERM.
#![allow(clippy::unwrap_used)]

mod support;

use support::signal;

use std::net::SocketAddr;
use std::time::Duration;

use detour_testkit::client::RawConnection;
use detour_testkit::{Behavior, Upstream};

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

    let mut d = support::start(&file);
    let (pid, addr) = (d.pid, d.addr);
    assert_eq!(answered_by(addr).await, a.addr().to_string());

    // A broken file is refused on SIGHUP; the old configuration keeps serving.
    std::fs::write(&file, "[upstreams.app]\nbackends = []").unwrap();
    signal(pid, "-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(answered_by(addr).await, a.addr().to_string());

    // Neither does an emptied file: the site keeps its routes, and one log
    // line names the field.
    let mut seen = 0;
    for emptied in [
        "",
        "[upstreams.app]\nbackends = [{ addr = \"127.0.0.1:9\" }]\n",
    ] {
        std::fs::write(&file, emptied).unwrap();
        signal(pid, "-HUP");
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..20 {
            assert_eq!(answered_by(addr).await, a.addr().to_string());
        }
        while let Ok(line) = d.lines.try_recv() {
            // Logs to a pipe carry no colour escapes.
            assert!(!line.contains('\u{1b}'), "{line:?}");
            if line.contains("reload refused") && line.contains("routes") {
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 2, "one line per refused reload, naming `routes`");

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
    let status = tokio::task::spawn_blocking(move || d.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lines `d` printed so far that report a failed admin accept.
fn accept_failures(d: &support::Detour) -> usize {
    d.lines
        .try_iter()
        .filter(|l| l.contains("admin accept failed"))
        .count()
}

/// Flaky inside the whole suite on a loaded 2-core machine (about 1 run in
/// 10: no accept failure seen within 10 s, cause not found yet), so it runs
/// on demand: `cargo test -p detour-cli --test binary -- --ignored`. The backoff
/// itself is tested deterministically under a paused clock in
/// `app/admin/listener.rs` (11 accepts and at most 5 log lines in 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "flaky under a loaded suite; run with --ignored (see the comment)"]
async fn the_admin_listener_backs_off_at_the_descriptor_limit() {
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("detour-emfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("detour.toml");
    let text = config(backend.addr()).replace(
        "[admin]\nenabled = false",
        "[admin]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"30s\"",
    );
    std::fs::write(&file, text).unwrap();
    let mut d = support::start(&file);
    let admin = d.admin.unwrap();

    // Leave the process no spare descriptor number (the soft limit below
    // every free one), then queue connections: each accept fails with
    // EMFILE while they wait. Counting open descriptors instead would race
    // the process's own sockets opening and closing.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid)).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_string();
    let set_limit = |soft: &str| {
        // `SOFT:` leaves the hard limit as it is.
        let ok = std::process::Command::new("prlimit")
            .args(["--pid", &d.pid.to_string(), &format!("--nofile={soft}:")])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    set_limit("3");
    let _ = accept_failures(&d);
    // Connections queue until an accept fails (a descriptor number below the
    // limit that happens to be free takes one or two first), then two more
    // seconds. A loop that retries at once writes a line per attempt:
    // hundreds of thousands in two seconds. Backing off, it writes one a
    // second.
    let mut held = Vec::new();
    let mut lines = 0;
    for _ in 0..100 {
        if held.len() < 20 {
            // One accepted on a free low descriptor may be reset at once.
            if let Ok(c) = RawConnection::connect(admin).await {
                held.push(c);
            }
        }
        lines += accept_failures(&d);
        if lines > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lines > 0, "no accept failure was logged");
    tokio::time::sleep(Duration::from_secs(2)).await;
    lines += accept_failures(&d);
    assert!(lines <= 4, "{lines} lines in 2 s");

    // Descriptors come back: the listener serves again.
    set_limit(&soft);
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        let mut c = RawConnection::connect(admin).await.unwrap();
        let raw = format!("GET /healthz HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n");
        c.send(raw.as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(2), c.read_response()).await;
        if matches!(answer, Ok(Ok(ref r)) if r.status == 200) {
            served = true;
            break;
        }
    }
    assert!(served, "the admin listener recovered");
    d.child.kill().unwrap();
    let _ = d.child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `detour --config FILE ARGS…` to its end: (exit success, stdout, stderr).
fn run(file: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = support::detour()
        .args(["--config", file.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[test]
fn dump_config_prints_defaults_resolved_paths_and_no_secret() {
    let dir = support::temp_dir("dump");
    let file = dir.join("detour.toml");
    let text = config("127.0.0.1:9001".parse().unwrap())
        .replace("enabled = false", "token = \"s3cret-token\"")
        .replace(
            "backends = [{ addr = \"127.0.0.1:9001\" }]",
            "discovery = { file = \"backends.toml\" }",
        );
    std::fs::write(&file, text).unwrap();
    let (ok, dump, err) = run(&file, &["--dump-config"]);
    assert!(ok, "{err}");
    assert!(!dump.contains("s3cret-token"), "{dump}");
    assert!(dump.contains("token = \"<redacted>\""), "{dump}");
    let resolved = dir.join("backends.toml");
    assert!(
        dump.contains(&format!("file = \"{}\"", resolved.display())),
        "resolved against the file's directory, not the working one:\n{dump}"
    );
    for default in [
        "max_retries = 3",
        "open_for = \"30s\"",
        "max_connections = 10000",
        "header_read_timeout = \"10s\"",
    ] {
        assert!(dump.contains(default), "{default}:\n{dump}");
    }
    // The dump is a configuration: it loads, and dumps the same again.
    let copy = dir.join("dumped.toml");
    std::fs::write(&copy, &dump).unwrap();
    let (ok, again, err) = run(&copy, &["--dump-config"]);
    assert!(ok, "{err}");
    let body = |d: &str| d.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&again), body(&dump));
    // An invalid file is refused, naming the field, and nothing is printed.
    std::fs::write(&file, "[upstreams.app]\nbackends = []").unwrap();
    let (ok, dump, err) = run(&file, &["--dump-config"]);
    assert!(!ok && dump.is_empty());
    assert!(err.contains("upstreams.app.backends"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_paths_are_the_config_file_s_whatever_the_working_directory() {
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = support::temp_dir("relative");
    std::fs::write(
        dir.join("backends.toml"),
        format!("backends = [{{ addr = \"{}\" }}]\n", backend.addr()),
    )
    .unwrap();
    let file = dir.join("detour.toml");
    let text = config(backend.addr()).replace(
        &format!("backends = [{{ addr = \"{}\" }}]", backend.addr()),
        "discovery = { file = \"backends.toml\" }",
    );
    std::fs::write(&file, text).unwrap();
    // `support::start` runs it from `/`, as systemd does.
    let mut d = support::start(&file);
    assert_eq!(answered_by(d.addr).await, backend.addr().to_string());
    d.child.kill().unwrap();
    let _ = d.child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file whose `[log]` says `level = "warn"` and `format`.
fn quiet(backend: SocketAddr, format: &str) -> String {
    config(backend)
        .replace("access_log = false", "access_log = true")
        .replace(
            "level = \"info\"",
            &format!("level = \"warn\"\nformat = \"{format}\""),
        )
}

/// The first line of `d`'s output that contains `needle` (10 s at most).
fn line_with(d: &support::Detour, needle: &str) -> String {
    loop {
        let line = d.lines.recv_timeout(Duration::from_secs(10)).unwrap();
        if line.contains(needle) {
            return line;
        }
    }
}

async fn get_with(addr: SocketAddr, target: &str, extra: &str) -> u16 {
    let mut c = RawConnection::connect(addr).await.unwrap();
    let raw = format!(
        "POST {target} HTTP/1.1\r\nhost: t\r\nuser-agent: probe/1.0\r\nx-request-id: req-42\r\n{extra}content-length: 5\r\nconnection: close\r\n\r\nhello"
    );
    c.send(raw.as_bytes()).await.unwrap();
    c.read_response().await.unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_never_silenced_by_the_level_or_rust_log() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = support::temp_dir("access-text");
    let file = dir.join("detour.toml");
    std::fs::write(&file, quiet(up.addr(), "text")).unwrap();
    // RUST_LOG replaces `[log] level`, and even turning the target off
    // leaves the access log on: `access_log = false` is its switch.
    let d = support::start_env(
        &file,
        &[("RUST_LOG", "warn,detour=info,detour::access=off")],
    );
    assert_eq!(get_with(d.addr, "/p/q?a=1&b=2", "").await, 200);
    let line = line_with(&d, "detour::access");
    assert!(
        !line.contains('\u{1b}'),
        "no ANSI escapes in a pipe: {line}"
    );
    for field in [
        "request_id=\"req-42\"",
        "client=127.0.0.1",
        "method=\"POST\"",
        "host=\"t\"",
        "path=\"/p/q\"",
        "query=\"a=1&b=2\"",
        "protocol=\"HTTP/1.1\"",
        "status=200",
        "bytes_in=5",
        "upstream=\"app\"",
        &format!("attempts=#1 {} first 200 ", up.addr()),
        "user_agent=\"probe/1.0\"",
        "duration_ms=",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(!line.contains("bytes_out=0"), "{line}");
    let mut d = d;
    d.child.kill().unwrap();
    let _ = d.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_have_flat_typed_fields_and_errors_carry_the_request_id() {
    let up = Upstream::start(Behavior::ok()).await.unwrap();
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = refused.local_addr().unwrap();
    drop(refused);
    let dir = support::temp_dir("access-json");
    let file = dir.join("detour.toml");
    let text = quiet(up.addr(), "json")
        .replace("[admin]\nenabled = false", "[admin]\nlisten = \"127.0.0.1:0\"")
        + &format!("[upstreams.gone]\nbackends = [{{ addr = \"{gone}\" }}]\n[[routes]]\npath_prefix = \"/gone\"\nupstream = \"gone\"\n");
    // The route to `gone` must come first to be taken.
    let text = text.replacen("[[routes]]\nupstream = \"app\"\n", "", 1)
        + "[[routes]]\nupstream = \"app\"\n";
    std::fs::write(&file, text).unwrap();
    let d = support::start_env(&file, &[("RUST_LOG", "info")]);
    assert!(
        d.admin.is_some(),
        "the serving line names the admin address"
    );
    assert_eq!(get_with(d.addr, "/x", "").await, 200);
    let access: serde_json::Value = serde_json::from_str(&line_with(&d, "detour::access")).unwrap();
    assert_eq!(access["status"], 200);
    assert_eq!(access["bytes_in"], 5);
    assert_eq!(access["request_id"], "req-42");
    assert_eq!(access["client"], "127.0.0.1");
    assert!(access["duration_ms"].is_f64(), "{access}");
    assert!(access.get("query").is_none(), "absent, not null or \"-\"");

    assert_eq!(get_with(d.addr, "/gone", "").await, 502);
    let error: serde_json::Value = serde_json::from_str(&line_with(&d, "proxy error")).unwrap();
    assert_eq!(error["request_id"], "req-42");
    let mut d = d;
    d.child.kill().unwrap();
    let _ = d.child.wait();
}

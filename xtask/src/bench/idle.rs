//! The idle-connection row: what a proxy holds per idle keep-alive client
//! connection, and what holding many of them costs its busy connections.
//!
//! Each proxy is started afresh for it, once every other load has run (memory
//! freed after those loads would be taken up again by the idle connections
//! and hide what they cost): 64 busy connections alone under wrk (which also
//! warms it), then `n` idle
//! connections opened (one request each, answered, then held), the proxy's
//! anonymous memory read before and after, the 64 busy ones again beside the
//! idle ones, and finally a second request on every held connection to show
//! the proxy kept them all open through the measurement.
//!
//! Anonymous memory (`RssAnon`) leaves out the binary's own code pages, so
//! the difference divided by `n` is what one idle connection costs.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use super::{anon_kb, family, wrk, Target};

/// Busy connections beside the idle ones.
const BUSY: usize = 64;
/// Connections opened before their requests are read back.
const BATCH: usize = 256;
/// How long one held connection may take to answer.
const ANSWER: Duration = Duration::from_secs(10);

/// One proxy's idle-connection figures.
#[derive(Debug, Clone)]
pub(super) struct IdleRow {
    pub target: String,
    /// Idle connections opened and answered.
    pub held: usize,
    /// Anonymous memory before and after opening them, in kB.
    pub anon_before_kb: u64,
    pub anon_after_kb: u64,
    /// The busy connections' p99 alone and beside the idle ones, in ms.
    pub p99_alone_ms: f64,
    pub p99_beside_ms: f64,
    /// The proxy's CPU per busy request alone and beside the idle ones, µs.
    pub cpu_alone_us: Option<f64>,
    pub cpu_beside_us: Option<f64>,
    /// Held connections that answered a second request at the end.
    pub still_open: usize,
    /// wrk's errors over both busy runs.
    pub errors: u64,
}

impl IdleRow {
    /// Anonymous memory per idle connection, in kB.
    pub fn per_conn_kb(&self) -> f64 {
        if self.held == 0 {
            return 0.0;
        }
        self.anon_after_kb.saturating_sub(self.anon_before_kb) as f64 / self.held as f64
    }
}

/// Measure one proxy with `n` idle connections beside 64 busy ones.
pub(super) fn measure(
    gen_core: Option<usize>,
    t: &Target,
    n: usize,
    d: Duration,
) -> Result<IdleRow, String> {
    let Some(proc) = t.proc.as_ref() else {
        return Err(format!("{}: nothing to measure", t.name));
    };
    let pids = family(proc.pid());
    // Warm-up (pools filled, arenas grown), then the busy ones alone.
    wrk(gen_core, t, BUSY, Duration::from_secs(2))?;
    let alone = wrk(gen_core, t, BUSY, d)?;
    let anon_before_kb = anon_kb(&pids);
    let mut held = Held::open(t.port, n)?;
    // Let the proxy finish whatever the last answers left it doing.
    thread::sleep(Duration::from_secs(1));
    let anon_after_kb = anon_kb(&pids);
    let beside = wrk(gen_core, t, BUSY, d)?;
    let still_open = held.ask_again();
    Ok(IdleRow {
        target: t.name.to_string(),
        held: held.streams.len(),
        anon_before_kb,
        anon_after_kb,
        p99_alone_ms: alone.p99_ms,
        p99_beside_ms: beside.p99_ms,
        cpu_alone_us: alone.cpu_us_per_req,
        cpu_beside_us: beside.cpu_us_per_req,
        still_open,
        errors: alone.errors + beside.errors,
    })
}

/// The idle-connection table, with each proxy's memory per idle connection
/// against the hyper floor's.
pub(super) fn table(t: &mut String, rows: &[IdleRow]) {
    let Some(first) = rows.first() else {
        return;
    };
    let n = first.held;
    let _ = writeln!(
        t,
        "\nIdle connections (`--idle {n}`), each proxy started afresh: 64 busy connections under wrk \
         alone, then {n} idle keep-alive connections opened (one request each, then held) and the 64 \
         busy ones again beside them; anonymous memory (`RssAnon`) before and after opening them; at \
         the end a second request on every held connection (\"still open\"):\n"
    );
    let _ = writeln!(
        t,
        "| target | idle conns | anon before | anon after | per idle conn | vs floor | busy p99 alone | beside | p99 ratio | busy CPU/req alone | beside | still open | errors |"
    );
    let _ = writeln!(
        t,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let floor = rows
        .iter()
        .find(|r| r.target == "hyper floor")
        .map(IdleRow::per_conn_kb);
    let cpu = |c: Option<f64>| c.map_or("–".into(), |c| format!("{c:.1} µs"));
    for r in rows {
        let vs_floor = match floor {
            Some(f) if r.target != "hyper floor" => format!("{:+.2} kB", r.per_conn_kb() - f),
            _ => String::new(),
        };
        let ratio = if r.p99_alone_ms > 0.0 {
            format!("{:.2}×", r.p99_beside_ms / r.p99_alone_ms)
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} MB | {:.1} MB | {:.2} kB | {vs_floor} | {:.2} ms | {:.2} ms | {ratio} | {} | {} | {} | {} |",
            r.target,
            r.held,
            r.anon_before_kb as f64 / 1024.0,
            r.anon_after_kb as f64 / 1024.0,
            r.per_conn_kb(),
            r.p99_alone_ms,
            r.p99_beside_ms,
            cpu(r.cpu_alone_us),
            cpu(r.cpu_beside_us),
            r.still_open,
            r.errors,
        );
    }
}

/// The open-files limit this process (and so every proxy it starts) has:
/// raised to the hard limit, or as root to `want`, then read back.
pub(super) fn raise_open_files(want: u64) -> u64 {
    let pid = std::process::id().to_string();
    // As root `prlimit` may raise the hard limit too; otherwise the soft
    // limit goes up to the hard one.
    let both = format!("--nofile={want}:{want}");
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &both])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !raised {
        let hard = open_files_limit(2).unwrap_or(0);
        let soft = format!("--nofile={hard}:{hard}");
        let _ = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &soft])
            .stderr(std::process::Stdio::null())
            .status();
    }
    open_files_limit(1).unwrap_or(0)
}

/// Field `i` of "Max open files" in `/proc/self/limits` (1 soft, 2 hard).
fn open_files_limit(i: usize) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let rest = line.strip_prefix("Max open files")?;
    rest.split_whitespace().nth(i - 1)?.parse().ok()
}

/// Client connections that each had one answered request and are held.
struct Held {
    port: u16,
    streams: Vec<TcpStream>,
}

impl Held {
    /// Open `n` connections to `port`, `BATCH` at a time: every request of a
    /// batch is written before any answer is read.
    fn open(port: u16, n: usize) -> Result<Held, String> {
        let mut held = Held {
            port,
            streams: Vec::with_capacity(n),
        };
        let started = Instant::now();
        while held.streams.len() < n {
            let batch = BATCH.min(n - held.streams.len());
            let mut fresh = Vec::with_capacity(batch);
            for _ in 0..batch {
                let mut s = TcpStream::connect(("127.0.0.1", port))
                    .map_err(|e| held.failed("connect", e))?;
                s.set_read_timeout(Some(ANSWER))
                    .and_then(|()| s.write_all(REQUEST))
                    .map_err(|e| held.failed("send", e))?;
                fresh.push(s);
            }
            for mut s in fresh {
                read_answer(&mut s).map_err(|e| held.failed("read the answer", e))?;
                held.streams.push(s);
            }
        }
        println!(
            "  {n} idle connections to port {port} open in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(held)
    }

    fn failed(&self, what: &str, e: std::io::Error) -> String {
        format!(
            "idle connection {} to port {}: {what}: {e}",
            self.streams.len() + 1,
            self.port
        )
    }

    /// Send a second request on every held connection; how many answered.
    fn ask_again(&mut self) -> usize {
        let mut answered = 0;
        for chunk in self.streams.chunks_mut(BATCH) {
            let sent: Vec<bool> = chunk
                .iter_mut()
                .map(|s| s.write_all(REQUEST).is_ok())
                .collect();
            for (s, sent) in chunk.iter_mut().zip(sent) {
                if sent && read_answer(s).is_ok() {
                    answered += 1;
                }
            }
        }
        answered
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// Read one `200` answer with a `content-length` body, no more.
fn read_answer(s: &mut TcpStream) -> std::io::Result<()> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let head_end = loop {
        let got = s.read(&mut chunk)?;
        if got == 0 {
            return Err(bad("closed before the answer"));
        }
        buf.extend_from_slice(&chunk[..got]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(bad("head too long"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(bad(head.lines().next().unwrap_or("no status line")));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad("no content-length"))?;
    let mut body = buf.len() - head_end;
    while body < length {
        let got = s.read(&mut chunk)?;
        if got == 0 {
            return Err(bad("closed inside the body"));
        }
        body += got;
    }
    if body > length {
        return Err(bad("more bytes than the answer"));
    }
    Ok(())
}

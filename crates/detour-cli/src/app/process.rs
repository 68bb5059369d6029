//! What `/metrics` says about the process itself, under the names Prometheus
//! client libraries use (`process_*`), and `detour_build_info`.
//!
//! The figures come from `/proc/self` at each scrape; on a system without it
//! they are left out rather than guessed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Describe the families, set `detour_build_info` and the start time. Call
/// once, at start, after installing the recorder.
pub fn start(version: &'static str, commit: &'static str) {
    metrics::describe_gauge!(
        "detour_build_info",
        "1, with the version and commit of the running binary as labels."
    );
    metrics::describe_gauge!(
        "process_cpu_seconds_total",
        "CPU time the process has used, user and system, in seconds."
    );
    metrics::describe_gauge!(
        "process_resident_memory_bytes",
        "Resident memory of the process, in bytes."
    );
    metrics::describe_gauge!("process_open_fds", "Open file descriptors.");
    metrics::describe_gauge!(
        "process_start_time_seconds",
        "When the process started, in seconds since the Unix epoch."
    );
    metrics::gauge!("detour_build_info", "version" => version, "commit" => commit).set(1.0);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    metrics::gauge!("process_start_time_seconds").set(started.as_secs_f64());
}

/// Read the process's CPU time, memory and descriptors now.
pub fn record() {
    if let Some(cpu) = cpu_time() {
        metrics::gauge!("process_cpu_seconds_total").set(cpu.as_secs_f64());
    }
    if let Some(rss) = resident_bytes() {
        metrics::gauge!("process_resident_memory_bytes").set(rss as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle read here is one of them.
        let open = fds.count().saturating_sub(1);
        metrics::gauge!("process_open_fds").set(open as f64);
    }
}

/// CPU time on the process's threads: the first field of
/// `/proc/self/schedstat`, in nanoseconds.
fn cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    parse_schedstat(&text)
}

fn parse_schedstat(text: &str) -> Option<Duration> {
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&text)
}

fn parse_vm_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        assert_eq!(
            parse_schedstat("170478 1753383 2\n"),
            Some(Duration::from_nanos(170_478))
        );
        assert_eq!(parse_schedstat(""), None);
        let status = "Name:\tdetour\nVmPeak:\t  9000 kB\nVmRSS:\t  4321 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(4321 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}

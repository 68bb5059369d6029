//! The markdown tables.

use std::fmt::Write as _;
use std::time::Duration;

use super::measure::{Outcome, Settled, Timing};
use super::scenario::Scenario;

/// One proxy's line in a scenario's table: its figures, or why there are none.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The proxy's name.
    pub(crate) proxy: &'static str,
    /// The figures, or the reason the run did not happen or failed.
    pub(crate) outcome: Result<Outcome, String>,
}

const HEADER: &str = "| proxy | requests | errors GET / POST | GET errors with a healthy backend | p50 | p99 | max | attempts / request | stops getting traffic | gets traffic again | duplicate POSTs | served after 1 s | attempts / request after 1 s | longest idle healthy backend |\n\
                      |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";

/// A duration as people read it: `0.42 ms`, `12.3 ms`, `402 ms`, `1.20 s`.
pub(crate) fn human(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

fn timing(t: Timing) -> String {
    match t {
        Timing::NotApplicable => "n/a".into(),
        Timing::After(d) => human(d),
        Timing::Never => "not seen".into(),
    }
}

/// One figure per fault (or repair) time, in order, or `n/a`.
fn timings(ts: &[Timing]) -> String {
    if ts.is_empty() {
        return "n/a".into();
    }
    ts.iter()
        .map(|t| timing(*t))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The three settled columns (see [`Settled`]), `n/a` where the fault is
/// too short to have a settled part.
fn settled(s: Option<Settled>) -> String {
    match s {
        None => "n/a | n/a | n/a".into(),
        Some(s) => format!(
            "{:.1} % | {:.2} | {}",
            s.served * 100.0,
            s.attempts_per_request,
            s.healthy_gap.map_or_else(|| "n/a".into(), human)
        ),
    }
}

/// The table of one scenario.
pub(crate) fn table(scenario: &Scenario, rows: &[Row]) -> String {
    let mut out = format!("### {}\n\n{}.\n\n{HEADER}", scenario.name, scenario.summary);
    for row in rows {
        // Writing to a String cannot fail.
        let _ = match &row.outcome {
            Ok(o) => writeln!(
                out,
                "| {} | {} | {} / {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} |",
                row.proxy,
                o.requests,
                o.get_errors,
                o.post_errors,
                o.unexcused_get_errors,
                human(o.latency[0]),
                human(o.latency[1]),
                human(o.latency[2]),
                o.attempts_per_request,
                timings(&o.stops),
                timings(&o.back),
                o.duplicate_posts,
                settled(o.settled),
            ),
            Err(why) => writeln!(
                out,
                "| {} | {} | | | | | | | | | | | | |",
                row.proxy,
                why.replace('|', "/")
            ),
        };
    }
    // A stall of the harness delays every request in flight; say so where
    // it could have moved the percentiles.
    let stalls: Vec<String> = rows
        .iter()
        .filter_map(|row| match &row.outcome {
            Ok(o) if o.harness_stall >= STALL_WORTH_NOTING => {
                Some(format!("{} {}", row.proxy, human(o.harness_stall)))
            }
            _ => None,
        })
        .collect();
    if !stalls.is_empty() {
        let _ = writeln!(
            out,
            "\nThe harness itself stalled (another program had the CPU) during: {}. \
             Requests in flight then were delayed by the harness, not the proxy; p99 and \
             max may show it.",
            stalls.join(", ")
        );
    }
    out
}

/// A harness stall shorter than this is within the noise of the percentiles.
const STALL_WORTH_NOTING: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::scenario;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_micros(420)), "0.42 ms");
        assert_eq!(human(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(human(Duration::from_millis(402)), "402 ms");
        assert_eq!(human(Duration::from_millis(1204)), "1.20 s");
    }

    #[test]
    fn a_table_has_a_line_per_proxy_with_every_column() {
        let Some(sc) = scenario::scenario("503", Duration::from_secs(8)) else {
            panic!("503 is a scenario");
        };
        let o = Outcome {
            requests: 100,
            posts: 25,
            get_errors: 1,
            post_errors: 2,
            unexcused_get_errors: 1,
            latency: [Duration::from_millis(1); 3],
            attempts_per_request: 1.25,
            stops: vec![Timing::After(Duration::from_millis(30))],
            back: vec![Timing::Never, Timing::After(Duration::from_millis(2))],
            duplicate_posts: 0,
            settled: Some(Settled {
                requests: 40,
                served: 0.975,
                attempts_per_request: 1.0,
                healthy_gap: Some(Duration::from_millis(12)),
            }),
            unexcused: Vec::new(),
            harness_stall: Duration::from_millis(150),
        };
        let rows = [
            Row {
                proxy: "Detour",
                outcome: Ok(o),
            },
            Row {
                proxy: "nginx",
                outcome: Err("skipped: not installed".into()),
            },
        ];
        let t = table(&sc, &rows);
        assert!(t.starts_with("### 503\n\nB answers 503"));
        assert!(t.contains(
            "| Detour | 100 | 1 / 2 | 1 | 1.0 ms | 1.0 ms | 1.0 ms | 1.25 | 30.0 ms | not seen / 2.0 ms | 0 | 97.5 % | 1.00 | 12.0 ms |"
        ));
        assert!(t.contains("| nginx | skipped: not installed |"));
        assert!(t.contains("stalled (another program had the CPU) during: Detour 150 ms."));
        let columns = |line: &str| line.matches('|').count();
        let lines: Vec<&str> = t.lines().filter(|l| l.starts_with('|')).collect();
        assert!(lines.iter().all(|l| columns(l) == columns(lines[0])));
    }
}

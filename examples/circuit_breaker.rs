//! Circuit breakers: a backend answering 503 is cut off, probed, taken back.
//!
//! Three backends behind one [`Upstream`](detour_proxy::server::upstream::Upstream)
//! whose per-backend breakers trip after 5 failures in a row, stay open 2 s,
//! then let one probe through at a time and close after 3 successful probes
//! (outlier detection is turned off so that the breaker alone acts). Every
//! breaker transition is printed as it happens.
//!
//! Backend C starts answering 503: its breaker opens after 5 of them (the
//! GETs are retried on A or B, so clients see no error), then C gets no
//! traffic. After 2 s one probe goes through; C still fails, so the breaker
//! opens again. C recovers; 2 s later three probes succeed and it closes.
//! (No active health checks here: they would also move an open breaker to
//! half-open as soon as they saw C come back.)
//!
//! ```text
//! cargo run -p examples --example circuit_breaker
//! ```
//!
//! Exits 1 if the breaker did not go closed → open → half-open → open →
//! half-open → closed, C got traffic while open, or a client saw an error.
//! (Demo plumbing — test backends, the client — is in `examples/src`.)

use std::sync::Arc;
use std::time::Duration;

use detour_proxy::breaker::Transition;
use detour_proxy::server::upstream::{Upstream as DUpstream, UpstreamConfig};
use detour_proxy::testkit::{Behavior, Upstream};
use detour_proxy::GateState;
use examples::{backends, check, ok_count, send, serve, shutdown, Fallible, Tally};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Fallible<()> {
    let t0 = Instant::now();
    let (backends, names) = backends(&["A", "B", "C"]).await?;
    let c = &backends[2];

    let up = upstream(&backends)?;
    let transitions = print_transitions(&up, names.clone(), t0)?;
    let breakers = up.breakers().ok_or("breakers are on by default")?;
    let c_breaker = breakers.breaker(c.addr()).ok_or("C has a breaker")?;

    let server = serve(Arc::clone(&up)).await?;
    let at = server.addr();
    println!("proxy on {at}\n");

    println!("1. all healthy");
    let seen = send(at, 15, &names, "").await?;
    println!("   15 requests → {seen:?}\n");

    println!("2. C answers 503 to everything");
    c.set_behavior(Behavior::status(503));
    let before = c.requests();
    let mut sent = 0;
    let mut seen = Tally::new();
    while c_breaker.state() == GateState::Closed && sent < 30 {
        for (who, n) in send(at, 1, &names, "").await? {
            *seen.entry(who).or_default() += n;
        }
        sent += 1;
    }
    println!("   {sent} requests until C's breaker opened → clients saw {seen:?}");
    println!(
        "   C answered {} of their attempts with 503",
        c.requests() - before
    );
    check(c_breaker.state() == GateState::Open, "the breaker opened")?;
    check(ok_count(&seen) == sent, "the 503s were retried on A and B")?;
    let before = c.requests();
    let seen = send(at, 30, &names, "").await?;
    println!("   30 more requests → {seen:?}");
    check(c.requests() == before, "C got nothing while open")?;
    println!();

    println!("3. 2 s later C is still failing: the half-open probe fails");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = c.requests();
    let seen = send(at, 9, &names, "").await?;
    println!("   9 requests → {seen:?}; C saw {}", c.requests() - before);
    check(c.requests() - before == 1, "exactly one probe reached C")?;
    check(
        c_breaker.state() == GateState::Open,
        "the breaker is open again",
    )?;
    println!();

    println!("4. C recovers; 2 s later the probes succeed");
    c.set_behavior(Behavior::ok());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let seen = send(at, 30, &names, "").await?;
    println!("   30 requests → {seen:?}");
    check(c_breaker.state() == GateState::Closed, "the breaker closed")?;
    check(
        seen.get("C").is_some_and(|&n| n >= 5),
        "C takes its share again",
    )?;

    shutdown(server).await?;
    let mut got = Vec::new();
    let mut transitions = transitions;
    while let Ok(t) = transitions.try_recv() {
        got.push(t);
    }
    use GateState::{Closed, HalfOpen, Open};
    let want = [
        (Closed, Open),
        (Open, HalfOpen),
        (HalfOpen, Open),
        (Open, HalfOpen),
        (HalfOpen, Closed),
    ];
    check(
        got == want,
        "transitions: closed → open → half-open → open → half-open → closed",
    )?;
    println!("\ndone in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// The upstream over the three backends: round robin, a breaker that opens
/// after 5 failures for 2 s and closes after 3 successful probes, outlier
/// detection off (so the breaker alone acts).
fn upstream(backends: &[Upstream]) -> Fallible<Arc<DUpstream>> {
    let toml = format!(
        r#"
        lb = "round_robin"
        backends = [{{ addr = "{}" }}, {{ addr = "{}" }}, {{ addr = "{}" }}]
        [breaker]
        consecutive_failures = 5
        open_for = "2s"
        jitter = 0.0
        half_open_probes = 1
        half_open_successes = 3
        [outlier]
        consecutive_5xx = 0
        consecutive_gateway_failure = 0
        consecutive_local_origin_failure = 0
        success_rate = {{ enabled = false }}
        "#,
        backends[0].addr(),
        backends[1].addr(),
        backends[2].addr()
    );
    let cfg: UpstreamConfig = toml::from_str(&toml)?;
    Ok(Arc::new(DUpstream::from_config("app", &cfg)?))
}

/// Print every breaker transition as it happens, and send it down the
/// channel returned.
fn print_transitions(
    up: &DUpstream,
    names: examples::Names,
    t0: Instant,
) -> Fallible<mpsc::UnboundedReceiver<(GateState, GateState)>> {
    let breakers = up.breakers().ok_or("breakers are on by default")?;
    let (tx, transitions) = mpsc::unbounded_channel();
    breakers.on_transition(move |t: &Transition| {
        let who = t.addr.and_then(|a| names.get(&a).copied()).unwrap_or("?");
        let open = t
            .open_for
            .map(|d| format!(", for {d:?}"))
            .unwrap_or_default();
        println!(
            "  [{:5.2}s] breaker {who}: {:?} → {:?} ({}{open})",
            t0.elapsed().as_secs_f64(),
            t.from,
            t.to,
            t.reason.as_str()
        );
        let _ = tx.send((t.from, t.to));
    });
    Ok(transitions)
}

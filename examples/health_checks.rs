//! Active health checks: a backend goes down, traffic avoids it, it comes back.
//!
//! Three backends behind one [`Upstream`](detour_proxy::server::upstream::Upstream)
//! configured from TOML, with an HTTP check of `GET /healthz` every second
//! (`fall = 2`, `rise = 2`, every 250 ms while a backend changes state).
//! Every health event is printed as it happens.
//!
//! The demo kills backend B. The requests sent at once meet B's refusal and
//! are retried on another backend, so clients see no error; passive outlier
//! detection (on by default) ejects B after 5 such failures, and about a
//! second later the active checker marks it down. B restarts: two passing
//! checks later the checker brings it back — ending the 30 s ejection too,
//! so recovery is bounded by the checks — and it gets its share again.
//!
//! ```text
//! cargo run -p examples --example health_checks
//! ```
//!
//! Exits 1 if B got traffic while down, did not come back, or a client saw an
//! error. (Demo plumbing — test backends, the client — is in `examples/src`.)

use std::sync::Arc;
use std::time::Duration;

use detour_proxy::health::EventKind;
use detour_proxy::server::upstream::{Upstream as DUpstream, UpstreamConfig};
use examples::{
    backends, check, health_events, ok_count, send, serve, shutdown, wait_for, Fallible,
};
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Fallible<()> {
    let t0 = Instant::now();
    let (backends, names) = backends(&["A", "B", "C"]).await?;
    let b = &backends[1];

    let toml = format!(
        r#"
        lb = "round_robin"
        backends = [{{ addr = "{}" }}, {{ addr = "{}" }}, {{ addr = "{}" }}]
        [health]
        kind = "http"
        path = "/healthz"
        interval = "1s"
        fast_interval = "250ms"
        timeout = "300ms"
        fall = 2
        rise = 2
        "#,
        backends[0].addr(),
        backends[1].addr(),
        backends[2].addr()
    );
    let cfg: UpstreamConfig = toml::from_str(&toml)?;
    // Prints every health event, and passes it on so the demo can wait for it.
    let (on_event, mut events) = health_events(&names, t0);
    let up = Arc::new(DUpstream::from_config_with_events("app", &cfg, on_event)?);

    let server = serve(Arc::clone(&up)).await?;
    let at = server.addr();
    println!("proxy on {at} (the first round of checks ran before it listened)\n");

    println!("1. all three backends up");
    let seen = send(at, 30, &names, "").await?;
    println!("   30 requests → {seen:?}");
    check(seen.len() == 3, "every backend takes traffic")?;

    println!("\n2. B is killed; until the checker notices, B's refusals are retried");
    b.kill().await;
    let since = Instant::now();
    let seen = send(at, 15, &names, "").await?;
    println!("   15 requests right after the kill → {seen:?}");
    check(ok_count(&seen) == 15, "clients saw no error")?;
    wait_for(&mut events, &[b.addr()], EventKind::Down).await?;
    println!(
        "   B marked down {:.2}s after the kill",
        since.elapsed().as_secs_f64()
    );
    let before = b.requests();
    let seen = send(at, 30, &names, "").await?;
    println!("   30 requests → {seen:?}");
    check(
        b.requests() == before,
        "no request reached B while it was down",
    )?;
    check(ok_count(&seen) == 30, "A and C answered everything")?;

    println!("\n3. B restarts; the checker brings it back after 2 passing checks");
    b.restart().await?;
    let since = Instant::now();
    wait_for(&mut events, &[b.addr()], EventKind::Up).await?;
    println!(
        "   B marked up {:.2}s after the restart",
        since.elapsed().as_secs_f64()
    );
    // The balancer re-reads its set's health at most every 100 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let seen = send(at, 30, &names, "").await?;
    println!("   30 requests → {seen:?}");
    check(
        seen.get("B").is_some_and(|&n| n > 0),
        "B takes traffic again",
    )?;

    shutdown(server).await?;
    println!("\ndone in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

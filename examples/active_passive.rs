//! Active-passive: a standby tier takes traffic only when the primaries fail.
//!
//! Two primaries (P1, P2: `priority = 0`) and a standby (S: `priority = 1`)
//! in one [`Upstream`](detour_proxy::server::upstream::Upstream), with
//! `[failover] kind = "priority"`, `overprovisioning = 1.4` and active
//! HTTP checks. A tier's health is its share of backends up × 1.4 (capped at
//! 100 %); it takes that share of the traffic and the rest spills to the next
//! tier. So:
//!
//! - both primaries up: 100 % primaries, the standby idles;
//! - P1 down: the primary tier is 50 % × 1.4 = 70 % healthy, S takes ~30 %;
//! - both down: S takes everything;
//! - both back: the standby idles again.
//!
//! ```text
//! cargo run -p examples --example active_passive
//! ```
//!
//! Exits 1 if the standby got traffic while the primaries were all up, or a
//! client saw an error.
//! (Demo plumbing — test backends, the client — is in `examples/src`.)

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
    let (backends, names) = backends(&["P1", "P2", "S"]).await?;
    let (p1, p2) = (&backends[0], &backends[1]);

    // The panic threshold counts the whole upstream: with only S up (1 of 3
    // backends, 33 %), the default 50 % would spread traffic over the dead
    // primaries too. Off here, so the standby alone carries the load.
    let toml = format!(
        r#"
        lb = "round_robin"
        backends = [
            {{ addr = "{}", priority = 0 }},
            {{ addr = "{}", priority = 0 }},
            {{ addr = "{}", priority = 1 }},
        ]
        panic_threshold = 0
        [failover]
        kind = "priority"
        overprovisioning = 1.4
        [health]
        path = "/healthz"
        interval = "1s"
        fast_interval = "250ms"
        timeout = "300ms"
        fall = 2
        rise = 2
        "#,
        p1.addr(),
        p2.addr(),
        backends[2].addr()
    );
    let cfg: UpstreamConfig = toml::from_str(&toml)?;
    let (on_event, mut events) = health_events(&names, t0);
    let up = Arc::new(DUpstream::from_config_with_events("app", &cfg, on_event)?);

    let server = serve(Arc::clone(&up)).await?;
    let at = server.addr();
    println!("proxy on {at}\n");
    let loads = || {
        let l = up.load_balancer().group_loads(Instant::now());
        let pct: Vec<String> = l.iter().map(|bp| format!("{}%", bp / 100)).collect();
        format!("tier loads (primary, standby): {}", pct.join(", "))
    };

    println!("1. both primaries up");
    let seen = send(at, 40, &names, "").await?;
    println!("   {} → 40 requests: {seen:?}", loads());
    check(
        !seen.contains_key("S") && seen.len() == 2,
        "the standby idles",
    )?;

    println!("\n2. P1 goes down");
    p1.kill().await;
    wait_for(&mut events, &[p1.addr()], EventKind::Down).await?;
    let seen = send(at, 40, &names, "").await?;
    println!("   {} → 40 requests: {seen:?}", loads());
    check(
        seen.contains_key("S") && ok_count(&seen) == 40,
        "S takes the share P2 alone cannot",
    )?;

    println!("\n3. P2 goes down too");
    p2.kill().await;
    wait_for(&mut events, &[p2.addr()], EventKind::Down).await?;
    let seen = send(at, 40, &names, "").await?;
    println!("   {} → 40 requests: {seen:?}", loads());
    check(seen.get("S") == Some(&40), "S carries everything")?;

    println!("\n4. both primaries come back");
    p1.restart().await?;
    p2.restart().await?;
    wait_for(&mut events, &[p1.addr(), p2.addr()], EventKind::Up).await?;
    tokio::time::sleep(Duration::from_millis(150)).await; // the tier view refreshes
    let seen = send(at, 40, &names, "").await?;
    println!("   {} → 40 requests: {seen:?}", loads());
    check(
        !seen.contains_key("S") && ok_count(&seen) == 40,
        "the standby idles again",
    )?;

    shutdown(server).await?;
    println!("\ndone in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

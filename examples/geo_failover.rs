//! Geographic failover: the local region first, then the others in order.
//!
//! Four backends in three regions behind one
//! [`Upstream`](detour_proxy::server::upstream::Upstream): W1 and W2 in `eu-west`
//! (where this proxy runs), C1 in `eu-central`, U1 in `us-east`, with
//! `[failover] kind = "locality"`, `local = "eu-west"`, `order = ["eu-central",
//! "us-east"]` and active HTTP checks. Each region takes its health share
//! (backends up × 1.4, capped at 100 %) and the rest spills to the next
//! region in order, never skipping one that can carry it:
//!
//! - all up: everything stays in `eu-west`;
//! - W1 down: `eu-west` keeps 70 %, `eu-central` takes 30 %, `us-east` none;
//! - W2 down too: `eu-central` takes everything;
//! - C1 down too: `us-east` takes everything;
//! - all back: everything returns to `eu-west`.
//!
//! ```text
//! cargo run -p examples --example geo_failover
//! ```
//!
//! Exits 1 if traffic left its region while a nearer one could carry it, or
//! a client saw an error.
//! (Demo plumbing — test backends, the client — is in `examples/src`.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use detour_proxy::health::EventKind;
use detour_proxy::server::upstream::{Upstream as DUpstream, UpstreamConfig};
use detour_proxy::testkit::Upstream;
use examples::{
    backends, check, health_events, ok_count, send, serve, shutdown, wait_for, Fallible,
};
use tokio::time::Instant;

const REGIONS: [&str; 3] = ["eu-west", "eu-central", "us-east"];

#[tokio::main]
async fn main() -> Fallible<()> {
    let t0 = Instant::now();
    let (backends, names) = backends(&["W1", "W2", "C1", "U1"]).await?;
    let [w1, w2, c1, _u1] = &backends[..] else {
        return Err("four backends".into());
    };
    let cfg = config(&backends)?;
    let (on_event, mut events) = health_events(&names, t0);
    let up = Arc::new(DUpstream::from_config_with_events("app", &cfg, on_event)?);

    let server = serve(Arc::clone(&up)).await?;
    let at = server.addr();
    println!("proxy on {at}, in eu-west\n");
    let loads = || {
        let l = up.load_balancer().group_loads(Instant::now());
        let pct: Vec<String> = l
            .iter()
            .zip(REGIONS)
            .map(|(bp, r)| format!("{r} {}%", bp / 100))
            .collect();
        pct.join(" · ")
    };
    let phases: [(&str, Vec<&Upstream>, &[&str], &str); 4] = [
        (
            "1. all regions up",
            vec![],
            &["W1", "W2"],
            "everything stays local",
        ),
        (
            "2. W1 goes down",
            vec![w1],
            &["W2", "C1"],
            "eu-central takes the overflow, us-east none",
        ),
        (
            "3. W2 goes down too",
            vec![w2],
            &["C1"],
            "eu-central takes everything",
        ),
        (
            "4. C1 goes down too",
            vec![c1],
            &["U1"],
            "us-east takes everything",
        ),
    ];
    for (title, kill, allowed, what) in phases {
        println!("{title}");
        for b in &kill {
            b.kill().await;
        }
        let addrs: Vec<SocketAddr> = kill.iter().map(|b| b.addr()).collect();
        wait_for(&mut events, &addrs, EventKind::Down).await?;
        let seen = send(at, 40, &names, "").await?;
        println!("   {} → 40 requests: {seen:?}", loads());
        let in_allowed = allowed.iter().filter_map(|b| seen.get(*b)).sum::<usize>();
        check(
            in_allowed == 40 && allowed.last().is_some_and(|b| seen.contains_key(*b)),
            what,
        )?;
        println!();
    }

    println!("5. everything comes back");
    for b in [w1, w2, c1] {
        b.restart().await?;
    }
    wait_for(
        &mut events,
        &[w1.addr(), w2.addr(), c1.addr()],
        EventKind::Up,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(150)).await; // the region view refreshes
    let seen = send(at, 40, &names, "").await?;
    println!("   {} → 40 requests: {seen:?}", loads());
    check(
        ok_count(&seen) == 40 && seen.keys().all(|k| k.starts_with('W')),
        "everything is local again",
    )?;

    shutdown(server).await?;
    println!("\ndone in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Round robin over W1, W2 (eu-west), C1 (eu-central) and U1 (us-east),
/// failing over by locality from eu-west, with fast health checks.
fn config(backends: &[Upstream]) -> Fallible<UpstreamConfig> {
    let regions = [REGIONS[0], REGIONS[0], REGIONS[1], REGIONS[2]];
    let specs: Vec<String> = backends
        .iter()
        .zip(regions)
        .map(|(b, r)| format!(r#"{{ addr = "{}", locality = "{r}" }}"#, b.addr()))
        .collect();
    // The panic threshold counts the whole upstream: with 1 of 4 backends up
    // the default 50 % would spread traffic over dead ones. Off here.
    let toml = format!(
        r#"
        lb = "round_robin"
        backends = [{}]
        panic_threshold = 0
        [failover]
        kind = "locality"
        local = "eu-west"
        order = ["eu-central", "us-east"]
        [health]
        path = "/healthz"
        interval = "1s"
        fast_interval = "250ms"
        timeout = "300ms"
        fall = 2
        rise = 2
        "#,
        specs.join(", ")
    );
    Ok(toml::from_str(&toml)?)
}

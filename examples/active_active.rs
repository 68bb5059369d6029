//! Active-active with consistent hashing: users stick to a backend, move when
//! it dies, and come back when it returns.
//!
//! Three backends, all taking traffic, behind one
//! [`Upstream`](detour_proxy::server::upstream::Upstream) with `lb = "maglev"` and
//! `hash_key = "header:x-user"`: every request of a user goes to the same
//! backend (good for caches and sessions). With active HTTP checks, a backend
//! that dies is skipped: only *its* users are rehashed, each to one other
//! backend, and everyone else stays where they were. When it comes back, its
//! users return to it.
//!
//! ```text
//! cargo run -p examples --example active_active
//! ```
//!
//! Exits 1 if a user's requests were split between backends, a user not on
//! the dead backend moved, the mapping did not come back, or a client saw an
//! error.
//! (Demo plumbing — test backends, the client — is in `examples/src`.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use detour_proxy::health::EventKind;
use detour_proxy::server::upstream::{Upstream as DUpstream, UpstreamConfig};
use examples::{backends, check, health_events, send, serve, shutdown, wait_for, Fallible, Names};
use tokio::time::Instant;

const USERS: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];

#[tokio::main]
async fn main() -> Fallible<()> {
    let t0 = Instant::now();
    let (backends, names) = backends(&["A", "B", "C"]).await?;

    let toml = format!(
        r#"
        lb = "maglev"
        hash_key = "header:x-user"
        backends = [{{ addr = "{}" }}, {{ addr = "{}" }}, {{ addr = "{}" }}]
        [health]
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
    let (on_event, mut events) = health_events(&names, t0);
    let up = Arc::new(DUpstream::from_config_with_events("app", &cfg, on_event)?);

    let server = serve(Arc::clone(&up)).await?;
    let at = server.addr();
    println!("proxy on {at}; each user sends 5 requests per round\n");

    println!("1. all three backends up");
    let home = round(at, &names).await?;
    let victim = home[USERS[0]].clone();
    let dead = backends
        .iter()
        .find(|b| names.get(&b.addr()).is_some_and(|n| *n == victim))
        .ok_or("the victim is one of ours")?;

    println!("\n2. {victim} (home of {}) dies", USERS[0]);
    dead.kill().await;
    wait_for(&mut events, &[dead.addr()], EventKind::Down).await?;
    let moved = round(at, &names).await?;
    let (orphans, others): (Vec<&str>, Vec<&str>) =
        USERS.into_iter().partition(|u| home[u] == victim);
    check(
        orphans.iter().all(|u| moved[u] != victim),
        &format!("{victim}'s users {orphans:?} moved, each to one other backend"),
    )?;
    check(
        others.iter().all(|u| moved[u] == home[u]),
        &format!("everyone else {others:?} stayed put"),
    )?;

    println!("\n3. {victim} comes back");
    dead.restart().await?;
    wait_for(&mut events, &[dead.addr()], EventKind::Up).await?;
    tokio::time::sleep(Duration::from_millis(150)).await; // the health view refreshes
    let back = round(at, &names).await?;
    check(back == home, "every user is home again")?;

    shutdown(server).await?;
    println!("\ndone in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Every user sends 5 requests; the one backend each user landed on (an
/// error if a user's requests were split between backends, or failed).
async fn round(proxy: SocketAddr, names: &Names) -> Fallible<BTreeMap<&'static str, String>> {
    let mut map = BTreeMap::new();
    for user in USERS {
        let seen = send(proxy, 5, names, &format!("x-user: {user}\r\n")).await?;
        match seen.into_iter().collect::<Vec<_>>().as_slice() {
            [(who, 5)] if !who.starts_with("HTTP") => map.insert(user, who.clone()),
            other => return Err(format!("{user}'s requests went to {other:?}").into()),
        };
    }
    let line: Vec<String> = map.iter().map(|(u, b)| format!("{u}→{b}")).collect();
    println!("   {}", line.join("  "));
    Ok(map)
}

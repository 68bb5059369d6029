//! Hedged requests under tokio's paused clock, over the in-memory
//! connector: when the hedge starts, which answer wins, what is cancelled,
//! and which requests are never hedged.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use detour_core::hedge::{HedgeConfig, HedgeDelay, Hedging};
use detour_core::{
    AttemptOutcome, Error, ErrorKind, HttpPeer, Observer, ProxyHttp, Result, RetryBudgetGate,
    RetryPolicy, Session,
};
use detour_server::HttpProxy;
use detour_testkit::memory::{MemBehavior, MemoryConnector, MemoryNet};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

/// A budget of `n` hedges.
struct Tokens(AtomicU32);

impl RetryBudgetGate for Tokens {
    fn deposit(&self, _: Instant) {}
    fn try_withdraw(&self, _: Instant) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Tries each backend in order, every peer hedged by `hedging`; keeps each
/// request's attempt history; `hedge` is what a hook says, if anything.
struct Hedged {
    backends: Vec<SocketAddr>,
    hedging: Arc<Hedging>,
    hedge: Option<bool>,
    history: Arc<Mutex<Vec<String>>>,
    /// How long choosing a peer takes after the first attempt began.
    slow_choice: Duration,
}

impl ProxyHttp for Hedged {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, s: &mut Session, _: &mut ()) -> Result<HttpPeer> {
        if let Some(on) = self.hedge {
            s.set_hedging(on);
        }
        if !s.attempts().is_empty() {
            tokio::time::sleep(self.slow_choice).await;
        }
        let addr = self
            .backends
            .iter()
            .find(|a| !s.was_tried(**a))
            .or(self.backends.first())
            .copied()
            .ok_or_else(|| Error::internal(ErrorKind::NoPeer))?;
        Ok(HttpPeer::new(addr, "app").with_hedging(Arc::clone(&self.hedging)))
    }
    fn logging(&self, s: &mut Session, _: Option<&Error>, _: &mut ()) {
        self.history.lock().unwrap().push(s.planner().to_string());
    }
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 80))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Every attempt outcome reported to observers: address, status.
#[derive(Default)]
struct Charged(Mutex<Vec<(SocketAddr, Option<u16>)>>);

impl Observer for Charged {
    fn on_attempt(&self, o: &AttemptOutcome<'_>) {
        self.0.lock().unwrap().push((o.addr, o.status));
    }
}

struct Setup {
    proxy: HttpProxy<Hedged, MemoryConnector>,
    history: Arc<Mutex<Vec<String>>>,
    charged: Arc<Charged>,
}

fn setup(net: &MemoryNet, tokens: u32, hedge: Option<bool>, config: HedgeConfig) -> Setup {
    setup_with(net, tokens, hedge, config, Duration::ZERO)
}

fn setup_with(
    net: &MemoryNet,
    tokens: u32,
    hedge: Option<bool>,
    config: HedgeConfig,
    slow_choice: Duration,
) -> Setup {
    let hedging = Arc::new(Hedging::new(
        config.validate().unwrap(),
        Arc::new(Tokens(AtomicU32::new(tokens))),
    ));
    let history = Arc::new(Mutex::new(Vec::new()));
    let charged = Arc::new(Charged::default());
    let mut server = support::base_config();
    let mut policy = RetryPolicy::default();
    policy.jitter = 0.0;
    server.retry = policy;
    let proxy = HttpProxy::builder(Hedged {
        backends: vec![addr(1), addr(2), addr(3)],
        hedging,
        hedge,
        history: Arc::clone(&history),
        slow_choice,
    })
    .config(server)
    .connector(net.connector())
    .observer(Arc::clone(&charged) as Arc<dyn Observer>)
    .build();
    Setup {
        proxy,
        history,
        charged,
    }
}

fn after(delay: u64) -> HedgeConfig {
    let mut c = HedgeConfig::default();
    c.delay = HedgeDelay::Fixed(ms(delay));
    c
}

async fn send(s: &Setup, method: &str, headers: &[(&str, &str)]) -> (u16, Duration) {
    let mut req = http::Request::builder()
        .method(method)
        .uri("http://example/x")
        .header("host", "example");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let t0 = Instant::now();
    let resp = s
        .proxy
        .handle(req.body(Full::new(Bytes::new())).unwrap(), None)
        .await;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    (status, t0.elapsed())
}

fn last(s: &Setup) -> String {
    s.history.lock().unwrap().last().cloned().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_is_hedged_and_the_first_answer_wins() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::slow(200, ms(400)));
    net.set(addr(2), MemBehavior::status(200));
    let s = setup(&net, 10, None, after(30));
    assert_eq!(send(&s, "GET", &[]).await, (200, ms(30)));
    assert_eq!((net.requests(addr(1)), net.requests(addr(2))), (1, 1));
    let h = last(&s);
    assert!(
        h.starts_with(&format!("#1 {} first cancelled 30.0ms", addr(1))),
        "{h}"
    );
    assert!(
        h.contains(&format!("#2 {} hedge 200 0.0ms", addr(2))),
        "{h}"
    );
    // The cancelled attempt is reported to no observer: no backend's failure.
    assert_eq!(*s.charged.0.lock().unwrap(), [(addr(2), Some(200))]);
}

#[tokio::test(start_paused = true)]
async fn an_answer_in_time_is_not_hedged() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::slow(200, ms(10)));
    let s = setup(&net, 10, None, after(30));
    assert_eq!(send(&s, "GET", &[]).await, (200, ms(10)));
    assert_eq!(net.requests(addr(2)), 0);
}

#[tokio::test(start_paused = true)]
async fn a_retriable_status_leaves_the_hedge_running() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::slow(503, ms(50)));
    net.set(addr(2), MemBehavior::slow(200, ms(100)));
    let s = setup(&net, 10, None, after(30));
    // The 503 at 50 ms does not win; the hedge's 200 at 130 ms does.
    assert_eq!(send(&s, "GET", &[]).await, (200, ms(130)));
    let h = last(&s);
    assert!(h.contains("first 503 50.0ms superseded"), "{h}");
    assert!(h.contains("hedge 200 100.0ms"), "{h}");
    // The superseded 503 is charged like any answer.
    assert_eq!(
        *s.charged.0.lock().unwrap(),
        [(addr(1), Some(503)), (addr(2), Some(200))]
    );
    assert_eq!(
        net.requests(addr(3)),
        0,
        "nothing retried once the hedge won"
    );
}

#[tokio::test(start_paused = true)]
async fn up_to_max_extra_hedges_fly_together() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::slow(200, ms(400)));
    net.set(addr(2), MemBehavior::slow(200, ms(400)));
    net.set(addr(3), MemBehavior::status(200));
    let mut c = after(30);
    c.max_extra = 2;
    let s = setup(&net, 10, None, c);
    assert_eq!(send(&s, "GET", &[]).await, (200, ms(60)));
    let h = last(&s);
    assert_eq!(h.matches("cancelled").count(), 2, "{h}");
    // One hedge only by default: the second waits out the first.
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::slow(200, ms(400)));
    net.set(addr(2), MemBehavior::slow(200, ms(400)));
    net.set(addr(3), MemBehavior::status(200));
    let s = setup(&net, 10, None, after(30));
    assert_eq!(send(&s, "GET", &[]).await, (200, ms(400)));
    assert_eq!(net.requests(addr(3)), 0);
}

#[tokio::test(start_paused = true)]
async fn unsafe_keyed_unbudgeted_or_switched_off_requests_are_not_hedged() {
    // Method, headers, hedge tokens, the hook's word.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        u32,
        Option<bool>,
    );
    let cases: [Case; 5] = [
        ("POST", &[], 10, None),
        ("PUT", &[], 10, None),
        ("GET", &[("idempotency-key", "k1")], 10, None),
        ("GET", &[], 0, None),
        ("GET", &[], 10, Some(false)),
    ];
    for (method, headers, tokens, hook) in cases {
        let net = MemoryNet::new();
        net.set(addr(1), MemBehavior::slow(200, ms(400)));
        net.set(addr(2), MemBehavior::status(200));
        let s = setup(&net, tokens, hook, after(30));
        let got = send(&s, method, headers).await;
        assert_eq!(
            got,
            (200, ms(400)),
            "{method} {headers:?} {tokens} {hook:?}"
        );
        assert_eq!(net.requests(addr(2)), 0, "{method} {headers:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hook_can_hedge_a_method_left_off_the_list_if_it_is_safe() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::slow(200, ms(400)));
    net.set(addr(2), MemBehavior::status(200));
    // PUT is safe to retry by the default policy, not listed for hedging.
    let s = setup(&net, 10, Some(true), after(30));
    assert_eq!(send(&s, "PUT", &[]).await, (200, ms(30)));
    // POST is not safe: a hook cannot make it hedged.
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::slow(200, ms(400)));
    net.set(addr(2), MemBehavior::status(200));
    let s = setup(&net, 10, Some(true), after(30));
    assert_eq!(send(&s, "POST", &[]).await, (200, ms(400)));
}

#[tokio::test(start_paused = true)]
async fn an_answer_that_comes_while_a_hedge_is_set_up_wins_at_once() {
    let net = MemoryNet::new();
    net.set(addr(1), MemBehavior::slow(200, ms(40)));
    net.set(addr(2), MemBehavior::status(200));
    // Choosing the hedge's backend takes 100 ms (a busy concurrency limit,
    // a slow hook): the first answer, at 40 ms, does not wait for it.
    let s = setup_with(&net, 10, None, after(30), ms(100));
    assert_eq!(send(&s, "GET", &[]).await, (200, ms(40)));
    assert_eq!(net.requests(addr(2)), 0);
    let h = last(&s);
    assert!(
        h.starts_with(&format!("#1 {} first 200 40.0ms", addr(1))),
        "{h}"
    );
}

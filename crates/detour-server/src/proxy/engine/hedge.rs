//! Hedged requests: the first attempt of a request its upstream hedges,
//! with more attempts to other backends started while it is late
//! ([`detour_core::hedge`]).
//!
//! Each attempt is opened (connection, hooks, request head) with the
//! request's state borrowed, then flies on its own: a boxed future that
//! borrows nothing of the request, so several are in flight together. The
//! first answer the planner would deliver wins and the others are dropped
//! (an HTTP/1.1 connection closes and is never pooled; an HTTP/2 stream is
//! reset) and recorded as cancelled, charged to no backend. An attempt that
//! fails while others fly is settled and charged like any failure, and the
//! others carry on. The survivor goes back to the engine's loop, which
//! settles it and decides on retries as for any attempt.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use detour_core::{AttemptId, BoxError, CommitPoint, Hedging, HttpPeer, ProxyHttp};
use http_body::Body;
use tokio::time::Instant;

use super::{limit_of, timed_out, within, AttemptErr, AttemptOk, Mode, Progress};
use crate::proxy::body::{ClientClock, RequestBody};
use crate::proxy::exchange::Exchange;
use crate::proxy::HttpProxy;
use crate::upstream::Connect;

type Flight<'a> = Pin<Box<dyn Future<Output = Result<AttemptOk, AttemptErr>> + Send + 'a>>;

/// An attempt in flight.
struct Flying<'a> {
    id: AttemptId,
    peer: HttpPeer,
    begun: Instant,
    hedge: bool,
    fut: Flight<'a>,
}

/// The attempt the engine's loop settles: the winner, the last one left,
/// or the first attempt when it could not even be opened.
pub(super) struct Survivor {
    pub(super) id: AttemptId,
    pub(super) peer: HttpPeer,
    pub(super) begun: Instant,
    pub(super) result: Result<AttemptOk, AttemptErr>,
}

/// How a hedge's setup ended: a flight came down first, or the hedge flies
/// (`None`: no hedge after all).
#[allow(clippy::large_enum_variant)] // made once per hedge, moved once
enum Setup<'a> {
    Came(Event),
    Done(Option<Flying<'a>>),
}

// Unboxed on purpose: made once per flight that comes down, and moved once.
#[allow(clippy::large_enum_variant)]
enum Event {
    /// Flight `usize` came down.
    Done(usize, Result<AttemptOk, AttemptErr>),
    /// Time for the next hedge.
    Hedge,
}

/// The hedge counter of `upstream`: `event` is `started`, `won` or
/// `cancelled`.
fn count(upstream: &str, event: &'static str) {
    metrics::counter!(
        "detour_hedges_total",
        "upstream" => upstream.to_string(),
        "event" => event,
    )
    .increment(1);
}

impl<P: ProxyHttp, C: Connect> HttpProxy<P, C> {
    /// The first attempt `id` to `peer`, begun at `begun`, hedged by
    /// `hedging` until one answer wins or one attempt is left.
    pub(super) async fn hedged<B>(
        &self,
        ex: &mut Exchange<P>,
        (id, peer, begun): (AttemptId, HttpPeer, Instant),
        hedging: Arc<Hedging>,
        mode: Mode,
        body: &mut Option<RequestBody<B>>,
    ) -> Survivor
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let mut flying = Vec::with_capacity(2);
        match self.launch(ex, (id, peer, begun), mode, false).await {
            Ok(f) => flying.push(f),
            Err(s) => return s,
        }
        let mut extra = 0;
        let rearm = |from: Instant, extra: u32| {
            (extra < hedging.max_extra())
                .then(|| from.checked_add(hedging.delay()))
                .flatten()
        };
        let mut next_hedge = rearm(begun, extra);
        let mut came: Option<Event> = None;
        loop {
            let event = match came.take() {
                Some(e) => e,
                None => next_event(&mut flying, next_hedge).await,
            };
            match event {
                Event::Hedge => {
                    extra += 1;
                    next_hedge = None;
                    // The flights are watched while the hedge is set up (a
                    // backend chosen, maybe a connection opened): an answer
                    // that comes first wins and the setup is dropped.
                    let busy: Vec<SocketAddr> = flying.iter().map(|f| f.peer.addr).collect();
                    let setup = tokio::select! {
                        biased;
                        e = next_event(&mut flying, None) => Setup::Came(e),
                        f = self.hedge_one(ex, &hedging, &busy, mode, body) => Setup::Done(f),
                    };
                    match setup {
                        Setup::Came(e) => {
                            self.cancel_unflown(ex, &flying);
                            came = Some(e);
                        }
                        Setup::Done(Some(f)) => {
                            flying.push(f);
                            next_hedge = rearm(Instant::now(), extra);
                        }
                        Setup::Done(None) => {}
                    }
                }
                Event::Done(i, result) => {
                    let f = flying.swap_remove(i);
                    let wins = deliverable(ex, &result);
                    if flying.is_empty() || wins {
                        let now = Instant::now();
                        for other in flying.drain(..) {
                            ex.session.plan_mut(ex.key).cancel(other.id, now);
                            count(&other.peer.upstream, "cancelled");
                            // At least this slow: a sample for the delay,
                            // which would learn only the fast answers else.
                            hedging.observe(now.saturating_duration_since(other.begun));
                        }
                        if f.hedge && wins {
                            count(&f.peer.upstream, "won");
                        }
                        return Survivor {
                            id: f.id,
                            peer: f.peer,
                            begun: f.begun,
                            result,
                        };
                    }
                    self.supersede(ex, f.id, f.peer, result, body, f.begun);
                }
            }
        }
    }

    /// Start one hedge, to a backend none of the attempts in flight (at
    /// `busy`) went to, if the upstream has one and the budget allows.
    async fn hedge_one<'a, B>(
        &'a self,
        ex: &mut Exchange<P>,
        hedging: &Hedging,
        busy: &[SocketAddr],
        mode: Mode,
        body: &mut Option<RequestBody<B>>,
    ) -> Option<Flying<'a>>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let proxy = &*self.shared.proxy;
        let peer = proxy
            .upstream_peer(&mut ex.session, &mut ex.ctx)
            .await
            .ok()?;
        let now = Instant::now();
        if busy.contains(&peer.addr) || !hedging.try_withdraw(now) {
            return None;
        }
        let id = ex
            .session
            .plan_mut(ex.key)
            .begin_hedge(peer.addr, peer.pick(), now);
        count(&peer.upstream, "started");
        match self.launch(ex, (id, peer, now), mode, true).await {
            Ok(f) => Some(f),
            Err(s) => {
                self.supersede(ex, s.id, s.peer, s.result, body, s.begun);
                None
            }
        }
    }

    /// Cancel the attempts the planner holds in flight that are not in
    /// `flying`: a hedge whose setup was dropped half-way.
    fn cancel_unflown(&self, ex: &mut Exchange<P>, flying: &[Flying<'_>]) {
        let now = Instant::now();
        let unflown: Vec<AttemptId> = ex
            .session
            .planner()
            .attempts()
            .iter()
            .filter(|a| a.outcome.is_none() && flying.iter().all(|f| f.id != a.id))
            .map(|a| a.id)
            .collect();
        for id in unflown {
            ex.session.plan_mut(ex.key).cancel(id, now);
            if let Some(f) = flying.first() {
                count(&f.peer.upstream, "cancelled");
            }
        }
    }

    /// Open attempt `id` to `peer` and send it on its flight; the attempt
    /// as a survivor when it fails before it flies.
    async fn launch<'a>(
        &'a self,
        ex: &mut Exchange<P>,
        (id, peer, begun): (AttemptId, HttpPeer, Instant),
        mode: Mode,
        hedge: bool,
    ) -> Result<Flying<'a>, Survivor> {
        let (limit, binds) = limit_of(&ex.session, &peer, begun);
        let clock = ClientClock::new(begun);
        let mut progress = Progress {
            commit: CommitPoint::NotConnected,
            reused: false,
            clock: &clock,
        };
        let opening = self.open(
            &mut ex.session,
            &mut ex.ctx,
            &peer,
            false,
            mode,
            &mut progress,
        );
        let opened = match within(opening, limit, &clock, None).await {
            Some(Ok(o)) => o,
            failed => {
                let err = match failed {
                    Some(Err(e)) => e,
                    _ => timed_out(binds, &progress),
                };
                return Err(Survivor {
                    id,
                    peer,
                    begun,
                    result: Err(err),
                });
            }
        };
        let reused = opened.reused;
        let fut: Flight<'a> = Box::pin(async move {
            let clock = ClientClock::new(begun);
            let mut progress = Progress {
                commit: CommitPoint::Connected,
                reused,
                clock: &clock,
            };
            let flown = within(self.flight(opened, &mut progress), limit, &clock, None).await;
            flown.unwrap_or_else(|| Err(timed_out(binds, &progress)))
        });
        Ok(Flying {
            id,
            peer,
            begun,
            hedge,
            fut,
        })
    }

    /// Settle attempt `id`, which came down while another flies: charged
    /// like any attempt, with no decision of its own.
    fn supersede<B>(
        &self,
        ex: &mut Exchange<P>,
        id: AttemptId,
        peer: HttpPeer,
        result: Result<AttemptOk, AttemptErr>,
        body: &mut Option<RequestBody<B>>,
        begun: Instant,
    ) where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        // What it left (a held answer, its connection) is dropped: closed.
        let mut held = None;
        drop(self.settle(ex, id, peer, result, body, begun, &mut held));
        drop(held);
        ex.session.plan_mut(ex.key).supersede(id);
    }
}

/// Whether `result` would go to the client as it is: an answer whose
/// status the policy does not retry. A failure, or a retriable status, lets
/// the other attempts run on.
fn deliverable<P: ProxyHttp>(ex: &Exchange<P>, result: &Result<AttemptOk, AttemptErr>) -> bool {
    let Ok(ok) = result else {
        return false;
    };
    let status = ok.head.status.as_u16();
    !ex.session
        .planner()
        .policy()
        .is_some_and(|p| p.retries_status(status))
}

/// The first flight to come down, or the hedge timer at `hedge_at`.
async fn next_event(flying: &mut [Flying<'_>], hedge_at: Option<Instant>) -> Event {
    let mut timer = std::pin::pin!(hedge_at.map(tokio::time::sleep_until));
    poll_fn(|cx| {
        for (i, f) in flying.iter_mut().enumerate() {
            if let Poll::Ready(r) = f.fut.as_mut().poll(cx) {
                return Poll::Ready(Event::Done(i, r));
            }
        }
        if let Some(t) = timer.as_mut().as_pin_mut() {
            if t.poll(cx).is_ready() {
                return Poll::Ready(Event::Hedge);
            }
        }
        Poll::Pending
    })
    .await
}

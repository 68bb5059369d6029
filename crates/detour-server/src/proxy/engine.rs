//! The request path: hooks, attempts, and the response.
//!
//! The engine drives the request's [`Planner`](detour_core::Planner), which
//! makes every decision about attempts (see [`detour_core::plan`]): `run`
//! calls the request hooks, `drive` loops — attempt (connect, send, await),
//! settle (the hook that may change the outcome, then the planner, then the
//! charge to the backend), ask for the next, choose a peer, wait — and
//! `deliver` (after `shape_answer` and `response_hooks`) or `answer_error`
//! answers. No retry rule lives here.
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use detour_core::hops;
use detour_core::plan::{Choice, Limits, Report};
use detour_core::retry::{parse_retry_after, NoRetry};
use detour_core::{
    AttemptId, BoxError, CommitPoint, Decision, Error, ErrorKind, HttpPeer, Outcome, ProxyHttp,
    RetryHint, Session,
};
use detour_core::{Hedging, RemovalCap, Spread};
use http::header::{self, HeaderValue};
use http::{response, Request, Response, StatusCode};
use http_body::Body;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

mod hedge;

use super::body::{
    ClientClock, ClientLimits, Finish, ProxyBody, PumpError, RequestBody, Rest, Upload,
};
use super::charge::{charge, Charge};
use super::exchange::Exchange;
use super::forward::{self, strip_hop_by_hop};
use super::{grpc, path, tunnel, HttpProxy};
use crate::config::Http1Client;
use crate::lazy_timer::{Lent, SpareTimer};
use crate::upstream::dial::{self, Conn};
use crate::upstream::native::SendFailed;
use crate::upstream::pool::{keep_alive_limit, PoolConn};
use crate::upstream::response::UpBody;
use crate::upstream::{Connect, UpFrame, UpstreamBody};

/// An RFC 8941 string: quoted, with `"` and `\\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A `Proxy-Status` member (RFC 9209): this proxy, a detail parameter, the
/// upstream by name (never its address), and `retried` when retrying this
/// request was this hop's job and it is done ([`detour_core::hops`]).
fn proxy_status(
    proxy: &str,
    detail: Option<&str>,
    upstream: Option<&str>,
    retried: Option<u32>,
) -> Option<HeaderValue> {
    let mut v = proxy.to_string();
    if let Some(d) = detail {
        v.push_str("; ");
        v.push_str(d);
    }
    if let Some(u) = upstream {
        v.push_str("; next-hop=");
        v.push_str(&sf_string(u));
    }
    if let Some(n) = retried {
        v.push_str(&format!("; {}={n}", hops::RETRIED_PARAM));
    }
    HeaderValue::from_str(&v).ok()
}

/// The passive-removal cap of the upstream of `peer`'s backend: it counts the
/// upstream's members and keeps its failure spread.
fn cap_of(peer: &HttpPeer) -> Option<&Arc<RemovalCap>> {
    peer.backend().and_then(|b| b.state().removal_cap())
}

/// Backends in the upstream of `peer`'s backend, when it keeps count.
fn members_of(peer: &HttpPeer) -> Option<u32> {
    cap_of(peer).map(|cap| cap.total())
}

/// How failure is spread over the upstream of `peer`'s backend (normal
/// when the peer carries no backend, or its upstream keeps no spread).
fn spread_of(peer: &HttpPeer) -> Spread {
    cap_of(peer).map_or(Spread::Normal, |cap| cap.spread().last().spread)
}

pin_project_lite::pin_project! {
    /// `fut`, unless it is still running at `limit` plus the time `clock`
    /// says was spent waiting for the client (`None` then). A future of its
    /// own rather than an `async fn`, which would hold `fut` twice (the
    /// argument, and the pinned copy it polls) and copy it between them.
    struct Within<'c, F> {
        #[pin]
        fut: F,
        // The timer, unless the connection lent its spare one: made but
        // never set then (a timer is only registered when first polled).
        #[pin]
        own: tokio::time::Sleep,
        lent: Option<Lent<'c>>,
        limit: Instant,
        clock: &'c ClientClock,
    }
}

/// `fut` within `limit` (see [`Within`]), timed by `lent` when the
/// connection lent its spare timer (set for `limit`: see
/// [`SpareTimer::lend`], called before `fut` is made, which keeps `fut`
/// from being copied into place).
fn within<'c, F: Future>(
    fut: F,
    limit: Instant,
    clock: &'c ClientClock,
    lent: Option<Lent<'c>>,
) -> Within<'c, F> {
    Within {
        fut,
        own: tokio::time::sleep_until(limit),
        lent,
        limit,
        clock,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Some(v));
        }
        // While the client is being waited for, the limit keeps moving: each
        // time the timer fires, it is set again to where the limit now is.
        let mut timer = match this.lent {
            Some(lent) => lent.sleep(),
            None => this.own,
        };
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let due = *this.limit + this.clock.client_time(now);
            if due <= now {
                return Poll::Ready(None);
            }
            timer.as_mut().reset(due);
        }
        Poll::Pending
    }
}

/// A response head arrived.
pub(crate) struct AttemptOk {
    head: response::Parts,
    /// The head's hop-by-hop fields, found when its framing was checked.
    hop: forward::HopByHop,
    /// The body, carrying its HTTP/1.1 connection to pool once it is read
    /// (an HTTP/2 connection stays in its own pool all along).
    body: UpBody,
    reused: bool,
    /// The response head came before the whole request body went up: the
    /// channel that still needs the rest of it.
    upload: Option<tokio::sync::mpsc::Sender<UpFrame>>,
    /// A gRPC answer whose outcome waits for its trailers (boxed: rare,
    /// and this travels with every answer).
    grpc: Option<Box<grpc::Pending>>,
}

/// An attempt failed, having got as far as `commit`.
pub(crate) struct AttemptErr {
    err: Error,
    commit: CommitPoint,
    reused: bool,
    /// The failure happened while connecting (so `fail_to_connect` is the hook).
    connecting: bool,
}

impl AttemptErr {
    fn new(err: Error, commit: CommitPoint, reused: bool) -> Self {
        AttemptErr {
            err,
            commit,
            reused,
            connecting: false,
        }
    }
}

/// An attempt ready to send: its connection and request head.
struct Opened {
    sender: Conn,
    head: http::request::Parts,
    reused: bool,
}

/// How one attempt is made.
#[derive(Clone, Copy)]
struct Mode {
    /// Open a fresh connection rather than take a pooled one.
    fresh: bool,
    /// The HTTP/1.1 client a new connection gets.
    h1: Http1Client,
}

/// How far the attempt in progress got, readable after it was cut by a timeout.
struct Progress<'c> {
    commit: CommitPoint,
    reused: bool,
    /// Told how long the attempt waited for the client's body.
    clock: &'c ClientClock,
}

/// An upstream response with its peer and any unfinished upload: kept back
/// while a retry is considered (if none happens, the client gets it as it is),
/// or on its way to the client. It stays in one place, a slot of the
/// request's future that `drive` fills, from its attempt to the answer:
/// each move of it whole was a copy of some 400 bytes.
struct Held<P: ProxyHttp> {
    ok: AttemptOk,
    peer: HttpPeer,
    rest: Option<Box<dyn Upload<P>>>,
}

/// What [`HttpProxy::shape_answer`] learned from an upstream head before
/// rewriting it.
struct Shaped {
    /// How long its connection may stay pooled.
    keep_for: Duration,
    /// The backend asked to close the connection.
    upstream_closes: bool,
    /// A `101 Switching Protocols`.
    switching: bool,
}

/// A settled attempt: what it left, the wait its `Retry-After` asks for,
/// and its upstream's limits as they stand after its report.
struct Settled {
    left: Left,
    retry_after: Option<Duration>,
    spread: Spread,
    members: Option<u32>,
    /// When it settled.
    ended: Instant,
}

/// How the attempts ended.
enum Ended {
    /// Pass the held upstream response on; `retriable`: a retriable status
    /// that was not retried (it carries `Proxy-Status`).
    Answer(bool),
    /// Answer with this error, from the upstream named.
    Error(Error, Option<Arc<str>>),
}

/// What one settled attempt left behind while the next is considered.
enum Left {
    /// A response head, held (a retriable status, unless delivered).
    Answer,
    /// A failure, with its upstream's name.
    Failed(Error, Arc<str>),
}

impl Left {
    /// The attempts end here: the held answer goes on as it is, or the
    /// failure becomes the error answered (a spent budget says so).
    fn end(self, why: Option<NoRetry>) -> Ended {
        match self {
            Left::Answer => Ended::Answer(why.is_some()),
            Left::Failed(err, upstream) => {
                tracing::debug!(error = %err.chain(), why = why.map(NoRetry::as_str), "not retrying");
                let err = match why {
                    Some(NoRetry::BudgetExhausted) => {
                        Error::internal(ErrorKind::BudgetExhausted).context("retry budget spent")
                    }
                    _ => err,
                };
                Ended::Error(err, Some(upstream))
            }
        }
    }
}

impl<P: ProxyHttp, C: Connect> HttpProxy<P, C> {
    /// Proxy one request: run the hooks, try upstreams, and answer.
    ///
    /// Never fails: every error becomes a response (a 4xx for a bad request,
    /// 502/503/504 with `Proxy-Status` when no upstream answered).
    ///
    /// Cancel safety: dropping the future before it resolves drops the
    /// attempt in flight (its connection is not pooled, its backend is not
    /// charged) and still runs the `logging` hook, once.
    pub fn handle<B>(
        &self,
        req: Request<B>,
        client: Option<SocketAddr>,
    ) -> impl Future<Output = Response<ProxyBody<P>>> + Send + '_
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        self.handle_from(req, client, false, None)
    }

    /// [`handle`](Self::handle) for a client that came over TLS when `tls`;
    /// the attempts use `spare`, the connection's spare timer, when given
    /// (a connection that serves one request at a time).
    pub(crate) fn handle_from<'s, B>(
        &'s self,
        req: Request<B>,
        client: Option<SocketAddr>,
        tls: bool,
        spare: Option<&'s SpareTimer>,
    ) -> impl Future<Output = Response<ProxyBody<P>>> + Send + 's
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        self.run(req, client, tls, spare)
    }

    /// The head checked and normalized, and the request's exchange made: a
    /// plain function, so that its locals (borrowed while the head is
    /// checked) take no space in the request's future.
    #[allow(clippy::type_complexity)]
    #[inline(always)]
    fn prepare<B>(
        &self,
        req: Request<B>,
        client: Option<SocketAddr>,
        tls: bool,
    ) -> (
        Exchange<P>,
        B,
        Result<Option<u64>, forward::BadRequest>,
        Option<OnUpgrade>,
    ) {
        let started = Instant::now();
        let sh = &*self.shared;
        let (mut parts, body) = req.into_parts();
        // The path is normalized before any hook, so hooks, routing and the
        // upstream all see the same one.
        let checked = forward::check_request(&parts, &sh.limits)
            .and_then(|len| path::normalize_target(&mut parts, sh.paths).map(|()| len));
        let upgrade = forward::filter_upgrade(&mut parts, &sh.forwarding.config.upgrade_protocols);
        let down_upgrade = parts.extensions.remove::<OnUpgrade>().filter(|_| upgrade);
        self.prepare_head(&mut parts, upgrade);
        let session = Session::new(parts, client, started);
        let mut ex = Exchange::new(Arc::clone(&sh.proxy), session, sh.proxy.new_ctx(), tls);
        ex.upgrade = upgrade;
        (ex, body, checked, down_upgrade)
    }

    /// The downstream head as hooks and the upstream see it: one `Host`
    /// (the target's authority when it has one), hop-by-hop headers removed
    /// before Detour adds its own (so `Connection` cannot name those away),
    /// and a request id.
    fn prepare_head(&self, parts: &mut http::request::Parts, upgrade: bool) {
        forward::host_from_authority(parts);
        // `TE: trailers` is end to end in practice: gRPC servers want it.
        // Only HTTP/2 clients (gRPC) are looked at, so HTTP/1.1 pays nothing.
        let te_trailers = parts.version == http::Version::HTTP_2
            && parts
                .headers
                .get(header::TE)
                .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
        strip_hop_by_hop(&mut parts.headers, upgrade);
        if te_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        // One hash and probe: a lookup and then an insert took two.
        let id = &self.shared.forwarding.request_id;
        if let http::header::Entry::Vacant(slot) = parts.headers.entry(id.clone()) {
            slot.insert(self.shared.ids.next());
        }
    }

    /// The request hooks, the attempts, and the answer; or, for a request
    /// the checks refuse, its 4xx.
    ///
    /// Nothing is done until the future is first polled: the future made
    /// here is small and moves into the connection's in-flight slot cheaply,
    /// and the request's state is built in place (`prepare`, then the hooks,
    /// `drive`, then the answer's steps). Each level of awaited future costs a copy of
    /// the whole future when it starts, so these are the only levels.
    ///
    /// Written as a function returning an `async move` block rather than an
    /// `async fn`: an `async fn` keeps each argument twice in its state (the
    /// argument, and the binding its body moves it into), and this future
    /// lives in every connection's in-flight slot. Locals that are borrowed
    /// keep their space across every later await even once moved, so the
    /// peer, the policy and the request body live in `drive`; the answer
    /// it settles on goes into one slot here (`held`), which the steps
    /// after it borrow.
    // Deliberately not `async fn`: see the note above.
    #[allow(clippy::manual_async_fn)]
    fn run<'s, B>(
        &'s self,
        req: Request<B>,
        client: Option<SocketAddr>,
        tls: bool,
        spare: Option<&'s SpareTimer>,
    ) -> impl Future<Output = Response<ProxyBody<P>>> + Send + 's
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        async move {
            let (mut ex, body, checked, down_upgrade) = self.prepare(req, client, tls);
            let content_length = match checked {
                Ok(len) => len,
                Err(bad) => return Box::pin(self.refuse(ex, bad)).await,
            };
            let proxy = &*self.shared.proxy;
            let (session, ctx) = (&mut ex.session, &mut ex.ctx);
            if let Err(e) = proxy.early_request_filter(session, ctx).await {
                return Box::pin(self.answer_error(ex, e, None, None)).await;
            }
            match proxy.request_filter(session, ctx).await {
                Ok(Some(resp)) => return Box::pin(self.answer_local(ex, resp)).await,
                Ok(None) => {}
                Err(e) => return Box::pin(self.answer_error(ex, e, None, None)).await,
            }
            let mut held = None;
            let ended = self
                .drive(&mut ex, body, content_length, &mut held, spare)
                .await;
            let (retriable, answer) = match (ended, held.as_mut()) {
                (Ended::Answer(retriable), Some(answer)) => (retriable, answer),
                (Ended::Error(err, upstream), _) => {
                    return Box::pin(self.answer_error(ex, err, upstream.as_deref(), None)).await;
                }
                // `drive` ends with an answer only when it holds one.
                (Ended::Answer(_), None) => {
                    return Box::pin(self.answer_error(ex, no_answer_held(), None, None)).await;
                }
            };
            // Each step below borrows the answer or is a plain function, so
            // the request's state is not copied into another future.
            let shaped = self.shape_answer(&ex.session, answer, retriable);
            if let Err(e) = self
                .response_hooks(&mut ex, &mut answer.ok.head, shaped.switching)
                .await
            {
                let upstream = Arc::clone(&answer.peer.upstream);
                return Box::pin(self.answer_error(ex, e, Some(&upstream), None)).await;
            }
            let Some(answer) = held.take() else {
                // Held since the match above: not reached.
                return Box::pin(self.answer_error(ex, no_answer_held(), None, None)).await;
            };
            if shaped.switching {
                let Held { ok, peer, .. } = answer;
                return Box::pin(self.switch(ex, ok.head, peer, down_upgrade)).await;
            }
            self.deliver(ex, answer, shaped)
        }
    }

    /// Answer a request refused before any hook: its 4xx (with `Allow` for
    /// a method the server does not take).
    async fn refuse(&self, ex: Exchange<P>, bad: forward::BadRequest) -> Response<ProxyBody<P>> {
        let err = Error::downstream(ErrorKind::InvalidRequest)
            .context(bad.reason)
            .never_retry();
        let mut resp = Box::pin(self.answer_error(ex, err, None, Some(bad.status))).await;
        if bad.status == StatusCode::METHOD_NOT_ALLOWED {
            let allow = forward::allowed_methods(&self.shared.limits);
            resp.headers_mut().insert(header::ALLOW, allow);
        }
        resp
    }

    /// Arm the request's planner: the policy (the hook's choice, else the
    /// first peer's upstream's, else the server's), whether the request is
    /// safe to repeat, and its deadline (the policy's, or a gRPC call's own
    /// `grpc-timeout` when sooner).
    fn arm(&self, ex: &mut Exchange<P>, peer: &HttpPeer) {
        let policy = self
            .shared
            .proxy
            .retry_policy(&ex.session, &ex.ctx)
            .or_else(|| peer.policy().cloned())
            .unwrap_or_else(|| Arc::clone(&self.shared.policy));
        let session = &mut ex.session;
        let safe = policy.is_safe(session.method(), session.headers());
        let started = session.started();
        let mut deadline = policy.deadline.map(|d| started + d);
        // gRPC rides on HTTP/2 only: the HTTP/1.1 path pays one comparison.
        if let Some(t) = grpc::is_call(session.req())
            .then(|| grpc::timeout(session.req()))
            .flatten()
        {
            deadline = Some(deadline.map_or(started + t, |d| d.min(started + t)));
        }
        let plan = session.plan_mut(ex.key);
        plan.arm(policy, safe);
        if let Some(d) = deadline {
            plan.narrow_deadline(d);
        }
    }

    /// Drive the planner: choose the first peer and arm the planner, then
    /// attempt, settle, ask for the next, choose a peer, wait, and again,
    /// until an answer (in `held`) or an error is left.
    async fn drive<B>(
        &self,
        ex: &mut Exchange<P>,
        body: B,
        content_length: Option<u64>,
        held: &mut Option<Held<P>>,
        spare: Option<&SpareTimer>,
    ) -> Ended
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let proxy = &*self.shared.proxy;
        let mut peer = match proxy.upstream_peer(&mut ex.session, &mut ex.ctx).await {
            Ok(p) => p,
            Err(e) => return Ended::Error(e, None),
        };
        self.arm(ex, &peer);
        let replay_limit = ex
            .session
            .planner()
            .policy()
            .map_or(0, |p| p.replay_buffer_limit);
        let mut body = (!body.is_end_stream()).then(|| {
            let limits = &self.shared.limits;
            RequestBody::new(
                body,
                replay_limit,
                limits.max_body_size,
                content_length,
                ClientLimits::new(limits),
            )
        });
        if let (Some(b), Some(0)) = (body.as_mut(), content_length) {
            if let Err(e) = b.confirm_empty().await {
                return Ended::Error(e.into_error(), None);
            }
        }
        let mut hedging = hedging_for(&ex.session, &peer, body.is_some());
        // Upgrades stay on hyper's client (it hands the connection over for
        // the tunnel), on a connection of their own when the pool holds the
        // other client's.
        let configured = self.shared.pool_config.http1_client;
        let h1 = if ex.upgrade {
            Http1Client::Hyper
        } else {
            configured
        };
        // The first peer's upstream budget pays for this request's retries.
        let budget = peer.budget().cloned();
        if let Some(b) = &budget {
            b.deposit(ex.session.started());
        }
        loop {
            let mut begun = Instant::now();
            let plan = ex.session.plan_mut(ex.key);
            let mut id = plan.begin_picked(peer.addr, peer.pick(), begun);
            let mode = Mode {
                fresh: plan.fresh_connection() || h1 != configured,
                h1,
            };
            let result = match hedging.take() {
                None => {
                    self.attempt(ex, &peer, body.as_mut(), mode, begun, spare)
                        .await
                }
                // Boxed: only hedged requests pay for the hedging state.
                Some(h) => {
                    let first = (id, peer, begun);
                    let s = Box::pin(self.hedged(ex, first, h, mode, &mut body)).await;
                    (id, peer, begun) = (s.id, s.peer, s.begun);
                    s.result
                }
            };
            let Settled {
                left,
                retry_after,
                spread,
                members,
                ended,
            } = self.settle(ex, id, peer, result, &mut body, begun, held);
            let limits = Limits {
                spread,
                members,
                budget: budget.as_deref(),
            };
            // The attempt's end is "now" enough: no clock read on the way out.
            match ex.session.plan_mut(ex.key).next(id, limits, ended) {
                Decision::Deliver => return left.end(None),
                Decision::Stop(why) => return left.end(Some(why)),
                _ => {}
            }
            // Chosen straight into `peer` (settled, its slot is free): a
            // second local would keep its own space across the wait.
            peer = match proxy.upstream_peer(&mut ex.session, &mut ex.ctx).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e.chain(), "no peer for a retry");
                    ex.session.plan_mut(ex.key).no_peer(id);
                    return left.end(Some(NoRetry::NoPeer));
                }
            };
            let plan = ex.session.plan_mut(ex.key);
            let scheduled = match plan.schedule(id, peer.addr, retry_after, Instant::now()) {
                Ok(s) => s,
                Err(why) => return left.end(Some(why)),
            };
            if scheduled.counted {
                count_retry(&peer.upstream, ex.session.last_error(), scheduled.choice);
            }
            // What the attempt left (a held answer, its connection) goes now.
            drop(left);
            *held = None;
            if !scheduled.wait.is_zero() {
                tokio::time::sleep(scheduled.wait).await;
            }
        }
    }

    /// Settle attempt `id` to `peer` that began at `begun`: run the hook
    /// that may change its error or decline its answer, tell the planner,
    /// and charge the outcome the planner names. An answer goes into `held`.
    #[allow(clippy::too_many_arguments)]
    fn settle<B>(
        &self,
        ex: &mut Exchange<P>,
        id: AttemptId,
        peer: HttpPeer,
        result: Result<AttemptOk, AttemptErr>,
        body: &mut Option<RequestBody<B>>,
        begun: Instant,
        held: &mut Option<Held<P>>,
    ) -> Settled
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let latency = begun.elapsed();
        if let (Some(h), Ok(_)) = (peer.hedging(), &result) {
            // Every answered attempt to an upstream that hedges teaches its
            // adaptive delay, hedged or not.
            h.observe(latency);
        }
        let mut rest: Option<Box<dyn Upload<P>>> = None;
        let (report, got, retry_after) = match result {
            Ok(mut ok) => {
                // An upload still going when the response head came: the
                // response body carries it on (full duplex), so it cannot be
                // replayed. (Only then is the body taken: a retry needs it.)
                if let Some(tx) = ok.upload.take() {
                    if let Some(b) = body.take() {
                        rest = Some(Box::new(Rest::new(b, tx)));
                    }
                }
                let (report, retry_after) = self.judge_answer(ex, &ok);
                (report, Ok(ok), retry_after)
            }
            Err(fail) => {
                let (report, err) = self.judge_failure(ex, &peer, fail);
                (report, Err(err), None)
            }
        };
        let replay_intact = rest.is_none() && body.as_ref().is_none_or(|b| b.replayable());
        let report = Report {
            replay_intact,
            ..report
        };
        let ended = begun + latency;
        let class = ex.session.plan_mut(ex.key).settle(id, report, ended);
        let mut got = got;
        let grpc_call = grpc::is_call(ex.session.req());
        match (&mut got, class) {
            (_, None) => {}
            // Reported when the trailers arrive (see grpc.rs).
            (Ok(ok), Some(_)) if grpc_call && grpc::outcome_in_trailers(&ok.head) => {
                ok.grpc = Some(Box::new(grpc::Pending {
                    observers: self.shared.observers.clone(),
                    latency,
                    attempt: id.number(),
                }));
            }
            (_, Some(class)) => {
                let status = match report.outcome {
                    Outcome::Answered(s) => Some(s),
                    _ => None,
                };
                let commit = report.outcome.commit().unwrap_or(CommitPoint::NotConnected);
                let c = Charge {
                    class,
                    status,
                    latency,
                    commit,
                    attempt: id.number(),
                    at: ended,
                };
                charge(&self.shared.observers, &peer, c);
            }
        }
        // Read after the report, so that it counts.
        let (spread, members) = (spread_of(&peer), members_of(&peer));
        let left = match got {
            Ok(ok) => {
                *held = Some(Held { ok, peer, rest });
                Left::Answer
            }
            // The peer (and its admission permit) goes before the next is chosen.
            Err(err) => Left::Failed(err, Arc::clone(&peer.upstream)),
        };
        Settled {
            left,
            retry_after,
            spread,
            members,
            ended,
        }
    }

    /// An answer's report: its status (a gRPC call's from `grpc-status`),
    /// whether `should_retry_response` wants it retried, and the wait its
    /// `Retry-After` asks for.
    fn judge_answer(&self, ex: &mut Exchange<P>, ok: &AttemptOk) -> (Report, Option<Duration>) {
        let session = &mut ex.session;
        let status = if grpc::is_call(session.req()) {
            grpc::effective_status(&ok.head)
        } else {
            ok.head.status.as_u16()
        };
        let listed = session
            .planner()
            .policy()
            .is_some_and(|p| p.retries_status(status));
        let wants = status != 101
            && self
                .shared
                .proxy
                .should_retry_response(session, &ok.head, listed, &mut ex.ctx);
        // Looked up only for an answer that may be retried: most are not.
        let retry_after = wants
            .then(|| ok.head.headers.get(header::RETRY_AFTER))
            .flatten()
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let hop_retried = wants
            && session.planner().policy().is_some_and(|p| {
                let lines = ok.head.headers.get_all("proxy-status").iter();
                hops::marked_retried(lines.map(HeaderValue::as_bytes), &p.trusted_hops)
            });
        let hint = if wants {
            RetryHint::Default
        } else {
            RetryHint::Never
        };
        let report = Report {
            reused: ok.reused,
            hint,
            hop_retried,
            ..Report::new(Outcome::Answered(status))
        };
        (report, retry_after)
    }

    /// A failure's report, after the hook that may change its error
    /// (`fail_to_connect` or `error_while_proxying`).
    fn judge_failure(
        &self,
        ex: &mut Exchange<P>,
        peer: &HttpPeer,
        fail: AttemptErr,
    ) -> (Report, Error) {
        let proxy = &*self.shared.proxy;
        let (session, ctx) = (&mut ex.session, &mut ex.ctx);
        let err = if fail.connecting {
            proxy.fail_to_connect(session, peer, ctx, fail.err)
        } else {
            proxy.error_while_proxying(session, peer, ctx, fail.err)
        };
        let report = Report {
            reused: fail.reused,
            hint: err.retry_hint(),
            by_backend: err.caused_by_backend(),
            ..Report::new(Outcome::Failed {
                kind: err.kind(),
                commit: fail.commit,
            })
        };
        (report, err)
    }
}

/// The error for attempts that ended with an answer but left none held:
/// `run` checks, though `drive` never does it.
fn no_answer_held() -> Error {
    Error::internal(ErrorKind::Custom).context("no answer held")
}

/// Count a retry in `detour_retries_total`, by the error that caused it and
/// whether it fails over or goes back to a backend already tried.
fn count_retry(upstream: &str, last: Option<ErrorKind>, choice: Choice) {
    let reason = match last {
        Some(ErrorKind::HttpStatus(code)) => format!("status_{code}"),
        Some(kind) => kind.proxy_status_type().to_string(),
        None => "unknown".to_string(),
    };
    metrics::counter!(
        "detour_retries_total",
        "upstream" => upstream.to_string(),
        "reason" => reason,
        "kind" => if choice == Choice::Retry { "retry" } else { "failover" },
    )
    .increment(1);
}

/// The hedging of a request's first attempt to `peer`, when its upstream
/// hedges and the request qualifies: no body, safe to repeat, no upgrade,
/// no `Idempotency-Key`, and its method listed (or a hook said so). The
/// request pays into the hedge budget here.
fn hedging_for(session: &Session, peer: &HttpPeer, has_body: bool) -> Option<Arc<Hedging>> {
    let h = peer.hedging()?;
    let headers = session.headers();
    if has_body
        || !session.is_safe()
        || headers.contains_key(header::UPGRADE)
        || headers.contains_key("idempotency-key")
    {
        return None;
    }
    if !session
        .hedging()
        .unwrap_or_else(|| h.applies(session.method(), headers))
    {
        return None;
    }
    h.deposit(session.started());
    Some(Arc::clone(h))
}

/// When an attempt to `peer` that began at `start` runs out of time: the
/// read timeout (until response headers), the per-try timeout (the peer's,
/// else the policy's) and the request's deadline, whichever comes first;
/// and whether it is the deadline.
fn limit_of(session: &Session, peer: &HttpPeer, start: Instant) -> (Instant, bool) {
    let mut limit = start + peer.options.read_timeout;
    let policy_try = session.planner().policy().and_then(|p| p.per_try_timeout);
    if let Some(t) = peer.options.per_try_timeout.or(policy_try) {
        limit = limit.min(start + t);
    }
    let deadline = session.deadline();
    let deadline_binds = deadline.is_some_and(|d| d <= limit);
    if let Some(d) = deadline {
        limit = limit.min(d);
    }
    (limit, deadline_binds)
}

/// An answer to an attempt: its head checked for framing, the connection
/// to pool once its body is read, and the upload still going, if any.
fn answered(
    resp: Response<UpBody>,
    sender: Conn,
    reused: bool,
    upload: Option<tokio::sync::mpsc::Sender<UpFrame>>,
    progress: &mut Progress<'_>,
) -> Result<AttemptOk, AttemptErr> {
    progress.commit = CommitPoint::ResponseStarted;
    let (mut head, mut body) = resp.into_parts();
    let hop = forward::check_response_framing(head.status, &mut head.headers)
        .map_err(|e| AttemptErr::new(e, CommitPoint::ResponseStarted, reused))?;
    sender.attach(&mut body);
    Ok(AttemptOk {
        head,
        hop,
        body,
        reused,
        upload,
        grpc: None,
    })
}

/// How far a request that failed to send got: provably unsent (hyper
/// handed it back, or no byte of it was written), otherwise `sent`.
fn unsent_or(e: &SendFailed, sent: CommitPoint) -> CommitPoint {
    if e.unsent {
        CommitPoint::Connected
    } else {
        sent
    }
}

/// The failure of an attempt that ran out of time, having got as far as
/// `progress` says.
fn timed_out(deadline_binds: bool, progress: &Progress<'_>) -> AttemptErr {
    let kind = if deadline_binds {
        ErrorKind::DeadlineExceeded
    } else if progress.commit == CommitPoint::NotConnected {
        ErrorKind::ConnectTimeout
    } else {
        ErrorKind::ReadTimeout
    };
    let err = Error::upstream(kind).context("no response head in time");
    AttemptErr {
        err,
        commit: progress.commit,
        reused: progress.reused,
        connecting: progress.commit == CommitPoint::NotConnected,
    }
}

impl<P: ProxyHttp, C: Connect> HttpProxy<P, C> {
    /// One attempt, bounded by the per-try timeout, the read timeout (until
    /// response headers) and the overall deadline. All three measure the
    /// backend: time spent waiting for the client's request body is left out
    /// (the client's own limits, `client_body_timeout` and
    /// `client_body_min_rate`, govern it), and the deadline moves on by it.
    async fn attempt<B>(
        &self,
        ex: &mut Exchange<P>,
        peer: &HttpPeer,
        body: Option<&mut RequestBody<B>>,
        mode: Mode,
        start: Instant,
        spare: Option<&SpareTimer>,
    ) -> Result<AttemptOk, AttemptErr>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (limit, deadline_binds) = limit_of(&ex.session, peer, start);
        let clock = ClientClock::new(start);
        let mut progress = Progress {
            commit: CommitPoint::NotConnected,
            reused: false,
            clock: &clock,
        };
        let lent = spare.map(|s| s.lend(limit));
        // Built in place: a local holding the inner future would take its
        // size a second time in this future's state.
        let timed = within(
            self.attempt_inner(
                &mut ex.session,
                &mut ex.ctx,
                peer,
                body,
                mode,
                &mut progress,
            ),
            limit,
            &clock,
            lent,
        )
        .await;
        let client_time = clock.client_time(Instant::now());
        if !client_time.is_zero() {
            ex.session.plan_mut(ex.key).add_client_time(client_time);
        }
        match timed {
            Some(r) => r,
            None => Err(timed_out(deadline_binds, &progress)),
        }
    }

    async fn connect(&self, peer: &HttpPeer, h1: Http1Client) -> Result<Conn, AttemptErr> {
        let failed = |err: Error| AttemptErr {
            err,
            commit: CommitPoint::NotConnected,
            reused: false,
            connecting: true,
        };
        let conn = dial::connect(&*self.shared.connector, peer, h1)
            .await
            .map_err(failed)?;
        if let Conn::H2(s) = &conn {
            self.h2pool.insert(peer.addr, s);
        }
        Ok(conn)
    }

    /// A pooled connection to `peer` that is still open: HTTP/2's shared
    /// one, or an idle HTTP/1.1 one. A request that is not `safe` to repeat
    /// only takes a connection used just now, so a backend's idle close
    /// cannot race it.
    async fn checkout(&self, peer: &HttpPeer, safe: bool) -> Option<Conn> {
        if peer.http2 {
            if let Some(s) = self.h2pool.checkout(peer.addr) {
                return Some(Conn::H2(s));
            }
        }
        let window = (!safe).then_some(self.shared.pool_config.unsafe_max_idle);
        while let Some(conn) = self.pool.checkout(peer.addr, window) {
            match conn {
                PoolConn::Hyper(mut s) => {
                    if s.ready().await.is_ok() {
                        return Some(Conn::H1(s));
                    }
                }
                PoolConn::Native(mut c) => {
                    if c.is_usable() {
                        return Some(Conn::Native(Some(c)));
                    }
                }
            }
        }
        None
    }

    /// An attempt up to the point of sending: a connection (pooled or
    /// new), the hooks that run once connected, and the upstream request
    /// head, adapted to the connection.
    async fn open(
        &self,
        session: &mut Session,
        ctx: &mut P::CTX,
        peer: &HttpPeer,
        has_body: bool,
        mode: Mode,
        progress: &mut Progress<'_>,
    ) -> Result<Opened, AttemptErr> {
        let sh = &*self.shared;
        let proxy = &*sh.proxy;
        let pooled = if mode.fresh {
            None
        } else {
            self.checkout(peer, session.is_safe()).await
        };
        let reused = pooled.is_some();
        progress.reused = reused;
        let sender = match pooled {
            Some(s) => s,
            // Boxed: dialing (TLS handshake included) is a large future that
            // would otherwise make every request's future bigger, and it only
            // runs for a new connection.
            None => Box::pin(self.connect(peer, mode.h1)).await?,
        };
        progress.commit = CommitPoint::Connected;
        let at = |err, commit| AttemptErr::new(err, commit, reused);

        proxy
            .connected_to_upstream(session, peer, reused, ctx)
            .await
            .map_err(|e| at(e, CommitPoint::Connected))?;
        let mut head =
            sh.forwarding
                .upstream_head(session.req(), session.client_addr(), session.is_tls());
        proxy
            .upstream_request_filter(session, &mut head, ctx)
            .await
            .map_err(|e| at(e, CommitPoint::Connected))?;
        sender.adapt_head(&mut head, peer, has_body);
        Ok(Opened {
            sender,
            head,
            reused,
        })
    }

    /// A request without a body on an opened connection, until its response
    /// head: borrows nothing of the request's state, so hedges of one
    /// request can be in flight together.
    async fn flight(
        &self,
        opened: Opened,
        progress: &mut Progress<'_>,
    ) -> Result<AttemptOk, AttemptErr> {
        let Opened {
            mut sender,
            head,
            reused,
        } = opened;
        let at = |err, commit| AttemptErr::new(err, commit, reused);
        let send = sender.send(Request::from_parts(head, UpstreamBody::empty()));
        progress.commit = CommitPoint::RequestSent;
        match send.await {
            Ok(resp) => answered(resp, sender, reused, None, progress),
            Err(e) => {
                let commit = unsent_or(&e, CommitPoint::RequestSent);
                Err(at(e.err, commit))
            }
        }
    }

    async fn attempt_inner<B>(
        &self,
        session: &mut Session,
        ctx: &mut P::CTX,
        peer: &HttpPeer,
        body: Option<&mut RequestBody<B>>,
        mode: Mode,
        progress: &mut Progress<'_>,
    ) -> Result<AttemptOk, AttemptErr>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let Some(body) = body else {
            let opened = self.open(session, ctx, peer, false, mode, progress).await?;
            return self.flight(opened, progress).await;
        };
        let proxy = &*self.shared.proxy;
        let Opened {
            mut sender,
            head,
            reused,
        } = self.open(session, ctx, peer, true, mode, progress).await?;
        let at = |err, commit| AttemptErr::new(err, commit, reused);
        let (tx, up_body) = body.open();
        let tx = Some(tx);
        let body = Some(&mut *body);
        let send = sender.send(Request::from_parts(head, up_body));
        // From here bytes may be on the wire: only hyper handing the request
        // back proves it unsent. A timeout from now on is not "never sent".
        progress.commit = if tx.is_some() {
            CommitPoint::RequestPartiallySent
        } else {
            CommitPoint::RequestSent
        };
        let (result, pump_done) = match (&tx, body) {
            (Some(tx), Some(b)) => {
                let write_timeout = peer.options.write_timeout;
                // Boxed: only requests with a body pay for the pump's state.
                let pump = Box::pin(b.pump(tx, write_timeout, progress.clock, |chunk, end| {
                    proxy.request_body_filter(session, chunk, end, ctx)
                }));
                sent_with_body(send, pump)
                    .await
                    .map_err(|err| at(err, CommitPoint::RequestPartiallySent))?
            }
            _ => (send.await, true),
        };
        let sent = if pump_done {
            CommitPoint::RequestSent
        } else {
            CommitPoint::RequestPartiallySent
        };
        progress.commit = sent;
        match result {
            Ok(resp) => {
                let upload = if pump_done { None } else { tx };
                answered(resp, sender, reused, upload, progress)
            }
            Err(e) => {
                let commit = unsent_or(&e, sent);
                if !pump_done && progress.clock.slow_client_waited_on() {
                    // The backend gave up while waiting for a body slower than
                    // client_body_min_rate: its own body timeout, most likely.
                    // The slow party is the client.
                    let err = Error::downstream(ErrorKind::ClientTimeout)
                        .context("the backend closed while waiting for a request body slower than client_body_min_rate")
                        .cause(e.err)
                        .never_retry();
                    return Err(at(err, commit));
                }
                Err(at(e.err, commit))
            }
        }
    }

    /// Shape an upstream response head for the client, before the hooks see
    /// it: Detour's own version, hop-by-hop headers out, `Via`, and this
    /// proxy's `Proxy-Status` member on a retriable status that was not
    /// retried or after retries.
    fn shape_answer(
        &self,
        session: &Session,
        answer: &mut Held<P>,
        retriable_status: bool,
    ) -> Shaped {
        let sh = &*self.shared;
        let (head, peer, hop) = (&mut answer.ok.head, &answer.peer, answer.ok.hop);
        let switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
        // Detour speaks its own version to its client (RFC 9110 §6.2): an
        // HTTP/1.0 backend must not turn a keep-alive client into one
        // connection per request.
        if session.req().version == http::Version::HTTP_11 {
            head.version = http::Version::HTTP_11;
        }
        // The hop-by-hop fields were found when the framing was checked:
        // lookups only for those there.
        let idle_timeout = peer.options.idle_timeout;
        let keep_for = match hop.keep_alive() {
            true => keep_alive_limit(idle_timeout, &head.headers),
            false => idle_timeout,
        };
        let upstream_closes = hop.closes();
        forward::strip_seen_hop_by_hop(&mut head.headers, hop, switching);
        if sh.forwarding.config.via {
            head.headers.append(header::VIA, sh.forwarding.via.clone());
        }
        // Rare (a retriable status passed on, or a request that was
        // retried): most answers skip it. Appended: the members of the hops
        // below stay, nearest the origin first (RFC 9209 §2).
        let retried = session.planner().retried_here();
        if retriable_status || retried.is_some() {
            let detail =
                retriable_status.then(|| format!("received-status={}", head.status.as_u16()));
            let member = proxy_status(
                &sh.proxy_name,
                detail.as_deref(),
                Some(&peer.upstream),
                retried,
            );
            if let Some(v) = member {
                head.headers.append("proxy-status", v);
            }
        }
        Shaped {
            keep_for,
            upstream_closes,
            switching,
        }
    }

    /// The response hooks (`upstream_response_filter`, then
    /// `response_filter`) on an upstream head; a draining proxy then asks the
    /// client to close. Borrows only: the answer stays where it is.
    async fn response_hooks(
        &self,
        ex: &mut Exchange<P>,
        head: &mut response::Parts,
        switching: bool,
    ) -> Result<(), Error> {
        let proxy = &*self.shared.proxy;
        let (session, ctx) = (&mut ex.session, &mut ex.ctx);
        proxy.upstream_response_filter(session, head, ctx).await?;
        proxy.response_filter(session, head, ctx).await?;
        if self.is_draining() && !switching {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        ex.session.set_response_status(ex.key, head.status);
        Ok(())
    }

    /// Hand an upstream answer, shaped and past the hooks, to the client: a
    /// body to stream (the connection pooled at its end), or none (pooled
    /// now). Not async, so nothing here is copied into a future; inlined,
    /// so the answer is not copied into its arguments either.
    #[inline(always)]
    fn deliver(
        &self,
        mut ex: Exchange<P>,
        answer: Held<P>,
        shaped: Shaped,
    ) -> Response<ProxyBody<P>> {
        let Held { ok, peer, rest } = answer;
        let AttemptOk {
            head,
            mut body,
            grpc: grpc_pending,
            ..
        } = ok;
        let pool = (!shaped.upstream_closes).then(|| (Arc::clone(&self.pool), shaped.keep_for));
        if body.is_end_stream() {
            // Nothing to stream: the connection is free now.
            if let (Some((pool, keep_for)), Some(conn)) = (pool, body.take_reusable()) {
                pool.checkin(peer.addr, conn, keep_for);
            }
            if let Some(p) = grpc_pending {
                p.report(&peer, None, None);
            }
            drop(peer);
            ex.log(None);
            return Response::from_parts(head, ProxyBody::full(Bytes::new()));
        }
        let read_timeout = peer.options.read_timeout;
        let finish = Finish {
            ex,
            peer,
            pool,
            grpc: grpc_pending,
        };
        Response::from_parts(head, ProxyBody::streaming(body, read_timeout, finish, rest))
    }

    /// A `101 Switching Protocols`, past the hooks: the tunnel between client
    /// and backend starts, if the protocol was one the client offered.
    async fn switch(
        &self,
        mut ex: Exchange<P>,
        mut head: response::Parts,
        peer: HttpPeer,
        down_upgrade: Option<OnUpgrade>,
    ) -> Response<ProxyBody<P>> {
        let sh = &*self.shared;
        let session = &ex.session;
        let offered = forward::upgrade_was_offered(session.headers(), &head.headers);
        match (down_upgrade, head.extensions.remove::<OnUpgrade>()) {
            (Some(down), Some(up)) if offered => {
                let idle = peer.options.idle_timeout.max(peer.options.read_timeout);
                let live = tunnel::Live::new(&sh.tunnels);
                let hard_stop = sh.hard_stop.subscribe();
                let place = session.req().extensions.get::<tunnel::ConnSlot>().cloned();
                tokio::spawn(async move {
                    tunnel::run(down, up, idle, hard_stop).await;
                    drop((live, place));
                });
            }
            _ => {
                let err = Error::upstream(ErrorKind::InvalidResponse)
                    .context("101 Switching Protocols to a protocol the request did not offer");
                return Box::pin(self.answer_error(ex, err, Some(&peer.upstream), None)).await;
            }
        }
        ex.log(None);
        Response::from_parts(head, ProxyBody::full(Bytes::new()))
    }

    /// Answer with a response a hook made.
    async fn answer_local(
        &self,
        mut ex: Exchange<P>,
        resp: Response<Bytes>,
    ) -> Response<ProxyBody<P>> {
        let proxy = &*self.shared.proxy;
        let (mut head, body) = resp.into_parts();
        if let Err(e) = proxy
            .response_filter(&mut ex.session, &mut head, &mut ex.ctx)
            .await
        {
            return Box::pin(self.answer_error(ex, e, None, None)).await;
        }
        if self.is_draining() {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        sent_whole(&mut ex, head.status, &body);
        ex.log(None);
        Response::from_parts(head, ProxyBody::full(body))
    }

    /// Answer with an error response: `fail_to_proxy` chooses the status (or
    /// `status` when the request itself was refused), `fail_to_proxy_response`
    /// may make the whole response, and `Proxy-Status` names the error and
    /// the upstream.
    async fn answer_error(
        &self,
        mut ex: Exchange<P>,
        err: Error,
        upstream: Option<&str>,
        status: Option<StatusCode>,
    ) -> Response<ProxyBody<P>> {
        let proxy = &*self.shared.proxy;
        let (session, ctx) = (&mut ex.session, &mut ex.ctx);
        let fixed = status.is_some();
        let status = status.unwrap_or_else(|| {
            let code = proxy.fail_to_proxy(session, &err, ctx);
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
        });
        if !proxy.suppress_error_log(session, ctx, &err) {
            let id = session.headers().get(&self.shared.forwarding.request_id);
            let request_id = id.and_then(|v| v.to_str().ok());
            if err.kind() == ErrorKind::InvalidRequest || err.kind() == ErrorKind::DownstreamClosed
            {
                tracing::debug!(request_id, error = %err.chain(), status = status.as_u16(), "request refused");
            } else {
                tracing::warn!(request_id, error = %err.chain(), status = status.as_u16(), attempts = session.attempt(), "proxy error");
            }
        }
        let grpc = grpc::is_call(session.req());
        let custom = if fixed || grpc {
            None
        } else {
            proxy.fail_to_proxy_response(session, &err, status, ctx)
        };
        let (mut head, body) = match custom {
            Some(resp) => resp.into_parts(),
            None => own_error_response(status, &err, grpc),
        };
        self.add_error_headers(&mut head, session, &err, upstream);
        let close = err.side() == detour_core::ErrorSide::Downstream || self.is_draining();
        if let Err(e) = proxy.response_filter(session, &mut head, ctx).await {
            tracing::debug!(error = %e, "response_filter failed on an error response");
        }
        if close {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        sent_whole(&mut ex, head.status, &body);
        ex.log(Some(&err));
        Response::from_parts(head, ProxyBody::full(body))
    }

    /// What every error response carries unless it has them already:
    /// `Proxy-Status` (the error, the upstream), the request id, and
    /// `Retry-After` when the error knows when to come back.
    fn add_error_headers(
        &self,
        head: &mut response::Parts,
        session: &Session,
        err: &Error,
        upstream: Option<&str>,
    ) {
        let sh = &*self.shared;
        if !head.headers.contains_key("proxy-status") {
            let detail = format!("error={}", err.proxy_status_type());
            let retried = session.planner().retried_here();
            if let Some(v) = proxy_status(&sh.proxy_name, Some(&detail), upstream, retried) {
                head.headers.insert("proxy-status", v);
            }
        }
        if let Some(id) = session.headers().get(&sh.forwarding.request_id) {
            if !head.headers.contains_key(&sh.forwarding.request_id) {
                head.headers
                    .insert(sh.forwarding.request_id.clone(), id.clone());
            }
        }
        if let Some(after) = err.retry_after_hint() {
            // Whole seconds, rounded up ("come back in 0 s" would invite a
            // storm), from whole milliseconds: breakers keep their open-until
            // time to the millisecond, rounded up, and that sub-millisecond
            // excess must not turn 20 s into 21.
            let secs = u64::try_from(after.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
            if !head.headers.contains_key(header::RETRY_AFTER) {
                head.headers
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
        }
    }
}

/// Detour's own error response: `status` with a one-line `text/plain` body,
/// or for a gRPC call an empty body with the error as `grpc-status` (a gRPC
/// client reads that, not a page).
fn own_error_response(status: StatusCode, err: &Error, grpc: bool) -> (response::Parts, Bytes) {
    let mut head = Response::new(()).into_parts().0;
    head.status = status;
    head.headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if grpc {
        grpc::shape_error(&mut head, err);
        return (head, Bytes::new());
    }
    let reason = status.canonical_reason().unwrap_or("");
    let text = Bytes::from(format!("{} {}\n", status.as_u16(), reason));
    (head, text)
}

/// Record a response sent whole: its status, and its body's size (none for
/// a HEAD request, whose response carries no body).
fn sent_whole<P: ProxyHttp>(ex: &mut Exchange<P>, status: StatusCode, body: &Bytes) {
    ex.session.set_response_status(ex.key, status);
    if ex.session.method() != http::Method::HEAD {
        ex.session.add_body_bytes_sent(ex.key, body.len() as u64);
    }
}

/// Await the upstream's response head while the request body is pumped up
/// beside it; the answer may come before the body is all sent (the pump
/// then stops being polled, and `false` says it did not finish). A pump
/// that fails on the client's side, or times out writing, ends the attempt
/// with that error.
async fn sent_with_body<S, R>(
    send: S,
    mut pump: std::pin::Pin<Box<impl Future<Output = Result<(), PumpError>>>>,
) -> Result<(R, bool), Error>
where
    S: Future<Output = R>,
{
    tokio::pin!(send);
    let mut pump_done = false;
    loop {
        tokio::select! {
            biased;
            r = &mut send => return Ok((r, pump_done)),
            p = &mut pump, if !pump_done => {
                pump_done = true;
                match p {
                    // Sent whole (or the upstream stopped reading): await the answer.
                    Ok(()) | Err(PumpError::UpstreamGone) => continue,
                    Err(e) => return Err(e.into_error()),
                }
            }
        }
    }
}

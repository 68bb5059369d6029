//! The request path: hooks, attempts, the retry loop, and the response.
//!
//! The safety rule is a ceiling ([`detour_core::retry::decide`]); within it the
//! retry count, the deadline and the set of backends already tried decide
//! whether another attempt happens. Failing over to a *different* backend is
//! immediate; backoff applies only when the next attempt goes back to a backend
//! already tried, and no wait runs past the deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use detour_core::retry::{
    admit_retry, decide, parse_retry_after, AttemptFacts, NoRetry, RetryDecision, RetryLimits,
};
use detour_core::{
    AttemptOutcome, BoxError, CommitPoint, Error, ErrorKind, HttpPeer, OutcomeClass, ProxyHttp,
    RetryHint, RetryPolicy, Session,
};
use detour_core::{RemovalCap, Spread};
use http::header::{self, HeaderValue};
use http::{response, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use super::body::{
    ClientClock, ClientLimits, Finish, ProxyBody, PumpError, RequestBody, Rest, Upload,
};
use super::forward::{self, strip_hop_by_hop};
use super::{grpc, path, tunnel, HttpProxy};
use crate::upstream::classify::classify_hyper;
use crate::upstream::dial::{self, Conn};
use crate::upstream::pool::{keep_alive_limit, Sender};
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

/// A `Proxy-Status` value (RFC 9209): this proxy, one detail parameter, and
/// the upstream by name (never its address).
fn proxy_status(proxy: &str, detail: &str, upstream: Option<&str>) -> Option<HeaderValue> {
    let mut v = format!("{proxy}; {detail}");
    if let Some(u) = upstream {
        v.push_str("; next-hop=");
        v.push_str(&sf_string(u));
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

/// Whether the request has backends of its upstream (`members`) left to
/// try; without a count, assume so.
fn untried_remain(session: &Session, members: Option<u32>) -> bool {
    members.is_none_or(|n| (session.tried().len() as u64) < u64::from(n))
}

/// How failure is spread over the upstream of `peer`'s backend (normal
/// when the peer carries no backend, or its upstream keeps no spread).
fn spread_of(peer: &HttpPeer) -> Spread {
    cap_of(peer).map_or(Spread::Normal, |cap| cap.spread().last().spread)
}

/// `fut`, unless it is still running at `limit` plus the time `clock` says
/// was spent waiting for the client (`None` then).
async fn within<F: Future>(fut: F, limit: Instant, clock: &ClientClock) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut timer = std::pin::pin!(tokio::time::sleep_until(limit));
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(v));
        }
        // While the client is being waited for, the limit keeps moving: each
        // time the timer fires, it is set again to where the limit now is.
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let due = limit + clock.client_time(now);
            if due <= now {
                return std::task::Poll::Ready(None);
            }
            timer.as_mut().reset(due);
        }
        std::task::Poll::Pending
    })
    .await
}

/// A response head arrived.
pub(crate) struct AttemptOk {
    head: response::Parts,
    body: Incoming,
    /// The HTTP/1.1 connection to pool once the body is read (an HTTP/2
    /// connection stays in its own pool all along).
    sender: Option<Sender>,
    reused: bool,
    /// The response head came before the whole request body went up: the
    /// channel that still needs the rest of it.
    upload: Option<tokio::sync::mpsc::Sender<UpFrame>>,
    /// A gRPC answer whose outcome waits for its trailers.
    grpc: Option<grpc::Pending>,
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

/// How one attempt is made.
#[derive(Clone, Copy)]
struct Mode {
    /// Open a fresh connection rather than take a pooled one.
    fresh: bool,
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
/// or on its way to the client.
struct Held<P: ProxyHttp> {
    ok: AttemptOk,
    peer: HttpPeer,
    rest: Option<Box<dyn Upload<P>>>,
}

impl<P: ProxyHttp, C: Connect> HttpProxy<P, C> {
    /// Proxy one request: run the hooks, try upstreams, and answer.
    ///
    /// Never fails: every error becomes a response (a 4xx for a bad request,
    /// 502/503/504 with `Proxy-Status` when no upstream answered).
    pub async fn handle<B>(
        &self,
        req: Request<B>,
        client: Option<SocketAddr>,
    ) -> Response<ProxyBody<P>>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        self.handle_from(req, client, false).await
    }

    /// [`handle`](Self::handle) for a client that came over TLS when `tls`.
    pub(crate) async fn handle_from<B>(
        &self,
        req: Request<B>,
        client: Option<SocketAddr>,
        tls: bool,
    ) -> Response<ProxyBody<P>>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
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
        let mut session = Session::new(parts, client, started);
        session.set_tls(tls);
        let ctx = sh.proxy.new_ctx();
        match checked {
            Ok(len) => self.run(session, ctx, body, len, down_upgrade).await,
            Err(bad) => {
                let err = Error::downstream(ErrorKind::InvalidRequest)
                    .context(bad.reason)
                    .never_retry();
                let mut resp =
                    Box::pin(self.answer_error(session, ctx, err, None, Some(bad.status))).await;
                if bad.status == StatusCode::METHOD_NOT_ALLOWED {
                    let allow = forward::allowed_methods(&sh.limits);
                    resp.headers_mut().insert(header::ALLOW, allow);
                }
                resp
            }
        }
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
        let id = &self.shared.forwarding.request_id;
        if !parts.headers.contains_key(id) {
            parts.headers.insert(id.clone(), self.shared.ids.next());
        }
    }

    /// Written as a function returning an `async move` block rather than an
    /// `async fn`: an `async fn` keeps each argument twice in its state (the
    /// argument, and the binding its body moves it into), and this future
    /// lives in every connection's in-flight slot and is moved into it per
    /// request.
    // Deliberately not `async fn`: see the note above.
    #[allow(clippy::manual_async_fn)]
    fn run<B>(
        &self,
        mut session: Session,
        mut ctx: P::CTX,
        body: B,
        content_length: Option<u64>,
        down_upgrade: Option<OnUpgrade>,
    ) -> impl Future<Output = Response<ProxyBody<P>>> + '_
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        async move {
            let sh = &*self.shared;
            let proxy = &*sh.proxy;
            if let Err(e) = proxy.early_request_filter(&mut session, &mut ctx).await {
                return Box::pin(self.answer_error(session, ctx, e, None, None)).await;
            }
            match proxy.request_filter(&mut session, &mut ctx).await {
                Ok(Some(resp)) => return Box::pin(self.answer_local(session, ctx, resp)).await,
                Ok(None) => {}
                Err(e) => return Box::pin(self.answer_error(session, ctx, e, None, None)).await,
            }
            // A block, so that the loop's locals (the peer, the request body,
            // the policy) end with it and `forward`'s state can reuse their space.
            let (answer, retriable_status) = {
                let mut peer = match proxy.upstream_peer(&mut session, &mut ctx).await {
                    Ok(p) => p,
                    Err(e) => {
                        return Box::pin(self.answer_error(session, ctx, e, None, None)).await
                    }
                };
                // The hook's choice, else the first peer's upstream's, else the server's.
                let policy = proxy
                    .retry_policy(&session, &ctx)
                    .or_else(|| peer.policy().cloned())
                    .unwrap_or_else(|| Arc::clone(&sh.policy));
                let safe = policy.is_safe(session.method(), session.headers());
                session.set_safe(safe);
                if let Some(d) = policy.deadline {
                    session.set_deadline(session.started() + d);
                }
                // gRPC rides on HTTP/2 only: the HTTP/1.1 path pays one comparison.
                let grpc_call = grpc::is_call(session.req());
                if grpc_call {
                    if let Some(t) = grpc::timeout(session.req()) {
                        let at = session.started() + t;
                        if session.deadline().is_none_or(|d| at < d) {
                            session.set_deadline(at);
                        }
                    }
                }
                let mut body = (!body.is_end_stream()).then(|| {
                    RequestBody::new(
                        body,
                        policy.replay_buffer_limit,
                        sh.limits.max_body_size,
                        content_length,
                        ClientLimits::new(&sh.limits),
                    )
                });
                let mut rng: Option<fastrand::Rng> = None;
                // Set after a stale pooled connection: the next attempt connects afresh.
                let mut fresh = false;
                let mut stale_retries = 0u32;

                // The first peer's upstream budget pays for this request's retries.
                let budget = peer.budget().cloned();
                if let Some(b) = &budget {
                    b.deposit(session.started());
                }
                // The loop ends with the answer to pass on; `forward` runs after it,
                // so its state shares space with the loop's instead of adding to it.
                loop {
                    session.begin_attempt(peer.addr);
                    let attempt_started = Instant::now();
                    let result = self
                        .attempt(
                            &mut session,
                            &mut ctx,
                            &peer,
                            body.as_mut(),
                            &policy,
                            Mode { fresh },
                        )
                        .await;
                    let latency = attempt_started.elapsed();
                    let mut result = result;
                    // An upload still going when the response head came: the response
                    // body carries it on (full duplex), so it cannot be replayed.
                    let mut rest: Option<Box<dyn Upload<P>>> = None;
                    if let Ok(ok) = &mut result {
                        // Only take the body when an upload is really unfinished: a
                        // tuple pattern would take (and drop) it in any case, and a
                        // retry would then go out without its body.
                        if let Some(tx) = ok.upload.take() {
                            if let Some(b) = body.take() {
                                rest = Some(Box::new(Rest::new(b, tx)));
                            }
                        }
                    }
                    let replay_intact =
                        rest.is_none() && body.as_ref().is_none_or(|b| b.replayable());
                    session.set_body_replayable(replay_intact);

                    let mut retry_after = None;
                    let mut stale = false;
                    let mut held = None;
                    let mut last_err = None;
                    // What the limits need: whether the failed attempt reached
                    // its backend, and how failure is spread over its upstream.
                    // (Read after the attempt was reported, so it counts.)
                    let spread;
                    let spread_members = members_of(&peer);
                    let mut reached = true;
                    match result {
                        Ok(mut ok) => {
                            let status = if grpc_call {
                                grpc::effective_status(&ok.head)
                            } else {
                                ok.head.status.as_u16()
                            };
                            let policy_says = policy.retries_status(status);
                            // Every 5xx is reported as the backend's failure, and so is
                            // a status the policy retries; breakers and outlier
                            // detection filter by their own status lists.
                            let class = if policy_says || status >= 500 {
                                OutcomeClass::BackendFailure(ErrorKind::HttpStatus(status))
                            } else {
                                OutcomeClass::Success
                            };
                            if grpc_call && grpc::outcome_in_trailers(&ok.head) {
                                // Reported when the trailers arrive (see grpc.rs).
                                ok.grpc = Some(grpc::Pending {
                                    observers: sh.observers.clone(),
                                    latency,
                                    attempt: session.attempt(),
                                });
                            } else {
                                self.report(
                                    &peer,
                                    class,
                                    Some(status),
                                    latency,
                                    CommitPoint::ResponseStarted,
                                    &session,
                                );
                            }
                            spread = spread_of(&peer);
                            let wants = status != 101
                                && proxy.should_retry_response(
                                    &session,
                                    &ok.head,
                                    policy_says,
                                    &mut ctx,
                                );
                            if !wants {
                                break (Held { ok, peer, rest }, false);
                            }
                            let facts = AttemptFacts {
                                kind: ErrorKind::HttpStatus(status),
                                commit: CommitPoint::ResponseStarted,
                                safe,
                                replay_intact,
                                reused: ok.reused,
                            };
                            if !decide(&policy, &facts).is_retry() {
                                break (Held { ok, peer, rest }, true);
                            }
                            if policy.honour_retry_after {
                                retry_after =
                                    ok.head.headers.get(header::RETRY_AFTER).and_then(|v| {
                                        parse_retry_after(v, std::time::SystemTime::now())
                                    });
                            }
                            session.set_last_error(Some(ErrorKind::HttpStatus(status)));
                            held = Some(Held { ok, peer, rest });
                        }
                        Err(fail) => {
                            let AttemptErr {
                                err,
                                commit,
                                reused,
                                connecting,
                            } = fail;
                            let err = if connecting {
                                proxy.fail_to_connect(&mut session, &peer, &mut ctx, err)
                            } else {
                                proxy.error_while_proxying(&mut session, &peer, &mut ctx, err)
                            };
                            let facts = AttemptFacts {
                                kind: err.kind(),
                                commit,
                                safe,
                                replay_intact,
                                reused,
                            };
                            reached = facts.reached_backend();
                            let decision = if err.retry_hint() == RetryHint::Never {
                                RetryDecision::Stop(NoRetry::NotRetriable)
                            } else {
                                decide(&policy, &facts)
                            };
                            stale = matches!(
                                decision,
                                RetryDecision::Retry {
                                    stale_connection: true
                                }
                            );
                            let class = if stale || !err.caused_by_backend() {
                                OutcomeClass::Local(err.kind())
                            } else {
                                OutcomeClass::BackendFailure(err.kind())
                            };
                            self.report(&peer, class, None, latency, commit, &session);
                            spread = spread_of(&peer);
                            session.set_last_error(Some(err.kind()));
                            if !decision.is_retry() {
                                tracing::debug!(error = %err.chain(), commit = commit.as_str(), ?decision, "not retrying");
                                let name = Arc::clone(&peer.upstream);
                                drop(peer);
                                return Box::pin(self.answer_error(
                                    session,
                                    ctx,
                                    err,
                                    Some(&name),
                                    None,
                                ))
                                .await;
                            }
                            last_err = Some((err, Arc::clone(&peer.upstream)));
                            drop(peer);
                        }
                    }

                    // The ceiling allows another attempt; do the limits?
                    // A stale pooled connection says nothing about the backend: it costs
                    // no retry, and the next attempt opens a fresh connection (so at most
                    // one stale retry in a row).
                    fresh = stale;
                    if stale {
                        stale_retries += 1;
                    }
                    let exhausted =
                        session.retries().saturating_sub(stale_retries) >= policy.max_retries;
                    let out_of_time = session.time_left().is_some_and(|t| t.is_zero());
                    if exhausted || out_of_time {
                        return Box::pin(self.give_up(session, ctx, held, last_err, down_upgrade))
                            .await;
                    }
                    // The upstream's limits (detour_core::retry::admit_retry): the
                    // budget, and how failure is spread over the backends. When they
                    // refuse, the client gets the held upstream answer as it was, or
                    // the last error (a 503 for a spent budget).
                    let ended = attempt_started + latency;
                    let limits = RetryLimits {
                        reached_backend: reached,
                        stale_connection: stale,
                        untried_remain: untried_remain(&session, spread_members),
                        spread,
                    };
                    let withdraw = || budget.as_ref().is_none_or(|b| b.try_withdraw(ended));
                    if let Err(why) = admit_retry(&policy, limits, withdraw) {
                        tracing::debug!(?why, %spread, "not retrying");
                        let last_err = last_err.map(|(err, name)| match why {
                            NoRetry::BudgetExhausted => {
                                let err = Error::internal(ErrorKind::BudgetExhausted)
                                    .context("retry budget spent");
                                (err, name)
                            }
                            _ => (err, name),
                        });
                        return Box::pin(self.give_up(session, ctx, held, last_err, down_upgrade))
                            .await;
                    }
                    let next = match proxy.upstream_peer(&mut session, &mut ctx).await {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::debug!(error = %e.chain(), "no peer for a retry");
                            return Box::pin(self.give_up(
                                session,
                                ctx,
                                held,
                                last_err,
                                down_upgrade,
                            ))
                            .await;
                        }
                    };
                    let again = session.was_tried(next.addr);
                    if !stale {
                        let reason = match session.last_error() {
                            Some(ErrorKind::HttpStatus(code)) => format!("status_{code}"),
                            Some(kind) => kind.proxy_status_type().to_string(),
                            None => "unknown".to_string(),
                        };
                        metrics::counter!(
                            "detour_retries_total",
                            "upstream" => next.upstream.to_string(),
                            "reason" => reason,
                            "kind" => if again { "retry" } else { "failover" },
                        )
                        .increment(1);
                    }
                    let mut wait = Duration::ZERO;
                    if again && !stale {
                        let rng = rng.get_or_insert_with(fastrand::Rng::new);
                        wait = policy.backoff(session.retries() + 1, rng);
                        if let Some(ra) = retry_after {
                            // Honoured, but never past max_delay (nor the deadline below):
                            // a longer wish ends the retries and passes the answer on.
                            if ra > policy.max_delay {
                                return Box::pin(self.give_up(
                                    session,
                                    ctx,
                                    held,
                                    last_err,
                                    down_upgrade,
                                ))
                                .await;
                            }
                            wait = wait.max(ra);
                        }
                    }
                    if session.time_left().is_some_and(|left| wait >= left) {
                        return Box::pin(self.give_up(session, ctx, held, last_err, down_upgrade))
                            .await;
                    }
                    drop(held);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    peer = next;
                }
            };
            self.forward(session, ctx, answer, retriable_status, down_upgrade)
                .await
        }
    }

    /// No further attempt: pass on the held upstream response, or answer the
    /// last attempt's error.
    async fn give_up(
        &self,
        session: Session,
        ctx: P::CTX,
        held: Option<Held<P>>,
        last_err: Option<(Error, Arc<str>)>,
        down_upgrade: Option<OnUpgrade>,
    ) -> Response<ProxyBody<P>> {
        match (held, last_err) {
            (Some(h), _) => self.forward(session, ctx, h, true, down_upgrade).await,
            (None, Some((err, upstream))) => {
                Box::pin(self.answer_error(session, ctx, err, Some(&upstream), None)).await
            }
            (None, None) => {
                let err = Error::internal(ErrorKind::NoPeer);
                Box::pin(self.answer_error(session, ctx, err, None, None)).await
            }
        }
    }

    fn report(
        &self,
        peer: &HttpPeer,
        class: OutcomeClass,
        status: Option<u16>,
        latency: Duration,
        commit: CommitPoint,
        session: &Session,
    ) {
        if let Some(b) = peer.backend() {
            b.state()
                .record_attempt(class, status, latency, Instant::now());
        }
        let observers = &self.shared.observers;
        if observers.is_empty() && peer.observer().is_none() {
            return;
        }
        let outcome = AttemptOutcome {
            backend: peer.backend(),
            addr: peer.addr,
            upstream: &peer.upstream,
            class,
            status,
            latency,
            commit,
            attempt: session.attempt(),
        };
        if let Some(o) = peer.observer() {
            o.on_attempt(&outcome);
        }
        for o in observers {
            o.on_attempt(&outcome);
        }
    }

    /// One attempt, bounded by the per-try timeout, the read timeout (until
    /// response headers) and the overall deadline. All three measure the
    /// backend: time spent waiting for the client's request body is left out
    /// (the client's own limits, `client_body_timeout` and
    /// `client_body_min_rate`, govern it), and the deadline moves on by it.
    async fn attempt<B>(
        &self,
        session: &mut Session,
        ctx: &mut P::CTX,
        peer: &HttpPeer,
        body: Option<&mut RequestBody<B>>,
        policy: &RetryPolicy,
        mode: Mode,
    ) -> Result<AttemptOk, AttemptErr>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let mut limit = start + peer.options.read_timeout;
        if let Some(t) = peer.options.per_try_timeout.or(policy.per_try_timeout) {
            limit = limit.min(start + t);
        }
        let deadline_binds = session.deadline().is_some_and(|d| d <= limit);
        if let Some(d) = session.deadline() {
            limit = limit.min(d);
        }
        let clock = ClientClock::new(start);
        let mut progress = Progress {
            commit: CommitPoint::NotConnected,
            reused: false,
            clock: &clock,
        };
        // Built in place: a local holding the inner future would take its
        // size a second time in this future's state.
        let timed = within(
            self.attempt_inner(session, ctx, peer, body, mode, &mut progress),
            limit,
            &clock,
        )
        .await;
        let client_time = clock.client_time(Instant::now());
        if let (false, Some(d)) = (client_time.is_zero(), session.deadline()) {
            session.set_deadline(d + client_time);
        }
        match timed {
            Some(r) => r,
            None => {
                let kind = if deadline_binds {
                    ErrorKind::DeadlineExceeded
                } else if progress.commit == CommitPoint::NotConnected {
                    ErrorKind::ConnectTimeout
                } else {
                    ErrorKind::ReadTimeout
                };
                let err = Error::upstream(kind).context("no response head in time");
                Err(AttemptErr {
                    err,
                    commit: progress.commit,
                    reused: progress.reused,
                    connecting: progress.commit == CommitPoint::NotConnected,
                })
            }
        }
    }

    async fn connect(&self, peer: &HttpPeer) -> Result<Conn, AttemptErr> {
        let failed = |err: Error| AttemptErr {
            err,
            commit: CommitPoint::NotConnected,
            reused: false,
            connecting: true,
        };
        let io = match tokio::time::timeout(
            peer.options.connect_timeout,
            self.shared.connector.connect(peer.addr),
        )
        .await
        {
            Err(_) => return Err(failed(Error::upstream(ErrorKind::ConnectTimeout))),
            Ok(Err(e)) => {
                let kind = match e.kind() {
                    std::io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
                    _ => ErrorKind::ConnectRefused,
                };
                return Err(failed(Error::upstream(kind).cause(e)));
            }
            Ok(Ok(io)) => io,
        };
        let conn = dial::handshake(io, peer).await.map_err(failed)?;
        if let Conn::H2(s) = &conn {
            self.h2pool.insert(peer.addr, s);
        }
        Ok(conn)
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
        let sh = &*self.shared;
        let proxy = &*sh.proxy;
        // A request that is not safe to repeat only takes a connection that was
        // used just now, so a backend's idle close cannot race it.
        let window = (!session.is_safe()).then_some(sh.pool_config.unsafe_max_idle);
        let mut pooled = None;
        if peer.http2 && !mode.fresh {
            pooled = self.h2pool.checkout(peer.addr).map(Conn::H2);
        }
        while let Some(mut s) = (!mode.fresh && pooled.is_none())
            .then(|| self.pool.checkout(peer.addr, window))
            .flatten()
        {
            if s.ready().await.is_ok() {
                pooled = Some(Conn::H1(s));
                break;
            }
        }
        let reused = pooled.is_some();
        progress.reused = reused;
        let mut sender = match pooled {
            Some(s) => s,
            // Boxed: dialing (TLS handshake included) is a large future that
            // would otherwise make every request's future bigger, and it only
            // runs for a new connection.
            None => Box::pin(self.connect(peer)).await?,
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

        let mut body = body;
        let (up_body, tx) = match body.as_mut() {
            Some(b) => {
                let (tx, ub) = b.open();
                (ub, Some(tx))
            }
            None => (UpstreamBody::empty(), None),
        };
        sender.adapt_head(&mut head, peer, tx.is_some());
        let send = sender.send(Request::from_parts(head, up_body));
        // From here bytes may be on the wire: only hyper handing the request
        // back proves it unsent. A timeout from now on is not "never sent".
        progress.commit = if tx.is_some() {
            CommitPoint::RequestPartiallySent
        } else {
            CommitPoint::RequestSent
        };
        let mut pump_done = true;
        let result = match (&tx, body) {
            (Some(tx), Some(b)) => {
                pump_done = false;
                let write_timeout = peer.options.write_timeout;
                // Boxed: only requests with a body pay for the pump's state.
                let clock = progress.clock;
                let mut pump = Box::pin(b.pump(tx, write_timeout, clock, |chunk, end| {
                    proxy.request_body_filter(session, chunk, end, ctx)
                }));
                tokio::pin!(send);
                loop {
                    tokio::select! {
                        biased;
                        r = &mut send => break r,
                        p = &mut pump, if !pump_done => {
                            pump_done = true;
                            let err = match p {
                                Ok(()) | Err(PumpError::UpstreamGone) => continue,
                                Err(PumpError::Downstream(e)) | Err(PumpError::Filter(e)) => e.never_retry(),
                                Err(PumpError::TooLarge) => Error::downstream(ErrorKind::HttpStatus(413))
                                    .context("request body over the limit")
                                    .never_retry(),
                                Err(PumpError::WriteTimeout) => Error::upstream(ErrorKind::WriteTimeout)
                                    .context("upstream did not take the request body in time"),
                            };
                            return Err(at(err, CommitPoint::RequestPartiallySent));
                        }
                    }
                }
            }
            _ => send.await,
        };
        let sent = if pump_done {
            CommitPoint::RequestSent
        } else {
            CommitPoint::RequestPartiallySent
        };
        progress.commit = sent;
        match result {
            Ok(resp) => {
                progress.commit = CommitPoint::ResponseStarted;
                let (mut head, body) = resp.into_parts();
                forward::check_response_framing(head.status, &mut head.headers)
                    .map_err(|e| at(e, CommitPoint::ResponseStarted))?;
                Ok(AttemptOk {
                    head,
                    body,
                    sender: sender.into_h1(),
                    reused,
                    upload: if pump_done { None } else { tx },
                    grpc: None,
                })
            }
            Err(mut e) => {
                // hyper hands back a request it never wrote: provably unsent.
                let commit = if e.take_message().is_some() {
                    CommitPoint::Connected
                } else {
                    sent
                };
                if !pump_done && progress.clock.slow_client_waited_on() {
                    // The backend gave up while waiting for a body slower than
                    // client_body_min_rate: its own body timeout, most likely.
                    // The slow party is the client.
                    let err = Error::downstream(ErrorKind::ClientTimeout)
                        .context("the backend closed while waiting for a request body slower than client_body_min_rate")
                        .cause(e.into_error())
                        .never_retry();
                    return Err(at(err, commit));
                }
                Err(at(classify_hyper(e.into_error()), commit))
            }
        }
    }

    /// Pass an upstream response on to the client. (An `async move` block
    /// for the reason given at [`Self::run`].)
    // Deliberately not `async fn`: see the note above.
    #[allow(clippy::manual_async_fn)]
    fn forward(
        &self,
        mut session: Session,
        mut ctx: P::CTX,
        answer: Held<P>,
        retriable_status: bool,
        down_upgrade: Option<OnUpgrade>,
    ) -> impl Future<Output = Response<ProxyBody<P>>> + '_ {
        async move {
            let sh = &*self.shared;
            let proxy = &*sh.proxy;
            let Held { ok, peer, rest } = answer;
            let AttemptOk {
                mut head,
                body,
                sender,
                grpc: grpc_pending,
                ..
            } = ok;
            let switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
            // Detour speaks its own version to its client (RFC 9110 §6.2): an
            // HTTP/1.0 backend must not turn a keep-alive client into one
            // connection per request.
            if session.req().version == http::Version::HTTP_11 {
                head.version = http::Version::HTTP_11;
            }
            let keep_for = keep_alive_limit(peer.options.idle_timeout, &head.headers);
            let upstream_closes = forward::connection_has(&head.headers, "close");
            strip_hop_by_hop(&mut head.headers, switching);
            if sh.forwarding.config.via {
                head.headers.append(header::VIA, sh.forwarding.via.clone());
            }
            if retriable_status {
                let detail = format!("received-status={}", head.status.as_u16());
                if let Some(v) = proxy_status(&sh.proxy_name, &detail, Some(&peer.upstream)) {
                    head.headers.insert("proxy-status", v);
                }
            }
            if let Err(e) = proxy
                .upstream_response_filter(&mut session, &mut head, &mut ctx)
                .await
            {
                return Box::pin(self.answer_error(session, ctx, e, Some(&peer.upstream), None))
                    .await;
            }
            if let Err(e) = proxy
                .response_filter(&mut session, &mut head, &mut ctx)
                .await
            {
                return Box::pin(self.answer_error(session, ctx, e, Some(&peer.upstream), None))
                    .await;
            }
            if self.is_draining() && !switching {
                head.headers
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            session.set_response_status(head.status);

            if switching {
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
                        let err = Error::upstream(ErrorKind::InvalidResponse).context(
                            "101 Switching Protocols to a protocol the request did not offer",
                        );
                        return Box::pin(self.answer_error(
                            session,
                            ctx,
                            err,
                            Some(&peer.upstream),
                            None,
                        ))
                        .await;
                    }
                }
                proxy.logging(&mut session, None, &mut ctx);
                return Response::from_parts(head, ProxyBody::full(Bytes::new()));
            }

            let pool = sender
                .filter(|_| !upstream_closes)
                .map(|sender| (Arc::clone(&self.pool), sender, keep_for));
            if body.is_end_stream() {
                // Nothing to stream: the connection is free now.
                if let Some((pool, sender, keep_for)) = pool {
                    pool.checkin(peer.addr, sender, keep_for);
                }
                if let Some(p) = grpc_pending {
                    p.report(&peer, None, None);
                }
                drop(peer);
                proxy.logging(&mut session, None, &mut ctx);
                return Response::from_parts(head, ProxyBody::full(Bytes::new()));
            }
            let read_timeout = peer.options.read_timeout;
            let finish = Finish {
                proxy: Arc::clone(&sh.proxy),
                session,
                ctx,
                peer,
                pool,
                grpc: grpc_pending,
            };
            Response::from_parts(head, ProxyBody::streaming(body, read_timeout, finish, rest))
        }
    }

    /// Answer with a response a hook made.
    async fn answer_local(
        &self,
        mut session: Session,
        mut ctx: P::CTX,
        resp: Response<Bytes>,
    ) -> Response<ProxyBody<P>> {
        let proxy = &*self.shared.proxy;
        let (mut head, body) = resp.into_parts();
        if let Err(e) = proxy
            .response_filter(&mut session, &mut head, &mut ctx)
            .await
        {
            return Box::pin(self.answer_error(session, ctx, e, None, None)).await;
        }
        if self.is_draining() {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        sent_whole(&mut session, head.status, &body);
        proxy.logging(&mut session, None, &mut ctx);
        Response::from_parts(head, ProxyBody::full(body))
    }

    /// Answer with an error response: `fail_to_proxy` chooses the status (or
    /// `status` when the request itself was refused), `fail_to_proxy_response`
    /// may make the whole response, and `Proxy-Status` names the error and
    /// the upstream.
    async fn answer_error(
        &self,
        mut session: Session,
        mut ctx: P::CTX,
        err: Error,
        upstream: Option<&str>,
        status: Option<StatusCode>,
    ) -> Response<ProxyBody<P>> {
        let proxy = &*self.shared.proxy;
        let fixed = status.is_some();
        let status = status.unwrap_or_else(|| {
            let code = proxy.fail_to_proxy(&mut session, &err, &mut ctx);
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
        });
        if !proxy.suppress_error_log(&session, &ctx, &err) {
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
            proxy.fail_to_proxy_response(&mut session, &err, status, &mut ctx)
        };
        let (mut head, body) = match custom {
            Some(resp) => resp.into_parts(),
            None => own_error_response(status, &err, grpc),
        };
        self.add_error_headers(&mut head, &session, &err, upstream);
        let close = err.side() == detour_core::ErrorSide::Downstream || self.is_draining();
        if let Err(e) = proxy
            .response_filter(&mut session, &mut head, &mut ctx)
            .await
        {
            tracing::debug!(error = %e, "response_filter failed on an error response");
        }
        if close {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        sent_whole(&mut session, head.status, &body);
        proxy.logging(&mut session, Some(&err), &mut ctx);
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
            if let Some(v) = proxy_status(&sh.proxy_name, &detail, upstream) {
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
fn sent_whole(session: &mut Session, status: StatusCode, body: &Bytes) {
    session.set_response_status(status);
    if session.method() != http::Method::HEAD {
        session.add_body_bytes_sent(body.len() as u64);
    }
}

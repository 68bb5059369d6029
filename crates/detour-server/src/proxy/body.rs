//! Bodies on both sides of the proxy.
//!
//! * [`RequestBody`] reads the client's body as the upstream accepts it and keeps
//!   a copy (cheap `Bytes` clones) up to the replay limit, so a retry can send it
//!   again. A body longer than the limit streams through once, in constant memory.
//!   Each attempt opens a fresh [`UpstreamBody`] (the upstream side's type) and
//!   feeds it chunk by chunk through a one-slot channel, which gives
//!   backpressure both ways.
//! * [`ProxyBody`] is what the client reads: a local answer, or the upstream's
//!   body with the read-idle timeout, the body filter, the return of the
//!   connection to the pool and the `logging` hook at the end.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use detour_core::{Error, ErrorKind, HttpPeer, ProxyHttp, Session};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::LimitsConfig;
use crate::lazy_timer::LazyTimer;
use crate::upstream::pool::Pool;
use crate::upstream::response::UpBody;
use crate::upstream::{UpFrame, UpstreamBody};

/// Why pumping the request body stopped early.
#[derive(Debug)]
pub(crate) enum PumpError {
    /// The client's body failed (the client went away or sent garbage).
    Downstream(Error),
    /// The body is longer than the configured maximum.
    TooLarge,
    /// The upstream stopped reading the body (its connection failed).
    UpstreamGone,
    /// The upstream did not take a chunk within the write timeout.
    WriteTimeout,
    /// The request body filter refused a chunk.
    Filter(Error),
}

impl PumpError {
    /// The attempt's error for a pump that failed.
    pub(crate) fn into_error(self) -> Error {
        match self {
            PumpError::Downstream(e) | PumpError::Filter(e) => e.never_retry(),
            PumpError::TooLarge => Error::downstream(ErrorKind::HttpStatus(413))
                .context("request body over the limit")
                .never_retry(),
            PumpError::UpstreamGone => Error::upstream(ErrorKind::ConnectionClosed)
                .context("upstream stopped reading the body"),
            PumpError::WriteTimeout => Error::upstream(ErrorKind::WriteTimeout)
                .context("upstream did not take the request body in time"),
        }
    }
}

/// How long the client may keep its request body waiting (from
/// `[server.limits]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientLimits {
    /// Longest wait for the next piece of the body.
    timeout: Duration,
    /// Slowest rate accepted, bytes per second of waiting (0: no check).
    min_rate: u64,
    /// How far behind that rate the body may fall, as time.
    window: Duration,
}

impl ClientLimits {
    pub(crate) fn new(limits: &LimitsConfig) -> Self {
        ClientLimits {
            timeout: limits.client_body_timeout,
            min_rate: limits.client_body_min_rate,
            window: limits.client_body_min_rate_window,
        }
    }
}

/// Time an attempt spent waiting for the client's body, shared between the
/// body pump (which starts and stops it) and the attempt's timer (which
/// leaves it out: per-try timers measure the backend, not the client).
#[derive(Debug)]
pub(crate) struct ClientClock {
    base: Instant,
    /// Nanoseconds of finished waits.
    waited: AtomicU64,
    /// Nanoseconds from `base` to the start of the wait in progress, plus one
    /// (0: not waiting).
    since: AtomicU64,
    /// Nanoseconds from `base` from which the client, still silent, has
    /// fallen behind `client_body_min_rate` (u64::MAX: never).
    behind_from: AtomicU64,
}

impl ClientClock {
    pub(crate) fn new(base: Instant) -> Self {
        ClientClock {
            base,
            waited: AtomicU64::new(0),
            since: AtomicU64::new(0),
            behind_from: AtomicU64::new(u64::MAX),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn start(&self, at: Instant) {
        self.since
            .store(self.nanos(at).saturating_add(1), Ordering::Relaxed);
    }

    fn stop(&self, at: Instant) {
        let since = self.since.swap(0, Ordering::Relaxed);
        if since != 0 {
            let waited = self.nanos(at).saturating_sub(since - 1);
            self.waited.fetch_add(waited, Ordering::Relaxed);
        }
    }

    /// Whether the attempt is waiting for the client's body now, and the
    /// client has fallen behind `client_body_min_rate`: an upstream failure
    /// at such a moment is the slow client's doing (a backend's own body
    /// timeout), not the backend's. A client keeping up with the rate is
    /// never behind, so a backend that fails under a healthy upload is still
    /// charged.
    pub(crate) fn slow_client_waited_on(&self) -> bool {
        self.since.load(Ordering::Relaxed) != 0
            && self.nanos(Instant::now()) >= self.behind_from.load(Ordering::Relaxed)
    }

    /// From `at` on, the client has `allowance` left before it is behind.
    fn behind_after(&self, at: Instant, allowance: Option<Duration>) {
        let from = allowance.map_or(u64::MAX, |a| self.nanos(at + a));
        self.behind_from.store(from, Ordering::Relaxed);
    }

    /// All the time spent waiting for the client up to `now`.
    pub(crate) fn client_time(&self, now: Instant) -> Duration {
        let mut ns = self.waited.load(Ordering::Relaxed);
        let since = self.since.load(Ordering::Relaxed);
        if since != 0 {
            ns = ns.saturating_add(self.nanos(now).saturating_sub(since - 1));
        }
        Duration::from_nanos(ns)
    }
}

/// The client's side of reading a request body: the stall timer and the
/// minimum-rate allowance.
///
/// The rate is a leaky bucket of time, like Apache's `RequestReadTimeout`
/// `MinRate`: the body starts with `window` of allowance; every moment spent
/// waiting for the client drains it, every byte received refills
/// `1 / min_rate` seconds of it (up to `window`). A body slower than the rate
/// runs dry and is cut; a fast one never comes near. Time spent waiting for the
/// backend to take the body is not waiting for the client and costs nothing.
struct ClientWait {
    limits: ClientLimits,
    allowance: Duration,
    since: Option<Instant>,
    timer: LazyTimer,
}

impl ClientWait {
    fn new(limits: ClientLimits) -> Self {
        ClientWait {
            limits,
            allowance: limits.window,
            since: None,
            timer: LazyTimer::default(),
        }
    }

    /// The client has nothing for us yet: `Ready` with the error once it kept
    /// us waiting too long.
    fn waiting(&mut self, cx: &mut Context<'_>, clock: Option<&ClientClock>) -> Poll<Error> {
        if self.since.is_none() {
            let now = Instant::now();
            self.since = Some(now);
            if let Some(c) = clock {
                c.start(now);
                c.behind_after(now, self.slack());
            }
            let mut allowed = self.limits.timeout;
            if self.limits.min_rate != 0 {
                allowed = allowed.min(self.allowance);
            }
            self.timer.set(now + allowed);
        }
        if !self.timer.fired(cx) {
            return Poll::Pending;
        }
        let stalled = self
            .since
            .is_some_and(|s| s.elapsed() >= self.limits.timeout);
        let why = if stalled {
            "request body stalled for longer than client_body_timeout"
        } else {
            "request body slower than client_body_min_rate"
        };
        Poll::Ready(Error::downstream(ErrorKind::ClientTimeout).context(why))
    }

    /// The client answered (with `bytes` of body, or an end or error).
    fn answered(&mut self, bytes: usize, clock: Option<&ClientClock>) {
        if let Some(since) = self.since.take() {
            let now = Instant::now();
            self.allowance = self.allowance.saturating_sub(now - since);
            if let Some(c) = clock {
                c.stop(now);
            }
        }
        if self.limits.min_rate != 0 && bytes != 0 {
            let earned = Duration::from_secs_f64(bytes as f64 / self.limits.min_rate as f64);
            self.allowance = (self.allowance + earned).min(self.limits.window);
        }
    }

    /// How much more waiting the client may cost before it counts as behind
    /// the minimum rate: more than half a second short of a full allowance,
    /// which a client keeping up with the rate never is (`None`: no rate).
    fn slack(&self) -> Option<Duration> {
        (self.limits.min_rate != 0).then(|| {
            let threshold = self
                .limits
                .window
                .saturating_sub(Duration::from_millis(500));
            self.allowance.saturating_sub(threshold)
        })
    }
}

/// The client's request body with its replay buffer.
///
/// Each attempt feeds its upstream body from here: first the buffered prefix
/// (already filtered), then the rest of the client's body. The frame being
/// handed over is kept in `in_hand` until the channel has room for it, so a
/// caller may stop pumping at any await point and carry on later — after an
/// early response head, the response body keeps the upload going — without
/// losing or repeating a byte.
pub(crate) struct RequestBody<B> {
    downstream: Option<B>,
    buffer: Vec<Bytes>,
    buffered: usize,
    limit: usize,
    /// The buffer holds every byte read from the client so far.
    intact: bool,
    trailers: Option<HeaderMap>,
    received: u64,
    max: u64,
    len: Option<u64>,
    /// Per attempt: the next buffered chunk to send.
    cursor: usize,
    /// Per attempt: the frame about to go upstream (`Some(None)`: the end mark).
    in_hand: Option<UpFrame>,
    /// Per attempt: trailers and the end mark have been produced.
    trailers_sent: bool,
    finished: bool,
    /// The bytes that reach the declared length, read before the client's
    /// body said it ended: they wait for that end (see [`Self::poll_fill`]).
    held: Option<Bytes>,
    client: ClientWait,
}

impl<B> RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<detour_core::BoxError>,
{
    /// `limit`: replay buffer size; `max`: largest body (0 = unlimited);
    /// `len`: the declared Content-Length, if any; `client`: how long the
    /// client may keep the body waiting.
    pub(crate) fn new(
        body: B,
        limit: usize,
        max: u64,
        len: Option<u64>,
        client: ClientLimits,
    ) -> Self {
        RequestBody {
            downstream: Some(body),
            buffer: Vec::new(),
            buffered: 0,
            limit,
            intact: true,
            trailers: None,
            received: 0,
            max,
            len,
            cursor: 0,
            in_hand: None,
            trailers_sent: false,
            finished: false,
            held: None,
            client: ClientWait::new(client),
        }
    }

    /// Whether the whole body can still be sent again.
    pub(crate) fn replayable(&self) -> bool {
        self.intact
    }

    /// A new upstream body for one attempt and the sender that feeds it.
    pub(crate) fn open(&mut self) -> (mpsc::Sender<UpFrame>, UpstreamBody) {
        self.cursor = 0;
        self.in_hand = None;
        self.trailers_sent = false;
        self.finished = false;
        let (tx, rx) = mpsc::channel(1);
        (tx, UpstreamBody::channel(rx, self.len))
    }

    /// Make sure a frame is in hand: `Ready(Ok(false))` once this attempt's
    /// body (end mark included) has been handed over entirely.
    /// `clock` (during an attempt) learns how long the client kept it waiting.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        filter: &mut dyn FnMut(&mut Bytes, bool) -> Result<(), Error>,
        clock: Option<&ClientClock>,
    ) -> Poll<Result<bool, PumpError>> {
        if self.in_hand.is_some() {
            return Poll::Ready(Ok(true));
        }
        if self.intact && self.cursor < self.buffer.len() {
            self.in_hand = Some(Some(Frame::data(self.buffer[self.cursor].clone())));
            self.cursor += 1;
            return Poll::Ready(Ok(true));
        }
        while let Some(down) = self.downstream.as_mut() {
            let polled = match Pin::new(&mut *down).poll_frame(cx) {
                Poll::Pending => {
                    return match self.client.waiting(cx, clock) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(err) => {
                            self.downstream = None;
                            self.intact = false;
                            Poll::Ready(Err(PumpError::Downstream(err)))
                        }
                    };
                }
                Poll::Ready(polled) => polled,
            };
            let bytes = match &polled {
                Some(Ok(f)) => f.data_ref().map_or(0, Bytes::len),
                _ => 0,
            };
            self.client.answered(bytes, clock);
            let frame = match polled {
                None => {
                    self.downstream = None;
                    break;
                }
                Some(Err(e)) => {
                    self.downstream = None;
                    self.intact = false;
                    return Poll::Ready(Err(PumpError::Downstream(
                        Error::downstream(ErrorKind::DownstreamClosed)
                            .context("reading the request body")
                            .cause(e.into()),
                    )));
                }
                Some(Ok(f)) => f,
            };
            let end = down.is_end_stream();
            if end {
                self.downstream = None;
            }
            match frame.into_data() {
                Ok(data) if self.held.is_some() => {
                    if !data.is_empty() {
                        return Poll::Ready(Err(self.overlong(data.len())));
                    }
                }
                Ok(data) if !end && self.len == Some(self.received + data.len() as u64) => {
                    // The declared length is reached, but the client's body
                    // has not ended (an HTTP/2 stream without END_STREAM
                    // yet): the last bytes wait for its end, so that a
                    // request whose body turns out longer than declared
                    // never reaches the backend whole.
                    self.held = Some(data);
                }
                Ok(data) => return Poll::Ready(self.accept(data, end, filter)),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.trailers = Some(trailers);
                    }
                }
            }
        }
        if let Some(data) = self.held.take() {
            return Poll::Ready(self.accept(data, true, filter));
        }
        if !self.trailers_sent {
            self.trailers_sent = true;
            if let Some(t) = &self.trailers {
                self.in_hand = Some(Some(Frame::trailers(t.clone())));
                return Poll::Ready(Ok(true));
            }
        }
        if !self.finished {
            self.finished = true;
            self.in_hand = Some(None);
            return Poll::Ready(Ok(true));
        }
        Poll::Ready(Ok(false))
    }

    /// Take `data`, the next bytes of the client's body (`end`: its last),
    /// into the replay buffer and hand it over.
    fn accept(
        &mut self,
        mut data: Bytes,
        end: bool,
        filter: &mut dyn FnMut(&mut Bytes, bool) -> Result<(), Error>,
    ) -> Result<bool, PumpError> {
        self.received += data.len() as u64;
        if self.max != 0 && self.received > self.max {
            self.intact = false;
            return Err(PumpError::TooLarge);
        }
        if self.len.is_some_and(|len| self.received > len) {
            return Err(self.overlong(0));
        }
        if let Err(e) = filter(&mut data, end) {
            self.intact = false;
            return Err(PumpError::Filter(e));
        }
        if self.intact {
            if self.buffered + data.len() <= self.limit {
                self.buffered += data.len();
                self.buffer.push(data.clone());
                self.cursor = self.buffer.len();
            } else {
                // Too long to replay: free the copy, stream the rest once.
                self.intact = false;
                self.buffer = Vec::new();
            }
        }
        self.in_hand = Some(Some(Frame::data(data)));
        Ok(true)
    }

    /// The client's body went on past its declared length (by `more` bytes
    /// beyond those counted and held): the body fails, and the request with
    /// it.
    fn overlong(&mut self, more: usize) -> PumpError {
        let held = self.held.take().map_or(0, |h| h.len());
        let sent = self.received + (held + more) as u64;
        self.downstream = None;
        self.intact = false;
        PumpError::Downstream(
            Error::downstream(ErrorKind::InvalidRequest).context(format!(
            "request body longer than its Content-Length ({} bytes declared, {sent} or more sent)",
            self.len.unwrap_or(0),
        )),
        )
    }

    /// For a request that declares an empty body but has not ended it yet
    /// (an HTTP/2 stream with `content-length: 0` and no END_STREAM): wait
    /// for its end, so that a body that turns out not to be empty fails
    /// before any attempt sends the head (which alone is the whole request).
    pub(crate) async fn confirm_empty(&mut self) -> Result<(), PumpError> {
        let mut no_filter = |_: &mut Bytes, _: bool| Ok(());
        std::future::poll_fn(|cx| self.poll_fill(cx, &mut no_filter, None)).await?;
        Ok(())
    }

    /// Feed one attempt's upstream body through `filter`, each hand-over
    /// bounded by `write_timeout` (the backend's share) while the client's
    /// waits are bounded by its [`ClientLimits`] and told to `clock`.
    ///
    /// # Cancel safety
    /// Cancel-safe: a frame leaves `in_hand` only once the channel has taken
    /// it, so pumping can stop at any await and resume (see [`Upload`]).
    pub(crate) async fn pump(
        &mut self,
        tx: &mpsc::Sender<UpFrame>,
        write_timeout: Duration,
        clock: &ClientClock,
        mut filter: impl FnMut(&mut Bytes, bool) -> Result<(), Error>,
    ) -> Result<(), PumpError> {
        loop {
            let more =
                std::future::poll_fn(|cx| self.poll_fill(cx, &mut filter, Some(clock))).await?;
            if !more {
                return Ok(());
            }
            let permit = match tokio::time::timeout(write_timeout, tx.reserve()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(PumpError::UpstreamGone),
                Err(_) => return Err(PumpError::WriteTimeout),
            };
            if let Some(frame) = self.in_hand.take() {
                permit.send(frame);
            }
        }
    }
}

/// The rest of an upload whose response head arrived first: the response body
/// drives it (full duplex), running `request_body_filter` as before.
pub(crate) trait Upload<P: ProxyHttp>: Send {
    /// Move the upload forward; `Ready` once it is finished or failed.
    fn poll_upload(
        &mut self,
        cx: &mut Context<'_>,
        proxy: &P,
        session: &mut Session,
        ctx: &mut P::CTX,
    ) -> Poll<Result<(), PumpError>>;
}

/// An unfinished upload: the body and the upstream channel it feeds.
pub(crate) struct Rest<B> {
    pub(crate) body: RequestBody<B>,
    pub(crate) tx: mpsc::Sender<UpFrame>,
    reserving: Option<ReserveFuture>,
}

type ReserveFuture = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<mpsc::OwnedPermit<UpFrame>, mpsc::error::SendError<()>>,
            > + Send,
    >,
>;

impl<B> Rest<B> {
    pub(crate) fn new(body: RequestBody<B>, tx: mpsc::Sender<UpFrame>) -> Self {
        Rest {
            body,
            tx,
            reserving: None,
        }
    }
}

impl<P, B> Upload<P> for Rest<B>
where
    P: ProxyHttp,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<detour_core::BoxError>,
{
    fn poll_upload(
        &mut self,
        cx: &mut Context<'_>,
        proxy: &P,
        session: &mut Session,
        ctx: &mut P::CTX,
    ) -> Poll<Result<(), PumpError>> {
        let mut filter =
            |chunk: &mut Bytes, end: bool| proxy.request_body_filter(session, chunk, end, ctx);
        loop {
            if !std::task::ready!(self.body.poll_fill(cx, &mut filter, None))? {
                return Poll::Ready(Ok(()));
            }
            // A boxed reservation per chunk: this path only runs for uploads
            // still going after their response started.
            let tx = self.tx.clone();
            let reserving = self
                .reserving
                .get_or_insert_with(|| Box::pin(tx.reserve_owned()));
            let permit = match std::task::ready!(reserving.as_mut().poll(cx)) {
                Ok(p) => p,
                Err(_) => return Poll::Ready(Err(PumpError::UpstreamGone)),
            };
            self.reserving = None;
            if let Some(frame) = self.body.in_hand.take() {
                permit.send(frame);
            }
        }
    }
}

/// What happens when a proxied response body ends.
pub(crate) struct Finish<P: ProxyHttp> {
    /// Logged when the body ends (or by its own drop, if it never does).
    pub(crate) ex: super::exchange::Exchange<P>,
    /// The peer (and its admission permit) stays held while the body streams.
    pub(crate) peer: HttpPeer,
    /// The pool the connection goes back to, and for how long, unless the
    /// backend asked to close it.
    pub(crate) pool: Option<(Arc<Pool>, Duration)>,
    /// A gRPC outcome still to report (from the trailers, or at the end).
    pub(crate) grpc: Option<Box<super::grpc::Pending>>,
}

impl<P: ProxyHttp> Finish<P> {
    /// End the response whose finish is in `slot`, if it is still there:
    /// report, pool `body`'s connection (unless `err`, or `spent`: an upload
    /// cut short), log, and empty the slot. Done in place: a `Finish` is
    /// large, and taking it out of its slot would copy it on every response.
    fn complete(slot: &mut Option<Self>, body: &mut UpBody, err: Option<&Error>, spent: bool) {
        let Some(f) = slot.as_mut() else {
            return;
        };
        if let Some(p) = f.grpc.take() {
            p.report(&f.peer, None, err);
        }
        if err.is_none() && !spent {
            if let (Some((pool, keep_for)), Some(conn)) = (f.pool.take(), body.take_reusable()) {
                pool.checkin(f.peer.addr, conn, keep_for);
            }
        }
        f.ex.log(err);
        *slot = None;
    }
}

struct Streaming<P: ProxyHttp> {
    upstream: UpBody,
    /// The rest of the request body, when the response came first.
    upload: Option<Box<dyn Upload<P>>>,
    /// The read-idle timer, made at the first wait: a body that arrives with
    /// its head (most small responses) never needs one.
    idle: LazyTimer,
    /// Whether `idle` is armed for the current wait; a frame disarms it.
    waiting: bool,
    read_timeout: Duration,
    finish: Option<Finish<P>>,
    /// The upstream body's failure, held back one poll (see `poll_next`).
    failed: Option<Error>,
}

impl<P: ProxyHttp> Drop for Streaming<P> {
    fn drop(&mut self) {
        if self.finish.is_some() {
            let err = Error::downstream(ErrorKind::DownstreamClosed)
                .context("client went away before the response ended");
            Finish::complete(&mut self.finish, &mut self.upstream, Some(&err), false);
        }
    }
}

enum Kind<P: ProxyHttp> {
    Full(Option<Bytes>),
    Streaming(Box<Streaming<P>>),
}

/// The response body sent to the client.
pub struct ProxyBody<P: ProxyHttp> {
    kind: Kind<P>,
}

impl<P: ProxyHttp> std::fmt::Debug for ProxyBody<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Full(_) => "ProxyBody::Full",
            Kind::Streaming(_) => "ProxyBody::Streaming",
        })
    }
}

impl<P: ProxyHttp> ProxyBody<P> {
    /// A complete body made by Detour or a hook.
    pub(crate) fn full(bytes: Bytes) -> Self {
        ProxyBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// The upstream's body, streamed. Inlined, and the state given to
    /// `Box::write` on a box made first: with `Box::new` the optimiser built
    /// it and then copied it into the box (a kilobyte a response; callgrind
    /// shows the copy gone, though the language does not promise it).
    #[inline(always)]
    pub(crate) fn streaming(
        upstream: UpBody,
        read_timeout: Duration,
        finish: Finish<P>,
        upload: Option<Box<dyn Upload<P>>>,
    ) -> Self {
        // Boxed in one allocation that glibc serves from its per-thread
        // cache when it is at most `MALLOC_CACHE_MAX` bytes (a test holds it
        // there): above, every response paid about 1,000 instructions more
        // to allocate and free it.
        ProxyBody {
            kind: Kind::Streaming(Box::write(
                Box::new_uninit(),
                Streaming {
                    upstream,
                    upload,
                    idle: LazyTimer::default(),
                    waiting: false,
                    read_timeout,
                    finish: Some(finish),
                    failed: None,
                },
            )),
        }
    }
}

impl<P: ProxyHttp> Body for ProxyBody<P> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = self.poll_next(cx);
        // For the HTTP/2 stream watch (see `send_timeout`): whether hyper now
        // holds bytes it must send before it asks again.
        match &r {
            Poll::Ready(Some(Ok(f))) if f.is_data() => crate::send_timeout::body_gave_frame(),
            _ => crate::send_timeout::body_idle(),
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Streaming(s) => {
                s.failed.is_none() && (s.finish.is_none() || s.upstream.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming(s) => s.upstream.size_hint(),
        }
    }
}

impl<P: ProxyHttp> ProxyBody<P> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let s = match &mut self.kind {
            Kind::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streaming(s) => s,
        };
        if let Some(err) = s.failed.take() {
            return Poll::Ready(Some(Err(err)));
        }
        if s.finish.is_none() {
            return Poll::Ready(None);
        }
        if let (Some(up), Some(f)) = (s.upload.as_mut(), s.finish.as_mut()) {
            if let Poll::Ready(r) =
                up.poll_upload(cx, &f.ex.proxy, &mut f.ex.session, &mut f.ex.ctx)
            {
                if let Err(e) = r {
                    // Dropping the channel unfinished aborts the upstream
                    // request, which ends this response with an error below.
                    tracing::debug!(error = ?e, "upload after an early response failed");
                    f.pool = None;
                }
                s.upload = None;
            }
        }
        match Pin::new(&mut s.upstream).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                s.waiting = false;
                let end = s.upstream.is_end_stream();
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        if let Some(f) = s.finish.as_mut() {
                            let ex = &mut f.ex;
                            if let Err(e) = ex.proxy.response_body_filter(
                                &mut ex.session,
                                &mut data,
                                end,
                                &mut ex.ctx,
                            ) {
                                Finish::complete(&mut s.finish, &mut s.upstream, Some(&e), false);
                                return Poll::Ready(Some(Err(e)));
                            }
                            f.ex.session
                                .add_body_bytes_sent(f.ex.key, data.len() as u64);
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        if let (Some(t), Some(f)) = (frame.trailers_ref(), s.finish.as_mut()) {
                            if let Some(p) = f.grpc.take() {
                                p.report(&f.peer, Some(t), None);
                            }
                        }
                        frame
                    }
                };
                if end {
                    // An upload still going: the request never finished, so
                    // the connection is spent.
                    let spent = s.upload.take().is_some();
                    Finish::complete(&mut s.finish, &mut s.upstream, None, spent);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let err = e.context("reading the response body");
                Finish::complete(&mut s.finish, &mut s.upstream, Some(&err), false);
                if s.waiting {
                    return Poll::Ready(Some(Err(err)));
                }
                // The failure came right behind a frame (or the head): hyper's
                // server drops what it has not written yet when a body fails,
                // so wait one turn for it to write the bytes that came.
                s.failed = Some(err);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None) => {
                let spent = s.upload.take().is_some();
                Finish::complete(&mut s.finish, &mut s.upstream, None, spent);
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The upstream is idle from now: arm the timer for this wait.
                if !s.waiting {
                    s.waiting = true;
                    s.idle.set(Instant::now() + s.read_timeout);
                }
                if s.idle.fired(cx) {
                    let err = Error::upstream(ErrorKind::ReadTimeout)
                        .context("upstream body idle for longer than the read timeout");
                    Finish::complete(&mut s.finish, &mut s.upstream, Some(&err), false);
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Pending
            }
        }
    }
}

/// The largest allocation glibc's per-thread cache serves (tcache: 64 bins
/// of 16 bytes, the last one 1,032 usable bytes).
#[cfg(test)]
const MALLOC_CACHE_MAX: usize = 1032;

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy whose per-request state is as large as the `detour`
    /// binary's (32 bytes).
    struct Sized32;

    impl ProxyHttp for Sized32 {
        type CTX = [u64; 4];

        fn new_ctx(&self) -> Self::CTX {
            [0; 4]
        }

        async fn upstream_peer(
            &self,
            _session: &mut Session,
            _ctx: &mut Self::CTX,
        ) -> detour_core::Result<HttpPeer> {
            Err(Error::upstream(ErrorKind::NoPeer))
        }
    }

    #[test]
    fn a_streaming_body_fits_the_allocators_per_thread_cache() {
        let size = std::mem::size_of::<Streaming<Sized32>>();
        assert!(
            size <= MALLOC_CACHE_MAX,
            "Streaming is {size} B, over the {MALLOC_CACHE_MAX} B glibc serves from its per-thread cache"
        );
    }
}

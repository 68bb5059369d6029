//! Steady client load: requests arrive at a fixed rate whatever the proxy
//! does (an open loop), over a pool of keep-alive connections, each with its
//! own `x-request-id`, each outcome recorded with its time and latency.
//!
//! A closed loop — N clients, each waiting for its answer before sending the
//! next — would stop sending while its clients are stuck on a hanging backend,
//! so the slow requests would also be the rare ones and the percentiles would
//! flatter the proxy (coordinated omission). Here a request stuck for 400 ms
//! holds one connection, and the next ones go out on time on others.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use detour_testkit::client::RawConnection;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{interval_at, sleep, sleep_until, timeout, Instant, MissedTickBehavior};

/// Path prefix of every measured request, so the backends' journals can tell
/// them from health checks and the readiness probe.
pub(crate) const PATH_PREFIX: &str = "/chaos/";

/// Body of every POST.
const POST_BODY: &str = "order=42&amount=17.00&note=chaos-harness-payload";

/// How long a client waits for one answer before calling it an error: past
/// every proxy's worst case (four attempts of 400 ms and their backoffs).
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The load's shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadShape {
    /// Streams of GETs (idempotent: a proxy may retry them).
    pub(crate) get_streams: usize,
    /// Streams of POSTs (not idempotent: never to be delivered twice).
    pub(crate) post_streams: usize,
    /// Time between two requests of one stream.
    pub(crate) every: Duration,
    /// Requests in flight at most; past it a stream waits, and the wait counts
    /// in the latency. Far above what any run here reaches.
    pub(crate) max_in_flight: usize,
}

impl Default for LoadShape {
    fn default() -> Self {
        LoadShape {
            get_streams: 6,
            post_streams: 2,
            every: Duration::from_millis(5),
            max_in_flight: 2048,
        }
    }
}

impl LoadShape {
    /// Requests per second, all streams together.
    pub(crate) fn rate(&self) -> f64 {
        (self.get_streams + self.post_streams) as f64 / self.every.as_secs_f64()
    }
}

/// The request method, which decides whether an error is excusable and
/// whether a second delivery is a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// Idempotent.
    Get,
    /// Not idempotent.
    Post,
}

/// One client request as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// GET or POST.
    pub(crate) method: Method,
    /// When it was sent (due, if it had to wait for the in-flight cap),
    /// since the load started.
    pub(crate) start: Duration,
    /// From then until the whole answer was read, or the failure.
    pub(crate) latency: Duration,
    /// What came back.
    pub(crate) answer: Answer,
}

impl Sample {
    /// A `2xx` answer arrived; anything else (another status, a reset, a
    /// closed connection, no answer within [`CLIENT_TIMEOUT`]) is an error.
    pub(crate) fn ok(&self) -> bool {
        matches!(self.answer, Answer::Status(200..=299))
    }
}

/// What a client got for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A response with this status.
    Status(u16),
    /// Connecting, writing or reading failed (`UnexpectedEof`: the proxy
    /// closed the connection without answering).
    Failed(io::ErrorKind),
    /// Nothing within [`CLIENT_TIMEOUT`].
    TimedOut,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Status(s) => write!(f, "{s}"),
            Answer::Failed(kind) => write!(f, "{kind:?}"),
            Answer::TimedOut => write!(f, "no answer in {}s", CLIENT_TIMEOUT.as_secs()),
        }
    }
}

/// Idle keep-alive connections to the proxy, shared by every request.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<RawConnection>>,
}

impl Pool {
    fn take(&self) -> Option<RawConnection> {
        // Only pushes and pops under the lock: a poisoned one is still whole.
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn give_back(&self, conn: RawConnection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

/// What the load saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    /// Every request, in the order they were sent.
    pub(crate) samples: Vec<Sample>,
    /// The longest time this process's runtime was late waking a 1 ms timer
    /// during the load: a stall of the harness itself (another program
    /// hogging the CPU, usually), which delays every request in flight and
    /// shows in the percentiles without being the proxy's doing.
    pub(crate) harness_stall: Duration,
}

/// Runs the load against `proxy` from `t0` until `until`, and returns every
/// request's sample once the last one has its answer (or timed out).
pub(crate) async fn run(proxy: SocketAddr, shape: LoadShape, t0: Instant, until: Instant) -> Run {
    let watchdog = watch_stalls(until);
    let pool = Arc::new(Pool::default());
    let samples = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(Semaphore::new(shape.max_in_flight.max(1)));
    let streams = shape.get_streams + shape.post_streams;
    let methods = std::iter::repeat_n(Method::Get, shape.get_streams)
        .chain(std::iter::repeat_n(Method::Post, shape.post_streams));
    let mut lanes = JoinSet::new();
    for (lane, method) in methods.enumerate() {
        // Streams start staggered across one period, not all on the same tick.
        let first = t0 + shape.every * lane as u32 / streams.max(1) as u32;
        let (pool, samples, in_flight) = (
            Arc::clone(&pool),
            Arc::clone(&samples),
            Arc::clone(&in_flight),
        );
        lanes.spawn(async move {
            let mut ticks = interval_at(first, shape.every);
            // Late ticks are caught up at once: the rate is the rate.
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut requests = JoinSet::new();
            let mut n = 0u64;
            loop {
                let due = ticks.tick().await;
                if due >= until {
                    break;
                }
                n += 1;
                let (permit, waited) = match Arc::clone(&in_flight).try_acquire_owned() {
                    Ok(p) => (p, false),
                    // The semaphore is never closed, so this only waits.
                    Err(_) => match Arc::clone(&in_flight).acquire_owned().await {
                        Ok(p) => (p, true),
                        Err(_) => break,
                    },
                };
                let (pool, samples) = (Arc::clone(&pool), Arc::clone(&samples));
                requests.spawn(async move {
                    // Timed from the send, not from the tick: tokio's timer
                    // wakes up to a millisecond late, which is ours, not the
                    // proxy's. Only a wait for the in-flight cap (never
                    // reached in practice) would count from the tick.
                    let sent = if waited { due } else { Instant::now() };
                    let answer = one_request(&pool, proxy, &request_bytes(method, lane, n)).await;
                    let sample = Sample {
                        method,
                        start: sent.saturating_duration_since(t0),
                        latency: sent.elapsed(),
                        answer,
                    };
                    samples
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(sample);
                    drop(permit);
                });
                // Forget finished requests as we go.
                while requests.try_join_next().is_some() {}
            }
            while requests.join_next().await.is_some() {}
        });
    }
    while lanes.join_next().await.is_some() {}
    let mut all = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    all.sort_by_key(|s| s.start);
    Run {
        samples: all,
        harness_stall: watchdog.await.unwrap_or_default(),
    }
}

/// The longest this process's runtime was late waking a 1 ms timer until
/// `until` (see [`Run::harness_stall`]).
fn watch_stalls(until: Instant) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        while Instant::now() < until {
            let asked = Instant::now() + Duration::from_millis(1);
            sleep_until(asked).await;
            // The timer's own granularity is a millisecond; beyond that the
            // runtime did not get to run.
            worst = worst.max(asked.elapsed().saturating_sub(Duration::from_millis(1)));
        }
        worst
    })
}

/// `clients` closed-loop clients sending GETs to `proxy` from `t0` until
/// `until`: each sends its next request as soon as the last one's answer is
/// read, on its own keep-alive connection (a new one after a close). Used by
/// the partial-outage scenarios, whose figures are shares of requests and
/// attempts per request rather than latencies.
pub(crate) async fn run_closed(
    proxy: SocketAddr,
    clients: usize,
    t0: Instant,
    until: Instant,
) -> Run {
    let watchdog = watch_stalls(until);
    let mut lanes = JoinSet::new();
    for lane in 0..clients {
        lanes.spawn(async move {
            sleep_until(t0).await;
            let pool = Pool::default();
            let mut samples = Vec::new();
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let sent = Instant::now();
                let request = request_bytes(Method::Get, lane, n);
                let answer = one_request(&pool, proxy, &request).await;
                samples.push(Sample {
                    method: Method::Get,
                    start: sent.saturating_duration_since(t0),
                    latency: sent.elapsed(),
                    answer,
                });
            }
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(lane) = lanes.join_next().await {
        all.extend(lane.unwrap_or_default());
    }
    all.sort_by_key(|s| s.start);
    Run {
        samples: all,
        harness_stall: watchdog.await.unwrap_or_default(),
    }
}

/// Sends one request on a pooled connection (or a new one) and reads the
/// answer; the connection goes back to the pool if it may be used again.
async fn one_request(pool: &Pool, proxy: SocketAddr, request: &[u8]) -> Answer {
    let mut conn = pool.take();
    match timeout(CLIENT_TIMEOUT, exchange(&mut conn, proxy, request)).await {
        Ok(Ok((status, keep))) => {
            if let Some(c) = conn.filter(|_| keep) {
                pool.give_back(c);
            }
            Answer::Status(status)
        }
        Ok(Err(e)) => Answer::Failed(e.kind()),
        Err(_) => Answer::TimedOut,
    }
}

/// Sends one request on `conn` (connecting first if there is none) and reads
/// the answer: its status, and whether the connection may be used again.
async fn exchange(
    conn: &mut Option<RawConnection>,
    proxy: SocketAddr,
    request: &[u8],
) -> io::Result<(u16, bool)> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(RawConnection::connect(proxy).await?),
    };
    c.send(request).await?;
    let response = c.read_response().await?;
    let close = response
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok((response.status, !close))
}

/// The bytes of stream `client`'s `n`-th request, with the request id
/// `c<client>-<n>`.
fn request_bytes(method: Method, client: usize, n: u64) -> Vec<u8> {
    let id = format!("c{client}-{n}");
    match method {
        Method::Get => format!(
            "GET {PATH_PREFIX}{client}/{n} HTTP/1.1\r\nhost: chaos\r\nx-request-id: {id}\r\n\r\n"
        ),
        Method::Post => format!(
            "POST {PATH_PREFIX}{client}/{n} HTTP/1.1\r\nhost: chaos\r\nx-request-id: {id}\r\n\
             content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{POST_BODY}",
            POST_BODY.len()
        ),
    }
    .into_bytes()
}

/// Waits until `proxy` answers `GET /ready` with a `2xx`, for at most `within`.
///
/// # Errors
/// The last failure seen, when `within` passes first.
pub(crate) async fn wait_ready(proxy: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("never answered");
    while Instant::now() < deadline {
        let probe = async {
            let mut c = RawConnection::connect(proxy).await?;
            c.send(b"GET /ready HTTP/1.1\r\nhost: chaos\r\nconnection: close\r\n\r\n")
                .await?;
            c.read_response().await
        };
        match timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(r)) if (200..300).contains(&r.status) => return Ok(()),
            Ok(Ok(r)) => last = format!("answered {}", r.status),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer within 2 s".into(),
        }
        sleep(Duration::from_millis(25)).await;
    }
    Err(format!("{proxy} not ready after {within:?}: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_their_id_and_a_framed_body() {
        let get = String::from_utf8(request_bytes(Method::Get, 3, 7)).unwrap_or_default();
        assert!(get.starts_with("GET /chaos/3/7 HTTP/1.1\r\n"));
        assert!(get.contains("\r\nx-request-id: c3-7\r\n"));
        assert!(get.ends_with("\r\n\r\n"));
        let post = String::from_utf8(request_bytes(Method::Post, 1, 2)).unwrap_or_default();
        assert!(post.contains(&format!("content-length: {}\r\n", POST_BODY.len())));
        assert!(post.ends_with(POST_BODY));
    }
}

//! Backends from etcd (v3 API): every key under a prefix is one backend,
//! read whole once, then watched from that revision.
//!
//! The watcher runs in a task of its own, started by the first
//! [`discover`](ServiceDiscovery::discover) and stopped when the last clone
//! of the [`EtcdDiscovery`] is dropped. It keeps the key → backend map and
//! publishes each change; [`discover`](ServiceDiscovery::discover) answers
//! from that map and [`changed`](ServiceDiscovery::changed) completes when
//! it moved. What it does when etcd misbehaves:
//!
//! - etcd unreachable, an error, the stream ending: the map stays as it was
//!   (the source reports `failing`), and the task reads the prefix again
//!   after a backoff (100 ms doubling to 5 s, with jitter). Deletions are
//!   only ever applied from a successful read or a watch event.
//! - the watch's start revision compacted away: read the prefix again at
//!   once and watch from the new revision.
//! - a silent watch (a partition that leaves the TCP connection open): the
//!   task asks for a progress notification every `progress_interval` and
//!   calls the watch dead when the previous request went unanswered, so a
//!   dead watch is found within two intervals.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use detour_core::Backend;
use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
    WatchStream,
};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{BackendSpec, ServiceDiscovery, SourceState, SourceStatus};
use crate::{DiscoveryError, DiscoveryErrorKind};

/// Where and how [`EtcdDiscovery`] reaches etcd.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// `host:port` or `http(s)://host:port`, one or more members.
    pub endpoints: Vec<String>,
    /// The key prefix; every key under it is one backend.
    pub prefix: String,
    /// User name and password, when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// TLS towards etcd (the endpoints then need `https://`).
    pub tls: Option<EtcdTls>,
    /// Bound on connecting and on each read; also how long the first
    /// [`discover`](ServiceDiscovery::discover) waits for the first read.
    /// Default 5 s.
    pub timeout: Duration,
    /// How often the watch asks etcd for a progress notification; one left
    /// unanswered for this long marks the watch dead. Default 5 s.
    pub progress_interval: Duration,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .field("progress_interval", &self.progress_interval)
            .finish()
    }
}

impl EtcdOptions {
    /// Watch `prefix` on the members `endpoints`.
    pub fn new(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        prefix: impl Into<String>,
    ) -> Self {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: prefix.into(),
            user: None,
            tls: None,
            timeout: Duration::from_secs(5),
            progress_interval: Duration::from_secs(5),
        }
    }

    /// Authenticate as `user`.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// Connect with TLS.
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Set [`timeout`](EtcdOptions::timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Set [`progress_interval`](EtcdOptions::progress_interval).
    pub fn with_progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }
}

/// TLS towards etcd, as PEM bytes.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct EtcdTls {
    /// The CA that signed etcd's certificate (default: none; set it).
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check etcd's certificate against, when it differs from
    /// the endpoint's host.
    pub domain: Option<String>,
}

impl EtcdTls {
    /// TLS trusting the CA `ca_pem`.
    pub fn with_ca(ca_pem: impl Into<Vec<u8>>) -> Self {
        EtcdTls {
            ca_pem: Some(ca_pem.into()),
            identity: None,
            domain: None,
        }
    }

    /// Present the client certificate `cert_pem` with its key `key_pem`.
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Check etcd's certificate against `domain`.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    fn to_tonic(&self) -> TlsOptions {
        let mut t = TlsOptions::new();
        if let Some(ca) = &self.ca_pem {
            t = t.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            t = t.domain_name(d.clone());
        }
        t
    }
}

/// Backends from the keys under an etcd prefix; each key's value is a JSON
/// [`BackendSpec`]: `{"addr": "10.0.0.5:8080"}` plus optional `weight`,
/// `priority`, `locality` and `metadata`.
///
/// A key whose value does not parse is left out (the source reports
/// `degraded`, naming the key); an address under two keys counts once (the
/// first key in byte order). A key attached to a lease disappears when the
/// lease expires: the usual way for a backend to register itself is to put
/// its key with a lease and keep the lease alive.
///
/// Cloning shares one watcher.
#[derive(Clone)]
pub struct EtcdDiscovery(Arc<Handle>);

/// The part the clones share; dropping it stops the watcher.
struct Handle {
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

struct Shared {
    options: EtcdOptions,
    name: String,
    view: watch::Sender<View>,
    /// The `version` of the view the last `discover` answered from.
    seen: AtomicU64,
    started: AtomicBool,
    stop: Mutex<Option<oneshot::Receiver<()>>>,
}

/// What the watcher knows, published whole on each change.
#[derive(Clone)]
struct View {
    /// Bumped on every publication.
    version: u64,
    /// Whether a read has ever succeeded.
    synced: bool,
    backends: Arc<Vec<BackendSpec>>,
    status: SourceStatus,
}

impl std::fmt::Debug for EtcdDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EtcdDiscovery")
            .field(&self.0.shared.name)
            .finish()
    }
}

impl EtcdDiscovery {
    /// A source watching `options.prefix`. Nothing connects until the first
    /// [`discover`](ServiceDiscovery::discover).
    pub fn new(options: EtcdOptions) -> Self {
        let name = format!("etcd {} {}", options.endpoints.join(","), options.prefix);
        let view = View {
            version: 0,
            synced: false,
            backends: Arc::new(Vec::new()),
            status: SourceStatus::starting(name.clone()),
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            options,
            name,
            view: watch::Sender::new(view),
            seen: AtomicU64::new(0),
            started: AtomicBool::new(false),
            stop: Mutex::new(Some(stop_rx)),
        });
        EtcdDiscovery(Arc::new(Handle {
            shared,
            _stop: stop_tx,
        }))
    }

    /// The source's state now.
    pub fn status(&self) -> SourceStatus {
        self.0.shared.view.borrow().status.clone()
    }

    /// Start the watcher task, once.
    fn start(&self) {
        let shared = &self.0.shared;
        if shared.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let stop = shared
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(stop) = stop {
            tokio::spawn(run(Arc::clone(shared), stop));
        }
    }
}

impl ServiceDiscovery for EtcdDiscovery {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        self.start();
        let shared = &self.0.shared;
        let mut rx = shared.view.subscribe();
        // The first read, bounded; after it this answers at once.
        let _ = tokio::time::timeout(shared.options.timeout, rx.wait_for(|v| v.synced)).await;
        let view = rx.borrow().clone();
        if !view.synced {
            let why = view.status.error.unwrap_or_else(|| "no answer yet".into());
            return Err(
                DiscoveryError::new(DiscoveryErrorKind::Unavailable, &shared.name).with_source(why),
            );
        }
        shared.seen.store(view.version, Ordering::Release);
        Ok(view.backends.iter().map(BackendSpec::to_backend).collect())
    }

    async fn changed(&self) {
        let shared = &self.0.shared;
        let mut rx = shared.view.subscribe();
        let seen = shared.seen.load(Ordering::Acquire);
        if rx.wait_for(|v| v.version != seen).await.is_err() {
            // Cannot happen while `self` holds the sender; never spin.
            std::future::pending::<()>().await;
        }
    }
}

/// How one session with etcd ended.
enum End {
    /// Read again at once (the watch's revision was compacted).
    Reread(String),
    /// Read again after a backoff.
    Failed(String),
}

/// The watcher: sessions until `stop` fires (the last handle dropped).
async fn run(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut backoff = Backoff::new();
    loop {
        let end = tokio::select! {
            biased;
            _ = &mut stop => return,
            end = session(&shared, &mut backoff) => end,
        };
        let pause = match end {
            End::Reread(why) => {
                tracing::info!(source = %shared.name, reason = %why, "etcd: reading the prefix again");
                Duration::ZERO
            }
            End::Failed(why) => {
                tracing::warn!(source = %shared.name, error = %why, "etcd: keeping the last backend set");
                shared.fail(why);
                backoff.next()
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Connect, read the prefix, then follow the watch until it fails.
async fn session(shared: &Shared, backoff: &mut Backoff) -> End {
    let o = &shared.options;
    let bounded = |what: &'static str| move |e: tokio::time::error::Elapsed| format!("{what}: {e}");
    let connect = tokio::time::timeout(
        o.timeout,
        Client::connect(&o.endpoints, Some(connect_options(o))),
    );
    let mut client = match connect.await.map_err(bounded("connect")) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return End::Failed(format!("connect: {e}")),
        Err(e) => return End::Failed(e),
    };
    let get = client.get(o.prefix.as_bytes(), Some(GetOptions::new().with_prefix()));
    let answer = match tokio::time::timeout(o.timeout, get)
        .await
        .map_err(bounded("read"))
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return End::Failed(format!("read: {e}")),
        Err(e) => return End::Failed(e),
    };
    let mut revision = answer.header().map_or(0, |h| h.revision());
    let mut keys = BTreeMap::new();
    for kv in answer.kvs() {
        keys.insert(kv.key().to_vec(), parse_value(kv.value()));
    }
    shared.publish(&keys, revision);
    backoff.reset();

    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1)
        .with_progress_notify();
    let watch = client.watch(o.prefix.as_bytes(), Some(options));
    let mut stream = match tokio::time::timeout(o.timeout, watch)
        .await
        .map_err(bounded("watch"))
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return End::Failed(format!("watch: {e}")),
        Err(e) => return End::Failed(e),
    };
    follow(shared, &mut stream, &mut keys, &mut revision).await
}

/// Apply the watch's events until it fails, asking for progress on the way.
async fn follow(
    shared: &Shared,
    stream: &mut WatchStream,
    keys: &mut BTreeMap<Vec<u8>, Result<BackendSpec, String>>,
    revision: &mut i64,
) -> End {
    let interval = shared
        .options
        .progress_interval
        .max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    let mut last_heard = Instant::now();
    let mut last_asked: Option<Instant> = None;
    loop {
        tokio::select! {
            message = stream.message() => {
                let answer = match message {
                    Ok(Some(a)) => a,
                    Ok(None) => return End::Failed("the watch stream ended".into()),
                    Err(e) => return End::Failed(format!("watch: {e}")),
                };
                last_heard = Instant::now();
                if answer.canceled() {
                    let compacted = answer.compact_revision();
                    if compacted > 0 {
                        return End::Reread(format!("revision {} compacted (now {compacted})", *revision + 1));
                    }
                    return End::Failed(format!("watch canceled: {}", answer.cancel_reason()));
                }
                for event in answer.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        EventType::Put => {
                            keys.insert(kv.key().to_vec(), parse_value(kv.value()));
                        }
                        EventType::Delete => {
                            keys.remove(kv.key());
                        }
                    }
                }
                if let Some(h) = answer.header() {
                    *revision = (*revision).max(h.revision());
                }
                shared.publish(keys, *revision);
            }
            _ = ticker.tick() => {
                if last_asked.is_some_and(|asked| last_heard < asked) {
                    return End::Failed(format!(
                        "no progress notification within {interval:?}: the watch is presumed dead"
                    ));
                }
                last_asked = Some(Instant::now());
                if let Err(e) = stream.request_progress().await {
                    return End::Failed(format!("progress request: {e}"));
                }
            }
        }
    }
}

fn connect_options(o: &EtcdOptions) -> ConnectOptions {
    let mut c = ConnectOptions::new()
        .with_connect_timeout(o.timeout)
        .with_keep_alive(o.progress_interval, o.timeout)
        .with_keep_alive_while_idle(true);
    if let Some((user, password)) = &o.user {
        c = c.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &o.tls {
        c = c.with_tls(tls.to_tonic());
    }
    c
}

/// A key's value: a JSON backend, or why it is not one.
fn parse_value(value: &[u8]) -> Result<BackendSpec, String> {
    serde_json::from_slice(value).map_err(|e| e.to_string())
}

impl Shared {
    /// Publish the map `keys` at `revision`: the backends in force, the
    /// source `ok` (or `degraded`, naming a key whose value was refused).
    fn publish(&self, keys: &BTreeMap<Vec<u8>, Result<BackendSpec, String>>, revision: i64) {
        let mut backends: Vec<BackendSpec> = Vec::with_capacity(keys.len());
        let mut addrs = HashSet::with_capacity(keys.len());
        let mut refused = Vec::new();
        for (key, value) in keys {
            let key = String::from_utf8_lossy(key);
            match value {
                Ok(spec) if !addrs.insert(spec.addr) => {
                    refused.push(format!(
                        "{key}: address {} is under another key too",
                        spec.addr
                    ));
                }
                Ok(spec) => backends.push(spec.clone()),
                Err(e) => refused.push(format!("{key}: {e}")),
            }
        }
        self.view.send_modify(|v| {
            v.version += 1;
            v.synced = true;
            v.status.backends = backends.len();
            v.backends = Arc::new(backends);
            v.status.revision = Some(revision);
            v.status.last_success = Some(SystemTime::now());
            if refused.is_empty() {
                v.status.state = SourceState::Ok;
                v.status.error = None;
            } else {
                v.status.state = SourceState::Degraded;
                v.status.error = Some(format!(
                    "{} key(s) left out: {}",
                    refused.len(),
                    refused.join("; ")
                ));
            }
        });
    }

    /// The session failed: keep the backends, say why.
    fn fail(&self, why: String) {
        self.view.send_modify(|v| {
            v.version += 1;
            v.status.state = SourceState::Failing;
            v.status.error = Some(why);
        });
    }
}

/// Exponential backoff with jitter: 100 ms doubling to 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The pause before the next attempt: between half and all of the
    /// current step, which then doubles.
    fn next(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(Self::MAX);
        step / 2 + step.mul_f64(fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_a_json_backend() {
        let spec =
            parse_value(br#"{"addr": "10.0.0.5:8080", "weight": 3, "locality": "z1"}"#).unwrap();
        assert_eq!(spec.addr, "10.0.0.5:8080".parse().unwrap());
        assert_eq!(spec.weight, 3);
        assert_eq!(spec.locality.as_deref(), Some("z1"));
        assert!(parse_value(b"10.0.0.5:8080").is_err());
        assert!(parse_value(br#"{"addr": "10.0.0.5:8080", "wieght": 3}"#).is_err());
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next();
        }
        let late = b.next();
        assert!(
            late >= Duration::from_millis(2500) && late <= Duration::from_secs(5),
            "{late:?}"
        );
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let o = EtcdOptions::new(["127.0.0.1:2379"], "/p/").with_user("u", "hunter2");
        let shown = format!("{o:?}");
        assert!(
            shown.contains("\"u\"") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}

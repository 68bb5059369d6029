//! [`EtcdWatch`]: a key or a prefix in etcd, read whole once, then watched
//! from that revision, kept as a map of key → value and published whole on
//! each change. [`EtcdDiscovery`](super::EtcdDiscovery) reads backends from
//! it; the `detour` binary its configuration.
//!
//! The watcher runs in a task of its own, started by the first
//! [`subscribe`](EtcdWatch::subscribe) (or anything that reads) and stopped
//! when the last clone of the [`EtcdWatch`] is dropped (see
//! `discovery::watched`). What it does when etcd misbehaves:
//!
//! - etcd unreachable, an error, the stream ending: the map stays as it was
//!   (the snapshot says `failing`), and the task reads again after a
//!   backoff (100 ms doubling to 5 s, with jitter). Deletions are only ever
//!   applied from a successful read or a watch event.
//! - the watch's start revision compacted away: read again at once and
//!   watch from the new revision.
//! - a silent watch (a partition that leaves the TCP connection open): the
//!   task asks for a progress notification every `progress_interval` and
//!   calls the watch dead when the previous request went unanswered, so a
//!   dead watch is found within two intervals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
    WatchStream,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::discovery::watched::{Backoff, Followed, Source, WatchSnapshot};

/// Where and how an [`EtcdWatch`] (and [`EtcdDiscovery`](super::EtcdDiscovery))
/// reaches etcd, and what it follows.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// `host:port` or `http(s)://host:port`, one or more members.
    pub endpoints: Vec<String>,
    /// The key prefix followed (for discovery, every key under it is one
    /// backend), or the one key with [`single_key`](Self::single_key).
    pub prefix: String,
    /// Follow `prefix` as one key, not as a prefix.
    pub single_key: bool,
    /// User name and password, when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// TLS towards etcd (the endpoints then need `https://`).
    pub tls: Option<EtcdTls>,
    /// Bound on connecting and on each read; also how long the first
    /// discovery round waits for the first read. Default 5 s.
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
            .field("single_key", &self.single_key)
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
            single_key: false,
            user: None,
            tls: None,
            timeout: Duration::from_secs(5),
            progress_interval: Duration::from_secs(5),
        }
    }

    /// Follow the one key `key` on the members `endpoints`.
    pub fn single_key(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        key: impl Into<String>,
    ) -> Self {
        EtcdOptions {
            single_key: true,
            ..EtcdOptions::new(endpoints, key)
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

/// A key or prefix in etcd, read whole once, then watched from that
/// revision, as a map of key → value ([`EtcdSnapshot`]) published whole on
/// each change. Its task starts on first use and stops with the last clone;
/// when etcd fails the last known keys stay (`failing`) and it reads again
/// after a backoff (100 ms doubling to 5 s); an unanswered progress request
/// marks a silent watch dead; a compacted revision makes it read again.
/// Cloning shares one watcher.
#[derive(Clone)]
pub struct EtcdWatch(pub(crate) Followed<EtcdEntries, EtcdOptions>);

/// Every key followed and its value.
pub type EtcdEntries = BTreeMap<Vec<u8>, Vec<u8>>;

/// What an [`EtcdWatch`] knows: its entries are every key under the prefix
/// (or the one key) and its value; its revision is etcd's store revision.
pub type EtcdSnapshot = WatchSnapshot<EtcdEntries>;

/// The source the watcher task publishes to.
type Shared = Source<EtcdEntries, EtcdOptions>;

impl std::fmt::Debug for EtcdWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EtcdWatch").field(&self.name()).finish()
    }
}

impl EtcdWatch {
    /// A watcher of `options.prefix` (or the one key, see
    /// [`EtcdOptions::single_key`]). Nothing connects until it is read.
    pub fn new(options: EtcdOptions) -> Self {
        let name = format!("etcd {} {}", options.endpoints.join(","), options.prefix);
        EtcdWatch(Followed::new(name, options, |shared| Box::pin(run(shared))))
    }

    /// `etcd ENDPOINTS KEY`: how logs and `/status` name it.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The options it was made with.
    pub fn options(&self) -> &EtcdOptions {
        self.0.options()
    }

    /// Follow the snapshots (starting the watcher if it is not running).
    /// Must be called within a tokio runtime.
    pub fn subscribe(&self) -> watch::Receiver<EtcdSnapshot> {
        self.0.subscribe()
    }

    /// The snapshot now (without starting anything).
    pub fn snapshot(&self) -> EtcdSnapshot {
        self.0.snapshot()
    }

    /// The snapshot once the first read succeeded, or after `within`
    /// (check [`WatchSnapshot::synced`]).
    pub async fn first_read(&self, within: Duration) -> EtcdSnapshot {
        self.0.first_read(within).await
    }
}

/// How one session with etcd ended.
enum End {
    /// Read again at once (the watch's revision was compacted).
    Reread(String),
    /// Read again after a backoff.
    Failed(String),
}

/// The watcher: sessions, one after another, for as long as the source
/// lives.
async fn run(shared: Arc<Shared>) {
    let mut backoff = Backoff::new();
    loop {
        let pause = match session(&shared, &mut backoff).await {
            End::Reread(why) => {
                tracing::info!(source = %shared.name, reason = %why, "etcd: reading again");
                Duration::ZERO
            }
            End::Failed(why) => {
                tracing::warn!(source = %shared.name, error = %why, "etcd: keeping the last known keys");
                shared.fail(why);
                backoff.next()
            }
        };
        tokio::time::sleep(pause).await;
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
    let get_options = if o.single_key {
        GetOptions::new()
    } else {
        GetOptions::new().with_prefix()
    };
    let get = client.get(o.prefix.as_bytes(), Some(get_options));
    let answer = match tokio::time::timeout(o.timeout, get)
        .await
        .map_err(bounded("read"))
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return End::Failed(format!("read: {e}")),
        Err(e) => return End::Failed(e),
    };
    let Some(mut revision) = answer.header().map(|h| h.revision()) else {
        return End::Failed("read: an answer without a revision".into());
    };
    let mut keys = BTreeMap::new();
    for kv in answer.kvs() {
        keys.insert(kv.key().to_vec(), kv.value().to_vec());
    }
    shared.publish(&keys, revision);

    let mut options = WatchOptions::new()
        .with_start_revision(revision + 1)
        .with_progress_notify();
    if !o.single_key {
        options = options.with_prefix();
    }
    let watch = client.watch(o.prefix.as_bytes(), Some(options));
    let mut stream = match tokio::time::timeout(o.timeout, watch)
        .await
        .map_err(bounded("watch"))
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return End::Failed(format!("watch: {e}")),
        Err(e) => return End::Failed(e),
    };
    follow(shared, &mut stream, &mut keys, &mut revision, backoff).await
}

/// Apply the watch's events until it fails, asking for progress on the way.
async fn follow(
    shared: &Shared,
    stream: &mut WatchStream,
    keys: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    revision: &mut i64,
    backoff: &mut Backoff,
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
                // The watch works: the next failure starts the backoff over
                // (not a good read alone, or a watch refused at once would
                // re-read in a tight loop).
                backoff.reset();
                for event in answer.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        EventType::Put => {
                            keys.insert(kv.key().to_vec(), kv.value().to_vec());
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
        .with_keep_alive_while_idle(true)
        // A member cut off from its cluster's leader refuses, rather than
        // serving a frozen view that would look healthy.
        .with_require_leader(true);
    if let Some((user, password)) = &o.user {
        c = c.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &o.tls {
        c = c.with_tls(tls.to_tonic());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! [`Sources`]: where an upstream's backends come from (the static list, DNS,
//! a file, etcd), asked together as one [`ServiceDiscovery`], with the rules
//! that keep a failing source from emptying the upstream.
//!
//! - Each source's last good answer is kept. A round in which one source
//!   fails uses that answer for it (the source reports `failing`), so a
//!   source failure never removes a backend; deletions come only from a
//!   successful answer.
//! - A round whose answers add up to no backend at all is refused unless
//!   `discovery.allow_empty` is set: the last set stays and the sources
//!   report `degraded` (a wiped etcd prefix, a storm of expired leases, an
//!   emptied file).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use detour_core::Backend;
use detour_lb::discovery::{SourceState, SourceStatus, SystemResolver};
use detour_lb::{
    DiscoveryError, DiscoveryErrorKind, DnsDiscovery, DnsTarget, FileDiscovery, ServiceDiscovery,
    StaticDiscovery,
};

use super::config::{DiscoveryConfig, UpstreamConfig};
use crate::config::ConfigError;

#[cfg(feature = "etcd")]
use detour_lb::discovery::EtcdDiscovery;

/// Every source an upstream's backends come from, asked together.
#[derive(Clone)]
pub(super) struct Sources(Arc<SourcesInner>);

struct SourcesInner {
    members: Vec<Member>,
    allow_empty: bool,
    /// Why the last round was refused for emptying the upstream, if it was.
    kept: Mutex<Option<String>>,
}

/// One source, its last good answer and its state.
struct Member {
    source: Source,
    last_good: Mutex<Option<Vec<Backend>>>,
    status: Mutex<SourceStatus>,
}

enum Source {
    Static(StaticDiscovery),
    Dns(Box<DnsDiscovery<SystemResolver>>),
    File(FileDiscovery),
    #[cfg(feature = "etcd")]
    Etcd(EtcdDiscovery),
    #[cfg(feature = "kubernetes")]
    Kubernetes(detour_lb::discovery::KubernetesDiscovery),
}

impl Source {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        match self {
            Source::Static(s) => s.discover().await,
            Source::Dns(s) => s.discover().await,
            Source::File(s) => s.discover().await,
            #[cfg(feature = "etcd")]
            Source::Etcd(s) => s.discover().await,
            #[cfg(feature = "kubernetes")]
            Source::Kubernetes(s) => s.discover().await,
        }
    }

    /// Its news, for a watched source (see [`ServiceDiscovery::changed`]).
    fn changed(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> {
        match self {
            #[cfg(feature = "etcd")]
            Source::Etcd(e) => Some(Box::pin(e.changed())),
            #[cfg(feature = "kubernetes")]
            Source::Kubernetes(k) => Some(Box::pin(k.changed())),
            _ => None,
        }
    }

    /// The source's own account of itself, for sources that keep one.
    fn own_status(&self) -> Option<SourceStatus> {
        match self {
            #[cfg(feature = "etcd")]
            Source::Etcd(s) => Some(s.status()),
            #[cfg(feature = "kubernetes")]
            Source::Kubernetes(s) => Some(s.status()),
            _ => None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fresh backends with the same descriptions (the load balancer carries
/// each one's state over by address).
fn copies(backends: &[Backend]) -> Vec<Backend> {
    backends.iter().map(|b| b.reweighted(b.weight())).collect()
}

impl Member {
    fn new(name: String, source: Source) -> Self {
        Member {
            source,
            last_good: Mutex::new(None),
            status: Mutex::new(SourceStatus::starting(name)),
        }
    }

    /// Ask the source; on failure, its last good answer (if any) and the
    /// reason.
    async fn ask(&self) -> (Option<Vec<Backend>>, Option<DiscoveryError>) {
        let answer = self.source.discover().await;
        let mut status = lock(&self.status);
        match answer {
            Ok(backends) => {
                status.state = SourceState::Ok;
                status.error = None;
                status.backends = backends.len();
                status.last_success = Some(SystemTime::now());
                *lock(&self.last_good) = Some(copies(&backends));
                (Some(backends), None)
            }
            Err(e) => {
                status.state = SourceState::Failing;
                status.error = Some(e.to_string());
                (lock(&self.last_good).as_deref().map(copies), Some(e))
            }
        }
    }

    fn status(&self) -> SourceStatus {
        self.source
            .own_status()
            .unwrap_or_else(|| lock(&self.status).clone())
    }
}

impl Sources {
    /// The sources `config` and its `discovery` table `d` name; `at` is the
    /// upstream's field prefix (`upstreams.NAME`), for errors.
    pub(super) fn new(
        config: &UpstreamConfig,
        d: &DiscoveryConfig,
        at: &str,
    ) -> Result<Self, ConfigError> {
        let mut members = Vec::new();
        if !config.backends.is_empty() {
            let fixed = StaticDiscovery::new(config.backends.iter().cloned());
            members.push(Member::new("static".into(), Source::Static(fixed)));
        }
        if !d.dns.is_empty() {
            // Validated already: every target parses.
            let targets: Vec<DnsTarget> = d.dns.iter().filter_map(|t| t.parse().ok()).collect();
            let dns = DnsDiscovery::system(targets)
                .map_err(|e| ConfigError::field(format!("{at}.discovery.dns"), e.to_string()))?;
            let name = format!("dns {}", d.dns.join(","));
            members.push(Member::new(name, Source::Dns(Box::new(dns))));
        }
        if let Some(path) = &d.file {
            let name = format!("file {}", path.display());
            members.push(Member::new(name, Source::File(FileDiscovery::new(path))));
        }
        if let Some(e) = &d.etcd {
            let options = super::etcd::options(e, &format!("{at}.discovery.etcd"))?;
            members.push(etcd_member(options));
        }
        if let Some(k) = &d.kubernetes {
            let options = super::kubernetes::options(k, &format!("{at}.discovery.kubernetes"))?;
            members.push(kubernetes_member(options));
        }
        Ok(Sources(Arc::new(SourcesInner {
            members,
            allow_empty: d.allow_empty,
            kept: Mutex::new(None),
        })))
    }

    /// Take `prev`'s last good answers for the sources both have (same
    /// name: same kind and target), and their state until the first round.
    pub(super) fn inherit(&self, prev: &Sources) {
        for m in &self.0.members {
            let name = lock(&m.status).source.clone();
            let Some(p) = prev
                .0
                .members
                .iter()
                .find(|p| lock(&p.status).source == name)
            else {
                continue;
            };
            let last = lock(&p.last_good).as_deref().map(copies);
            *lock(&m.last_good) = last;
            *lock(&m.status) = lock(&p.status).clone();
        }
    }

    /// Each source's state now.
    pub(super) fn status(&self) -> Vec<SourceStatus> {
        let kept = lock(&self.0.kept).clone();
        self.0
            .members
            .iter()
            .map(|m| {
                let mut s = m.status();
                if let Some(why) = &kept {
                    if s.backends == 0 && s.state == SourceState::Ok {
                        s.state = SourceState::Degraded;
                        s.error = Some(why.clone());
                    }
                }
                s
            })
            .collect()
    }
}

impl ServiceDiscovery for Sources {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        let mut all = Vec::new();
        let mut first_error = None;
        let mut answered = false;
        for m in &self.0.members {
            let (backends, error) = m.ask().await;
            answered |= backends.is_some();
            all.extend(backends.unwrap_or_default());
            if first_error.is_none() {
                first_error = error;
            }
        }
        if !answered {
            // No source has ever answered: nothing to apply.
            return Err(first_error.unwrap_or_else(|| {
                DiscoveryError::new(DiscoveryErrorKind::Other, "discovery: no source")
            }));
        }
        if all.is_empty() && !self.0.allow_empty {
            let e = DiscoveryError::new(DiscoveryErrorKind::WouldEmpty, "discovery");
            *lock(&self.0.kept) = Some(e.to_string());
            return Err(e);
        }
        *lock(&self.0.kept) = None;
        Ok(all)
    }

    async fn changed(&self) {
        // The watched sources' news, whichever comes first.
        let mut watched: Vec<_> = self
            .0
            .members
            .iter()
            .filter_map(|m| m.source.changed())
            .collect();
        if watched.is_empty() {
            return std::future::pending().await;
        }
        std::future::poll_fn(|cx| {
            for w in &mut watched {
                if w.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(());
                }
            }
            std::task::Poll::Pending
        })
        .await;
    }
}

/// The etcd source `options` describe.
#[cfg(feature = "etcd")]
fn etcd_member(options: detour_lb::discovery::EtcdOptions) -> Member {
    let source = EtcdDiscovery::new(options);
    let name = source.status().source;
    Member::new(name, Source::Etcd(source))
}

/// The Kubernetes source `options` describe.
#[cfg(feature = "kubernetes")]
fn kubernetes_member(options: detour_lb::discovery::KubernetesOptions) -> Member {
    let source = detour_lb::discovery::KubernetesDiscovery::new(options);
    let name = source.status().source;
    Member::new(name, Source::Kubernetes(source))
}

/// Without the feature, [`super::kubernetes::options`] refuses every table.
#[cfg(not(feature = "kubernetes"))]
fn kubernetes_member(never: std::convert::Infallible) -> Member {
    match never {}
}

/// Without the feature, [`super::etcd::options`] refuses every etcd table.
#[cfg(not(feature = "etcd"))]
fn etcd_member(never: std::convert::Infallible) -> Member {
    match never {}
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str) -> Self {
            let file = format!("detour-sources-{}-{name}.toml", std::process::id());
            TempFile(std::env::temp_dir().join(file))
        }
        fn write(&self, text: &str) {
            std::fs::write(&self.0, text).unwrap();
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn sources(file: &TempFile, extra: &str) -> Sources {
        let text = format!("{extra}\n[discovery]\nfile = {:?}\n", file.0);
        let config: UpstreamConfig = toml::from_str(&text).unwrap();
        let d = config.discovery.clone().unwrap();
        Sources::new(&config, &d, "upstreams.app").unwrap()
    }

    async fn ports(s: &Sources) -> Vec<u16> {
        let mut p: Vec<u16> = s
            .discover()
            .await
            .unwrap()
            .iter()
            .map(|b| b.addr().port())
            .collect();
        p.sort_unstable();
        p
    }

    const TWO: &str = "[[backends]]\naddr = \"10.0.0.1:2\"\n[[backends]]\naddr = \"10.0.0.1:3\"\n";

    #[tokio::test]
    async fn a_failing_source_counts_with_its_last_good_answer() {
        let file = TempFile::new("failing");
        file.write(TWO);
        let s = sources(&file, "backends = [{ addr = \"10.0.0.1:1\" }]");
        assert_eq!(ports(&s).await, [1, 2, 3]);
        file.write("[[backends]\nnot toml");
        // The file's backends stay; the file says why it failed.
        assert_eq!(ports(&s).await, [1, 2, 3]);
        let status = s.status();
        assert_eq!(status[0].source, "static");
        assert_eq!(status[0].state, SourceState::Ok);
        assert_eq!(status[1].state, SourceState::Failing);
        assert!(
            status[1].error.as_deref().unwrap().contains("parse"),
            "{status:?}"
        );
        assert_eq!(status[1].backends, 2);
        // Fixed: its new answer applies, removals included.
        file.write("[[backends]]\naddr = \"10.0.0.1:3\"\n");
        assert_eq!(ports(&s).await, [1, 3]);
        assert_eq!(s.status()[1].state, SourceState::Ok);
    }

    #[tokio::test]
    async fn a_round_that_would_empty_the_upstream_is_refused() {
        let file = TempFile::new("empty");
        file.write(TWO);
        let s = sources(&file, "");
        assert_eq!(ports(&s).await, [2, 3]);
        file.write("");
        let e = s.discover().await.unwrap_err();
        assert_eq!(e.kind(), DiscoveryErrorKind::WouldEmpty);
        let status = &s.status()[0];
        assert_eq!(status.state, SourceState::Degraded);
        assert!(
            status.error.as_deref().unwrap().contains("empty"),
            "{status:?}"
        );
        file.write(TWO);
        assert_eq!(ports(&s).await, [2, 3]);
        assert_eq!(s.status()[0].state, SourceState::Ok);
    }

    #[tokio::test]
    async fn allow_empty_lets_a_round_empty_the_upstream() {
        let file = TempFile::new("allowed");
        file.write(TWO);
        let text = format!("[discovery]\nfile = {:?}\nallow_empty = true\n", file.0);
        let config: UpstreamConfig = toml::from_str(&text).unwrap();
        let d = config.discovery.clone().unwrap();
        let s = Sources::new(&config, &d, "upstreams.app").unwrap();
        assert_eq!(ports(&s).await, [2, 3]);
        file.write("");
        assert!(ports(&s).await.is_empty());
        assert_eq!(s.status()[0].state, SourceState::Ok);
    }

    #[tokio::test]
    async fn no_answer_ever_is_an_error() {
        let file = TempFile::new("never");
        let s = sources(&file, "");
        assert_eq!(
            s.discover().await.unwrap_err().kind(),
            DiscoveryErrorKind::Io
        );
        assert_eq!(s.status()[0].state, SourceState::Failing);
    }
}

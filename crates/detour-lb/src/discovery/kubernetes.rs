//! Backends from Kubernetes EndpointSlices: [`KubernetesDiscovery`], the
//! endpoints of one Service's port, listed then watched through kube-rs.
//!
//! Which endpoints serve, as kube-proxy decides (KEP-1669):
//!
//! - `ready` endpoints serve;
//! - `serving` but `terminating` ones drain (weight 0: no new request,
//!   in-flight ones finish) — unless no endpoint is ready, when they take
//!   the traffic, so a rollout that terminates every old pod before a new
//!   one is ready still answers;
//! - the rest (not ready, not serving) are left out.
//!
//! An endpoint's `zone` becomes its backend's locality, so `locality`
//! failover follows zones. Each successful list replaces the set whole;
//! a watch event changes its slice. A failing API server (unreachable, an
//! error, a watch cut) keeps the last known slices (the source reports
//! `failing`) and retries with a backoff; an expired resource version
//! (410) is handled by kube-rs's watcher by listing again.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use detour_core::Backend;
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::watched::{Backoff, Followed, Seen, Source};
use super::{BackendSpec, ServiceDiscovery, SourceState, SourceStatus};
use crate::DiscoveryError;

/// Which Service's endpoints [`KubernetesDiscovery`] follows, and how it
/// reaches the API server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KubernetesOptions {
    /// The Service's name (its slices carry `kubernetes.io/service-name`).
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// The endpoints' port: its name (`http`, the name the Service's port
    /// has), or its number — the target port, the one the pods listen on,
    /// not the Service's port.
    pub port: String,
    /// A kubeconfig file; `None`: the usual inference (in a pod, the
    /// service account; elsewhere `KUBECONFIG` or `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// How long the first discovery round waits for the first list.
    /// Default 5 s.
    pub timeout: Duration,
    /// How long one watch call lasts before it is renewed (the API
    /// server's `timeoutSeconds`); a watch silent for longer (and a
    /// margin) is called dead. Default 60 s.
    pub watch_timeout: Duration,
}

impl KubernetesOptions {
    /// The endpoints of `service`'s `port` in `namespace`.
    pub fn new(
        service: impl Into<String>,
        namespace: impl Into<String>,
        port: impl Into<String>,
    ) -> Self {
        KubernetesOptions {
            service: service.into(),
            namespace: namespace.into(),
            port: port.into(),
            kubeconfig: None,
            timeout: Duration::from_secs(5),
            watch_timeout: Duration::from_secs(60),
        }
    }

    /// Reach the API server as the kubeconfig file `path` says.
    pub fn with_kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubeconfig = Some(path.into());
        self
    }

    /// Set [`timeout`](Self::timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// One endpoint address of a slice, as the selection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    addr: SocketAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone: Option<String>,
}

/// Slices by name, each reduced to its endpoints on the chosen port (`None`:
/// the slice has no such port).
type Slices = BTreeMap<String, Option<Vec<Endpoint>>>;

/// The endpoints of a Service's port from its EndpointSlices (the slices
/// labelled `kubernetes.io/service-name`), listed then watched through
/// kube-rs. `ready` endpoints serve; `serving` but `terminating` ones drain
/// (weight 0) unless none is ready, when they serve (KEP-1669); the rest are
/// left out; `zone` becomes the locality. The last known slices stay while
/// the API server fails (`failing`); after an error, or an expired resource
/// version (410), it lists again. Cloning shares one watcher.
#[derive(Clone)]
pub struct KubernetesDiscovery {
    followed: Followed<Slices, KubernetesOptions>,
    seen: Seen,
}

impl std::fmt::Debug for KubernetesDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KubernetesDiscovery")
            .field(&self.followed.name())
            .finish()
    }
}

impl KubernetesDiscovery {
    /// A source following `options`' Service. Nothing connects until the
    /// first [`discover`](ServiceDiscovery::discover).
    pub fn new(options: KubernetesOptions) -> Self {
        let name = format!(
            "kubernetes {}/{}:{}",
            options.namespace, options.service, options.port
        );
        KubernetesDiscovery {
            followed: Followed::new(name, options, |source| Box::pin(follow(source))),
            seen: Seen::default(),
        }
    }

    /// The source's state now.
    pub fn status(&self) -> SourceStatus {
        let snapshot = self.followed.snapshot();
        let mut s = SourceStatus::starting(self.followed.name());
        s.state = snapshot.state;
        s.backends = select(&snapshot.entries).len();
        s.last_success = snapshot.last_success;
        s.revision = snapshot.synced.then_some(snapshot.revision);
        s.error = snapshot.error;
        let portless: Vec<&str> = snapshot
            .entries
            .iter()
            .filter(|(_, e)| e.is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        if s.state == SourceState::Ok && !portless.is_empty() {
            s.state = SourceState::Degraded;
            s.error = Some(format!(
                "no port {:?} in slice(s) {} (the endpoints' port: its name, or the \
                 target port's number, not the Service's)",
                self.followed.options().port,
                portless.join(", ")
            ));
        }
        s
    }
}

impl ServiceDiscovery for KubernetesDiscovery {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        let within = self.followed.options().timeout;
        let snapshot = self.seen.round(&self.followed, within).await?;
        Ok(select(&snapshot.entries)
            .iter()
            .map(BackendSpec::to_backend)
            .collect())
    }

    async fn changed(&self) {
        self.seen.changed(&self.followed).await;
    }
}

/// The backends `slices` give (see the [module](self)): ready endpoints at
/// weight 1, serving-but-terminating ones at weight 0 (drained) — or at
/// weight 1 when none is ready. An address in two slices counts once, at
/// its best condition.
fn select(slices: &Slices) -> Vec<BackendSpec> {
    let mut best: HashMap<SocketAddr, &Endpoint> = HashMap::new();
    for e in slices.values().flatten().flatten() {
        let rank = |e: &Endpoint| (e.ready, e.serving && !e.terminating, e.serving);
        best.entry(e.addr)
            .and_modify(|b| {
                if rank(e) > rank(b) {
                    *b = e;
                }
            })
            .or_insert(e);
    }
    let any_ready = best.values().any(|e| e.ready);
    let mut out: Vec<BackendSpec> = best
        .values()
        .filter_map(|e| {
            let weight = if e.ready {
                1
            } else if e.serving && e.terminating {
                u32::from(!any_ready)
            } else {
                return None;
            };
            let mut spec = BackendSpec::new(e.addr).with_weight(weight);
            if let Some(z) = &e.zone {
                spec = spec.with_locality(z.clone());
            }
            if e.terminating {
                spec.metadata.insert("terminating".into(), "true".into());
            }
            Some(spec)
        })
        .collect();
    out.sort_by_key(|b| b.addr);
    out
}

/// The endpoints of `slice` on `port` (a name, or a number); `None` when
/// the slice has no such port.
fn endpoints(slice: &EndpointSlice, port: &str) -> Option<Vec<Endpoint>> {
    let number: Option<i32> = port.parse().ok();
    let port = slice.ports.iter().flatten().find_map(|p| {
        let by_name = p.name.as_deref() == Some(port);
        let by_number = number.is_some() && p.port == number;
        if by_name || by_number {
            p.port.and_then(|n| u16::try_from(n).ok())
        } else {
            None
        }
    })?;
    let mut out = Vec::new();
    for e in slice.endpoints.iter().flatten() {
        let c = e.conditions.clone().unwrap_or_default();
        // Unset `ready` means ready; unset `serving` follows `ready`.
        let ready = c.ready.unwrap_or(true);
        let serving = c.serving.unwrap_or(ready);
        let terminating = c.terminating.unwrap_or(false);
        for a in &e.addresses {
            // FQDN slices (addressType) carry names: not ours to resolve.
            let Ok(ip) = a.parse::<IpAddr>() else {
                continue;
            };
            out.push(Endpoint {
                addr: SocketAddr::new(ip, port),
                ready,
                serving,
                terminating,
                zone: e.zone.clone(),
            });
        }
    }
    Some(out)
}

/// The API client `options` describe.
async fn client(options: &KubernetesOptions) -> Result<Client, String> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            let o = kube::config::KubeConfigOptions::default();
            kube::Config::from_custom_kubeconfig(file, &o)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
}

/// The version a slice was last changed at, as a number when it is one.
fn version(slice: &EndpointSlice) -> i64 {
    slice
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The watcher task: list, then watch, for as long as the source lives.
/// After an error it starts over with a new list once the backoff has
/// passed (kube-rs's watcher would resume the watch silently, and a quiet
/// Service would then stay `failing` with nothing to say it recovered).
async fn follow(source: Arc<Source<Slices, KubernetesOptions>>) {
    let o = &source.options;
    let mut backoff = Backoff::new();
    let mut slices = Slices::new();
    loop {
        let api = match client(o).await {
            Ok(c) => Api::<EndpointSlice>::namespaced(c, &o.namespace),
            Err(e) => {
                source.fail(e);
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        let why = watch(&source, api, &mut slices, &mut backoff).await;
        // The last known slices stay.
        source.fail(why);
        tokio::time::sleep(backoff.next()).await;
    }
}

/// One watcher: a list, then its watch, until the first error (returned).
async fn watch(
    source: &Source<Slices, KubernetesOptions>,
    api: Api<EndpointSlice>,
    slices: &mut Slices,
    backoff: &mut Backoff,
) -> String {
    let o = &source.options;
    let seconds = u32::try_from(o.watch_timeout.as_secs().max(1)).unwrap_or(u32::MAX);
    let config = watcher::Config::default()
        .labels(&format!("kubernetes.io/service-name={}", o.service))
        .timeout(seconds);
    let mut stream = std::pin::pin!(watcher::watcher(api, config));
    let mut listing: Option<Slices> = None;
    let mut revision = 0;
    let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing = Some(Slices::new()),
            Ok(Event::InitApply(s)) => {
                revision = revision.max(version(&s));
                if let Some(l) = listing.as_mut() {
                    l.insert(name(&s), endpoints(&s, &o.port));
                }
            }
            Ok(Event::InitDone) => {
                // A whole list: what it lacks is gone.
                if let Some(l) = listing.take() {
                    *slices = l;
                }
                source.publish(slices, revision);
                backoff.reset();
            }
            Ok(Event::Apply(s)) => {
                revision = revision.max(version(&s));
                slices.insert(name(&s), endpoints(&s, &o.port));
                source.publish(slices, revision);
            }
            Ok(Event::Delete(s)) => {
                revision = revision.max(version(&s));
                slices.remove(&name(&s));
                source.publish(slices, revision);
            }
            Err(e) => return e.to_string(),
        }
    }
    "the watch stream ended".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([10, 0, 0, last], 80)),
            ready,
            serving,
            terminating,
            zone: Some(format!("z{last}")),
        }
    }

    fn weights(slices: &Slices) -> Vec<(u8, u32)> {
        select(slices)
            .iter()
            .map(|b| match b.addr.ip() {
                IpAddr::V4(v4) => (v4.octets()[3], b.weight),
                IpAddr::V6(_) => (0, b.weight),
            })
            .collect()
    }

    #[test]
    fn ready_serve_terminating_drain_unless_none_is_ready() {
        let mut slices = Slices::new();
        slices.insert(
            "a".into(),
            Some(vec![
                ep(1, true, true, false),
                ep(2, false, true, true),
                ep(3, false, false, true),
                ep(4, false, false, false),
            ]),
        );
        assert_eq!(weights(&slices), [(1, 1), (2, 0)]);
        let z = select(&slices);
        assert_eq!(z[0].locality.as_deref(), Some("z1"));
        assert_eq!(
            z[1].metadata.get("terminating").map(String::as_str),
            Some("true")
        );
        // The last ready one goes: the terminating one that still serves
        // takes the traffic (KEP-1669).
        slices.insert(
            "a".into(),
            Some(vec![ep(2, false, true, true), ep(4, false, false, false)]),
        );
        assert_eq!(weights(&slices), [(2, 1)]);
    }

    #[test]
    fn an_address_in_two_slices_counts_once_at_its_best() {
        let mut slices = Slices::new();
        slices.insert("a".into(), Some(vec![ep(1, false, true, true)]));
        slices.insert(
            "b".into(),
            Some(vec![ep(1, true, true, false), ep(2, true, true, false)]),
        );
        slices.insert("c".into(), None);
        assert_eq!(weights(&slices), [(1, 1), (2, 1)]);
    }

    #[test]
    fn a_starting_source_says_so() {
        let d = KubernetesDiscovery::new(KubernetesOptions::new("api", "prod", "http"));
        assert_eq!(d.status().state, SourceState::Starting);
        assert_eq!(d.status().source, "kubernetes prod/api:http");
    }
}

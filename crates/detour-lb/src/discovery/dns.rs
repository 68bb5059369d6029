//! Backends from DNS: A/AAAA records of a host name, or SRV records.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use detour_core::Backend;
use hickory_resolver::TokioResolver;

use super::{BackendSpec, ServiceDiscovery};
use crate::{DiscoveryError, DiscoveryErrorKind, InvalidConfig};

/// One SRV record, as [`Resolve::lookup_srv`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SrvRecord {
    /// Lower is preferred; becomes the backend's priority tier.
    pub priority: u16,
    /// Relative weight within a priority (0 is read as 1, see
    /// [`DnsDiscovery`]).
    pub weight: u16,
    /// The port to connect to.
    pub port: u16,
    /// The host name whose A/AAAA records give the addresses.
    pub target: String,
}

impl SrvRecord {
    /// A record.
    pub fn new(priority: u16, weight: u16, port: u16, target: impl Into<String>) -> Self {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }
}

/// The DNS lookups discovery needs. [`SystemResolver`] does them with the
/// system's configuration; tests substitute a fake that never touches the
/// network.
pub trait Resolve: Send + Sync {
    /// The A and AAAA records of `host` (an IP literal answers itself).
    ///
    /// # Errors
    /// [`DiscoveryErrorKind::Resolve`] when the lookup fails.
    fn lookup_ip(
        &self,
        host: &str,
    ) -> impl Future<Output = Result<Vec<IpAddr>, DiscoveryError>> + Send;

    /// The SRV records of `name`.
    ///
    /// # Errors
    /// [`DiscoveryErrorKind::Resolve`] when the lookup fails.
    fn lookup_srv(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<SrvRecord>, DiscoveryError>> + Send;
}

/// A shared resolver resolves as itself.
impl<R: Resolve + ?Sized> Resolve for Arc<R> {
    fn lookup_ip(
        &self,
        host: &str,
    ) -> impl Future<Output = Result<Vec<IpAddr>, DiscoveryError>> + Send {
        (**self).lookup_ip(host)
    }

    fn lookup_srv(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<SrvRecord>, DiscoveryError>> + Send {
        (**self).lookup_srv(name)
    }
}

/// The system's resolver (`/etc/resolv.conf` on Unix), through hickory.
pub struct SystemResolver {
    inner: TokioResolver,
}

impl fmt::Debug for SystemResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemResolver").finish_non_exhaustive()
    }
}

impl SystemResolver {
    /// A resolver configured from the system.
    ///
    /// # Errors
    /// [`DiscoveryErrorKind::Resolve`] when the system configuration cannot
    /// be read.
    pub fn from_system_conf() -> Result<Self, DiscoveryError> {
        let builder = TokioResolver::builder_tokio().map_err(|e| {
            DiscoveryError::new(DiscoveryErrorKind::Resolve, "system resolver configuration")
                .with_source(e)
        })?;
        Ok(SystemResolver {
            inner: builder.build(),
        })
    }
}

impl Resolve for SystemResolver {
    async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        let answer = self.inner.lookup_ip(host).await.map_err(|e| {
            DiscoveryError::new(DiscoveryErrorKind::Resolve, format!("A/AAAA {host}"))
                .with_source(e)
        })?;
        Ok(answer.iter().collect())
    }

    async fn lookup_srv(&self, name: &str) -> Result<Vec<SrvRecord>, DiscoveryError> {
        let answer = self.inner.srv_lookup(name).await.map_err(|e| {
            DiscoveryError::new(DiscoveryErrorKind::Resolve, format!("SRV {name}")).with_source(e)
        })?;
        Ok(answer
            .iter()
            .map(|srv| {
                SrvRecord::new(
                    srv.priority(),
                    srv.weight(),
                    srv.port(),
                    srv.target().to_utf8(),
                )
            })
            .collect())
    }
}

/// What to resolve, and the attributes of the backends it yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    name: DnsName,
    weight: u32,
    priority: u32,
    locality: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DnsName {
    Host { host: String, port: u16 },
    Srv(String),
}

impl DnsTarget {
    /// Every A/AAAA address of `host`, on `port`; weight 1, priority 0.
    pub fn host(host: impl Into<String>, port: u16) -> Self {
        DnsTarget {
            name: DnsName::Host {
                host: host.into(),
                port,
            },
            weight: 1,
            priority: 0,
            locality: None,
        }
    }

    /// Every address of every target of the SRV records of `name` (e.g.
    /// `_http._tcp.api.internal`), with the record's port, its priority as
    /// the priority tier and its weight as the weight.
    pub fn srv(name: impl Into<String>) -> Self {
        DnsTarget {
            name: DnsName::Srv(name.into()),
            weight: 1,
            priority: 0,
            locality: None,
        }
    }

    /// The weight of a host target's backends (SRV records carry their own).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The priority tier of a host target's backends (SRV: added to the
    /// records' priorities).
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// The locality of the target's backends.
    pub fn with_locality(mut self, locality: impl Into<String>) -> Self {
        self.locality = Some(locality.into());
        self
    }

    fn spec(&self, addr: SocketAddr, weight: u32, priority: u32) -> BackendSpec {
        let mut spec = BackendSpec::new(addr)
            .with_weight(weight)
            .with_priority(priority);
        spec.locality.clone_from(&self.locality);
        spec
    }
}

impl fmt::Display for DnsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            DnsName::Host { host, port } => write!(f, "{host}:{port}"),
            DnsName::Srv(name) => write!(f, "srv:{name}"),
        }
    }
}

/// `srv:NAME` or `HOST:PORT` (`[v6]:PORT` for an IPv6 literal).
impl FromStr for DnsTarget {
    type Err = InvalidConfig;

    fn from_str(s: &str) -> Result<Self, InvalidConfig> {
        if let Some(name) = s.strip_prefix("srv:") {
            if name.is_empty() {
                return Err(InvalidConfig::new("dns", "srv: needs a name"));
            }
            return Ok(DnsTarget::srv(name));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| {
            InvalidConfig::new("dns", format!("{s:?}: expected HOST:PORT or srv:NAME"))
        })?;
        let port = port
            .parse()
            .map_err(|_| InvalidConfig::new("dns", format!("{s:?}: bad port")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(InvalidConfig::new("dns", format!("{s:?}: empty host")));
        }
        Ok(DnsTarget::host(host, port))
    }
}

/// Backends from DNS, re-resolved on every round of
/// [`run_discovery`](super::run_discovery).
///
/// Each target keeps its last good answer: when its lookup fails or comes
/// back empty, its previous backends stay in the set (and a warning says
/// why). A round fails only when no target has any answer, good or
/// remembered; then the load balancer keeps its whole set. Record TTLs are
/// not used: the interval decides how fresh the set is.
///
/// SRV weight 0 is read as weight 1: RFC 2782 gives such records a small
/// chance, while weight 0 means "drained" to the load balancer.
#[derive(Debug)]
pub struct DnsDiscovery<R = SystemResolver> {
    resolver: R,
    targets: Vec<DnsTarget>,
    last_good: Mutex<Vec<Option<Vec<BackendSpec>>>>,
}

impl DnsDiscovery<SystemResolver> {
    /// Resolve `targets` with the system's resolver.
    ///
    /// # Errors
    /// When the system resolver's configuration cannot be read.
    pub fn system(targets: impl IntoIterator<Item = DnsTarget>) -> Result<Self, DiscoveryError> {
        Ok(DnsDiscovery::new(
            SystemResolver::from_system_conf()?,
            targets,
        ))
    }
}

impl<R: Resolve> DnsDiscovery<R> {
    /// Resolve `targets` with `resolver`.
    pub fn new(resolver: R, targets: impl IntoIterator<Item = DnsTarget>) -> Self {
        let targets: Vec<DnsTarget> = targets.into_iter().collect();
        DnsDiscovery {
            resolver,
            last_good: Mutex::new(vec![None; targets.len()]),
            targets,
        }
    }

    async fn resolve(&self, target: &DnsTarget) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let mut out = Vec::new();
        match &target.name {
            DnsName::Host { host, port } => {
                for ip in self.resolver.lookup_ip(host).await? {
                    out.push(target.spec(
                        SocketAddr::new(ip, *port),
                        target.weight,
                        target.priority,
                    ));
                }
            }
            DnsName::Srv(name) => {
                let records = self.resolver.lookup_srv(name).await?;
                let mut failed = None;
                for r in &records {
                    match self.resolver.lookup_ip(&r.target).await {
                        Ok(ips) => {
                            for ip in ips {
                                out.push(target.spec(
                                    SocketAddr::new(ip, r.port),
                                    u32::from(r.weight).max(1),
                                    target.priority.saturating_add(u32::from(r.priority)),
                                ));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(srv = %name, target = %r.target, error = %e, "SRV target did not resolve");
                            failed.get_or_insert(e);
                        }
                    }
                }
                if out.is_empty() {
                    if let Some(e) = failed {
                        return Err(e);
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(DiscoveryError::new(
                DiscoveryErrorKind::Empty,
                target.to_string(),
            ));
        }
        Ok(out)
    }
}

impl<R: Resolve> ServiceDiscovery for DnsDiscovery<R> {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        let mut specs = Vec::new();
        let mut first_error = None;
        for (i, target) in self.targets.iter().enumerate() {
            let answer = self.resolve(target).await;
            // Locked only between lookups, never across one.
            let mut last_good = self
                .last_good
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match answer {
                Ok(found) => {
                    specs.extend(found.iter().cloned());
                    last_good[i] = Some(found);
                }
                Err(e) => match &last_good[i] {
                    Some(previous) => {
                        tracing::warn!(%target, error = %e, "DNS lookup failed; keeping its last good answer");
                        specs.extend(previous.iter().cloned());
                    }
                    None => {
                        tracing::warn!(%target, error = %e, "DNS lookup failed and has no earlier answer");
                        first_error.get_or_insert(e);
                    }
                },
            }
        }
        if specs.is_empty() {
            return Err(first_error.unwrap_or_else(|| {
                DiscoveryError::new(DiscoveryErrorKind::Empty, "DNS discovery has no targets")
            }));
        }
        Ok(specs.iter().map(BackendSpec::to_backend).collect())
    }
}

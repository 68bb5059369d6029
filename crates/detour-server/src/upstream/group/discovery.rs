//! [`Sources`]: where an upstream's backends come from (the static list, DNS,
//! a file), asked together as one [`ServiceDiscovery`].

use std::sync::Arc;

use detour_core::Backend;
use detour_lb::discovery::SystemResolver;
use detour_lb::{
    DiscoveryError, DnsDiscovery, DnsTarget, FileDiscovery, ServiceDiscovery, StaticDiscovery,
};

use super::config::{DiscoveryConfig, UpstreamConfig};

/// Every source an upstream's backends come from, asked together: the
/// static list, DNS, a file. A round that fails anywhere changes nothing.
#[derive(Clone)]
pub(super) struct Sources(Arc<SourcesInner>);

struct SourcesInner {
    fixed: StaticDiscovery,
    dns: Option<DnsDiscovery<SystemResolver>>,
    file: Option<FileDiscovery>,
}

impl Sources {
    /// The sources `config` and its `discovery` table `d` name.
    pub(super) fn new(
        config: &UpstreamConfig,
        d: &DiscoveryConfig,
    ) -> Result<Self, DiscoveryError> {
        let dns = if d.dns.is_empty() {
            None
        } else {
            // Validated already: every target parses.
            let targets: Vec<DnsTarget> = d.dns.iter().filter_map(|t| t.parse().ok()).collect();
            Some(DnsDiscovery::system(targets)?)
        };
        Ok(Sources(Arc::new(SourcesInner {
            fixed: StaticDiscovery::new(config.backends.iter().cloned()),
            dns,
            file: d.file.as_ref().map(FileDiscovery::new),
        })))
    }
}

impl ServiceDiscovery for Sources {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        let mut all = self.0.fixed.discover().await?;
        if let Some(dns) = &self.0.dns {
            all.extend(dns.discover().await?);
        }
        if let Some(file) = &self.0.file {
            all.extend(file.discover().await?);
        }
        Ok(all)
    }
}

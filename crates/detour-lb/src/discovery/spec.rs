//! A backend as configuration describes it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use detour_core::Backend;
use serde::{Deserialize, Serialize};

/// A backend's description: what a config file or a discovery source gives.
///
/// ```toml
/// addr = "10.0.0.1:8080"
/// weight = 2            # default 1; 0 = drained (never selected)
/// priority = 0          # default 0 (the highest tier)
/// locality = "eu-west"  # default none
/// metadata = { rack = "r12" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackendSpec {
    /// Address.
    pub addr: SocketAddr,
    /// Weight. Default 1; 0 means drained.
    #[serde(default = "one")]
    pub weight: u32,
    /// Priority tier, 0 highest. Default 0.
    #[serde(default)]
    pub priority: u32,
    /// Locality (region or zone); `region` is accepted as another name.
    /// Default none.
    #[serde(default, alias = "region")]
    pub locality: Option<String>,
    /// Free-form metadata. Default empty.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl BackendSpec {
    /// A backend at `addr`, weight 1, priority 0.
    pub fn new(addr: SocketAddr) -> Self {
        BackendSpec {
            addr,
            weight: 1,
            priority: 0,
            locality: None,
            metadata: BTreeMap::new(),
        }
    }

    /// Set the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Set the priority tier.
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Set the locality.
    pub fn with_locality(mut self, locality: impl Into<String>) -> Self {
        self.locality = Some(locality.into());
        self
    }

    /// A fresh [`Backend`] with this description.
    pub fn to_backend(&self) -> Backend {
        let mut b = Backend::new(self.addr)
            .with_weight(self.weight)
            .with_priority(self.priority);
        if let Some(l) = &self.locality {
            b = b.with_locality(l.as_str());
        }
        for (k, v) in &self.metadata {
            b = b.with_metadata(k.clone(), v.clone());
        }
        b
    }
}

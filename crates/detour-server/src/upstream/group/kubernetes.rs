//! `discovery.kubernetes`: [`KubernetesSourceConfig`], its checks, and the
//! options it gives the Kubernetes source. Without the `kubernetes` feature
//! every such table is refused, named.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

#[cfg(feature = "kubernetes")]
use detour_core::{check_duration, Zero};
#[cfg(feature = "kubernetes")]
use detour_lb::discovery::KubernetesOptions;

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

/// `discovery.kubernetes`: the endpoints of one Service's port, from its
/// EndpointSlices.
///
/// ```toml
/// discovery = { kubernetes = { service = "api", namespace = "prod", port = "http" } }
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSourceConfig {
    /// The Service's name.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// The endpoints' port: its name (`"http"`, the Service port's name) or
    /// its number (`8080`: the target port the pods listen on, not the
    /// Service's port).
    pub port: PortRef,
    /// A kubeconfig file; absent: in a pod, its service account, elsewhere
    /// `KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// How long the first round waits for the first list. Default 5 s.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub timeout: Duration,
}

/// A Service port by name or number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    /// Its number.
    Number(u16),
    /// Its name.
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

/// Check `config` (at `at`): the options for the Kubernetes source.
///
/// # Errors
/// An empty name, a zero port, a timeout out of range.
#[cfg(feature = "kubernetes")]
pub(super) fn options(
    config: &KubernetesSourceConfig,
    at: &str,
) -> Result<KubernetesOptions, ConfigError> {
    let field = |f: &str, why: &str| Err(ConfigError::field(format!("{at}.{f}"), why));
    // DNS-1123 labels: what a Service or namespace name may be.
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !label(&config.service) {
        return field(
            "service",
            "not a Service name (lowercase letters, digits and '-')",
        );
    }
    if !label(&config.namespace) {
        return field(
            "namespace",
            "not a namespace name (lowercase letters, digits and '-')",
        );
    }
    match &config.port {
        PortRef::Number(0) => return field("port", "must be above 0"),
        PortRef::Name(n) if !label(n) => {
            return field(
                "port",
                "not a port name (lowercase letters, digits and '-')",
            );
        }
        _ => {}
    }
    if let Err(e) = check_duration("timeout", config.timeout, Zero::Refused) {
        return Err(ConfigError::field(format!("{at}.{}", e.field), e.reason));
    }
    let mut o = KubernetesOptions::new(
        config.service.clone(),
        config.namespace.clone(),
        config.port.to_string(),
    )
    .with_timeout(config.timeout);
    if let Some(k) = &config.kubeconfig {
        if let Err(e) = std::fs::metadata(k) {
            return Err(ConfigError::field(
                format!("{at}.kubeconfig"),
                format!("cannot read {}: {e}", k.display()),
            ));
        }
        o = o.with_kubeconfig(k.clone());
    }
    Ok(o)
}

/// Without the feature: every Kubernetes table is refused, naming it.
///
/// # Errors
/// Always.
#[cfg(not(feature = "kubernetes"))]
pub(super) fn options(
    _: &KubernetesSourceConfig,
    at: &str,
) -> Result<std::convert::Infallible, ConfigError> {
    Err(ConfigError::field(
        at,
        "this build has no Kubernetes support (build detour-server with the `kubernetes` feature)",
    ))
}

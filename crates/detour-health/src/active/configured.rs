//! [`ConfiguredCheck`]: the built-in check a [`HealthConfig`] describes
//! (TCP or HTTP), chosen at load.

use detour_core::connect::{Connect, TcpConnector};
use detour_core::{Backend, InvalidConfig};

use super::check::{CheckFailure, HealthCheck};
use super::config::{CheckKind, HealthConfig};
use super::http::HttpCheck;
use super::tcp::TcpCheck;

/// The check a [`HealthConfig`] describes: TCP or HTTP, dialling through `C`.
#[derive(Debug, Clone)]
pub enum ConfiguredCheck<C = TcpConnector> {
    /// `kind = "tcp"`.
    Tcp(TcpCheck<C>),
    /// `kind = "http"`.
    Http(HttpCheck<C>),
}

impl<C: Connect> ConfiguredCheck<C> {
    /// The check `config` describes, dialling through `connector`.
    ///
    /// # Errors
    /// [`InvalidConfig`] when the configuration does not validate.
    pub fn from_config(config: &HealthConfig, connector: C) -> Result<Self, InvalidConfig> {
        Ok(match config.kind {
            CheckKind::Tcp => ConfiguredCheck::Tcp(TcpCheck::new(connector)),
            CheckKind::Http => ConfiguredCheck::Http(HttpCheck::from_config(config, connector)?),
        })
    }
}

impl<C: Connect> HealthCheck for ConfiguredCheck<C> {
    async fn check(&self, backend: &Backend) -> Result<(), CheckFailure> {
        match self {
            ConfiguredCheck::Tcp(c) => c.check(backend).await,
            ConfiguredCheck::Http(c) => c.check(backend).await,
        }
    }
}

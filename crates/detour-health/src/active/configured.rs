//! [`ConfiguredCheck`]: the built-in check a [`HealthConfig`] describes
//! (TCP or HTTP), chosen at load. HTTP checks go through a server's
//! [`ClientExchange`] when one is given, plain HTTP/1.1 otherwise.

use std::sync::Arc;

use detour_core::connect::{ClientExchange, Connect, TcpConnector};
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
    Http(HttpCheck),
}

impl<C: Connect> ConfiguredCheck<C> {
    /// The check `config` describes, dialling through `connector` (HTTP
    /// checks in plain HTTP/1.1).
    ///
    /// # Errors
    /// [`InvalidConfig`] when the configuration does not validate.
    pub fn from_config(config: &HealthConfig, connector: C) -> Result<Self, InvalidConfig> {
        Ok(match config.kind {
            CheckKind::Tcp => ConfiguredCheck::Tcp(TcpCheck::new(connector)),
            CheckKind::Http => ConfiguredCheck::Http(HttpCheck::from_config(config, connector)?),
        })
    }

    /// The check `config` describes: a TCP check dials through `connector`,
    /// an HTTP check goes through `exchange` (a server's own dialing, with
    /// its TLS and HTTP/2).
    ///
    /// # Errors
    /// [`InvalidConfig`] when the configuration does not validate.
    pub fn from_config_with_exchange(
        config: &HealthConfig,
        connector: C,
        exchange: Arc<dyn ClientExchange>,
    ) -> Result<Self, InvalidConfig> {
        Ok(match config.kind {
            CheckKind::Tcp => ConfiguredCheck::Tcp(TcpCheck::new(connector)),
            CheckKind::Http => ConfiguredCheck::Http(HttpCheck::with_exchange(config, exchange)?),
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

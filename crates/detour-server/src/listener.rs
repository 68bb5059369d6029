//! What a listener speaks: its protocols and, optionally, TLS.

use std::sync::Arc;

use crate::config::{AppProtocol, ConfigError, ListenerConfig};
use crate::tls::{ServerTls, ALPN_H2, ALPN_HTTP11};

/// A bound listener's settings, shared by the connections it accepts.
#[derive(Debug)]
pub(crate) struct ListenSpec {
    /// Speaks HTTP/1.1.
    pub(crate) h1: bool,
    /// Speaks HTTP/2.
    pub(crate) h2: bool,
    /// Terminates TLS.
    pub(crate) tls: Option<Arc<ServerTls>>,
}

impl ListenSpec {
    /// A `listen = [...]` address: cleartext HTTP/1.1.
    pub(crate) fn plain_http1() -> Self {
        ListenSpec {
            h1: true,
            h2: false,
            tls: None,
        }
    }

    /// Listener number `index` of `[[server.listeners]]`, certificates loaded.
    pub(crate) fn from_config(l: &ListenerConfig, index: usize) -> Result<Self, ConfigError> {
        let protocols = l.effective_protocols();
        let tls = match &l.tls {
            Some(t) => {
                let alpn = protocols
                    .iter()
                    .map(|p| match p {
                        AppProtocol::H2 => ALPN_H2.to_vec(),
                        AppProtocol::Http11 => ALPN_HTTP11.to_vec(),
                    })
                    .collect();
                let at = format!("server.listeners[{index}].tls");
                Some(Arc::new(ServerTls::load(t, &at, alpn)?))
            }
            None => None,
        };
        Ok(ListenSpec {
            h1: protocols.contains(&AppProtocol::Http11),
            h2: protocols.contains(&AppProtocol::H2),
            tls,
        })
    }
}

//! The TCP-connect check.

use std::io;

use detour_core::connect::{Connect, TcpConnector};
use detour_core::{Backend, ErrorKind};

use super::check::{CheckFailure, CheckFailureKind, HealthCheck};

/// Passes when the backend accepts a connection, which is closed at once.
#[derive(Debug, Clone, Default)]
pub struct TcpCheck<C = TcpConnector> {
    connector: C,
}

impl<C: Connect> TcpCheck<C> {
    /// A TCP check dialling through `connector`.
    pub fn new(connector: C) -> Self {
        TcpCheck { connector }
    }
}

impl<C: Connect> HealthCheck for TcpCheck<C> {
    async fn check(&self, backend: &Backend) -> Result<(), CheckFailure> {
        match self.connector.connect(backend.addr()).await {
            Ok(_io) => Ok(()),
            Err(e) => Err(connect_failure(&e)),
        }
    }
}

/// The failure of a connect: refused, timed out, or otherwise failed.
fn connect_failure(err: &io::Error) -> CheckFailure {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => CheckFailure::transport(ErrorKind::ConnectRefused),
        io::ErrorKind::TimedOut => CheckFailure::transport(ErrorKind::ConnectTimeout),
        _ => CheckFailure::new(
            CheckFailureKind::Transport(ErrorKind::from_io(err.kind())),
            format!("connect failed: {err}"),
        ),
    }
}

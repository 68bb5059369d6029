//! An upstream's background work — active checks, outlier sweeps, discovery —
//! as [`Services`], the handle that stops it, and [`first_rounds`], which the
//! server runs for every upstream before it opens its listeners.

use std::sync::Arc;

use tokio::sync::watch;

use super::Upstream;

/// An upstream's background work; dropping it stops everything.
#[derive(Debug)]
pub struct Services {
    stop: watch::Sender<bool>,
}

impl Services {
    /// Background work that stops when `stop` says `true`.
    pub(super) fn new(stop: watch::Sender<bool>) -> Self {
        Services { stop }
    }

    /// Stop now (also what dropping does).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Run the first round of every upstream's checks and discovery
/// ([`Upstream::first_round`]) on `runtime`, all at once, and wait for them.
pub async fn first_rounds(upstreams: &[Arc<Upstream>], runtime: &tokio::runtime::Handle) {
    let rounds: Vec<_> = upstreams
        .iter()
        .map(|u| {
            let u = Arc::clone(u);
            runtime.spawn(async move { u.first_round().await })
        })
        .collect();
    for r in rounds {
        let _ = r.await;
    }
}

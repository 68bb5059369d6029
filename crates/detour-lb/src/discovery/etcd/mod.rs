//! Backends from etcd (v3 API): [`EtcdDiscovery`], every key under a prefix
//! one backend, followed by an [`EtcdWatch`] (read whole once, then watched
//! from that revision; see [`watch`](self::watch) for what it does when etcd
//! misbehaves).

mod watch;

use std::collections::HashSet;

use detour_core::Backend;

use super::watched::Seen;
use super::{BackendSpec, ServiceDiscovery, SourceState, SourceStatus};
use crate::DiscoveryError;

pub use watch::{EtcdEntries, EtcdOptions, EtcdSnapshot, EtcdTls, EtcdWatch};

/// Backends from the keys under an etcd prefix; each key's value is a JSON
/// [`BackendSpec`]: `{"addr": "10.0.0.5:8080"}` plus optional `weight`,
/// `priority`, `locality` and `metadata`.
///
/// A key whose value does not parse is left out (the source reports
/// `degraded`, naming the key); an address under two keys counts once (the
/// first key in byte order). A key attached to a lease disappears when the
/// lease expires: the usual way for a backend to register itself is to put
/// its key with a lease and keep the lease alive.
///
/// While etcd is unreachable the last known keys stay in force (the source
/// reports `failing`). Cloning shares one watcher.
#[derive(Debug, Clone)]
pub struct EtcdDiscovery {
    watch: EtcdWatch,
    seen: Seen,
}

/// The backends a snapshot's entries describe, and the keys left out.
struct Parsed {
    backends: Vec<BackendSpec>,
    refused: Vec<String>,
}

fn parse(snapshot: &EtcdSnapshot) -> Parsed {
    let mut backends = Vec::with_capacity(snapshot.entries.len());
    let mut addrs = HashSet::with_capacity(snapshot.entries.len());
    let mut refused = Vec::new();
    for (key, value) in snapshot.entries.iter() {
        let key = String::from_utf8_lossy(key);
        match serde_json::from_slice::<BackendSpec>(value) {
            Ok(spec) if !addrs.insert(spec.addr) => {
                refused.push(format!(
                    "{key}: address {} is under another key too",
                    spec.addr
                ));
            }
            Ok(spec) => backends.push(spec),
            Err(e) => refused.push(format!("{key}: {e}")),
        }
    }
    Parsed { backends, refused }
}

impl EtcdDiscovery {
    /// A source following `options.prefix`. Nothing connects until the
    /// first [`discover`](ServiceDiscovery::discover).
    pub fn new(options: EtcdOptions) -> Self {
        EtcdDiscovery {
            watch: EtcdWatch::new(options),
            seen: Seen::default(),
        }
    }

    /// The source's state now: the watcher's, `degraded` when keys were
    /// left out.
    pub fn status(&self) -> SourceStatus {
        let snapshot = self.watch.snapshot();
        let parsed = parse(&snapshot);
        let mut s = SourceStatus::starting(self.watch.name());
        s.state = snapshot.state;
        s.backends = parsed.backends.len();
        s.last_success = snapshot.last_success;
        s.revision = snapshot.synced.then_some(snapshot.revision);
        s.error = snapshot.error;
        if s.state == SourceState::Ok && !parsed.refused.is_empty() {
            s.state = SourceState::Degraded;
            let n = parsed.refused.len();
            s.error = Some(format!(
                "{n} key(s) left out: {}",
                parsed.refused.join("; ")
            ));
        }
        s
    }
}

impl ServiceDiscovery for EtcdDiscovery {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        let within = self.watch.options().timeout;
        let snapshot = self.seen.round(&self.watch.0, within).await?;
        let parsed = parse(&snapshot);
        Ok(parsed
            .backends
            .iter()
            .map(BackendSpec::to_backend)
            .collect())
    }

    async fn changed(&self) {
        self.seen.changed(&self.watch.0).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    fn snapshot(entries: &[(&str, &str)]) -> EtcdSnapshot {
        let watch = EtcdWatch::new(EtcdOptions::new(["127.0.0.1:1"], "/p/"));
        let mut s = watch.snapshot();
        let map: BTreeMap<Vec<u8>, Vec<u8>> = entries
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        s.entries = Arc::new(map);
        s
    }

    #[test]
    fn a_value_is_a_json_backend_and_bad_ones_are_named() {
        let parsed = parse(&snapshot(&[
            (
                "/p/a",
                r#"{"addr": "10.0.0.5:8080", "weight": 3, "locality": "z1"}"#,
            ),
            ("/p/b", "10.0.0.5:8080"),
            ("/p/c", r#"{"addr": "10.0.0.5:8080", "wieght": 3}"#),
            ("/p/d", r#"{"addr": "10.0.0.5:8080"}"#),
        ]));
        assert_eq!(parsed.backends.len(), 1);
        let spec = &parsed.backends[0];
        assert_eq!(spec.addr, "10.0.0.5:8080".parse().unwrap());
        assert_eq!((spec.weight, spec.locality.as_deref()), (3, Some("z1")));
        let refused = parsed.refused.join("\n");
        assert!(
            refused.contains("/p/b") && refused.contains("/p/c"),
            "{refused}"
        );
        assert!(
            refused.contains("/p/d: address 10.0.0.5:8080 is under another key"),
            "{refused}"
        );
    }
}

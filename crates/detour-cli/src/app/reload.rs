//! Reloading the configuration. One task applies every reload in turn,
//! whoever asked — SIGHUP, `POST /reload` on the admin API, or
//! [`Running::reload`](super::Running::reload) — so two can never interleave,
//! and each ends in one log line: applied (naming the changes that need a
//! restart) or refused (naming the field at fault).
//!
//! A reload, in order: reads and validates the file (or the etcd key's
//! latest document, see [`etcd_config`](super::etcd_config); a bad one, or one that
//! would remove every route, changes nothing); builds every upstream anew
//! and re-reads the TLS listeners' certificates; runs the new upstreams'
//! first health round; hands each new upstream what its predecessor learnt
//! about the backends both have ([`Upstream::inherit`]: breakers, ejections,
//! slow-start ramps, drain marks) and re-applies maintenance marks; then
//! swaps the new generation in and stops the old one's background work.
//! Requests in flight finish on the generation they started with.
//!
//! [`Upstream::inherit`]: detour_server::upstream::Upstream::inherit

use std::path::PathBuf;
use std::sync::Arc;

use detour_server::config::ConfigError;
use detour_server::upstream::{first_rounds, EventHook, Services, Upstream};
use detour_server::TlsReloader;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::config::Config;
use super::etcd_config::EtcdConfigSource;
use super::state::{App, State};
use super::{build_state, effective};

/// Where the configuration comes from: what SIGHUP and `POST /reload`
/// read again.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Given in code: nothing to read again.
    None,
    /// A file.
    File(PathBuf),
    /// One etcd key (`--config etcd://…`): its latest document.
    Etcd(Arc<EtcdConfigSource>),
}

/// A reload that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The generation now serving.
    pub generation: u64,
    /// Changed fields that only a restart applies (listeners, workers,
    /// `[admin]`, `[log]`, the rest of `[server]`), dotted.
    pub not_applied_live: Vec<String>,
}

/// A reload's outcome as `POST /reload` answers it.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    /// `applied` or `refused`.
    pub outcome: &'static str,
    /// The generation serving after the reload.
    pub generation: u64,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ReportedError>,
    /// Changed fields only a restart applies (empty when refused).
    pub not_applied_live: Vec<String>,
}

/// A refused reload's error, field by field.
#[derive(Debug, Serialize)]
pub struct ReportedError {
    /// The field at fault, dotted, when known.
    pub field: Option<String>,
    /// The whole message (file, field and reason).
    pub message: String,
}

impl ReloadReport {
    /// The report of `result`; `serving` is the generation that kept
    /// serving when it was refused.
    pub fn new(result: &Result<Reloaded, ConfigError>, serving: u64) -> Self {
        match result {
            Ok(r) => ReloadReport {
                outcome: "applied",
                generation: r.generation,
                error: None,
                not_applied_live: r.not_applied_live.clone(),
            },
            Err(e) => ReloadReport {
                outcome: "refused",
                generation: serving,
                error: Some(ReportedError {
                    field: e.field.clone(),
                    message: e.to_string(),
                }),
                not_applied_live: Vec::new(),
            },
        }
    }
}

/// One request to the reload task.
struct Request {
    /// The configuration to apply; `None` re-reads the file.
    config: Option<Config>,
    /// Who asked, for the log line.
    trigger: &'static str,
    reply: oneshot::Sender<Result<Reloaded, ConfigError>>,
}

/// A handle to the reload task: ask it to reload, and wait for the outcome.
#[derive(Debug, Clone)]
pub struct Reloader {
    tx: mpsc::Sender<Request>,
}

impl Reloader {
    /// Apply `config`, or re-read the file when `None`; `trigger` names who
    /// asked in the log line. Waits for the reload's end.
    ///
    /// # Errors
    /// The reload was refused (nothing changed), or the proxy is stopping.
    pub async fn reload(
        &self,
        config: Option<Config>,
        trigger: &'static str,
    ) -> Result<Reloaded, ConfigError> {
        let stopped = || ConfigError::field("reload", "the proxy is stopping");
        let (reply, answer) = oneshot::channel();
        let request = Request {
            config,
            trigger,
            reply,
        };
        self.tx.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// What the reload task owns: everything a reload reads or replaces.
pub(crate) struct ReloadTask {
    pub(crate) app: Arc<App>,
    pub(crate) events: Option<EventHook>,
    pub(crate) origin: Origin,
    pub(crate) tls: TlsReloader,
    /// The serving generation's background work; replaced on each reload.
    pub(crate) services: Vec<Services>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl ReloadTask {
    /// Run the task on its runtime; it ends when every [`Reloader`] is gone
    /// or the runtime shuts down (stopping the services it holds).
    pub(crate) fn spawn(self) -> Reloader {
        let (tx, rx) = mpsc::channel(8);
        let runtime = self.runtime.clone();
        runtime.spawn(self.run(rx));
        Reloader { tx }
    }

    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        while let Some(req) = requests.recv().await {
            let result = self.apply(req.config).await;
            log(&result, req.trigger);
            let _ = req.reply.send(result);
        }
    }

    /// One reload, all or nothing until the swap.
    async fn apply(&mut self, config: Option<Config>) -> Result<Reloaded, ConfigError> {
        let config = self.next_config(config)?;
        let old = self.app.current();
        let generation = old.generation + 1;
        let mut state = build_state(&config, generation, self.events.clone())?;
        state.config = Arc::new(effective::running(&old.config, &config));
        // Every certificate file is read before any is swapped in: a bad one
        // refuses the whole reload.
        self.tls.reload(&config.server)?;
        // What discovery learnt stays: a source that fails in the first
        // round (etcd down) keeps its backends.
        for (name, up) in &state.upstreams {
            if let Some(prev) = old.upstreams.get(name) {
                up.inherit_discovery(prev);
            }
        }
        let upstreams: Vec<Arc<Upstream>> = state.upstreams.values().cloned().collect();
        first_rounds(&upstreams, &self.runtime).await;
        for (name, up) in &state.upstreams {
            if let Some(prev) = old.upstreams.get(name) {
                up.inherit(prev);
            }
        }
        self.reapply_maintenance(&state);
        let services = upstreams
            .iter()
            .map(|u| u.start_services(&self.runtime))
            .collect();
        // An upstream the reload removed has no member left: its backends'
        // series go after a while, like those of any backend that leaves.
        for name in old.upstreams.keys() {
            if !state.upstreams.contains_key(name) {
                let now = tokio::time::Instant::now();
                detour_server::telemetry::BackendSeries::global().keep_only(name, &[], now);
            }
        }
        self.app.swap(state);
        // The old generation's checks, sweeps and discovery stop here; its
        // backends live on while requests in flight still hold them.
        self.services = services;
        Ok(Reloaded {
            generation,
            not_applied_live: effective::not_applied_live(&old.config, &config),
        })
    }

    /// The configuration to apply: `given`, or the file re-read; validated,
    /// and refused when it would remove every route.
    fn next_config(&self, given: Option<Config>) -> Result<Config, ConfigError> {
        let config = match (given, &self.origin) {
            (Some(c), _) => c.validate()?,
            (None, Origin::File(path)) => Config::from_file(path)?,
            (None, Origin::Etcd(source)) => source.current()?,
            (None, Origin::None) => {
                return Err(ConfigError::field("config", "no file to reload from"));
            }
        };
        // An emptied file (a truncating editor, a failed deploy) must not turn
        // a serving site into 404s.
        if config.routes.is_empty() && !self.app.current().routes.is_empty() {
            return Err(ConfigError::field(
                "routes",
                "the new configuration has no [[routes]]: a reload never removes every route",
            ));
        }
        Ok(config)
    }

    /// Backends an operator put in maintenance stay out in `state`.
    fn reapply_maintenance(&self, state: &State) {
        for (up, addr) in self.app.maintenance_list() {
            let Some(u) = state.upstreams.get(&up) else {
                continue;
            };
            if let Some(b) = u.backends().iter().find(|b| b.addr() == addr) {
                b.state().set_draining(true);
            }
        }
    }
}

/// The one line a reload writes.
fn log(result: &Result<Reloaded, ConfigError>, trigger: &'static str) {
    match result {
        Ok(r) if r.not_applied_live.is_empty() => {
            tracing::info!(trigger, generation = r.generation, "configuration reloaded");
        }
        Ok(r) => {
            let fields = r.not_applied_live.join(", ");
            tracing::warn!(
                trigger,
                generation = r.generation,
                not_applied_live = %fields,
                "configuration reloaded, but these changes need a restart and were not applied: {fields}"
            );
        }
        Err(e) => tracing::error!(
            trigger,
            field = e.field.as_deref(),
            error = %e,
            "reload refused; the old configuration keeps serving"
        ),
    }
}

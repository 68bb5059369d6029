//! The config-driven proxy behind the `detour` binary, as a library so tests
//! and other programs can run it in-process.
//!
//! - [`config`]: the TOML file ([`Config`]).
//! - [`routes`]: host + path prefix → upstream.
//! - [`proxy`]: the hooks ([`DetourProxy`]) with the access log.
//! - [`admin`]: `/healthz`, `/metrics`, `/status`, `/config`, `/reload`,
//!   backend control.
//! - [`state`]: the live configuration, swapped whole on reload.
//! - [`reload`]: the task that applies reloads, and what a reload keeps.
//! - [`effective`]: the configuration as `--dump-config` and `/config` print
//!   it, and the changes a reload cannot apply live.
//! - [`config::paths`]: relative paths, resolved against the file's directory
//!   (part of loading a [`Config`], re-exported here as [`paths`]).
//! - [`etcd_config`]: the configuration from one etcd key, followed.
//! - [`demo`]: `detour demo`.

pub mod admin;
pub mod config;
pub mod demo;
pub mod effective;
pub mod etcd_config;
pub mod explain;
pub mod lint;
pub mod process;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod secret;
pub mod state;
pub mod status;
pub mod supervisor;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use detour_server::config::ConfigError;
use detour_server::upgrade::Inherited;
use detour_server::upstream::{build_all, EventHook};
use detour_server::{HttpProxy, Server, ServerHandle, Stop};
use tokio::sync::watch;

pub use config::{paths, Config};
pub use proxy::DetourProxy;
pub use reload::{Reloaded, Reloader};
pub use state::{App, State};

use routes::{HostPattern, Route};

/// Build one generation of state from `config`: every upstream (not yet
/// running its services) and the routes over them.
///
/// # Errors
/// A [`ConfigError`] naming the field at fault.
pub fn build_state(
    config: &Config,
    generation: u64,
    events: Option<EventHook>,
) -> Result<State, ConfigError> {
    let upstreams = build_all(&config.upstreams, events)?;
    let mut routes = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        let up = upstreams.get(&r.upstream).ok_or_else(|| {
            ConfigError::field(format!("routes[{i}].upstream"), "no such upstream")
        })?;
        let host = HostPattern::parse(&r.host)
            .map_err(|e| ConfigError::field(format!("routes[{i}].host"), e))?;
        routes.push(Arc::new(Route {
            index: i,
            host,
            path_prefix: r.path_prefix.clone(),
            upstream: Arc::clone(up),
            policy: config.route_policy(r, up.policy()),
            timeouts: r.timeouts.clone(),
            raw_path: r.raw_path,
        }));
    }
    Ok(State {
        routes,
        upstreams,
        generation,
        config: Arc::new(config.clone()),
    })
}

/// A running `detour`: the proxy, its admin listener, its upstreams' services.
pub struct Running {
    /// The application state.
    pub app: Arc<App>,
    /// The proxy server.
    pub handle: ServerHandle,
    /// Where the admin API listens, when it is on.
    pub admin_addr: Option<SocketAddr>,
    admin_stop: watch::Sender<bool>,
    draining: watch::Sender<bool>,
    reloader: Reloader,
    /// What SIGUSR2 starts: the successor of a binary upgrade.
    successor: Option<supervisor::SuccessorCommand>,
    /// The handoff from the process this one replaces, completed once the
    /// signal handlers are in place.
    handoff: Option<detour_server::upgrade::Successor>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addrs", &self.handle.addrs())
            .field("admin", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

/// Start `config`: the first health round runs before the listeners open.
/// `metrics` is the Prometheus handle `/metrics` renders (None: off).
///
/// `config` is validated here even when it came from [`Config::from_toml`]:
/// one built or deserialized by hand must not reach the listeners with a
/// value that would panic under traffic.
///
/// # Errors
/// Invalid configuration, or a listener that cannot be bound.
pub fn start(
    config: &Config,
    config_path: Option<&Path>,
    metrics: Option<detour_proxy::metrics::MetricsHandle>,
    events: Option<EventHook>,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let origin = config_path.map_or(reload::Origin::None, |p| reload::Origin::File(p.into()));
    start_inheriting(config, origin, metrics, events, Inherited::default())
}

/// [`start`], serving on `inherited`: the listening sockets (the admin
/// listener's too) of the running Detour this one takes over from
/// (`detour --upgrade`, [`detour_server::upgrade`]).
///
/// # Errors
/// As [`start`].
pub fn start_inheriting(
    config: &Config,
    origin: reload::Origin,
    metrics: Option<detour_proxy::metrics::MetricsHandle>,
    events: Option<EventHook>,
    mut inherited: Inherited,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let config = &config.clone().validate()?;
    // The admin listener first: a successor that cannot have it fails
    // before its workers accept a single connection.
    let admin_listener = if config.admin.enabled {
        Some(bind_admin(
            config.admin.listen,
            inherited.take(config.admin.listen),
        )?)
    } else {
        None
    };
    let state = build_state(config, 1, events.clone())?;
    let upstreams: Vec<_> = state.upstreams.values().cloned().collect();
    let app = Arc::new(App::new(state));
    let proxy = HttpProxy::builder(DetourProxy::new(Arc::clone(&app), config.log.access_log))
        .upstreams(upstreams)
        .config(config.server.clone())
        .build();
    let mut server = Server::new(config.server.clone()).inherit(inherited);
    if let Some(l) = &admin_listener {
        // A successor gets the admin listener too, so health probes keep
        // finding an answer through an upgrade.
        server = server.offer_on_upgrade(l.local_addr()?, l.as_fd().try_clone_to_owned()?);
    }
    let mut handle = server.start(proxy)?;
    let rt = handle
        .services_runtime()
        .ok_or("the server has no services runtime")?;
    // The reload task holds the serving generation's services from now on:
    // it replaces them on each reload, and they stop with its runtime.
    let reloader = reload::ReloadTask {
        app: Arc::clone(&app),
        events,
        origin,
        tls: handle.tls_reloader(),
        services: handle.replace_services(Vec::new()),
        runtime: rt.clone(),
    }
    .spawn();
    let (admin_stop, admin_stopped) = watch::channel(false);
    let (draining, draining_rx) = watch::channel(false);
    let mut admin_addr = None;
    if let Some(listener) = admin_listener {
        admin_addr = Some(listener.local_addr()?);
        let guard = admin::Guard::new(config.admin.token.as_deref(), &config.admin.allowed_hosts);
        let admin = admin::Admin::new(
            Arc::clone(&app),
            guard,
            metrics,
            draining_rx,
            reloader.clone(),
        );
        let limits = admin::ListenerLimits {
            max_connections: config.admin.max_connections,
            header_read_timeout: config.admin.header_read_timeout,
        };
        rt.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => admin::serve(l, admin, limits, admin_stopped).await,
                Err(e) => tracing::error!(error = %e, "admin listener failed"),
            }
        });
    }
    Ok(Running {
        app,
        handle,
        admin_addr,
        admin_stop,
        draining,
        reloader,
        successor: None,
        handoff: None,
    })
}

/// The admin listener's socket, non-blocking; a failure names the address.
/// The admin listener: the one inherited from a predecessor, or a new one.
fn bind_admin(
    addr: SocketAddr,
    inherited: Vec<std::os::fd::OwnedFd>,
) -> std::io::Result<std::net::TcpListener> {
    if let Some(fd) = inherited.into_iter().next() {
        let listener = std::net::TcpListener::from(fd);
        listener.set_nonblocking(true)?;
        return Ok(listener);
    }
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another process listens on it; to replace a running Detour without dropping \
             connections, start the new one with --upgrade)"
        } else {
            ""
        };
        std::io::Error::new(
            e.kind(),
            format!("cannot bind the admin listener to {addr}: {e}{hint}"),
        )
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Running {
    /// Follow `source`'s key from now on, until the drain: each new
    /// document is applied as a reload. `initial` is what this process
    /// started with; serving now, it is saved as the last good document.
    pub fn follow_etcd(
        &self,
        source: Arc<etcd_config::EtcdConfigSource>,
        initial: &etcd_config::Initial,
    ) {
        let status = self.app.config_source();
        *status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(initial.status(&source));
        let Some(rt) = self.handle.services_runtime() else {
            return;
        };
        let reloader = self.reloader.clone();
        let reload = move |config| {
            let reloader = reloader.clone();
            async move { reloader.reload(Some(config), "etcd").await.map(|_| ()) }
        };
        source.save(&initial.text);
        let stop = self.draining.subscribe();
        let source = Arc::clone(&source);
        let initial = initial.clone();
        rt.spawn(async move { source.follow(reload, status, &initial, stop).await });
    }

    /// Tell the process this one replaces that it serves, once
    /// [`run_until_signal`](Self::run_until_signal) has its signal handlers
    /// (and has told the service manager it is the main process now).
    pub fn take_over_when_serving(&mut self, handoff: detour_server::upgrade::Successor) {
        self.handoff = Some(handoff);
    }

    /// Make SIGUSR2 start `command`, the successor of a binary upgrade (it
    /// needs `[server] upgrade_socket`).
    pub fn upgrade_with(&mut self, command: supervisor::SuccessorCommand) {
        self.successor = Some(command);
    }

    /// The proxy's first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }

    /// Re-read the configuration file and swap in what it says: backends,
    /// routes and policies, and the TLS listeners' certificates (re-read from
    /// the files the new configuration names; new connections get them, open
    /// ones keep theirs), keeping what the proxy learnt about the backends
    /// that stay (see [`reload`](mod@reload)). Requests in flight finish on
    /// the old generation. Listeners, workers, `[admin]`, `[log]` and the
    /// other `[server]` settings need a restart: the fields changed there
    /// are listed in [`Reloaded::not_applied_live`].
    ///
    /// # Errors
    /// The new file is invalid: nothing changes and the old one keeps serving.
    pub async fn reload(&self) -> Result<Reloaded, ConfigError> {
        self.reloader.reload(None, "api").await
    }

    /// Swap in `config` (see [`reload`](Self::reload)).
    ///
    /// # Errors
    /// The configuration is invalid, or it would remove every route; nothing
    /// changes.
    pub async fn reload_from(&self, config: &Config) -> Result<Reloaded, ConfigError> {
        self.reloader.reload(Some(config.clone()), "api").await
    }

    /// Stop: drain (`Stop::Graceful`) or at once, and wait until done.
    pub fn stop(self, how: Stop) {
        self.draining.send_replace(true);
        self.handle.stop(how);
        self.admin_stop.send_replace(true);
        self.handle.join();
    }

    /// Serve until SIGTERM (drain), SIGINT (now); SIGHUP reloads.
    ///
    /// # Errors
    /// Installing the signal handlers failed.
    pub fn run_until_signal(mut self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // `handed`: the stop is a successor's taking over.
        let (how, handed) = rt.block_on(async {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let mut hup = signal(SignalKind::hangup())?;
            let mut usr2 = signal(SignalKind::user_defined2())?;
            // Only now: a SIGUSR2 before its handler would end the process.
            supervisor::ready(self.handoff.is_some());
            if let Some(handoff) = self.handoff.take() {
                match handoff.ready() {
                    Ok(()) => tracing::info!("took over from the previous process; it drains"),
                    Err(e) => tracing::warn!(error = %e, "the previous process did not acknowledge the upgrade; both serve until it stops"),
                }
            }
            loop {
                tokio::select! {
                    _ = usr2.recv() => match &self.successor {
                        Some(command) => command.spawn(),
                        None => tracing::warn!("SIGUSR2: no [server] upgrade_socket, so no upgrade"),
                    },
                    _ = term.recv() => return Ok::<_, std::io::Error>((Stop::Graceful, false)),
                    () = self.handle.handed_over() => return Ok((Stop::Graceful, true)),
                    _ = int.recv() => return Ok((Stop::Immediate, false)),
                    _ = hup.recv() => {
                        // The reload task writes the outcome's log line.
                        let _ = self.reloader.reload(None, "SIGHUP").await;
                    }
                }
            }
        })?;
        let word = match how {
            Stop::Graceful => "graceful",
            Stop::Immediate => "immediate",
            Stop::Run => "run",
        };
        tracing::info!(how = word, handed, "stopping");
        if handed {
            // The admin socket is the successor's now: answering its probes
            // `503 draining` from here would mark the instance down. And the
            // service manager follows the successor: a STOPPING=1 from this
            // process would stop the service.
            self.admin_stop.send_replace(true);
        } else {
            supervisor::notify("STOPPING=1");
        }
        self.draining.send_replace(true);
        let Running {
            handle, admin_stop, ..
        } = self;
        rt.block_on(detour_server::server::run_until_stopped(handle, how))?;
        admin_stop.send_replace(true);
        Ok(())
    }
}

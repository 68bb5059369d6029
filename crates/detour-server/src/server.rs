//! [`Server`]: configuration and command line, workers, listeners, signals.
//!
//! The default runtime model keeps each worker's work local: `threads = N` starts
//! N OS threads, each running a current-thread tokio runtime with its own
//! `SO_REUSEPORT` listener and its own upstream pool. What workers share (the
//! hooks, backend state) lives behind `Arc`s and atomics.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use detour_core::ProxyHttp;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};

use crate::config::{ConfigError, RuntimeModel, ServerConfig};
use crate::listener::ListenSpec;
use crate::proxy::{ConnSlot, HttpProxy};
use crate::tls::ServerTls;
use crate::upgrade::{self, Inherited};
use crate::upstream::{first_rounds, Connect, Services, Upstream};

/// The command line every Detour server understands.
#[derive(Debug, Clone, Default, Parser)]
#[command(about = "A Detour reverse proxy", long_about = None)]
pub struct Opt {
    /// The TOML configuration file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration and exit (0: valid).
    #[arg(short = 't', long = "test")]
    pub test: bool,
}

impl Opt {
    /// Load the configuration the options name (defaults when none).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and field at fault.
    pub fn load(&self) -> Result<ServerConfig, ConfigError> {
        match &self.config {
            Some(path) => ServerConfig::from_file(path),
            None => ServerConfig::default().validate(),
        }
    }
}

/// How a server stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep running.
    Run,
    /// Stop accepting, let in-flight requests finish within the grace period.
    Graceful,
    /// Stop at once.
    Immediate,
}

/// A configured server, ready to run a proxy.
#[derive(Debug, Clone)]
pub struct Server {
    config: ServerConfig,
    /// Listening sockets taken over from a running server, used once.
    inherited: Arc<std::sync::Mutex<Inherited>>,
    /// Sockets of the application's to offer a successor with the
    /// server's own (an admin listener).
    extra_offered: upgrade::Offered,
}

/// A running server: its bound addresses and the way to stop it.
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<Stop>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Upstreams' background work (checks, sweeps, discovery); stopped with
    /// the server.
    services: Vec<Services>,
    services_rt: Option<tokio::runtime::Runtime>,
    /// TLS listeners' certificates by `[[server.listeners]]` index.
    tls: Vec<(usize, Arc<ServerTls>)>,
    /// Turns true once a successor took the sockets over.
    handed: watch::Receiver<bool>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addrs", &self.addrs)
            .field("workers", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The addresses the server listens on (ports resolved when 0 was asked):
    /// the `listen` addresses, then the `[[server.listeners]]`, in order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Ask the server to stop (see [`Stop`]).
    pub fn stop(&self, how: Stop) {
        self.stop.send_replace(how);
    }

    /// Resolves once a successor took this server's listening sockets over
    /// (`[server] upgrade_socket`): time to drain. Never resolves without an
    /// upgrade socket.
    pub async fn handed_over(&self) {
        let mut handed = self.handed.clone();
        if handed.wait_for(|h| *h).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The runtime the upstreams' background services run on (to start the
    /// services of upstreams added later, on reload).
    pub fn services_runtime(&self) -> Option<tokio::runtime::Handle> {
        self.services_rt.as_ref().map(|rt| rt.handle().clone())
    }

    /// Hand over the services the server keeps, putting `services` in their
    /// place (a reload stops the old generation's by dropping what it gets).
    pub fn replace_services(&mut self, services: Vec<Services>) -> Vec<Services> {
        std::mem::replace(&mut self.services, services)
    }

    /// Keep `services` running until the server stops.
    pub fn keep_services(&mut self, services: Services) {
        self.services.push(services);
    }

    /// Re-read the certificate files of every TLS listener (see
    /// [`TlsReloader::reload`]).
    ///
    /// # Errors
    /// As [`TlsReloader::reload`].
    pub fn reload_tls(&self, config: &ServerConfig) -> Result<usize, ConfigError> {
        self.tls_reloader().reload(config)
    }

    /// What re-reads the TLS listeners' certificates, for a task that does
    /// not own this handle (a reload task).
    pub fn tls_reloader(&self) -> TlsReloader {
        TlsReloader {
            tls: self.tls.clone(),
        }
    }

    /// Wait until every worker has ended, then stop the background services.
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.services.clear();
        if let Some(rt) = self.services_rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The certificates of a running server's TLS listeners, re-read on reload.
#[derive(Clone)]
pub struct TlsReloader {
    /// By `[[server.listeners]]` index.
    tls: Vec<(usize, Arc<ServerTls>)>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("listeners", &self.tls.len())
            .finish()
    }
}

impl TlsReloader {
    /// Re-read the certificate files of every TLS listener as `config` names
    /// them (listener `i` of `[[server.listeners]]` takes the files of entry
    /// `i`). New connections get the new certificates; open ones keep theirs.
    /// All files are read before any is swapped in, so a bad file changes
    /// nothing. Returns how many listeners were reloaded.
    ///
    /// # Errors
    /// A missing or bad file, or a listener that lost its TLS: the field is
    /// named (listeners themselves are not added or removed by a reload).
    pub fn reload(&self, config: &ServerConfig) -> Result<usize, ConfigError> {
        let mut fresh = Vec::with_capacity(self.tls.len());
        for (i, tls) in &self.tls {
            let at = format!("server.listeners[{i}].tls");
            let files = config
                .listeners
                .get(*i)
                .and_then(|l| l.tls.as_ref())
                .ok_or_else(|| {
                    ConfigError::field(&at, "a running TLS listener cannot lose its TLS on reload")
                })?;
            fresh.push((tls, tls.prepare(files, &at)?));
        }
        for (tls, config) in &fresh {
            tls.install(Arc::clone(config));
        }
        Ok(fresh.len())
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop.send_replace(Stop::Immediate);
        }
        self.services.clear();
        if let Some(rt) = self.services_rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Server {
    /// A server with this configuration.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            config,
            inherited: Arc::default(),
            extra_offered: Arc::default(),
        }
    }

    /// Serve on `inherited`, the listening sockets of a running server
    /// ([`upgrade::take_over`]), instead of binding those addresses anew.
    /// Addresses the configuration no longer has are closed.
    pub fn inherit(self, inherited: Inherited) -> Self {
        Server {
            inherited: Arc::new(std::sync::Mutex::new(inherited)),
            ..self
        }
    }

    /// Offer `socket`, listening on `addr`, to a successor along with the
    /// server's own listeners (an application's admin listener); the
    /// successor finds it in its [`Inherited`] under `addr`.
    pub fn offer_on_upgrade(self, addr: SocketAddr, socket: OwnedFd) -> Self {
        if let Ok(mut o) = self.extra_offered.lock() {
            o.push((addr, socket));
        }
        self
    }

    /// Parse the command line, load and validate the configuration. With
    /// `-t/--test`, print the verdict and exit (0 when valid, 1 when not);
    /// a bad configuration also exits 1 with the file and field named.
    pub fn from_args() -> Self {
        let opt = Opt::parse();
        match opt.load() {
            Ok(config) => {
                if opt.test {
                    println!("configuration ok");
                    std::process::exit(0);
                }
                Server::new(config)
            }
            Err(e) => {
                eprintln!("invalid configuration: {e}");
                std::process::exit(1);
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Start serving `proxy` on the configured listeners, in background
    /// threads. The upstreams registered with the proxy
    /// ([`HttpProxyBuilder::upstream`](crate::HttpProxyBuilder::upstream))
    /// run their first round of checks and discovery — bounded by the check
    /// timeout — before any listener opens, then their background services
    /// (active checks, outlier sweeps, discovery) until the server stops.
    ///
    /// # Errors
    /// The configuration does not validate (`InvalidInput`, naming the
    /// field), or binding a listener or starting a runtime failed.
    pub fn start<P: ProxyHttp, C: Connect>(
        &self,
        proxy: HttpProxy<P, C>,
    ) -> std::io::Result<ServerHandle> {
        let upstreams = proxy.take_upstreams();
        let (services_rt, services) = match start_services(&upstreams) {
            Ok(started) => started,
            Err(e) => {
                proxy.return_upstreams(upstreams);
                return Err(e);
            }
        };
        let mut handle = match self.start_workers(proxy.clone()) {
            Ok(h) => h,
            Err(e) => {
                drop(services);
                services_rt.shutdown_background();
                proxy.return_upstreams(upstreams);
                return Err(e);
            }
        };
        handle.services = services;
        handle.services_rt = Some(services_rt);
        Ok(handle)
    }

    fn start_workers<P: ProxyHttp, C: Connect>(
        &self,
        proxy: HttpProxy<P, C>,
    ) -> std::io::Result<ServerHandle> {
        // A config built in code may never have been validated: refuse what
        // would otherwise panic under traffic (a duration past MAX_DURATION).
        if let Err(e) = self.config.clone().validate() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e));
        }
        let (stop, stop_rx) = watch::channel(Stop::Run);
        let limit = Arc::new(Semaphore::new(self.config.limits.max_connections));
        let mut threads = Vec::new();
        let (workers, per_worker) = match self.config.runtime {
            RuntimeModel::PerWorker => (self.config.threads, true),
            RuntimeModel::WorkStealing => (1, false),
        };
        let (mut addrs, specs, tls) = self.listener_specs()?;
        let (inherited, successor) = self.inherited_for(&addrs)?;
        // Worker w accepts on every `workers`-th inherited socket of each
        // address, and binds a socket of its own where it gets none.
        let mut assigned: Vec<Vec<Vec<OwnedFd>>> = (0..workers)
            .map(|_| addrs.iter().map(|_| Vec::new()).collect())
            .collect();
        for (i, fds) in inherited.into_iter().enumerate() {
            for (j, fd) in fds.into_iter().enumerate() {
                assigned[j % workers][i].push(fd);
            }
        }
        let offered: upgrade::Offered = Arc::default();
        if let (Ok(mut o), Ok(mut extra)) = (offered.lock(), self.extra_offered.lock()) {
            o.append(&mut extra);
        }
        for (w, mine) in assigned.into_iter().enumerate() {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let setup = WorkerSetup {
                proxy: if per_worker {
                    proxy.fork()
                } else {
                    proxy.clone()
                },
                bind: addrs.clone(),
                inherited: mine,
                specs: specs.clone(),
                stop: stop_rx.clone(),
                limit: Arc::clone(&limit),
                grace: self.config.grace_period,
                threads: if per_worker { 0 } else { self.config.threads },
            };
            threads.push(spawn_worker(w, setup, ready_tx)?);
            match ready_rx.recv() {
                Ok(Ok((bound, fds))) => {
                    addrs = bound;
                    if let Ok(mut o) = offered.lock() {
                        o.extend(fds);
                    }
                }
                Ok(Err(e)) => {
                    stop.send_replace(Stop::Immediate);
                    return Err(e);
                }
                Err(_) => {
                    stop.send_replace(Stop::Immediate);
                    return Err(std::io::Error::other("worker failed to start"));
                }
            }
        }
        let (handed_tx, handed) = watch::channel(false);
        if let Some(path) = &self.config.upgrade_socket {
            if let Err(e) = upgrade::serve(path.clone(), Arc::clone(&offered), handed_tx, successor)
            {
                stop.send_replace(Stop::Immediate);
                return Err(e);
            }
        }
        tracing::info!(?addrs, workers, "listening");
        Ok(ServerHandle {
            addrs,
            stop,
            threads,
            services: Vec::new(),
            services_rt: None,
            tls,
            handed,
        })
    }

    /// Every listening address (the `listen` ones, then the
    /// `[[server.listeners]]`), what each speaks, and the TLS listeners'
    /// certificates by `[[server.listeners]]` index.
    fn listener_specs(&self) -> std::io::Result<ListenerSpecs> {
        let mut addrs = self.config.listen.clone();
        let mut specs: Vec<Arc<ListenSpec>> = addrs
            .iter()
            .map(|_| Arc::new(ListenSpec::plain_http1()))
            .collect();
        let mut tls = Vec::new();
        for (i, l) in self.config.listeners.iter().enumerate() {
            let spec = ListenSpec::from_config(l, i).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?;
            if let Some(t) = &spec.tls {
                tls.push((i, Arc::clone(t)));
            }
            addrs.push(l.addr);
            specs.push(Arc::new(spec));
        }
        Ok((addrs, specs, tls))
    }

    /// The inherited sockets of each address in `addrs`, and whether this
    /// server took any over. An address that inherited nothing must be free:
    /// another process listening there (a second Detour started by
    /// mistake, which `SO_REUSEPORT` would otherwise let share the port
    /// silently) is an error.
    fn inherited_for(&self, addrs: &[SocketAddr]) -> std::io::Result<(Vec<Vec<OwnedFd>>, bool)> {
        let mut pool = self
            .inherited
            .lock()
            .map(|mut i| std::mem::take(&mut *i))
            .unwrap_or_default();
        let successor = !pool.is_empty();
        let mut per_addr = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let fds = pool.take(*addr);
            // A successor's new addresses may overlap the ones it took over
            // (`0.0.0.0` for `127.0.0.1`, an address listed twice), which a
            // bind without `SO_REUSEPORT` would take for another process.
            if fds.is_empty() && addr.port() != 0 && !successor {
                ensure_free(*addr)?;
            }
            per_addr.push(fds);
        }
        if !pool.is_empty() {
            tracing::info!(addrs = ?pool.addrs(), "inherited listeners the configuration no longer has: closed");
        }
        Ok((per_addr, successor))
    }

    /// Serve `proxy` until a signal: SIGTERM drains in-flight requests within
    /// the grace period, SIGINT stops at once.
    ///
    /// # Errors
    /// Starting failed (a listener could not be bound).
    pub fn run_forever<P: ProxyHttp, C: Connect>(
        &self,
        proxy: HttpProxy<P, C>,
    ) -> std::io::Result<()> {
        let handle = self.start(proxy)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(run_until_signal(handle))
    }
}

/// The runtime of the upstreams' background services, with the services of
/// `upstreams` started on it after their first round (kept on it for the
/// upstreams a reload adds later, even when there are none now).
fn start_services(
    upstreams: &[Arc<Upstream>],
) -> std::io::Result<(tokio::runtime::Runtime, Vec<Services>)> {
    let services_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("detour-services")
        .enable_all()
        .build()?;
    if !upstreams.is_empty() {
        // Waited for on a thread of its own, so this works from inside a
        // runtime too.
        let rt = services_rt.handle().clone();
        let all = upstreams.to_vec();
        let _ = std::thread::spawn(move || rt.block_on(first_rounds(&all, &rt))).join();
    }
    let services = upstreams
        .iter()
        .map(|u| u.start_services(services_rt.handle()))
        .collect();
    Ok((services_rt, services))
}

/// Wait for SIGTERM (drain), SIGINT (stop at once) or a successor taking
/// the listening sockets over (drain); while draining, a SIGINT or a second
/// SIGTERM cuts the drain short.
///
/// # Errors
/// Installing the signal handlers failed.
pub async fn run_until_signal(handle: ServerHandle) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let how = tokio::select! {
        _ = term.recv() => Stop::Graceful,
        _ = int.recv() => Stop::Immediate,
        () = handle.handed_over() => Stop::Graceful,
    };
    tracing::info!(?how, "stopping");
    run_until_stopped(handle, how).await
}

/// Stop `handle` the way `how` says and wait for it; while draining, a
/// SIGINT or a SIGTERM cuts the drain short.
///
/// # Errors
/// Installing the signal handlers failed.
pub async fn run_until_stopped(handle: ServerHandle, how: Stop) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    handle.stop(how);
    let stop = handle.stop.clone();
    let mut joined = tokio::task::spawn_blocking(move || handle.join());
    loop {
        tokio::select! {
            _ = &mut joined => return Ok(()),
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("second signal: stopping at once");
        stop.send_replace(Stop::Immediate);
    }
}

/// A connection accepted by a worker's accept task, with its place under
/// `max_connections` and what its listener speaks.
type Accepted = (
    tokio::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
    Arc<ListenSpec>,
);

/// Every listening address, what each speaks, and the TLS certificates.
type ListenerSpecs = (
    Vec<SocketAddr>,
    Vec<Arc<ListenSpec>>,
    Vec<(usize, Arc<ServerTls>)>,
);

/// A worker's bound addresses, and a copy of each of its listening sockets
/// to offer a successor.
type Bound = (Vec<SocketAddr>, Vec<(SocketAddr, OwnedFd)>);

/// What one worker thread needs.
struct WorkerSetup<P: ProxyHttp, C: Connect> {
    proxy: HttpProxy<P, C>,
    bind: Vec<SocketAddr>,
    /// Sockets taken over from a predecessor, by index into `bind`.
    inherited: Vec<Vec<OwnedFd>>,
    specs: Vec<Arc<ListenSpec>>,
    stop: watch::Receiver<Stop>,
    limit: Arc<Semaphore>,
    grace: Duration,
    /// Threads of a work-stealing runtime; 0: a current-thread one.
    threads: usize,
}

/// Start worker `w` on a thread of its own; `ready` gets its bound
/// addresses once it listens, or why it could not.
fn spawn_worker<P: ProxyHttp, C: Connect>(
    w: usize,
    setup: WorkerSetup<P, C>,
    ready: std::sync::mpsc::Sender<std::io::Result<Bound>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("detour-worker-{w}"))
        .spawn(move || {
            let rt = if setup.threads == 0 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(setup.threads)
                    .enable_all()
                    .build()
            };
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let listeners = match bind_worker(&setup.bind, setup.inherited) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(bound(&setup.bind, &listeners));
                let listeners = listeners
                    .into_iter()
                    .map(|(l, i)| (l, Arc::clone(&setup.specs[i])))
                    .collect();
                worker(listeners, setup.proxy, setup.stop, setup.limit, setup.grace).await;
            });
        })
}

/// The address each index of `addrs` is bound to (ports resolved), and a
/// copy of every listening socket.
fn bound(addrs: &[SocketAddr], listeners: &[(TcpListener, usize)]) -> std::io::Result<Bound> {
    let mut resolved = addrs.to_vec();
    let mut fds = Vec::with_capacity(listeners.len());
    for (l, i) in listeners {
        let addr = l.local_addr()?;
        resolved[*i] = addr;
        fds.push((addr, l.as_fd().try_clone_to_owned()?));
    }
    Ok((resolved, fds))
}

/// A worker's listeners, each with the index of its address: the
/// inherited sockets of an address, or else a socket of its own bound with
/// `SO_REUSEPORT`, so the kernel spreads connections between workers (and,
/// during an upgrade, between the processes).
fn bind_worker(
    addrs: &[SocketAddr],
    inherited: Vec<Vec<OwnedFd>>,
) -> std::io::Result<Vec<(TcpListener, usize)>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for (i, (addr, fds)) in addrs.iter().zip(inherited).enumerate() {
        if fds.is_empty() {
            let l = bind_one(*addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            listeners.push((l, i));
        }
        for fd in fds {
            let std_listener = std::net::TcpListener::from(fd);
            std_listener.set_nonblocking(true)?;
            listeners.push((TcpListener::from_std(std_listener)?, i));
        }
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Fail if a process already listens on `addr`: a bind without
/// `SO_REUSEPORT` is refused then, where the workers' binds would join it.
fn ensure_free(addr: SocketAddr) -> std::io::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_probe) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            e.kind(),
            format!(
                "another process listens on {addr}; to replace a running Detour without dropping \
                 connections, start the new one with `--upgrade` ([server] upgrade_socket)"
            ),
        )),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e}"),
        )),
    }
}

async fn worker<P: ProxyHttp, C: Connect>(
    listeners: Vec<(TcpListener, Arc<ListenSpec>)>,
    proxy: HttpProxy<P, C>,
    mut stop: watch::Receiver<Stop>,
    limit: Arc<Semaphore>,
    grace: Duration,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel(64);
    let mut accept_tasks = Vec::new();
    for (listener, spec) in listeners {
        let conn_tx = conn_tx.clone();
        let limit = Arc::clone(&limit);
        accept_tasks.push(tokio::spawn(async move {
            loop {
                // Wait for room first: excess clients queue in the kernel backlog.
                let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                    return;
                };
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let spec = Arc::clone(&spec);
                        if conn_tx.send((stream, peer, permit, spec)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    drop(conn_tx);
    let serve = |conns: &mut tokio::task::JoinSet<()>, accepted: Accepted| {
        let (stream, peer, permit, spec) = accepted;
        let proxy = proxy.clone();
        let drain = drain_rx.clone();
        conns.spawn(async move {
            // Shared with a tunnel the connection may turn into, which
            // keeps the place after the HTTP connection ends.
            let slot = ConnSlot::new(Arc::new(permit));
            proxy
                .serve_accepted(stream, Some(peer), drain, &spec, slot)
                .await;
        });
    };
    loop {
        tokio::select! {
            c = conn_rx.recv() => {
                let Some(accepted) = c else { break };
                serve(&mut conns, accepted);
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => {
                if *stop.borrow() != Stop::Run {
                    break;
                }
            }
        }
    }
    for t in &accept_tasks {
        t.abort();
    }
    if *stop.borrow() == Stop::Graceful {
        // Connections accepted but not served yet are served (each closes
        // after its first answer): a drain resets nothing the kernel
        // already handed over.
        while let Ok(accepted) = conn_rx.try_recv() {
            serve(&mut conns, accepted);
        }
    }
    drop(conn_rx);
    if *stop.borrow() == Stop::Graceful {
        proxy.begin_drain();
        drain_tx.send_replace(true);
        // Done when every connection and every upgraded tunnel has ended;
        // tunnels still open at the end of the grace period are cut.
        let all_done = async {
            while conns.join_next().await.is_some() {}
            proxy.tunnels_closed().await;
        };
        let immediate = async {
            while stop.changed().await.is_ok() {
                if *stop.borrow() == Stop::Immediate {
                    break;
                }
            }
        };
        tokio::select! {
            _ = all_done => {}
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("grace period over with requests in flight");
            }
            _ = immediate => {}
        }
    }
    proxy.stop_tunnels();
    conns.abort_all();
}

//! `detour`: a config-driven failover proxy built on the Detour crates.
//!
//! ```text
//! detour --config detour.toml          run the proxy
//! detour --config etcd://HOST:PORT/KEY run the proxy on the document in an
//!                                      etcd key, following it
//! detour --config detour.toml --test   check the file and exit (0: valid)
//! detour --config detour.toml --test --strict   ... and fail on a lint warning
//! detour --config detour.toml --dump-config
//!                                      print the effective configuration
//! detour demo                          a live failover demo, no setup
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `--version`: the package version and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DETOUR_COMMIT"), ")");
use detour_cli::app::{self, config::LogFormat, Config};
use detour_server::upgrade::{self, Inherited};

/// A reverse proxy that routes around failed backends.
///
/// Run it with a TOML configuration (see docs/src/binary.md): listeners,
/// upstreams with their backends, load balancing, retries, health checks,
/// outlier detection and breakers, and routes. SIGTERM drains in-flight
/// requests within the grace period, SIGINT stops at once, SIGHUP reloads
/// the configuration and the TLS certificates (an invalid file is refused
/// and the old one keeps serving), SIGUSR2 starts the binary again with
/// --upgrade (with [server] upgrade_socket set).
#[derive(Debug, Parser)]
#[command(
    name = "detour",
    version = VERSION,
    about = "A reverse proxy that routes around failed backends.",
    long_about
)]
struct Cli {
    /// The configuration file, or one etcd key holding it:
    /// `etcd://HOST:PORT[,HOST:PORT…]/KEY` (followed: each new document is
    /// applied as a reload; see "Running a fleet").
    #[arg(short = 'c', long = "config", value_name = "FILE|etcd://HOST:PORT/KEY")]
    config: Option<PathBuf>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Validate the configuration and exit: 0 when valid, 1 with the file,
    /// line and field at fault when not.
    #[arg(short = 't', long = "test", requires = "config")]
    test: bool,
    /// With --test: also fail (exit 1) when the linter warns about a
    /// dangerous setting (retries with no budget, verification off, ...).
    #[arg(long = "strict", requires = "test")]
    strict: bool,
    /// Validate the configuration, print it as it takes effect (every
    /// default written out, relative paths resolved, secrets redacted) and
    /// exit. Like `nginx -T`.
    #[arg(short = 'T', long = "dump-config", requires = "config")]
    dump_config: bool,
    /// Take over from the running Detour at this configuration's
    /// `[server] upgrade_socket`: serve on its listening sockets, then let
    /// it drain. No connection is dropped (see "Running a fleet").
    #[arg(long = "upgrade", requires = "config")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// How to reach etcd for `--config etcd://…`: flags or the environment,
/// never the URL.
#[derive(Debug, clap::Args)]
struct EtcdArgs {
    /// PEM file of the CA that signed etcd's certificate (TLS towards etcd).
    #[arg(long = "etcd-ca", env = "DETOUR_ETCD_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key).
    #[arg(long = "etcd-cert", env = "DETOUR_ETCD_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long = "etcd-key", env = "DETOUR_ETCD_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// etcd user (with --etcd-password-file).
    #[arg(long = "etcd-user", env = "DETOUR_ETCD_USER", value_name = "NAME")]
    user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(
        long = "etcd-password-file",
        env = "DETOUR_ETCD_PASSWORD_FILE",
        value_name = "FILE"
    )]
    password_file: Option<PathBuf>,
    /// Where the last good document from etcd is kept, to start from when
    /// etcd is unreachable.
    #[arg(
        long = "config-cache",
        env = "DETOUR_CONFIG_CACHE",
        value_name = "FILE",
        default_value = "/var/lib/detour/config-cache.toml"
    )]
    cache: PathBuf,
}

impl EtcdArgs {
    fn access(&self) -> app::etcd_config::EtcdAccess {
        app::etcd_config::EtcdAccess {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            user: self.user.clone(),
            password_file: self.password_file.clone(),
            cache: Some(self.cache.clone()),
            ..app::etcd_config::EtcdAccess::default()
        }
    }

    /// The flags again, for a successor (absolute paths).
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let abs = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let mut args = Vec::new();
        let files = [
            ("--etcd-ca", &self.ca),
            ("--etcd-cert", &self.cert),
            ("--etcd-key", &self.key),
            ("--etcd-password-file", &self.password_file),
        ];
        for (flag, file) in files {
            if let Some(f) = file {
                args.extend([flag.into(), abs(f).into()]);
            }
        }
        if let Some(u) = &self.user {
            args.extend(["--etcd-user".into(), u.into()]);
        }
        args.extend(["--config-cache".into(), self.cache.clone().into()]);
        args
    }
}

/// Where the configuration came from.
enum Loaded {
    File,
    Etcd(
        std::sync::Arc<app::etcd_config::EtcdConfigSource>,
        Box<app::etcd_config::Initial>,
    ),
}

/// Read `path` (a file or an etcd URL) and validate it. `use_cache`: an
/// etcd source that cannot give a valid document falls back to the cached
/// one (to serve; not to check or print a configuration).
fn load(
    path: &std::path::Path,
    etcd: &EtcdArgs,
    use_cache: bool,
) -> Result<(Config, Loaded), String> {
    let Some(url) = path
        .to_str()
        .filter(|p| app::etcd_config::EtcdConfigSource::is_url(p))
    else {
        let config = Config::from_file(path).map_err(|e| format!("invalid configuration: {e}"))?;
        return Ok((config, Loaded::File));
    };
    let source = app::etcd_config::EtcdConfigSource::new(url, &etcd.access())
        .map_err(|e| format!("invalid configuration source: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let initial = rt
        .block_on(source.initial(use_cache))
        .map_err(|e| format!("invalid configuration: {e}"))?;
    let config = initial.config.clone();
    let loaded = Loaded::Etcd(std::sync::Arc::new(source), Box::new(initial));
    Ok((config, loaded))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start three local backends and the proxy, send traffic, kill one
    /// backend, blackhole another, make the third answer 503, bring them
    /// back, and show what happens live. Needs nothing else.
    Demo {
        /// Seconds per phase (five phases).
        #[arg(long, default_value_t = 5)]
        phase_secs: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
}

/// The access log's target: on at `info` whenever `access_log = true`.
const ACCESS_TARGET: &str = "detour::access=info";

/// Install the subscriber. The filter is `RUST_LOG` when it is set and
/// valid, else `[log] level`; with `access_log` the access log's target is
/// then enabled at `info` whatever that filter says, since `access_log =
/// false` is the one switch that turns it off.
fn init_logging(format: LogFormat, level: &str, access_log: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if access_log {
        match ACCESS_TARGET.parse() {
            Ok(directive) => filter = filter.add_directive(directive),
            Err(e) => eprintln!("access log filter: {e}"),
        }
    }
    // Colour only for a person at a terminal: escapes in a file or a
    // journal are noise to every log reader.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Install the Prometheus recorder (see [`detour_proxy::metrics::install`]); the
/// admin API's `/metrics` renders it.
fn metrics() -> Option<detour_proxy::metrics::MetricsHandle> {
    match detour_proxy::metrics::install() {
        Ok(h) => {
            app::process::start(env!("CARGO_PKG_VERSION"), env!("DETOUR_COMMIT"));
            Some(h)
        }
        Err(e) => {
            eprintln!("metrics disabled: {e}");
            None
        }
    }
}

/// `--dump-config`: the effective configuration on stdout.
fn dump_config(config: &Config, path: &std::path::Path) -> ExitCode {
    let heading = format!(
        "The effective configuration of {}: every default written out, relative paths \
         resolved, secrets redacted.",
        path.display()
    );
    match app::effective::to_toml(config, &heading) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot print the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--test`: the file loaded; print the linter's warnings, then the
/// verdict. `strict`: any warning fails.
fn test_config(config: &Config, path: &std::path::Path, strict: bool) -> ExitCode {
    let warnings = app::lint::lint(config);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if strict && !warnings.is_empty() {
        eprintln!(
            "{}: {} warning(s), refused by --strict",
            path.display(),
            warnings.len()
        );
        return ExitCode::FAILURE;
    }
    match warnings.len() {
        0 => println!("{}: configuration ok", path.display()),
        n => println!("{}: configuration ok, {n} warning(s)", path.display()),
    }
    ExitCode::SUCCESS
}

/// With `--upgrade`, the running process's listening sockets and the way
/// to tell it this one serves; without, nothing.
fn take_over(
    config: &Config,
    upgrade: bool,
) -> std::io::Result<(Inherited, Option<upgrade::Successor>)> {
    if !upgrade {
        return Ok((Inherited::default(), None));
    }
    let path = config.server.upgrade_socket.as_deref().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--upgrade needs [server] upgrade_socket in the configuration",
        )
    })?;
    let (inherited, successor) = upgrade::take_over(path)?;
    tracing::info!(sockets = inherited.len(), from = %path.display(), "listening sockets taken over");
    Ok((inherited, Some(successor)))
}

/// `detour demo`.
fn demo(phase_secs: u64, clients: usize) -> ExitCode {
    init_logging(LogFormat::Text, "error", false);
    let handle = metrics();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = app::demo::DemoOptions {
        phase: std::time::Duration::from_secs(phase_secs.max(1)),
        clients: clients.max(1),
        ..Default::default()
    };
    match rt.block_on(app::demo::run(opts, handle)) {
        Ok(s) if s.client_errors == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(2),
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo {
        phase_secs,
        clients,
    }) = cli.command
    {
        return demo(phase_secs, clients);
    }
    let Some(path) = cli.config else {
        eprintln!("detour: give --config FILE, or run `detour demo` (see --help)");
        return ExitCode::from(2);
    };
    let (config, loaded) = match load(&path, &cli.etcd, !(cli.test || cli.dump_config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        return test_config(&config, &path, cli.strict);
    }
    if cli.dump_config {
        return dump_config(&config, &path);
    }
    init_logging(config.log.format, &config.log.level, config.log.access_log);
    for w in app::lint::lint(&config) {
        tracing::warn!(fields = %w.fields.join(", "), "dangerous configuration: {}", w.why);
    }
    if let Loaded::Etcd(source, initial) = &loaded {
        match &initial.from_cache {
            Some(why) => tracing::warn!(source = %source.url(), "configuration: {why}"),
            None => {
                tracing::info!(source = %source.url(), revision = initial.revision, "configuration read from etcd")
            }
        }
    }
    let handle = metrics();
    let (inherited, successor) = match take_over(&config, cli.upgrade) {
        Ok(taken) => taken,
        Err(e) => {
            eprintln!("detour: cannot upgrade: {e}");
            return ExitCode::FAILURE;
        }
    };
    let origin = match &loaded {
        Loaded::File => app::reload::Origin::File(path.clone()),
        Loaded::Etcd(source, _) => app::reload::Origin::Etcd(std::sync::Arc::clone(source)),
    };
    match app::start_inheriting(&config, origin, handle, None, inherited) {
        Ok(mut running) => {
            if let Loaded::Etcd(source, initial) = loaded {
                running.follow_etcd(source, &initial);
            }
            tracing::info!(
                addr = %running.addr(),
                admin = running.admin_addr.map(tracing::field::display),
                "detour serving"
            );
            if let Some(successor) = successor {
                running.take_over_when_serving(successor);
            }
            if config.server.upgrade_socket.is_some() {
                let argv0 = std::env::args_os()
                    .next()
                    .unwrap_or_else(|| "detour".into());
                let file = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                let command = app::supervisor::SuccessorCommand::new(argv0, file)
                    .with_args(cli.etcd.to_args());
                running.upgrade_with(command);
            }
            match running.run_until_signal() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("detour: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("detour: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

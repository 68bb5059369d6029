//! The whole configuration from one etcd key:
//! `detour --config etcd://HOST:PORT[,HOST:PORT…]/KEY`.
//!
//! - At start the key is read (bounded by the access `timeout`). A valid
//!   document is served and written to the local cache; when etcd cannot
//!   be reached, the key is missing or its document is invalid, the cached
//!   last good document is served instead and the log says why (no cache:
//!   the start fails, naming the reason).
//! - Then the key is watched ([`EtcdWatch`]); each new value is validated
//!   exactly as a file reload is and applied through the reload task, so a
//!   bad document never replaces a good one. One write reconfigures every
//!   instance that watches the key.
//! - TLS and credentials come from flags or the environment ([`EtcdAccess`]),
//!   never from the URL.
//! - `/status` says where the running document came from
//!   ([`ConfigSourceStatus`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use detour_proxy::lb::discovery::{EtcdOptions, EtcdSnapshot, EtcdWatch, SourceState};
use detour_server::config::ConfigError;
use detour_server::upstream::{etcd_access, EtcdTlsConfig};
use serde::Serialize;

use super::config::Config;

/// How to reach etcd for the configuration (flags or environment).
#[derive(Debug, Clone)]
pub struct EtcdAccess {
    /// PEM file of the CA that signed etcd's certificate; with any TLS
    /// setting the endpoints are dialled with `https://`.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (with `key`).
    pub cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    pub key: Option<PathBuf>,
    /// User name (with `password_file`).
    pub user: Option<String>,
    /// File holding the password (trailing newline dropped).
    pub password_file: Option<PathBuf>,
    /// Where the last good document is kept, for a start while etcd is
    /// unreachable. `None`: no cache.
    pub cache: Option<PathBuf>,
    /// Bound on connecting and reading; also how long the start waits.
    pub timeout: Duration,
}

impl Default for EtcdAccess {
    fn default() -> Self {
        EtcdAccess {
            ca: None,
            cert: None,
            key: None,
            user: None,
            password_file: None,
            cache: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One etcd key holding the configuration.
#[derive(Debug)]
pub struct EtcdConfigSource {
    url: String,
    key: Vec<u8>,
    watch: EtcdWatch,
    cache: Option<PathBuf>,
    timeout: Duration,
}

/// Where the running configuration came from, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigSourceStatus {
    /// `etcd://…/KEY`.
    pub source: String,
    /// `ok` (following the key), `cached` (started from the cached last
    /// good document; etcd not reached since), `failing` (etcd unreachable:
    /// the running document stays), `refused` (the key's document is invalid or missing: the
    /// running one stays).
    pub state: &'static str,
    /// The store revision of the document applied last (none for a cached
    /// one).
    pub revision: Option<i64>,
    /// When etcd last answered (Unix seconds).
    pub last_success: Option<f64>,
    /// Why the state is not `ok`.
    pub error: Option<String>,
}

/// The configuration to start with.
#[derive(Debug, Clone)]
pub struct Initial {
    /// The document, validated.
    pub config: Config,
    /// Its text (what the watch compares new values with).
    pub text: String,
    /// Set when it is the cached document: why etcd's was not used.
    pub from_cache: Option<String>,
    /// The revision it was read at (etcd's document only).
    pub revision: Option<i64>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EtcdConfigSource {
    /// Whether `arg` (a `--config` value) names an etcd key.
    pub fn is_url(arg: &str) -> bool {
        arg.starts_with("etcd://")
    }

    /// The source `url` names, reached with `access`.
    ///
    /// # Errors
    /// A malformed URL (or one carrying credentials), an unreadable file.
    pub fn new(url: &str, access: &EtcdAccess) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::field("config", format!("{url}: {why}"));
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("not an etcd:// URL".into()))?;
        let (hosts, key) = rest
            .split_once('/')
            .ok_or_else(|| bad("no key: etcd://HOST:PORT/KEY".into()))?;
        if hosts.contains('@') {
            return Err(bad(
                "credentials do not go in the URL: use --etcd-user and --etcd-password-file".into(),
            ));
        }
        if key.is_empty() || key.contains(['?', '#']) {
            return Err(bad("the key must be a path, with no query".into()));
        }
        let tls = access.ca.is_some() || access.cert.is_some();
        let scheme = if tls { "https" } else { "http" };
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            if host
                .parse::<http::uri::Authority>()
                .map_or(true, |a| a.port().is_none())
            {
                return Err(bad(format!("{host:?} is not HOST:PORT")));
            }
            endpoints.push(format!("{scheme}://{host}"));
        }
        let key = format!("/{key}");
        let options = options(endpoints, &key, access)?;
        Ok(EtcdConfigSource {
            url: url.to_string(),
            key: key.into_bytes(),
            watch: EtcdWatch::new(options),
            cache: access.cache.clone(),
            timeout: access.timeout,
        })
    }

    /// The URL, as logs and `/status` name the source.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Read the key once: its document, or (with `use_cache`) the cached
    /// one when etcd's cannot be used. Nothing is written: the caller saves
    /// the document once it serves ([`save`](Self::save)).
    ///
    /// # Errors
    /// Neither etcd nor the cache gives a valid document (both reasons
    /// named).
    pub async fn initial(&self, use_cache: bool) -> Result<Initial, ConfigError> {
        // A watcher of its own, dropped with this call: the one that
        // follows the key runs on the serving runtime.
        let probe = EtcdWatch::new(self.watch.options().clone());
        let snapshot = probe.first_read(self.timeout).await;
        let revision = snapshot.revision;
        match self.document(&snapshot) {
            Ok((config, text)) => Ok(Initial {
                config,
                text,
                from_cache: None,
                revision: Some(revision),
            }),
            Err(why) if use_cache => self.cached(why),
            Err(why) => Err(why),
        }
    }

    /// The first line of a cache file: which source it belongs to.
    fn cache_header(&self) -> String {
        format!("# detour: last good document of {}\n", self.url)
    }

    /// The cached document, because of `why`.
    fn cached(&self, why: ConfigError) -> Result<Initial, ConfigError> {
        let Some(cache) = &self.cache else {
            return Err(why);
        };
        let refused = |what: String| {
            ConfigError::field("config", format!("{why}; and {what} ({})", cache.display()))
        };
        let text = std::fs::read_to_string(cache)
            .map_err(|e| refused(format!("no cached document: {e}")))?;
        // A cache written for another source (the default path is shared)
        // is not this source's last good document.
        if !text.starts_with(&self.cache_header()) {
            return Err(refused("the cached document is another source's".into()));
        }
        let config = Config::load(&text, Some(cache), None)?;
        Ok(Initial {
            config,
            text,
            from_cache: Some(format!(
                "{why}; serving the cached document {}",
                cache.display()
            )),
            revision: None,
        })
    }

    /// The valid document `snapshot` holds under the key, with its text.
    fn document(&self, snapshot: &EtcdSnapshot) -> Result<(Config, String), ConfigError> {
        let text = self.text(snapshot)?;
        let config = Config::load(&text, Some(Path::new(&self.url)), None)?;
        Ok((config, text))
    }

    /// The text `snapshot` holds under the key.
    fn text(&self, snapshot: &EtcdSnapshot) -> Result<String, ConfigError> {
        let bad = |why: String| ConfigError::field("config", format!("{}: {why}", self.url));
        if !snapshot.synced {
            let why = snapshot.error.as_deref().unwrap_or("no answer");
            return Err(bad(format!("etcd unreachable: {why}")));
        }
        let value = snapshot
            .entries
            .get(&self.key)
            .ok_or_else(|| bad("no such key".into()))?;
        String::from_utf8(value.clone()).map_err(|_| bad("the document is not UTF-8".into()))
    }

    /// The document etcd holds now (what SIGHUP and `POST /reload` apply).
    ///
    /// # Errors
    /// As [`initial`](Self::initial), without the cache.
    pub fn current(&self) -> Result<Config, ConfigError> {
        self.document(&self.watch.snapshot()).map(|(c, _)| c)
    }

    /// Keep `text`, a document that serves, as the last good one for a
    /// start while etcd is unreachable: written aside (readable by this
    /// user only: it may hold the admin token), synced, then renamed over
    /// the old one, so a crash or a second process (an upgrade's successor)
    /// never leaves half a file.
    pub fn save(&self, text: &str) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(cache) = &self.cache else { return };
        if text.starts_with(&self.cache_header()) {
            return; // Served from the cache: already there.
        }
        let aside = cache.with_extension(format!("tmp.{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&aside)
            .and_then(|mut f| {
                f.write_all(self.cache_header().as_bytes())?;
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&aside, cache));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&aside);
            tracing::warn!(cache = %cache.display(), error = %e, "cannot cache the configuration");
        }
    }

    /// Follow the key until `stop` says `true` (a drain: the process is
    /// stopping or handed over): hand each new document to `reload` (the
    /// reload task, which logs the outcome), save those that serve, and keep
    /// `status` true. `initial` is what this process started with.
    pub async fn follow<R, F>(
        self: Arc<Self>,
        reload: R,
        status: Arc<Mutex<Option<ConfigSourceStatus>>>,
        initial: &Initial,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) where
        R: Fn(Config) -> F + Send,
        F: std::future::Future<Output = Result<(), ConfigError>> + Send,
    {
        let mut rx = self.watch.subscribe();
        let mut doc = Document {
            applied: initial.text.clone(),
            tried: initial.text.clone(),
            refusal: None,
            revision: initial.revision,
            cached: initial.from_cache.clone(),
        };
        loop {
            let snapshot = rx.borrow_and_update().clone();
            if let Ok(text) = self.text(&snapshot) {
                doc.cached = None; // etcd answered: no longer on the cache.
                if text != doc.tried {
                    doc.tried.clone_from(&text);
                    match self.apply(&text, &reload).await {
                        Ok(()) => {
                            self.save(&text);
                            doc.applied = text;
                            doc.refusal = None;
                            doc.revision = Some(snapshot.revision);
                        }
                        Err(e) => doc.refusal = Some(e.to_string()),
                    }
                }
            }
            let now = self.status_of(&snapshot, &doc);
            *status.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Validate `text` and hand it to `reload`; a document that does not
    /// parse is logged here.
    async fn apply<R, F>(&self, text: &str, reload: &R) -> Result<(), ConfigError>
    where
        R: Fn(Config) -> F,
        F: std::future::Future<Output = Result<(), ConfigError>>,
    {
        let config = match Config::load(text, Some(Path::new(&self.url)), None) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    trigger = "etcd",
                    field = e.field.as_deref(),
                    error = %e,
                    "reload refused; the old configuration keeps serving"
                );
                return Err(e);
            }
        };
        reload(config).await
    }

    /// The status: the connection (`failing`, or `cached` before etcd
    /// ever answered) first, then the document (`refused` while the key
    /// holds something other than what serves).
    fn status_of(&self, snapshot: &EtcdSnapshot, doc: &Document) -> ConfigSourceStatus {
        let mut s = ConfigSourceStatus {
            source: self.url.clone(),
            state: "ok",
            revision: doc.revision,
            last_success: snapshot.last_success.map(unix),
            error: None,
        };
        if let Some(why) = &doc.cached {
            s.state = "cached";
            s.error = Some(why.clone());
        } else if snapshot.state == SourceState::Failing {
            s.state = "failing";
            s.error.clone_from(&snapshot.error);
        } else if snapshot.synced && !snapshot.entries.contains_key(&self.key) {
            s.state = "refused";
            s.error = Some("the key is gone; the running configuration stays".into());
        } else if doc.tried != doc.applied {
            s.state = "refused";
            s.error.clone_from(&doc.refusal);
        }
        s
    }
}

/// What the follower knows of the document.
struct Document {
    /// The text serving now.
    applied: String,
    /// The text last handed to the reload (applied or refused).
    tried: String,
    /// Why `tried` was refused.
    refusal: Option<String>,
    /// The revision `applied` was read at (none for a cached one).
    revision: Option<i64>,
    /// Why the cached document serves, until etcd first answers.
    cached: Option<String>,
}

impl Initial {
    /// What `/status` says of the source before the watch first answers.
    pub fn status(&self, source: &EtcdConfigSource) -> ConfigSourceStatus {
        ConfigSourceStatus {
            source: source.url.clone(),
            state: if self.from_cache.is_some() {
                "cached"
            } else {
                "ok"
            },
            revision: self.revision,
            last_success: self.from_cache.is_none().then(|| unix(SystemTime::now())),
            error: self.from_cache.clone(),
        }
    }
}

/// The watcher's options: `endpoints`, the key, and `access`'s files read.
fn options(
    endpoints: Vec<String>,
    key: &str,
    access: &EtcdAccess,
) -> Result<EtcdOptions, ConfigError> {
    let o = EtcdOptions::single_key(endpoints, key)
        .with_timeout(access.timeout)
        .with_progress_interval(access.timeout);
    // Any TLS flag turns TLS on (with the system's roots unless `--etcd-ca`).
    let tls = (access.ca.is_some() || access.cert.is_some() || access.key.is_some()).then(|| {
        EtcdTlsConfig {
            ca: access.ca.clone(),
            cert: access.cert.clone(),
            key: access.key.clone(),
            domain: None,
        }
    });
    // The flags' names: `tls.ca` is `--etcd-ca`, `password_file` is
    // `--etcd-password-file`.
    let flag = |setting: &str| {
        let bare = setting.strip_prefix("tls.").unwrap_or(setting);
        format!("--etcd-{}", bare.replace('_', "-"))
    };
    let (user, password) = (access.user.as_deref(), access.password_file.as_deref());
    etcd_access(o, user, password, tls.as_ref(), &flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_hosts_and_a_key_and_never_credentials() {
        let a = EtcdAccess::default();
        let s =
            EtcdConfigSource::new("etcd://10.0.0.1:2379,10.0.0.2:2379/detour/config", &a).unwrap();
        assert_eq!(s.key, b"/detour/config");
        assert_eq!(
            s.watch.options().endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert!(s.watch.options().single_key);
        for bad in [
            "etcd://u:p@10.0.0.1:2379/k",
            "etcd://10.0.0.1:2379",
            "etcd://10.0.0.1:2379/",
            "etcd://10.0.0.1/k",
            "etcd://10.0.0.1:2379/k?x=1",
        ] {
            let e = EtcdConfigSource::new(bad, &a).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("config"), "{bad}: {e}");
        }
        let half = EtcdAccess {
            user: Some("u".into()),
            ..EtcdAccess::default()
        };
        let e = EtcdConfigSource::new("etcd://h:1/k", &half).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("--etcd-user"));
    }
}

//! `discovery.etcd`: [`EtcdSourceConfig`], its checks, and the options it
//! gives the etcd source (files read at load, each error naming its field).
//! Without the `etcd` feature every such table is refused, named.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

#[cfg(feature = "etcd")]
use detour_core::{check_duration, Zero};
#[cfg(feature = "etcd")]
use detour_lb::discovery::{EtcdOptions, EtcdTls};

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

/// `discovery.etcd`: backends from the keys under an etcd prefix; each
/// value is a JSON backend (`{"addr": "10.0.0.5:8080", "weight": 2}`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSourceConfig {
    /// etcd members: `host:port` or `http(s)://host:port`.
    pub endpoints: Vec<String>,
    /// The key prefix; every key under it is one backend.
    pub prefix: String,
    /// User name, when etcd has authentication on (with `password_file`).
    pub user: Option<String>,
    /// A file holding the user's password (read at load; trailing newline
    /// dropped), so the password is never in the configuration itself.
    pub password_file: Option<PathBuf>,
    /// TLS towards etcd: `{ ca = "ca.pem", cert = "c.pem", key = "c.key",
    /// domain = "etcd.internal" }`, each optional.
    pub tls: Option<EtcdTlsConfig>,
    /// Bound on connecting and on each read. Default 5 s.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub timeout: Duration,
    /// How often the watch asks for a progress notification; one left
    /// unanswered this long marks the watch dead. Default 5 s.
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub progress_interval: Duration,
}

/// `discovery.etcd.tls`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsConfig {
    /// PEM file of the CA that signed etcd's certificate.
    pub ca: Option<PathBuf>,
    /// PEM file of a client certificate (with `key`).
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    pub key: Option<PathBuf>,
    /// The name etcd's certificate is checked against, when not the
    /// endpoint's host.
    pub domain: Option<String>,
}

#[cfg(not(feature = "etcd"))]
fn no_etcd(at: &str) -> ConfigError {
    ConfigError::field(
        at,
        "this build has no etcd support (build detour-server with the `etcd` feature)",
    )
}

/// Check `config` (at `at`) and read its files: the options for the etcd
/// source.
///
/// # Errors
/// A field that is missing, empty or names a file that cannot be read.
#[cfg(feature = "etcd")]
pub(super) fn options(config: &EtcdSourceConfig, at: &str) -> Result<EtcdOptions, ConfigError> {
    check_etcd(config, at)?;
    let o = EtcdOptions::new(config.endpoints.iter().cloned(), config.prefix.clone())
        .with_timeout(config.timeout)
        .with_progress_interval(config.progress_interval);
    let user = config.user.as_deref();
    let password = config.password_file.as_deref();
    etcd_access(o, user, password, config.tls.as_ref(), &|f| {
        format!("{at}.{f}")
    })
}

/// `o` with etcd's credentials and TLS material read from their files: the
/// user with the password in `password_file` (its trailing newline
/// dropped), and, with `tls`, its CA, client certificate and key, and the
/// name checked. `name` spells each setting for errors (`"user"`,
/// `"password_file"`, `"tls.ca"`, `"tls.cert"`, `"tls.key"`): a
/// configuration's field path, or a command-line flag.
///
/// # Errors
/// A user without a password file or a certificate without a key (or the
/// other way round), a file that cannot be read, a password that is not
/// UTF-8; each naming its setting.
#[cfg(feature = "etcd")]
pub fn etcd_access(
    mut o: EtcdOptions,
    user: Option<&str>,
    password_file: Option<&std::path::Path>,
    tls: Option<&EtcdTlsConfig>,
    name: &dyn Fn(&str) -> String,
) -> Result<EtcdOptions, ConfigError> {
    let together = |a: &str, b: &str| {
        let why = format!("{} and {} go together", name(a), name(b));
        Err(ConfigError::field(name(a), why))
    };
    let read = |setting: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            ConfigError::field(
                name(setting),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    match (user, password_file) {
        (Some(user), Some(file)) => {
            let password = String::from_utf8(read("password_file", file)?).map_err(|_| {
                ConfigError::field(name("password_file"), "the password is not UTF-8")
            })?;
            o = o.with_user(user, password.trim_end_matches(['\r', '\n']));
        }
        (None, None) => {}
        _ => return together("user", "password_file"),
    }
    if let Some(t) = tls {
        let mut material = EtcdTls::default();
        if let Some(ca) = &t.ca {
            material = EtcdTls::with_ca(read("tls.ca", ca)?);
        }
        match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (read("tls.cert", cert)?, read("tls.key", key)?);
                material = material.with_identity(cert, key);
            }
            (None, None) => {}
            _ => return together("tls.cert", "tls.key"),
        }
        if let Some(d) = &t.domain {
            material = material.with_domain(d.clone());
        }
        o = o.with_tls(material);
    }
    Ok(o)
}

/// Without the feature: every etcd table is refused, naming it.
#[cfg(not(feature = "etcd"))]
pub(super) fn options(
    _: &EtcdSourceConfig,
    at: &str,
) -> Result<std::convert::Infallible, ConfigError> {
    Err(no_etcd(at))
}

/// The checks that need no file.
#[cfg(feature = "etcd")]
fn check_etcd(c: &EtcdSourceConfig, at: &str) -> Result<(), ConfigError> {
    let field = |f: &str, why: String| Err(ConfigError::field(format!("{at}.{f}"), why));
    if c.endpoints.is_empty() {
        return field("endpoints", "name at least one etcd member".into());
    }
    for (i, e) in c.endpoints.iter().enumerate() {
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e);
        if rest
            .parse::<http::uri::Authority>()
            .map_or(true, |a| a.port().is_none())
        {
            return field(
                &format!("endpoints[{i}]"),
                format!("{e:?} is not host:port (optionally with http:// or https://)"),
            );
        }
        if e.starts_with("http://") && c.tls.is_some() {
            return field(
                &format!("endpoints[{i}]"),
                format!("{e:?} is http:// but tls is set"),
            );
        }
    }
    if c.prefix.is_empty() {
        return field(
            "prefix",
            "must not be empty (it would take every key in etcd)".into(),
        );
    }
    if c.user.is_some() != c.password_file.is_some() {
        return field("user", "user and password_file go together".into());
    }
    if let Some(t) = &c.tls {
        if t.cert.is_some() != t.key.is_some() {
            return field("tls.cert", "cert and key go together".into());
        }
    }
    for (name, d) in [
        ("timeout", c.timeout),
        ("progress_interval", c.progress_interval),
    ] {
        if let Err(e) = check_duration(name, d, Zero::Refused) {
            return field(e.field, e.reason);
        }
    }
    Ok(())
}

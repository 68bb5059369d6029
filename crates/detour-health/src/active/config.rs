//! The `[upstreams.<name>.health]` table.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderValue, Method};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use detour_core::{check_duration, InvalidConfig, Zero};

/// Which active check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CheckKind {
    /// An HTTP request whose status (and optionally body) must match (the default).
    #[default]
    Http,
    /// A TCP connection that must be accepted.
    Tcp,
}

/// An inclusive range of HTTP statuses a check accepts.
///
/// In configuration: a number (`200`), a range (`"200-399"`) or a class
/// (`"2xx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    start: u16,
    end: u16,
}

impl StatusRange {
    /// Statuses `start..=end`.
    pub const fn new(start: u16, end: u16) -> Self {
        StatusRange { start, end }
    }

    /// Exactly `status`.
    pub const fn single(status: u16) -> Self {
        StatusRange {
            start: status,
            end: status,
        }
    }

    /// The first status of the range.
    pub fn start(self) -> u16 {
        self.start
    }

    /// The last status of the range.
    pub fn end(self) -> u16 {
        self.end
    }

    /// Whether `status` is in the range.
    pub fn contains(self, status: u16) -> bool {
        (self.start..=self.end).contains(&status)
    }

    fn check(self) -> Result<(), String> {
        if !(100..=599).contains(&self.start) || !(100..=599).contains(&self.end) {
            return Err(format!("{self} is not within 100-599"));
        }
        if self.start > self.end {
            return Err(format!("{self} is an empty range"));
        }
        Ok(())
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// A status range that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseStatusRangeError(String);

impl fmt::Display for ParseStatusRangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a status, a range like \"200-399\" or a class like \"2xx\"",
            self.0
        )
    }
}

impl std::error::Error for ParseStatusRangeError {}

impl FromStr for StatusRange {
    type Err = ParseStatusRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseStatusRangeError(s.to_string());
        let t = s.trim();
        let num = |x: &str| x.trim().parse::<u16>().map_err(|_| bad());
        if let Some((a, b)) = t.split_once('-') {
            return Ok(StatusRange::new(num(a)?, num(b)?));
        }
        if let Some(class) = t.strip_suffix("xx").or_else(|| t.strip_suffix("XX")) {
            let c = class.parse::<u16>().map_err(|_| bad())?;
            if !(1..=5).contains(&c) || class.len() != 1 {
                return Err(bad());
            }
            return Ok(StatusRange::new(c * 100, c * 100 + 99));
        }
        Ok(StatusRange::single(num(t)?))
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status (200), a range (\"200-399\") or a class (\"2xx\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusRange, E> {
                u16::try_from(v)
                    .map(StatusRange::single)
                    .map_err(|_| E::custom(format!("{v} is not an HTTP status")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusRange, E> {
                u16::try_from(v)
                    .map(StatusRange::single)
                    .map_err(|_| E::custom(format!("{v} is not an HTTP status")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for StatusRange {
    /// One status as a number, a range as `"200-399"`: forms it is read from.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.start == self.end {
            s.serialize_u16(self.start)
        } else {
            s.collect_str(&format_args!("{}-{}", self.start, self.end))
        }
    }
}

/// Active health checking of an upstream's backends (`[upstreams.<name>.health]`).
///
/// Every field has a documented default; [`validate`](Self::validate) rejects
/// nonsense with the field named.
///
/// ```
/// use std::time::Duration;
/// use detour_health::HealthConfig;
///
/// let config: HealthConfig = toml::from_str(r#"
///     kind = "http"
///     path = "/healthz"
///     expected_statuses = [200, "204-299"]
///     interval = "1s"
///     timeout = "500ms"
/// "#).unwrap();
/// let config = config.validate().unwrap();
/// assert_eq!(config.interval, Duration::from_secs(1));
/// assert_eq!((config.rise, config.fall), (2, 3));
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// What the check does. Default `http`.
    pub kind: CheckKind,
    /// HTTP: the request's path and query. Default `/`.
    pub path: String,
    /// HTTP: the request's method. Default `GET`.
    pub method: String,
    /// HTTP: the `Host` header (the `:authority` over HTTP/2). Default: the
    /// backend's address.
    pub host: Option<String>,
    /// HTTP: statuses that pass. Default `["200-399"]`.
    pub expected_statuses: Vec<StatusRange>,
    /// HTTP: text the body must contain (within its first 64 KiB) to pass.
    /// Default none: the body is not read.
    pub body_contains: Option<String>,
    /// Time between checks of a backend whose state is settled. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time limit of one check, connect included. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passing checks that bring a down backend back. Default 2.
    /// A backend that has never passed needs only one.
    pub rise: u32,
    /// Consecutive failed checks that take an up backend down. Default 3.
    pub fall: u32,
    /// Share of each wait that is random, 0.0–1.0: the wait is
    /// `interval × (1 − jitter × u)` for a uniform `u` in [0, 1), so the
    /// interval stays an upper bound. Default 0.1.
    pub jitter: f64,
    /// Time between checks while a backend is changing state (between its first
    /// contrary result and the threshold). Never slower than `interval`.
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub fast_interval: Duration,
    /// Whether a new backend takes traffic before its first check. Default
    /// false: it waits for its first passing check.
    pub initially_healthy: bool,
    /// Whether a backend coming back up (down → up) also ends its outlier
    /// ejection. Default true.
    pub unejects: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: CheckKind::Http,
            path: "/".into(),
            method: "GET".into(),
            host: None,
            expected_statuses: vec![StatusRange::new(200, 399)],
            body_contains: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: 0.1,
            fast_interval: Duration::from_secs(1),
            initially_healthy: false,
            unejects: true,
        }
    }
}

impl HealthConfig {
    /// A TCP-connect check with the default timings.
    pub fn tcp() -> Self {
        HealthConfig {
            kind: CheckKind::Tcp,
            ..Default::default()
        }
    }

    /// An HTTP `GET path` check with the default timings.
    pub fn http(path: impl Into<String>) -> Self {
        HealthConfig {
            kind: CheckKind::Http,
            path: path.into(),
            ..Default::default()
        }
    }

    /// Check every field.
    ///
    /// # Errors
    /// [`InvalidConfig`] naming the first field whose value makes no sense.
    pub fn validate(self) -> Result<Self, InvalidConfig> {
        let bad = |field, reason: String| Err(InvalidConfig::new(field, reason));
        check_duration("health.interval", self.interval, Zero::Refused)?;
        check_duration("health.timeout", self.timeout, Zero::Refused)?;
        check_duration("health.fast_interval", self.fast_interval, Zero::Refused)?;
        if self.rise == 0 {
            return bad("health.rise", "must be at least 1".into());
        }
        if self.fall == 0 {
            return bad("health.fall", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad(
                "health.jitter",
                format!("must be within 0.0..=1.0, got {}", self.jitter),
            );
        }
        if self.kind == CheckKind::Http {
            self.parsed_method()?;
            self.parsed_path()?;
            if let Some(host) = &self.host {
                if host.is_empty() || HeaderValue::from_str(host).is_err() {
                    return bad("health.host", format!("{host:?} is not a valid Host"));
                }
            }
            if self.expected_statuses.is_empty() {
                return bad(
                    "health.expected_statuses",
                    "must list at least one status".into(),
                );
            }
            for r in &self.expected_statuses {
                r.check()
                    .map_err(|e| InvalidConfig::new("health.expected_statuses", e))?;
            }
            if self.body_contains.as_deref() == Some("") {
                return bad(
                    "health.body_contains",
                    "must not be empty (leave it out to skip the body)".into(),
                );
            }
        }
        Ok(self)
    }

    /// The wait before the next check: `fast` while the backend is changing
    /// state, with jitter drawn from `u` in [0, 1).
    pub(crate) fn wait(&self, changing: bool, u: f64) -> Duration {
        let base = if changing {
            self.fast_interval.min(self.interval)
        } else {
            self.interval
        };
        base.mul_f64(1.0 - self.jitter * u)
    }

    pub(crate) fn parsed_method(&self) -> Result<Method, InvalidConfig> {
        Method::from_bytes(self.method.as_bytes()).map_err(|_| {
            InvalidConfig::new(
                "health.method",
                format!("{:?} is not an HTTP method", self.method),
            )
        })
    }

    pub(crate) fn parsed_path(&self) -> Result<http::Uri, InvalidConfig> {
        let bad = || {
            InvalidConfig::new(
                "health.path",
                format!("{:?} is not a path (it starts with '/')", self.path),
            )
        };
        if !self.path.starts_with('/') {
            return Err(bad());
        }
        let uri: http::Uri = self.path.parse().map_err(|_| bad())?;
        if uri.scheme().is_some() || uri.authority().is_some() {
            return Err(bad());
        }
        Ok(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse_numbers_ranges_and_classes() {
        assert_eq!(
            "200".parse::<StatusRange>().unwrap(),
            StatusRange::single(200)
        );
        assert_eq!(
            " 200 - 399 ".parse::<StatusRange>().unwrap(),
            StatusRange::new(200, 399)
        );
        assert_eq!(
            "2xx".parse::<StatusRange>().unwrap(),
            StatusRange::new(200, 299)
        );
        assert!("6xx".parse::<StatusRange>().is_err());
        assert!("20xx".parse::<StatusRange>().is_err());
        assert!("ok".parse::<StatusRange>().is_err());
        assert!(StatusRange::new(200, 299).contains(204));
        assert!(!StatusRange::new(200, 299).contains(300));
        assert_eq!(StatusRange::new(200, 399).to_string(), "200-399");
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let c = HealthConfig::default().validate().unwrap();
        assert_eq!(c.kind, CheckKind::Http);
        assert_eq!(c.path, "/");
        assert_eq!(c.method, "GET");
        assert_eq!(c.expected_statuses, vec![StatusRange::new(200, 399)]);
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.fast_interval, Duration::from_secs(1));
        assert_eq!((c.rise, c.fall), (2, 3));
        assert!(!c.initially_healthy);
        assert!(c.unejects);
    }

    #[test]
    fn the_wait_is_bounded_by_the_interval_and_fast_while_changing() {
        let mut c = HealthConfig {
            interval: Duration::from_secs(10),
            fast_interval: Duration::from_secs(2),
            jitter: 0.5,
            ..Default::default()
        };
        assert_eq!(c.wait(false, 0.0), Duration::from_secs(10));
        assert_eq!(
            c.wait(false, 0.999_999),
            Duration::from_secs(10).mul_f64(0.5000005)
        );
        assert_eq!(c.wait(true, 0.0), Duration::from_secs(2));
        c.fast_interval = Duration::from_secs(60);
        assert_eq!(c.wait(true, 0.0), Duration::from_secs(10), "never slower");
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: HealthConfig| c.validate().unwrap_err().field;
        let d = HealthConfig::default;
        assert_eq!(field(HealthConfig { rise: 0, ..d() }), "health.rise");
        assert_eq!(field(HealthConfig { fall: 0, ..d() }), "health.fall");
        assert_eq!(
            field(HealthConfig {
                interval: Duration::ZERO,
                ..d()
            }),
            "health.interval"
        );
        assert_eq!(
            field(HealthConfig {
                timeout: Duration::ZERO,
                ..d()
            }),
            "health.timeout"
        );
        assert_eq!(field(HealthConfig { jitter: 1.5, ..d() }), "health.jitter");
        assert_eq!(
            field(HealthConfig {
                path: "healthz".into(),
                ..d()
            }),
            "health.path"
        );
        assert_eq!(
            field(HealthConfig {
                method: "G ET".into(),
                ..d()
            }),
            "health.method"
        );
        assert_eq!(
            field(HealthConfig {
                expected_statuses: vec![StatusRange::new(399, 200)],
                ..d()
            }),
            "health.expected_statuses"
        );
        assert_eq!(
            field(HealthConfig {
                expected_statuses: vec![],
                ..d()
            }),
            "health.expected_statuses"
        );
        assert_eq!(
            field(HealthConfig {
                host: Some("a\nb".into()),
                ..d()
            }),
            "health.host"
        );
        assert_eq!(
            field(HealthConfig {
                body_contains: Some(String::new()),
                ..d()
            }),
            "health.body_contains"
        );
        // HTTP-only fields are not checked for a TCP check.
        let tcp = HealthConfig {
            path: "nonsense".into(),
            ..HealthConfig::tcp()
        };
        assert!(tcp.validate().is_ok());
    }
}

//! Configurations that load but invite an outage: `detour --test` prints a
//! warning for each, naming the fields and why; `--test --strict` fails on
//! any, and the proxy logs them when it starts or reloads.
//!
//! Each rule is one function over the configuration; the list is
//! [`lint`].

use std::fmt;

use detour_core::RetryPolicy;
use detour_health::OutlierConfig;
use detour_server::upstream::UpstreamConfig;

use super::config::Config;

/// One dangerous setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The fields at fault, as the file names them.
    pub fields: Vec<String>,
    /// What can go wrong, and what to set instead.
    pub why: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.fields.join(", "), self.why)
    }
}

/// Methods RFC 9110 §9.2.2 calls idempotent: the only ones safe to send
/// twice.
const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"];

/// Every warning `config` deserves, upstream by upstream, then route by
/// route.
pub fn lint(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    for (name, up) in &config.upstreams {
        let at = format!("upstreams.{name}");
        retry_rules(&mut out, &format!("{at}.retry"), &up.retry, &up.timeouts);
        breaker_faster_than_checks(&mut out, &at, up);
        outlier_rules(&mut out, &at, up);
        hedge_rules(&mut out, &at, up);
        if up.tls.as_ref().is_some_and(|t| !t.verify) {
            out.push(Warning {
                fields: vec![format!("{at}.tls.verify")],
                why: "TLS certificate verification is off: anyone on the path can impersonate \
                      these backends"
                    .into(),
            });
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if let Some(policy) = &route.retry {
            let timeouts = route
                .timeouts
                .as_ref()
                .or_else(|| config.upstreams.get(&route.upstream).map(|u| &u.timeouts));
            if let Some(t) = timeouts {
                retry_rules(&mut out, &format!("{at}.retry"), policy, t);
            }
        }
        unsafe_methods(&mut out, &format!("{at}.safe_methods"), &route.safe_methods);
    }
    out
}

/// Retries with no budget, retries with no time bound, and methods declared
/// safe that are not.
fn retry_rules(
    out: &mut Vec<Warning>,
    at: &str,
    policy: &RetryPolicy,
    timeouts: &detour_core::PeerOptions,
) {
    if policy.max_retries > 0 && policy.budget_ratio == 0.0 && policy.budget_min_per_second == 0 {
        out.push(Warning {
            fields: vec![
                format!("{at}.max_retries"),
                format!("{at}.budget_ratio"),
                format!("{at}.budget_min_per_second"),
            ],
            why: format!(
                "retries with no retry budget: when every backend fails, each request becomes \
                 up to {} attempts and the retries storm the backends; set budget_ratio (e.g. \
                 0.2)",
                policy.max_retries + 1
            ),
        });
    }
    let per_try = policy.per_try_timeout.or(timeouts.per_try_timeout);
    if policy.max_retries > 0 && policy.deadline.is_none() && per_try.is_none() {
        out.push(Warning {
            fields: vec![format!("{at}.deadline"), format!("{at}.per_try_timeout")],
            why: "retries with neither a deadline nor a per-try timeout: one slow backend holds \
                  each attempt for the whole read timeout, so a request can take that many \
                  times over; set deadline or per_try_timeout"
                .into(),
        });
    }
    unsafe_methods(out, &format!("{at}.safe_methods"), &policy.safe_methods);
}

fn unsafe_methods(out: &mut Vec<Warning>, at: &str, methods: &[String]) {
    let unsafe_ones: Vec<&str> = methods
        .iter()
        .map(String::as_str)
        .filter(|m| !IDEMPOTENT.iter().any(|i| i.eq_ignore_ascii_case(m)))
        .collect();
    if !unsafe_ones.is_empty() {
        out.push(Warning {
            fields: vec![at.to_string()],
            why: format!(
                "{} declared safe to repeat, which RFC 9110 does not promise: a retry can \
                 deliver it twice (use idempotency_key instead)",
                unsafe_ones.join(", ")
            ),
        });
    }
}

/// Methods RFC 9110 §9.2.1 calls safe: the only ones sent twice at once
/// without a second thought.
const SAFE: [&str; 4] = ["GET", "HEAD", "OPTIONS", "TRACE"];

/// Hedging that multiplies the load of a slow upstream, that never
/// happens, or that sends a method that is not safe twice at once.
fn hedge_rules(out: &mut Vec<Warning>, at: &str, up: &UpstreamConfig) {
    let Some(h) = &up.hedge else {
        return;
    };
    let ratio = h.budget_ratio;
    if ratio >= 0.5 {
        out.push(Warning {
            fields: vec![format!("{at}.hedge.budget_ratio")],
            why: format!(
                "hedges may be {:.0} % of the requests: a slow upstream gets up to {:.1} times                  its load when it can least take it (0.1 is usual)",
                ratio * 100.0,
                1.0 + ratio
            ),
        });
    } else if ratio == 0.0 {
        out.push(Warning {
            fields: vec![format!("{at}.hedge.budget_ratio")],
            why: "a hedge budget of 0: no request is ever hedged".into(),
        });
    }
    let unsafe_ones: Vec<&str> = h
        .methods
        .iter()
        .map(String::as_str)
        .filter(|m| !SAFE.iter().any(|s| s.eq_ignore_ascii_case(m)))
        .collect();
    if !unsafe_ones.is_empty() {
        out.push(Warning {
            fields: vec![format!("{at}.hedge.methods")],
            why: format!(
                "{} hedged: sent to two backends at once, which only a safe method (GET, HEAD,                  OPTIONS, TRACE) takes without a second thought",
                unsafe_ones.join(", ")
            ),
        });
    }
}

/// A breaker that half-opens before the next health check: its probes
/// reach a backend the checks have not looked at again.
fn breaker_faster_than_checks(out: &mut Vec<Warning>, at: &str, up: &UpstreamConfig) {
    let Some(health) = &up.health else {
        return;
    };
    if up.breaker.enabled && up.breaker.open_for < health.interval {
        out.push(Warning {
            fields: vec![
                format!("{at}.breaker.open_for"),
                format!("{at}.health.interval"),
            ],
            why: format!(
                "the breaker stays open {:?}, shorter than the health-check interval {:?}: it \
                 lets live traffic probe the backend before a check could tell whether it \
                 recovered",
                up.breaker.open_for, health.interval
            ),
        });
    }
}

fn outlier_on(o: &OutlierConfig) -> bool {
    o.consecutive_5xx > 0
        || o.consecutive_gateway_failure > 0
        || o.consecutive_local_origin_failure > 0
        || o.success_rate.enabled
        || o.failure_percentage.enabled
}

/// Ejection that can take every backend out, or the only one.
fn outlier_rules(out: &mut Vec<Warning>, at: &str, up: &UpstreamConfig) {
    if !outlier_on(&up.outlier) {
        return;
    }
    if up.outlier.max_ejection_percent >= 100 {
        out.push(Warning {
            fields: vec![format!("{at}.outlier.max_ejection_percent")],
            why: "outlier detection may eject every backend at once; only panic mode then \
                  stands between the upstream and a total outage (keep it at 50 or below)"
                .into(),
        });
    }
    // With panic mode on, an ejected sole backend still takes traffic (none
    // is available, so health is ignored): the ejection does nothing.
    // Without it, the upstream answers 503 for as long as it lasts.
    if up.discovery.is_none() && up.backends.len() == 1 && up.panic_threshold == 0 {
        out.push(Warning {
            fields: vec![
                format!("{at}.backends"),
                format!("{at}.outlier"),
                format!("{at}.panic_threshold"),
            ],
            why: "outlier detection on a single backend with panic mode off: while it is \
                  ejected there is nowhere to send its traffic, and every request gets a 503"
                .into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(toml: &str) -> Vec<String> {
        let config = Config::from_toml(toml, None).unwrap();
        lint(&config).into_iter().flat_map(|w| w.fields).collect()
    }

    const ROUTE: &str = "[[routes]]\nupstream = \"app\"\n";

    fn upstream(extra: &str) -> String {
        format!(
            "[upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}, {{ addr = \"127.0.0.1:9002\" }}]\n{extra}\n{ROUTE}"
        )
    }

    #[test]
    fn a_bounded_configuration_has_no_warning() {
        assert_eq!(
            fields(&upstream("[upstreams.app.retry]\ndeadline = \"5s\"")),
            Vec::<String>::new()
        );
        let hedged =
            "[upstreams.app.retry]\ndeadline = \"5s\"\n[upstreams.app.hedge]\ndelay = \"30ms\"";
        assert_eq!(fields(&upstream(hedged)), Vec::<String>::new());
    }

    #[test]
    fn the_defaults_warn_only_that_retries_have_no_time_bound() {
        assert_eq!(
            fields(&upstream("")),
            [
                "upstreams.app.retry.deadline",
                "upstreams.app.retry.per_try_timeout"
            ]
        );
        // A per-try timeout on the upstream's timeouts bounds them too.
        assert!(fields(&upstream("timeouts = { per_try_timeout = \"1s\" }")).is_empty());
    }

    #[test]
    fn each_rule_names_its_fields() {
        let bounded = "[upstreams.app.retry]\ndeadline = \"5s\"\n";
        let cases = [
            (
                format!("{bounded}budget_ratio = 0.0\nbudget_min_per_second = 0"),
                "upstreams.app.retry.budget_ratio",
            ),
            (
                format!("{bounded}safe_methods = [\"GET\", \"post\"]"),
                "upstreams.app.retry.safe_methods",
            ),
            (
                format!("{bounded}[upstreams.app.outlier]\nmax_ejection_percent = 100"),
                "upstreams.app.outlier.max_ejection_percent",
            ),
            (
                format!(
                    "{bounded}[upstreams.app.breaker]\nopen_for = \"1s\"\n\
                     [upstreams.app.health]\nkind = \"tcp\"\ninterval = \"5s\""
                ),
                "upstreams.app.breaker.open_for",
            ),
            (
                format!("tls = {{ verify = false }}\n{bounded}"),
                "upstreams.app.tls.verify",
            ),
            (
                format!("{bounded}[upstreams.app.hedge]\nbudget_ratio = 1.0"),
                "upstreams.app.hedge.budget_ratio",
            ),
            (
                format!("{bounded}[upstreams.app.hedge]\nbudget_ratio = 0.0"),
                "upstreams.app.hedge.budget_ratio",
            ),
            (
                format!("{bounded}[upstreams.app.hedge]\nmethods = [\"GET\", \"PUT\"]"),
                "upstreams.app.hedge.methods",
            ),
        ];
        for (extra, field) in cases {
            let got = fields(&upstream(&extra));
            assert!(
                got.iter().any(|f| f == field),
                "{field} in {got:?} for {extra}"
            );
        }
        // A single backend: warned only with panic mode off.
        let single = |extra: &str| {
            format!(
                "[upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n{extra}\n{bounded}{ROUTE}"
            )
        };
        assert!(fields(&single("")).is_empty());
        assert!(
            fields(&single("panic_threshold = 0")).contains(&"upstreams.app.outlier".to_string())
        );
        // A route's own policy is linted under its own name.
        let route = format!(
            "[upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}, {{ addr = \"127.0.0.1:9002\" }}]\n{bounded}\
             [[routes]]\nupstream = \"app\"\nsafe_methods = [\"PATCH\"]\n"
        );
        assert_eq!(fields(&route), ["routes[0].safe_methods"]);
    }
}

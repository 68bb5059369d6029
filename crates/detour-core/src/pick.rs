//! [`Pick`]: why a load balancer chose the backend an attempt went to, as
//! the attempt history shows it.

use std::fmt;

/// How a balancer splits its backends into failover groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Grouping {
    /// One group: every backend takes traffic.
    #[default]
    None,
    /// Priority tiers.
    Priority,
    /// Localities.
    Locality,
}

/// Why a backend was chosen. A balancer fills it in; the engine keeps it in
/// the attempt's history entry ([`Attempt::pick`](crate::plan::Attempt)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pick {
    /// How the backends are grouped.
    pub grouping: Grouping,
    /// The group it came from, by rank: 0 is the most preferred (the first
    /// priority tier, or the local locality).
    pub group: u16,
    /// The request was dealt to another group first, which had nothing to
    /// admit.
    pub spilled: bool,
    /// The algorithm hashes a request key (consistent hashing).
    pub hashed: bool,
    /// Candidates passed over before it: unavailable (health, ejection,
    /// breaker, draining), already tried, or put off by slow start. With
    /// consistent hashing, 0 means the key's owner and more a rehash.
    pub passed: u16,
    /// Of those, the ones this request had already tried.
    pub excluded: u16,
    /// Panic mode: too few backends available, so health, ejections and
    /// breakers were ignored.
    pub panic: bool,
    /// No backend admitted the request, and this one's breaker, half-opened
    /// by an active check that saw it come back, had all its probes in
    /// flight: it was taken past its probe limit rather than refusing the
    /// request (several backends recovering at once).
    pub beyond_probes: bool,
    /// No backend this request had not tried admitted it: one it tried was
    /// taken again.
    pub again: bool,
}

impl Pick {
    /// Whether there is anything to say beyond "the algorithm's first
    /// choice": shown only then.
    pub fn is_plain(&self) -> bool {
        self.grouping == Grouping::None
            && !self.spilled
            && !self.hashed
            && self.passed == 0
            && !self.panic
            && !self.beyond_probes
            && !self.again
    }
}

impl fmt::Display for Pick {
    /// Comma-separated, no spaces: `tier=1,spilled,rehash=2,excluded=1`.
    /// Empty for a plain pick.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        match self.grouping {
            Grouping::None => {}
            Grouping::Priority => parts.push(format!("tier={}", self.group)),
            Grouping::Locality => parts.push(format!("locality={}", self.group)),
        }
        if self.spilled {
            parts.push("spilled".into());
        }
        if self.hashed {
            parts.push(if self.passed == 0 {
                "owner".into()
            } else {
                format!("rehash={}", self.passed)
            });
        } else if self.passed > 0 {
            parts.push(format!("passed={}", self.passed));
        }
        if self.excluded > 0 {
            parts.push(format!("excluded={}", self.excluded));
        }
        if self.panic {
            parts.push("panic".into());
        }
        if self.beyond_probes {
            parts.push("beyond-probes".into());
        }
        if self.again {
            parts.push("again".into());
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pick_reads_as_one_token() {
        assert_eq!(Pick::default().to_string(), "");
        assert!(Pick::default().is_plain());
        let p = Pick {
            grouping: Grouping::Priority,
            group: 1,
            spilled: true,
            hashed: true,
            passed: 2,
            excluded: 1,
            panic: false,
            beyond_probes: false,
            again: false,
        };
        assert_eq!(p.to_string(), "tier=1,spilled,rehash=2,excluded=1");
        let owner = Pick {
            hashed: true,
            ..Pick::default()
        };
        assert_eq!(owner.to_string(), "owner");
        let panic = Pick {
            grouping: Grouping::Locality,
            passed: 3,
            panic: true,
            again: true,
            ..Pick::default()
        };
        assert_eq!(panic.to_string(), "locality=0,passed=3,panic,again");
        let beyond = Pick {
            passed: 2,
            beyond_probes: true,
            ..Pick::default()
        };
        assert!(!beyond.is_plain());
        assert_eq!(beyond.to_string(), "passed=2,beyond-probes");
    }
}

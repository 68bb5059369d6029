//! The algorithm chosen at run time, e.g. from `lb = "maglev"` in a config
//! file. Dispatch is a `match` per pick (no boxing, no virtual call).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::Rng;
use detour_core::Backend;
use serde::{Deserialize, Deserializer};

use super::{
    Ketama, KetamaTable, LeastRequest, LeastRequestTable, Maglev, MaglevTable, PeakEwma,
    PeakEwmaTable, RoundRobin, RoundRobinTable, Selection, WeightedRandom, WeightedRandomTable,
};
use crate::InvalidConfig;

/// One of the built-in algorithms, chosen at run time.
///
/// Parsed from its config name (each variant's parameters take their
/// defaults):
///
/// | name | algorithm |
/// |---|---|
/// | `round_robin` | [`RoundRobin`] (smooth, weighted) |
/// | `random` | [`WeightedRandom`] |
/// | `least_request` | [`LeastRequest`] (power of two choices) |
/// | `peak_ewma` | [`PeakEwma`] (power of two choices) |
/// | `consistent_hash` (or `ketama`) | [`Ketama`] |
/// | `maglev` | [`Maglev`] |
///
/// ```
/// use detour_lb::Algorithm;
/// let a: Algorithm = "maglev".parse().unwrap();
/// assert_eq!(a.name(), "maglev");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// Smooth weighted round robin.
    RoundRobin(RoundRobin),
    /// Weighted random.
    Random(WeightedRandom),
    /// Least request, power of two choices.
    LeastRequest(LeastRequest),
    /// Peak EWMA, power of two choices.
    PeakEwma(PeakEwma),
    /// Ketama consistent hashing.
    ConsistentHash(Ketama),
    /// Maglev consistent hashing.
    Maglev(Maglev),
}

impl Default for Algorithm {
    /// Round robin.
    fn default() -> Self {
        Algorithm::RoundRobin(RoundRobin)
    }
}

impl Algorithm {
    /// The config name (see the table above).
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin(_) => "round_robin",
            Algorithm::Random(_) => "random",
            Algorithm::LeastRequest(_) => "least_request",
            Algorithm::PeakEwma(_) => "peak_ewma",
            Algorithm::ConsistentHash(_) => "consistent_hash",
            Algorithm::Maglev(_) => "maglev",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = InvalidConfig;

    fn from_str(s: &str) -> Result<Self, InvalidConfig> {
        Ok(match s {
            "round_robin" => Algorithm::RoundRobin(RoundRobin),
            "random" => Algorithm::Random(WeightedRandom),
            "least_request" => Algorithm::LeastRequest(LeastRequest),
            "peak_ewma" => Algorithm::PeakEwma(PeakEwma::default()),
            "consistent_hash" | "ketama" => Algorithm::ConsistentHash(Ketama::default()),
            "maglev" => Algorithm::Maglev(Maglev::default()),
            other => {
                return Err(InvalidConfig::new(
                    "lb",
                    format!(
                        "unknown algorithm {other:?} (expected round_robin, random, \
                         least_request, peak_ewma, consistent_hash or maglev)"
                    ),
                ))
            }
        })
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Written as its config name, so a dumped configuration reads back.
impl serde::Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

macro_rules! each_algorithm {
    ($($variant:ident => $table:ident),* $(,)?) => {
        /// The table of whichever algorithm an [`Algorithm`] holds.
        #[derive(Debug)]
        #[non_exhaustive]
        pub enum AlgorithmTable {
            $(
                #[doc = concat!("A [`", stringify!($table), "`].")]
                $variant($table),
            )*
        }

        impl Selection for Algorithm {
            type Table = AlgorithmTable;

            fn build(&self, backends: &[Arc<Backend>], rng: &mut Rng) -> AlgorithmTable {
                match self {
                    $(Algorithm::$variant(a) => AlgorithmTable::$variant(a.build(backends, rng)),)*
                }
            }

            #[inline]
            fn walk<'a, R>(
                &self,
                table: &AlgorithmTable,
                backends: &'a [Arc<Backend>],
                key: u64,
                rng: &mut Rng,
                visit: impl FnMut(&'a Arc<Backend>) -> Option<R>,
            ) -> Option<R> {
                match (self, table) {
                    $((Algorithm::$variant(a), AlgorithmTable::$variant(t)) => {
                        a.walk(t, backends, key, rng, visit)
                    })*
                    // The load balancer builds its tables with its own,
                    // immutable algorithm: the variants always agree.
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }

            fn hashes_key(&self) -> bool {
                match self {
                    $(Algorithm::$variant(a) => a.hashes_key(),)*
                }
            }

            fn validate(&self) -> Result<(), InvalidConfig> {
                match self {
                    $(Algorithm::$variant(a) => a.validate(),)*
                }
            }
        }
    };
}

each_algorithm! {
    RoundRobin => RoundRobinTable,
    Random => WeightedRandomTable,
    LeastRequest => LeastRequestTable,
    PeakEwma => PeakEwmaTable,
    ConsistentHash => KetamaTable,
    Maglev => MaglevTable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for name in [
            "round_robin",
            "random",
            "least_request",
            "peak_ewma",
            "consistent_hash",
            "maglev",
        ] {
            assert_eq!(name.parse::<Algorithm>().unwrap().name(), name);
        }
        let err = "fastest".parse::<Algorithm>().unwrap_err();
        assert_eq!(err.field, "lb");
    }
}

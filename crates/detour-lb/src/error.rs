//! The crate's errors: bad configuration (rejected at load, with the field
//! named) and failed discovery (the last good set stays in force).

use std::error::Error as StdError;
use std::fmt;

/// What kind of discovery failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryErrorKind {
    /// A DNS lookup failed (no such name, no answer, server unreachable).
    Resolve,
    /// A lookup answered with no usable address.
    Empty,
    /// Reading a file failed.
    Io,
    /// A file or answer could not be parsed.
    Parse,
    /// A remote source (etcd, an API server) could not be reached or
    /// answered an error.
    Unavailable,
    /// An answer would have emptied the upstream, which does not allow it.
    WouldEmpty,
    /// Anything else (custom discovery sources).
    Other,
}

/// A discovery round failed. The load balancer keeps its last good set.
#[derive(Debug)]
pub struct DiscoveryError {
    kind: DiscoveryErrorKind,
    context: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl DiscoveryError {
    /// A failure of `kind`, described by `context` (what was being discovered).
    pub fn new(kind: DiscoveryErrorKind, context: impl Into<String>) -> Self {
        DiscoveryError {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of failure, to match on.
    pub fn kind(&self) -> DiscoveryErrorKind {
        self.kind
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            DiscoveryErrorKind::Resolve => "resolution failed",
            DiscoveryErrorKind::Empty => "no usable address",
            DiscoveryErrorKind::Io => "read failed",
            DiscoveryErrorKind::Parse => "parse failed",
            DiscoveryErrorKind::Unavailable => "source unavailable",
            DiscoveryErrorKind::WouldEmpty => "answer would empty the upstream; kept the last set",
            DiscoveryErrorKind::Other => "discovery failed",
        };
        write!(f, "{}: {what}", self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for DiscoveryError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

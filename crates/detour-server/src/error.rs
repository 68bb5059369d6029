//! [`ConfigError`]: the one error type for configuration rejected at load,
//! naming the file and the field at fault.
//!
//! A module of its own so that everything that checks configuration
//! ([`config`](crate::config), [`tls`](crate::tls), the upstreams) can use it
//! without depending on each other.

use std::fmt;
use std::path::{Path, PathBuf};

use detour_core::InvalidConfig;

/// A configuration error: which file, which field, and why.
#[derive(Debug)]
pub struct ConfigError {
    /// The file at fault, when the config came from one.
    pub file: Option<PathBuf>,
    /// The field at fault (dotted path), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// An error about the file `file` itself (it cannot be read, say).
    pub fn of_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: Some(file.to_path_buf()),
            field: None,
            message: message.into(),
        }
    }

    /// Attach the file name.
    pub fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl From<InvalidConfig> for ConfigError {
    /// The field as the [`InvalidConfig`] names it: give it the full dotted
    /// path (`server.grace_period`) for this to read well.
    fn from(e: InvalidConfig) -> Self {
        ConfigError::field(e.field, e.reason)
    }
}

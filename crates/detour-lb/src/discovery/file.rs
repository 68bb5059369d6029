//! Backends listed in a TOML file, re-read each round.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use detour_core::Backend;
use serde::Deserialize;

use super::{BackendSpec, ServiceDiscovery};
use crate::{DiscoveryError, DiscoveryErrorKind};

/// Backends listed in a TOML file, re-read on every round of
/// [`run_discovery`](super::run_discovery) (polling: it works the same on
/// every file system, including the ones that do not report changes).
///
/// ```toml
/// [[backends]]
/// addr = "10.0.0.1:8080"
///
/// [[backends]]
/// addr = "10.0.0.2:8080"
/// weight = 2
/// priority = 1
/// locality = "eu-west"
/// ```
///
/// A file that cannot be read or parsed, or lists an address twice, fails
/// the round with the reason (TOML errors name the line): the set stays as
/// it was. A file with no backends is a valid, empty set.
#[derive(Debug, Clone)]
pub struct FileDiscovery {
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendFile {
    #[serde(default)]
    backends: Vec<BackendSpec>,
}

impl FileDiscovery {
    /// Watch `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileDiscovery { path: path.into() }
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parse a backend file's contents (what each round does after reading).
    ///
    /// # Errors
    /// [`DiscoveryErrorKind::Parse`] with the TOML error or the duplicated
    /// address.
    pub fn parse(&self, text: &str) -> Result<Vec<BackendSpec>, DiscoveryError> {
        let context = || format!("backend file {}", self.path.display());
        let file: BackendFile = toml::from_str(text).map_err(|e| {
            DiscoveryError::new(DiscoveryErrorKind::Parse, context()).with_source(e)
        })?;
        let mut seen = BTreeSet::new();
        for b in &file.backends {
            if !seen.insert(b.addr) {
                return Err(DiscoveryError::new(DiscoveryErrorKind::Parse, context())
                    .with_source(format!("address {} is listed twice", b.addr)));
            }
        }
        Ok(file.backends)
    }
}

impl ServiceDiscovery for FileDiscovery {
    async fn discover(&self) -> Result<Vec<Backend>, DiscoveryError> {
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            DiscoveryError::new(
                DiscoveryErrorKind::Io,
                format!("backend file {}", self.path.display()),
            )
            .with_source(e)
        })?;
        Ok(self
            .parse(&text)?
            .iter()
            .map(BackendSpec::to_backend)
            .collect())
    }
}

//! TLS on both sides, with rustls (ring provider).
//!
//! Downstream: a listener's certificates come from PEM files; with several,
//! the one whose names match the client's SNI is served (the first when none
//! match or no name was sent). The `rustls::ServerConfig` sits behind an
//! `ArcSwap`, so a reload (`ServerHandle::reload_tls`) swaps certificates for new
//! connections without a restart while the ones already open carry on.
//!
//! Upstream: [`TlsClient`] is one client configuration per upstream (roots,
//! ALPN, verification), built once at load and shared by every peer of the
//! upstream; the server name sent (SNI) travels with the peer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// ALPN name of HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// ALPN name of HTTP/1.1.
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The crypto provider every TLS configuration here uses (ring), chosen
/// explicitly so no process-wide default is needed.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertKeyFiles {
    /// The certificate chain (end-entity first), PEM.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key: PathBuf,
}

/// A listener's certificates: `tls = { cert = "…", key = "…" }`, or a list
/// of such pairs served by SNI (each matched by its certificate's own names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// The pairs, in order; the first is the default.
    pub certs: Vec<CertKeyFiles>,
}

impl<'de> Deserialize<'de> for ListenerTls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(CertKeyFiles),
            Many(Vec<CertKeyFiles>),
        }
        let certs = match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected { cert = \"…\", key = \"…\" } or a list of such tables",
            )
        })? {
            OneOrMany::One(c) => vec![c],
            OneOrMany::Many(v) => v,
        };
        Ok(ListenerTls { certs })
    }
}

impl Serialize for ListenerTls {
    /// Always the list form (one pair is a list of one).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.certs.serialize(s)
    }
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::field(field, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::field(
            field,
            format!("{}: no PEM certificate found", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path, field: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| ConfigError::field(field, format!("{}: {e}", path.display())))
}

/// Load one certificate/key pair (`at` is the dotted field of the pair).
fn load_pair(files: &CertKeyFiles, at: &str) -> Result<Arc<CertifiedKey>, ConfigError> {
    let certs = read_certs(&files.cert, &format!("{at}.cert"))?;
    let key = read_key(&files.key, &format!("{at}.key"))?;
    let ck = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        ConfigError::field(
            format!("{at}.key"),
            format!(
                "{} does not fit {}: {e}",
                files.key.display(),
                files.cert.display()
            ),
        )
    })?;
    Ok(Arc::new(ck))
}

/// Picks the certificate whose names match the client's SNI.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn matches(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
        let Some(der) = key.cert.first() else {
            return false;
        };
        webpki::EndEntityCert::try_from(der)
            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.keys.len() > 1 {
            if let Some(name) = hello
                .server_name()
                .and_then(|n| ServerName::try_from(n).ok())
            {
                if let Some(k) = self.keys.iter().find(|k| Self::matches(k, &name)) {
                    return Some(Arc::clone(k));
                }
            }
        }
        self.keys.first().cloned()
    }
}

/// A TLS listener's server configuration, swappable at run time.
pub struct ServerTls {
    config: ArcSwap<rustls::ServerConfig>,
    alpn: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Load `tls` (fields named under `at`) offering `alpn` in order.
    ///
    /// # Errors
    /// A missing or unreadable file, a file without PEM, a key that does
    /// not fit its certificate: the field is named.
    pub(crate) fn load(
        tls: &ListenerTls,
        at: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Self, ConfigError> {
        let config = Self::build(tls, at, &alpn)?;
        Ok(ServerTls {
            config: ArcSwap::from_pointee(config),
            alpn,
        })
    }

    fn build(
        tls: &ListenerTls,
        at: &str,
        alpn: &[Vec<u8>],
    ) -> Result<rustls::ServerConfig, ConfigError> {
        if tls.certs.is_empty() {
            return Err(ConfigError::field(at, "at least one certificate is needed"));
        }
        let keys = tls
            .certs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let at = if tls.certs.len() == 1 {
                    at.to_string()
                } else {
                    format!("{at}[{i}]")
                };
                load_pair(c, &at)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::field(at, e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { keys }));
        config.alpn_protocols = alpn.to_vec();
        Ok(config)
    }

    /// Read the certificate files for a reload (with this listener's ALPN);
    /// [`install`](Self::install) swaps the result in.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub(crate) fn prepare(
        &self,
        tls: &ListenerTls,
        at: &str,
    ) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
        Self::build(tls, at, &self.alpn).map(Arc::new)
    }

    /// New connections get `config` from now on; open ones keep theirs.
    pub(crate) fn install(&self, config: Arc<rustls::ServerConfig>) {
        self.config.store(config);
    }

    /// The acceptor for the next connection.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}

/// `[upstreams.NAME.tls]`: TLS to the backends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamTlsConfig {
    /// The server name sent (SNI) and verified. Default: the backend's host
    /// name when it has one, else its IP address.
    pub sni: Option<String>,
    /// Verify the backend's certificate. Default true; `false` accepts any
    /// certificate (a warning is logged at load: for tests and labs only).
    pub verify: bool,
    /// A PEM file of CA certificates to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        UpstreamTlsConfig {
            sni: None,
            verify: true,
            ca: None,
        }
    }
}

/// The system's trust roots, read once per process.
fn native_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "reading a system trust root failed");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system trust roots loaded");
        Arc::new(roots)
    }))
}

/// Accepts any certificate: `verify = false`. The handshake's signatures are
/// still checked, so the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One upstream's TLS client configuration, built once at load and shared
/// by all its peers (connections reuse its session cache).
#[derive(Clone)]
pub struct TlsClient {
    pub(crate) config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// The TLS a peer carries: this configuration and `server_name` (SNI).
    pub fn peer_tls(&self, server_name: Arc<str>) -> detour_core::PeerTls {
        detour_core::PeerTls {
            server_name,
            client: Arc::clone(&self.config) as Arc<dyn std::any::Any + Send + Sync>,
        }
    }

    /// Build from `tls` (fields named under `at`); ALPN offers `h2` first when
    /// `http2`, and `http/1.1` always.
    ///
    /// # Errors
    /// An unreadable or empty CA file, with the field named.
    pub fn new(tls: &UpstreamTlsConfig, http2: bool, at: &str) -> Result<Self, ConfigError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::field(at, e.to_string()))?;
        let mut config = if !tls.verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth()
        } else if let Some(ca) = &tls.ca {
            let field = format!("{at}.ca");
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, &field)? {
                roots
                    .add(cert)
                    .map_err(|e| ConfigError::field(&field, format!("{}: {e}", ca.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .with_root_certificates(native_roots())
                .with_no_client_auth()
        };
        config.alpn_protocols = if http2 {
            vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
        } else {
            vec![ALPN_HTTP11.to_vec()]
        };
        Ok(TlsClient {
            config: Arc::new(config),
        })
    }
}
/// Check an upstream `sni` value, naming `at` when it is no server name.
pub(crate) fn check_sni(sni: &str, at: &str) -> Result<(), ConfigError> {
    ServerName::try_from(sni)
        .map(|_| ())
        .map_err(|_| ConfigError::field(at, format!("{sni:?} is not a DNS name or IP address")))
}

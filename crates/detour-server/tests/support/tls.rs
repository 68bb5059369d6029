//! TLS and HTTP/2 helpers for the tests: certificates made with rcgen, and
//! hyper clients (HTTP/1.1 and HTTP/2) over TLS or cleartext.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A self-signed certificate for `names`, written as PEM files in a fresh
/// directory.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "detour-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestCert {
    pub fn new(names: &[&str]) -> Self {
        Self::in_dir(&temp_dir(), names)
    }

    pub fn in_dir(dir: &Path, names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let ck = rcgen::generate_simple_self_signed(names.clone()).unwrap();
        let cert = dir.join(format!("{}.pem", names[0]));
        let key = dir.join(format!("{}.key", names[0]));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        TestCert {
            cert,
            key,
            der: ck.cert.der().clone(),
        }
    }
}

/// A server config for `cert`, offering `alpn`.
pub fn server_tls(cert: &TestCert, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let certs = vec![cert.der.clone()];
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).unwrap()
    };
    let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting `roots`, offering `alpn`.
pub fn client_config(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    c
}

/// Connect with TLS to `addr`, sending `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

async fn read_answer(resp: http::Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// An HTTP/2 client on one connection.
#[derive(Clone)]
pub struct H2Client {
    tx: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    authority: String,
    scheme: &'static str,
}

impl H2Client {
    pub async fn handshake<I>(
        io: I,
        authority: &str,
        scheme: &'static str,
    ) -> (Self, tokio::task::JoinHandle<()>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (
            H2Client {
                tx,
                authority: authority.to_string(),
                scheme,
            },
            task,
        )
    }

    /// Cleartext HTTP/2 by prior knowledge.
    pub async fn h2c(addr: SocketAddr) -> (Self, tokio::task::JoinHandle<()>) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Self::handshake(tcp, "test", "http").await
    }

    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        http::Request::builder()
            .method(method)
            .uri(format!("{}://{}{}", self.scheme, self.authority, path))
    }

    pub async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
        self.tx.ready().await?;
        let resp = self.tx.send_request(req).await?;
        Ok(read_answer(resp).await)
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer, hyper::Error> {
        let req = self
            .request("GET", path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(req).await
    }
}

/// One HTTP/1.1 request on `io`.
pub async fn h1_get<I>(io: I, host: &str, path: &str) -> Answer
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    read_answer(resp).await
}

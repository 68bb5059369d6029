//! TLS and HTTP/2 in the `detour` binary's configuration: listeners with
//! certificates and protocols, upstreams with `tls` and `http2`, every bad
//! value refused at load with its field named, and certificates reloaded on
//! SIGHUP without a restart.
#![allow(clippy::unwrap_used)]

mod support;

use support::signal;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use detour_cli::app::Config;
use detour_testkit::{Behavior, Upstream};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("detour-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate for `localhost`, written to `dir`.
fn cert(dir: &Path) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("site.pem"), dir.join("site.key"));
    std::fs::write(&c, ck.cert.pem()).unwrap();
    std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
    (c, k, ck.cert.der().clone())
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[track_caller]
fn refused(text: &str, field: &str) {
    match Config::from_toml(text, None) {
        Ok(_) => panic!("accepted a bad configuration (expected an error about {field}):\n{text}"),
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.contains(field),
                "the error should name {field:?}, got: {shown}"
            );
        }
    }
}

const ROUTE: &str =
    "[upstreams.app]\nbackends = [{ addr = \"127.0.0.1:9001\" }]\n[[routes]]\nupstream = \"app\"\n";

#[test]
fn tls_and_http2_settings_load_and_bad_ones_are_refused_by_field() {
    let dir = temp_dir("cfg");
    let (c, k, _) = cert(&dir);
    let good = format!(
        "[server]\n[[server.listeners]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = {}, key = {} }}\nprotocols = [\"h2\", \"http/1.1\"]\n\
         [[server.listeners]]\naddr = \"127.0.0.1:0\"\nprotocols = [\"h2\"]\n\
         [server.http2]\nmax_concurrent_streams = 64\n\
         [upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\nhttp2 = true\ntls = {{ sni = \"api.internal\", ca = {} }}\n\
         [[routes]]\nupstream = \"app\"\n",
        toml_path(&c),
        toml_path(&k),
        toml_path(&c),
    );
    let cfg = Config::from_toml(&good, None).unwrap();
    assert_eq!(cfg.server.listeners.len(), 2);
    assert!(
        cfg.server.listen.is_empty(),
        "no default listener next to listeners"
    );
    assert!(cfg.upstreams["app"].http2);

    // The list form, for SNI.
    let list = format!(
        "[server]\n[[server.listeners]]\naddr = \"127.0.0.1:0\"\ntls = [{{ cert = {c}, key = {k} }}, {{ cert = {c}, key = {k} }}]\n{ROUTE}",
        c = toml_path(&c),
        k = toml_path(&k)
    );
    Config::from_toml(&list, None).unwrap();

    let listener = |tls: &str, extra: &str| {
        format!("[server]\n[[server.listeners]]\naddr = \"127.0.0.1:0\"\n{tls}\n{extra}\n{ROUTE}")
    };
    // A missing file.
    refused(
        &listener(
            &format!(
                "tls = {{ cert = \"/nonexistent/x.pem\", key = {} }}",
                toml_path(&k)
            ),
            "",
        ),
        "server.listeners[0].tls.cert",
    );
    // Not PEM.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    refused(
        &listener(
            &format!(
                "tls = {{ cert = {}, key = {} }}",
                toml_path(&junk),
                toml_path(&k)
            ),
            "",
        ),
        "server.listeners[0].tls.cert",
    );
    refused(
        &listener(
            &format!(
                "tls = {{ cert = {}, key = {} }}",
                toml_path(&c),
                toml_path(&junk)
            ),
            "",
        ),
        "server.listeners[0].tls.key",
    );
    // A key that is not the certificate's.
    let other = temp_dir("other");
    let (_, other_key, _) = cert(&other);
    refused(
        &listener(
            &format!(
                "tls = {{ cert = {}, key = {} }}",
                toml_path(&c),
                toml_path(&other_key)
            ),
            "",
        ),
        "server.listeners[0].tls.key",
    );
    // An unknown protocol.
    refused(
        &listener("", "protocols = [\"h3\"]"),
        "server.listeners.protocols",
    );
    refused(
        &listener("", "protocols = [\"h2\", \"h2\"]"),
        "server.listeners[0].protocols",
    );
    refused(
        "[server.http2]\nmax_concurrent_streams = 0\n",
        "server.http2.max_concurrent_streams",
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn upstream_tls_http2_and_check_settings_are_refused_by_field() {
    let dir = temp_dir("upcfg");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let up = |tls: &str| {
        format!("[upstreams.app]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n{tls}\n[[routes]]\nupstream = \"app\"\n")
    };
    refused(
        &up("tls = { ca = \"/nonexistent/ca.pem\" }"),
        "upstreams.app.tls.ca",
    );
    refused(
        &up(&format!("tls = {{ ca = {} }}", toml_path(&junk))),
        "upstreams.app.tls.ca",
    );
    refused(
        &up("tls = { sni = \"not a name!\" }"),
        "upstreams.app.tls.sni",
    );
    refused(&up("tls = { verify = \"no\" }"), "upstreams.app.tls");
    refused(&up("http2 = \"yes\""), "upstreams.app.http2");
    // Active HTTP checks dial like the traffic (TLS, HTTP/2): they load next
    // to tls or http2, and over HTTP/2 their Host must be an authority.
    for extra in [
        "http2 = true\n[upstreams.app.health]\nkind = \"http\"",
        "tls = { verify = false }\n[upstreams.app.health]\nkind = \"http\"",
        "http2 = true\ntls = { verify = false }\n[upstreams.app.health]\nkind = \"http\"\nhost = \"app.internal:8443\"",
        "http2 = true\n[upstreams.app.health]\nkind = \"tcp\"",
    ] {
        Config::from_toml(&up(extra), None).unwrap();
    }
    refused(
        &up("http2 = true\n[upstreams.app.health]\nkind = \"http\"\nhost = \"a b\""),
        "upstreams.app.health.host",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn h2_get(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
) -> (CertificateDer<'static>, u16) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    (served, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_h2_over_tls_and_reloads_certificates_on_sighup() {
    let backend = Upstream::start(Behavior::ok()).await.unwrap();
    let dir = temp_dir("bin");
    let (c, k, first) = cert(&dir);
    let file = dir.join("detour.toml");
    let text = format!(
        "[server]\ngrace_period = \"1s\"\n[[server.listeners]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = {}, key = {} }}\n\
         [admin]\nenabled = false\n[log]\naccess_log = false\n\
         [upstreams.app]\nbackends = [{{ addr = \"{}\" }}]\n[[routes]]\nupstream = \"app\"\n",
        toml_path(&c),
        toml_path(&k),
        backend.addr()
    );
    std::fs::write(&file, text).unwrap();
    let mut d = support::start(&file);
    let (pid, addr) = (d.pid, d.addr);
    let (served, status) = h2_get(addr, &first).await;
    assert_eq!((served, status), (first.clone(), 200));

    // New certificate files at the same paths, then SIGHUP.
    let (_, _, second) = cert(&dir);
    signal(pid, "-HUP");
    let mut swapped = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(second.clone()).unwrap();
        let ok = tokio::time::timeout(Duration::from_secs(2), async {
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect("localhost".try_into().ok()?, tcp)
                .await
                .ok()
        })
        .await
        .ok()
        .flatten();
        if ok.is_some() {
            swapped = true;
            break;
        }
    }
    assert!(swapped, "SIGHUP swapped the certificate");
    let (served, status) = h2_get(addr, &second).await;
    assert_eq!((served, status), (second, 200));

    signal(pid, "-TERM");
    let status = tokio::task::spawn_blocking(move || d.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

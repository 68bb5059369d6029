//! Prometheus metrics for a program built on Detour: [`serve`] installs the
//! recorder and answers `GET /metrics` on an address of its own, in one call.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let metrics = detour_proxy::metrics::serve("127.0.0.1:9100".parse().unwrap())?;
//! println!("metrics on http://{}/metrics", metrics.addr());
//! // ... build the upstreams and the proxy, then `Server::start` or `run_forever`.
//! # Ok(())
//! # }
//! ```
//!
//! Install the recorder before the server starts; whether the upstreams are
//! built before or after does not matter (their handles are made when the
//! server starts them, or at their first request). To serve the text from a
//! listener of your own, [`install`] and render the handle it returns.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    formatting, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio::sync::watch;

use crate::server::telemetry::{BackendSeries, Histograms};

pub use crate::server::telemetry::LATENCY_BUCKETS;

/// The installed recorder's page: the Prometheus exporter's series, and the
/// ones Detour keeps itself: per backend
/// ([`BackendSeries`](crate::server::telemetry::BackendSeries)), so that a
/// backend that leaves takes its series with it after a while, and the
/// histograms ([`Histograms`](crate::server::telemetry::Histograms)).
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    prom: PrometheusHandle,
}

impl MetricsHandle {
    /// The page `/metrics` serves, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut page = self.prom.render();
        page.push_str(&Histograms::global().render());
        page.push_str(&BackendSeries::global().render(tokio::time::Instant::now()));
        page
    }
}

/// Installing the recorder failed.
#[derive(Debug)]
pub struct InstallError(String);

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InstallError {}

/// The recorder installed: series with a `backend` label go to
/// [`BackendSeries`], histograms to [`Histograms`], everything else to the
/// Prometheus exporter.
struct Layer {
    prom: PrometheusRecorder,
    backends: &'static BackendSeries,
    histograms: &'static Histograms,
}

impl Recorder for Layer {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        self.prom.describe_counter(key, unit, text);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        self.prom.describe_gauge(key, unit, text);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, text: SharedString) {
        let name = formatting::sanitize_metric_name(key.as_str());
        self.histograms
            .describe(&name, &formatting::sanitize_description(&text));
    }

    fn register_counter(&self, key: &Key, meta: &Metadata<'_>) -> Counter {
        if BackendSeries::owns(key) {
            self.backends.counter(key)
        } else {
            self.prom.register_counter(key, meta)
        }
    }

    fn register_gauge(&self, key: &Key, meta: &Metadata<'_>) -> Gauge {
        if BackendSeries::owns(key) {
            self.backends.gauge(key)
        } else {
            self.prom.register_gauge(key, meta)
        }
    }

    fn register_histogram(&self, key: &Key, _meta: &Metadata<'_>) -> Histogram {
        self.histograms.histogram(&sanitized(key))
    }
}

/// `key` with its name and label keys as the text format allows them (as
/// the exporter writes its own series: `my.latency` becomes `my_latency`);
/// label values are escaped when the page is written.
fn sanitized(key: &Key) -> Key {
    let labels: Vec<Label> = key
        .labels()
        .map(|l| {
            Label::new(
                formatting::sanitize_label_key(l.key()),
                l.value().to_string(),
            )
        })
        .collect();
    Key::from_parts(formatting::sanitize_metric_name(key.name()), labels)
}

/// Install the Prometheus recorder as the process's metrics recorder.
/// Histograms are kept in the fixed buckets of [`LATENCY_BUCKETS`] (a sample
/// is counted as it is recorded: nothing is held until a scrape).
/// `handle.render()` is the text to serve.
///
/// # Errors
/// A recorder is installed already.
pub fn install() -> Result<MetricsHandle, InstallError> {
    let prom = PrometheusBuilder::new().build_recorder();
    let handle = MetricsHandle {
        prom: prom.handle(),
    };
    let layer = Layer {
        prom,
        backends: BackendSeries::global(),
        histograms: Histograms::global(),
    };
    metrics::set_global_recorder(layer)
        .map_err(|_| InstallError("a metrics recorder is installed already".into()))?;
    // `# HELP` for every family the crates emit.
    crate::server::telemetry::describe();
    Ok(handle)
}

/// `GET /metrics` served on its own address; dropping it stops the listener
/// (the recorder stays installed).
#[derive(Debug)]
pub struct MetricsEndpoint {
    addr: SocketAddr,
    handle: MetricsHandle,
    stop: watch::Sender<bool>,
}

impl MetricsEndpoint {
    /// Where `/metrics` is served (the port resolved when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The recorder's handle (`render()` is the page `/metrics` serves).
    pub fn handle(&self) -> &MetricsHandle {
        &self.handle
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Install the Prometheus recorder ([`install`]) and serve `GET /metrics`
/// (Prometheus text; `HEAD` too, anything else 404) on `listen`, from a
/// thread of its own.
///
/// # Errors
/// `listen` cannot be bound (the error names it), a recorder is installed
/// already, or the thread cannot start.
pub fn serve(listen: SocketAddr) -> std::io::Result<MetricsEndpoint> {
    let listener = std::net::TcpListener::bind(listen).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot serve metrics on {listen}: {e}"))
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = install().map_err(std::io::Error::other)?;
    let (stop, stopped) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let page = handle.clone();
    std::thread::Builder::new()
        .name("detour-metrics-http".into())
        .spawn(move || rt.block_on(accept(listener, page, stopped)))?;
    Ok(MetricsEndpoint { addr, handle, stop })
}

/// Serve every connection on `listener` until `stopped` turns true.
async fn accept(
    listener: std::net::TcpListener,
    page: MetricsHandle,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "metrics listener failed"),
    };
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
            _ = stopped.wait_for(|s| *s) => return,
        };
        let page = page.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(answer(&req, &page)))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn answer<B>(req: &Request<B>, page: &MetricsHandle) -> Response<Full<Bytes>> {
    let found = req.uri().path() == "/metrics"
        && (req.method() == Method::GET || req.method() == Method::HEAD);
    let (status, content_type, body) = if found {
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            page.render(),
        )
    } else {
        (StatusCode::NOT_FOUND, "text/plain", "not found\n".into())
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

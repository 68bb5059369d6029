//! The floor under any proxy built on hyper: a hyper HTTP/1.1 server whose
//! one service forwards each request, untouched, through a pooled hyper
//! HTTP/1.1 client connection, on one current-thread runtime. No routing, no
//! header rewriting, no retries, timeouts, health checks, breakers or
//! metrics.
//!
//! `cargo xtask bench` measures it beside Detour, nginx and HAProxy, so the
//! table shows how much of Detour's CPU and memory per request is the
//! framing libraries' and how much is the engine's.
//!
//! ```sh
//! cargo run --release -p detour-server --example hyper_floor -- 127.0.0.1:8080 127.0.0.1:9000
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Idle (or busy, not yet ready) client connections to the one backend.
type Pool = Rc<RefCell<VecDeque<SendRequest<Incoming>>>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: hyper_floor LISTEN_ADDR UPSTREAM_ADDR".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: SocketAddr = upstream.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        println!("listening on {}", listener.local_addr()?);
        let pool = Pool::default();
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let service = service_fn(move |req| forward(pool.clone(), upstream, req));
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    eprintln!("client connection: {e}");
                }
            });
        }
    })
}

/// Send `req` on a ready pooled connection, or a new one, and hand the
/// connection back to the pool once the response head is in: it becomes
/// ready again when its response body has been read.
async fn forward(
    pool: Pool,
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let mut sender = match take_ready(&pool) {
        Some(s) => s,
        None => {
            let stream = TcpStream::connect(upstream).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.await {
                    eprintln!("upstream connection: {e}");
                }
            });
            sender
        }
    };
    let response = sender.send_request(req).await?;
    pool.borrow_mut().push_back(sender);
    Ok(response)
}

/// A ready connection from the pool: busy ones are rotated to the back,
/// closed ones dropped, and at most one pass is made.
fn take_ready(pool: &Pool) -> Option<SendRequest<Incoming>> {
    let mut pool = pool.borrow_mut();
    for _ in 0..pool.len() {
        let sender = pool.pop_front()?;
        if sender.is_ready() {
            return Some(sender);
        }
        if !sender.is_closed() {
            pool.push_back(sender);
        }
    }
    None
}

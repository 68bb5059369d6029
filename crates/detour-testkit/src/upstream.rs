//! The handle to a running fake backend: its listening socket, its connection tasks and
//! what it has seen.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};

use crate::behavior::{Behavior, Installed};
use crate::connection;
use crate::journal::{Journal, Recorded};
use crate::lock;

/// A fake HTTP/1.1 backend listening on a loopback port, acting out a [`Behavior`].
///
/// Dropping the handle stops everything: the listener closes and every connection task is
/// aborted (their sockets close normally; use [`kill`](Self::kill) for resets).
///
/// ```
/// use detour_testkit::{Behavior, Upstream};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let upstream = Upstream::start(Behavior::ok()).await?;
/// let addr = upstream.addr();
///
/// upstream.kill().await; // connecting to `addr` is now refused
/// upstream.restart().await?; // and accepted again
/// assert_eq!(upstream.addr(), addr);
/// # Ok(())
/// # }
/// ```
pub struct Upstream {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// State shared by the handle, the accept task and the connection tasks.
pub(crate) struct Shared {
    pub(crate) addr: SocketAddr,
    pub(crate) journal: Journal,
    behavior: Mutex<Arc<Installed>>,
    /// Bumped by `kill`: every connection open at that moment resets itself.
    kill: watch::Sender<u64>,
    lifecycle: Mutex<Lifecycle>,
    /// Wakes the accept task when the listener is replaced.
    listener_changed: Notify,
    /// The runtime that owns the sockets, for listening again from synchronous code.
    runtime: Handle,
}

/// Whether the upstream listens, and the connections it serves. One lock covers both, so a
/// connection is either accepted and tracked before `kill` looks, or not accepted at all.
struct Lifecycle {
    listener: Option<TcpListener>,
    /// Set by `kill`, cleared by `restart`: while set, nothing listens again.
    killed: bool,
    connections: JoinSet<()>,
}

impl Upstream {
    /// Starts an upstream on `127.0.0.1` with an ephemeral port.
    ///
    /// With [`Behavior::refuse`], the port is bound to reserve an address and closed at once,
    /// so connecting to [`addr`](Self::addr) is refused.
    ///
    /// # Errors
    /// If the socket cannot be bound.
    ///
    /// # Panics
    /// If called outside a Tokio runtime.
    pub async fn start(behavior: Behavior) -> io::Result<Upstream> {
        Upstream::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), behavior).await
    }

    /// Starts an upstream on a given address, such as the address of an upstream that was
    /// dropped, to bring a backend back where a proxy expects it. The socket is bound with
    /// `SO_REUSEADDR`, so connections of the earlier upstream lingering in `TIME_WAIT` do not
    /// stand in the way.
    ///
    /// # Errors
    /// If the socket cannot be bound, for instance because something listens there.
    ///
    /// # Panics
    /// If called outside a Tokio runtime.
    pub async fn start_on(addr: SocketAddr, behavior: Behavior) -> io::Result<Upstream> {
        let listener = listen(addr)?;
        let addr = listener.local_addr()?;
        let listener = (!behavior.refuses()).then_some(listener);
        let shared = Arc::new(Shared {
            addr,
            journal: Journal::new(),
            behavior: Mutex::new(Installed::new(behavior)),
            kill: watch::Sender::new(0),
            lifecycle: Mutex::new(Lifecycle {
                listener,
                killed: false,
                connections: JoinSet::new(),
            }),
            listener_changed: Notify::new(),
            runtime: Handle::current(),
        });
        let accept = tokio::spawn(accept_loop(Arc::clone(&shared)));
        Ok(Upstream { shared, accept })
    }

    /// The address the upstream listens on (or refuses connections on).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Changes the behavior. Requests whose head is read from now on get the new one;
    /// requests already being answered finish the old way.
    ///
    /// Switching to [`Behavior::refuse`] closes the listener at once; switching from it to
    /// any other behavior listens again on the same address, unless the upstream was
    /// [killed](Self::kill) (then [`restart`](Self::restart) does).
    ///
    /// # Panics
    /// If listening again fails, which takes another socket grabbing the port meanwhile.
    /// A test cannot go on sensibly then; use [`restart`](Self::restart) to get the error.
    pub fn set_behavior(&self, behavior: Behavior) {
        let refuses = behavior.refuses();
        *lock(&self.shared.behavior) = Installed::new(behavior);
        if refuses {
            lock(&self.shared.lifecycle).listener = None;
        } else if let Err(e) = self.shared.ensure_listening() {
            panic!("upstream {} cannot listen again: {e}", self.shared.addr);
        }
    }

    /// Requests whose head was read, whatever happened to them next.
    pub fn requests(&self) -> usize {
        self.shared.journal.requests()
    }

    /// Waits until at least `n` requests have been read. Wrap it in
    /// [`tokio::time::timeout`] to bound the wait.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_for_requests(&self, n: usize) {
        self.shared.journal.wait_for_requests(n).await;
    }

    /// Requests read that carried `x-request-id: <request_id>`.
    pub fn count_for(&self, request_id: &str) -> usize {
        self.shared.journal.count_for(request_id)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.shared.journal.connections()
    }

    /// Every request read so far, in the order their heads were read.
    pub fn received(&self) -> Vec<Recorded> {
        self.shared.journal.received()
    }

    /// Takes the backend down hard: stops listening, so new connections are refused, and
    /// resets every open connection (`SO_LINGER` 0, then close: clients see `ECONNRESET`).
    /// Returns once all of them are gone. It stays down, whatever its behavior, until
    /// [`restart`](Self::restart). Killing a killed upstream does nothing.
    ///
    /// # Cancel safety
    /// Cancelling the returned future after its first poll still stops the listener, but
    /// the connections not yet reset are then closed normally instead.
    pub async fn kill(&self) {
        let mut connections = {
            let mut life = lock(&self.shared.lifecycle);
            life.listener = None;
            life.killed = true;
            // Under the lock, so every tracked connection has subscribed before this bump.
            self.shared.kill.send_modify(|epoch| *epoch += 1);
            mem::take(&mut life.connections)
        };
        while connections.join_next().await.is_some() {}
    }

    /// Listens again on the same address with the current behavior, after
    /// [`kill`](Self::kill). Does nothing if the upstream already listens, or if its
    /// behavior is [`Behavior::refuse`].
    ///
    /// # Errors
    /// If the address cannot be bound again.
    pub async fn restart(&self) -> io::Result<()> {
        lock(&self.shared.lifecycle).killed = false;
        self.shared.ensure_listening()
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.shared.addr)
            .field("behavior", &lock(&self.shared.behavior).behavior)
            .field("connections", &self.connections())
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
        let mut life = lock(&self.shared.lifecycle);
        life.listener = None;
        life.connections.abort_all();
    }
}

impl connection::Site for Shared {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn journal(&self) -> &Journal {
        &self.journal
    }

    fn installed(&self) -> Arc<Installed> {
        Arc::clone(&lock(&self.behavior))
    }
}

impl Shared {
    /// Listens again, unless already listening, killed, or told to refuse.
    fn ensure_listening(&self) -> io::Result<()> {
        let mut life = lock(&self.lifecycle);
        if life.listener.is_some() || life.killed || lock(&self.behavior).behavior.refuses() {
            return Ok(());
        }
        // Registering the socket needs the runtime, and this may run outside of it.
        let _runtime = self.runtime.enter();
        life.listener = Some(listen(self.addr)?);
        drop(life);
        self.listener_changed.notify_one();
        Ok(())
    }

    /// Accepts one connection from the current listener and spawns its task. Pending while
    /// there is no listener; `listener_changed` wakes the accept task when one appears.
    fn poll_accept(self: &Arc<Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut life = lock(&self.lifecycle);
        let Some(listener) = life.listener.as_ref() else {
            return Poll::Pending;
        };
        let (stream, _peer) = ready!(listener.poll_accept(cx))?;
        self.journal.connection_accepted();
        // Forget connections that have ended, so a long test does not accumulate them.
        while life.connections.try_join_next().is_some() {}
        let kill = self.kill.subscribe();
        life.connections.spawn(connection::run(
            stream,
            Arc::clone(self) as Arc<dyn connection::Site>,
            kill,
        ));
        Poll::Ready(Ok(()))
    }
}

/// Accepts connections for the whole life of the upstream, from whichever listener is
/// current. Ends only when aborted by [`Upstream`]'s drop.
async fn accept_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = shared.listener_changed.notified() => {}
            accepted = poll_fn(|cx| shared.poll_accept(cx)) => {
                if accepted.is_err() {
                    // Accept errors (a connection aborted in the backlog, out of file
                    // descriptors) pass; pausing keeps a persistent one from spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Binds and listens with `SO_REUSEADDR`, so the address can be taken again while earlier
/// connections on it are in `TIME_WAIT`.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Upstream>();
        send_sync::<Behavior>();
    }
}

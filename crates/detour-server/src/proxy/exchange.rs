//! One request's session and hook context, logged exactly once.
//!
//! The engine hands an [`Exchange`] along by value from the first hook to
//! the end of the response body. Whoever answers calls
//! [`log`](Exchange::log); if the request ends some other way — its future
//! dropped before the response head (the client left, a drain was cut
//! short) or its body dropped before the end — the exchange's drop runs the
//! `logging` hook instead, with a `DownstreamClosed` error. Either way the
//! hook runs once.

use std::sync::Arc;

use detour_core::{EngineKey, Error, ErrorKind, ProxyHttp, Session};

/// A request's session and context, with the key to the session's
/// bookkeeping; runs `logging` exactly once.
pub(crate) struct Exchange<P: ProxyHttp> {
    pub(crate) proxy: Arc<P>,
    pub(crate) session: Session,
    pub(crate) ctx: P::CTX,
    pub(crate) key: EngineKey,
    /// The client asked for an upgrade the engine will tunnel (decided on
    /// the head, before any hook).
    pub(crate) upgrade: bool,
    logged: bool,
}

impl<P: ProxyHttp> Exchange<P> {
    /// An exchange for a session no one has taken the key of yet, from a
    /// client that came over TLS when `tls`.
    #[inline(always)]
    pub(crate) fn new(proxy: Arc<P>, mut session: Session, ctx: P::CTX, tls: bool) -> Self {
        // Invariant: the session was made just now by the engine, and no hook
        // has seen it, so its key is still there to take.
        let key = session
            .engine_key()
            .expect("a new session's key is taken once, here");
        session.set_tls(key, tls);
        Exchange {
            proxy,
            session,
            ctx,
            key,
            upgrade: false,
            logged: false,
        }
    }

    /// Run the `logging` hook, unless it ran already.
    pub(crate) fn log(&mut self, err: Option<&Error>) {
        if !std::mem::replace(&mut self.logged, true) {
            self.proxy.logging(&mut self.session, err, &mut self.ctx);
        }
    }
}

impl<P: ProxyHttp> Drop for Exchange<P> {
    fn drop(&mut self) {
        if !self.logged {
            // An attempt still in flight ends with the request: cancelled,
            // nobody's failure.
            let now = tokio::time::Instant::now();
            self.session.plan_mut(self.key).cancel_in_flight(now);
            let err = Error::downstream(ErrorKind::DownstreamClosed)
                .context("the request ended before its response did");
            self.log(Some(&err));
        }
    }
}

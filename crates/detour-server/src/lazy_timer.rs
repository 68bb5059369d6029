//! [`LazyTimer`]: the one timer behind the connection and body clocks (the
//! framing guard's idle and head timeouts, the send timeout, the client body
//! timeouts, the upstream body's read timeout). Most connections and bodies
//! never wait long enough to need one, so it is boxed on first use only and
//! reset after that.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

/// A timer that costs nothing until it is first set.
#[derive(Debug, Default)]
pub(crate) struct LazyTimer(Option<Pin<Box<Sleep>>>);

impl LazyTimer {
    /// Fire at `due` (from now on, whatever it was set to before).
    pub(crate) fn set(&mut self, due: Instant) {
        match self.0.as_mut() {
            Some(t) => t.as_mut().reset(due),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(due))),
        }
    }

    /// Whether the timer has fired; if not, `cx` is woken when it does.
    /// Never fires before it is first set.
    pub(crate) fn fired(&mut self, cx: &mut Context<'_>) -> bool {
        self.0
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

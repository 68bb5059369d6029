//! [`LazyTimer`]: the one timer behind the connection and body clocks (the
//! framing guard's idle and head timeouts, the send timeout, the client body
//! timeouts, the upstream body's read timeout). Most connections and bodies
//! never wait long enough to need one, so it is boxed on first use only and
//! reset after that.
//!
//! [`SpareTimer`]: a downstream HTTP/1.1 connection's attempt timer, which
//! its requests' attempts take turns with.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
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

/// A downstream connection's attempt timer, lent to one attempt at a time
/// and kept between them. Set again for the next attempt, a timer still in
/// tokio's timer wheel only moves its deadline when the new one is later
/// (no insert into the wheel, nor a removal when the attempt ends: a new
/// timer per attempt cost both, about 500 instructions a request). A timer
/// kept past its deadline fires once, a spurious wake of its connection.
#[derive(Debug, Default)]
pub(crate) struct SpareTimer(Mutex<LazyTimer>);

impl SpareTimer {
    /// The spare timer set for `due` (one is made when none is spare: the
    /// first attempt, or one made while another is out).
    pub(crate) fn lend(&self, due: Instant) -> Lent<'_> {
        let spare = &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut timer = std::mem::take(spare);
        timer.set(due);
        Lent { timer, home: self }
    }
}

/// A timer lent by a [`SpareTimer`], given back when dropped (kept if
/// another was given back first).
#[derive(Debug)]
pub(crate) struct Lent<'a> {
    /// Set when lent.
    timer: LazyTimer,
    home: &'a SpareTimer,
}

impl Lent<'_> {
    /// The timer itself.
    pub(crate) fn sleep(&mut self) -> Pin<&mut Sleep> {
        // Invariant: `lend` sets the timer, and only drop takes it.
        self.timer
            .0
            .as_mut()
            .expect("a lent timer is set when lent")
            .as_mut()
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut spare = self.home.0.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.0.is_none() {
            *spare = std::mem::take(&mut self.timer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `lent`'s timer has fired (polled once, with a no-op waker).
    fn fired(lent: &mut Lent<'_>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        lent.sleep().poll(&mut cx).is_ready()
    }

    fn box_of(lent: &mut Lent<'_>) -> *const Sleep {
        &*lent.sleep()
    }

    #[tokio::test(start_paused = true)]
    async fn a_spare_timer_is_lent_again_and_fires_at_its_new_deadline() {
        let spare = SpareTimer::default();
        let start = Instant::now();
        let mut first = spare.lend(start + Duration::from_secs(10));
        let first_box = box_of(&mut first);
        assert!(!fired(&mut first));
        drop(first);

        // Lent again for a later deadline: the same timer, moved on.
        let mut again = spare.lend(start + Duration::from_secs(20));
        assert_eq!(box_of(&mut again), first_box, "the spare timer is reused");
        tokio::time::sleep_until(start + Duration::from_secs(15)).await;
        assert!(!fired(&mut again), "the old deadline no longer counts");
        tokio::time::sleep_until(start + Duration::from_secs(20)).await;
        assert!(fired(&mut again));
        drop(again);

        // Fired, then lent again: registered anew.
        let mut third = spare.lend(start + Duration::from_secs(25));
        assert!(!fired(&mut third));
        tokio::time::sleep_until(start + Duration::from_secs(25)).await;
        assert!(fired(&mut third));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spare_timer_lent_for_an_earlier_deadline_fires_then() {
        let spare = SpareTimer::default();
        let start = Instant::now();
        let mut first = spare.lend(start + Duration::from_secs(30));
        assert!(!fired(&mut first), "registered, not fired");
        drop(first);
        // Still waiting for 30 s when lent for 2 s.
        let mut sooner = spare.lend(start + Duration::from_secs(2));
        tokio::time::sleep_until(start + Duration::from_millis(1999)).await;
        assert!(!fired(&mut sooner));
        tokio::time::sleep_until(start + Duration::from_secs(2)).await;
        assert!(
            fired(&mut sooner),
            "fires at the earlier deadline, not at 30 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn two_attempts_at_once_get_two_timers_and_one_is_kept() {
        let spare = SpareTimer::default();
        let due = Instant::now() + Duration::from_secs(1);
        let mut a = spare.lend(due);
        let mut b = spare.lend(due + Duration::from_secs(1));
        let (box_a, box_b) = (box_of(&mut a), box_of(&mut b));
        assert_ne!(box_a, box_b);
        drop(b);
        drop(a);
        let mut c = spare.lend(due);
        assert_eq!(box_of(&mut c), box_b, "the first given back is kept");
        assert!(spare.0.lock().unwrap().0.is_none());
    }
}

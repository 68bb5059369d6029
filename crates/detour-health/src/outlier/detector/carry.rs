//! Carrying ejections to the detector that replaces this one.
//!
//! A configuration reload builds every upstream anew, its outlier detector
//! included. A backend ejected under the old one must stay out for the rest
//! of its ejection, and a backend ejected repeatedly keeps the multiplier it
//! earned: [`OutlierDetector::resume`] takes over what the old detector's
//! [`status`](OutlierDetector::status) says of a backend.

use detour_core::Removal;
use tokio::time::Instant;

use super::{OutlierDetector, OutlierStatus};

impl OutlierDetector {
    /// Take over what another detector knew of the backend at `from.addr`
    /// (one entry of its [`status`](Self::status)), when that backend is
    /// attached here: its ejection multiplier and, if one is in force at
    /// `now`, its ejection until the same end. The ejection takes a slot of
    /// this upstream's removal cap; without room it is not resumed. Returns
    /// whether the backend is ejected now.
    pub fn resume(&self, from: &OutlierStatus, now: Instant) -> bool {
        let slots = self.slots.load();
        let Some(slot) = slots.get(&from.addr) else {
            return false;
        };
        let state = slot.backend.state();
        let mut e = slot.ejection();
        e.count = e.count.max(from.ejections).min(self.max_multiplier);
        if e.until.is_none() && e.count > 0 {
            // The multiplier decays from here, one step per quiet interval.
            e.until = Some(now);
        }
        let Some(until) = from.ejected_until.filter(|&u| u > now) else {
            return false;
        };
        if e.active || state.is_removed_for(Removal::Ejected) {
            return true;
        }
        if !state.try_remove(Removal::Ejected) {
            return false;
        }
        state.eject_until(until);
        e.active = true;
        e.until = Some(until);
        drop(e);
        // The sweeper sleeps until the next known expiry: this one is new.
        self.wake.notify_one();
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use detour_core::{
        AttemptOutcome, Backend, CommitPoint, ErrorKind, Observer, OutcomeClass, Removal,
    };
    use tokio::time::{advance, Instant};

    use crate::{OutlierConfig, OutlierDetector};

    fn detector(backends: &[Arc<Backend>]) -> OutlierDetector {
        let c = OutlierConfig {
            jitter: 0.0,
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        };
        let d = OutlierDetector::new(c).unwrap();
        d.attach(backends);
        d
    }

    fn backends() -> Vec<Arc<Backend>> {
        (1..=2)
            .map(|p| Arc::new(Backend::new(([127, 0, 0, 1], p).into())))
            .collect()
    }

    fn refused(b: &Backend) -> AttemptOutcome<'static> {
        AttemptOutcome {
            backend: None,
            addr: b.addr(),
            upstream: "default",
            class: OutcomeClass::BackendFailure(ErrorKind::ConnectRefused),
            status: None,
            latency: Duration::from_millis(1),
            commit: CommitPoint::NotConnected,
            attempt: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_goes_on_under_the_new_detector_until_its_end() {
        let old_set = backends();
        let old = detector(&old_set);
        for _ in 0..5 {
            old.on_attempt(&refused(&old_set[0]));
        }
        assert!(old_set[0].state().ejected_until(Instant::now()).is_some());
        advance(Duration::from_secs(10)).await;

        let new_set = backends();
        let new = Arc::new(detector(&new_set));
        for s in old.status() {
            new.resume(&s, Instant::now());
        }
        let ejected = new_set[0].state();
        assert!(ejected.is_removed_for(Removal::Ejected));
        assert_eq!(
            ejected.ejected_until(Instant::now()),
            old_set[0].state().ejected_until(Instant::now()),
            "the same end: 20 s from now"
        );
        assert!(new_set[1].state().ejected_until(Instant::now()).is_none());
        assert_eq!(new.status()[0].ejections, 1, "the multiplier is kept");

        // The new detector's sweeper ends it on time and frees the slot.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(Arc::clone(&new).run(async {
            let _ = stopped.await;
        }));
        advance(Duration::from_millis(19_900)).await;
        assert!(ejected.is_removed_for(Removal::Ejected));
        advance(Duration::from_millis(200)).await;
        tokio::task::yield_now().await;
        assert!(!ejected.is_removed_for(Removal::Ejected));
        let _ = stop.send(());
        run.await.unwrap();
    }
}

//! [`WakerSlot`]: the task to wake later, kept by whoever will wake it.

use std::sync::{Mutex, PoisonError};
use std::task::Waker;

/// One task's waker, kept until something wakes it.
#[derive(Debug, Default)]
pub(crate) struct WakerSlot(Mutex<Option<Waker>>);

impl WakerSlot {
    /// Keep `waker` (no clone when the one kept wakes the same task).
    pub(crate) fn register(&self, waker: &Waker) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match kept.as_ref() {
            Some(w) if w.will_wake(waker) => {}
            _ => *kept = Some(waker.clone()),
        }
    }

    /// Wake the task kept, if any (outside the lock); the slot is empty after.
    pub(crate) fn wake(&self) {
        let kept = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(w) = kept {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_task_kept_is_woken_once() {
        let slot = WakerSlot::default();
        slot.wake();
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        slot.register(&waker);
        slot.register(&waker);
        slot.wake();
        slot.wake();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }
}

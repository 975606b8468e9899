//! The one context every engine job gets: its id, a progress sender that throttles, an
//! unthrottled sender for streamed events (tokens, training steps), and a cancel check whose
//! `true` always means "stop".

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use neoscope_api::{Event, RequestId};

use super::Waker;
use crate::error::{EngineError, Result};

/// Progress is sent at most this often (the last update, at 100%, always goes through).
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Cancels every job: the handle is being dropped.
pub(crate) const CANCEL_ALL: u64 = u64::MAX;

/// A running job's view of the engine.
pub struct Job {
    /// The request.
    pub id: RequestId,
    events: Sender<Event>,
    waker: Waker,
    cancel: Arc<AtomicU64>,
    last_progress: Cell<Option<Instant>>,
}

impl Job {
    pub(crate) fn new(
        id: RequestId,
        events: Sender<Event>,
        waker: Waker,
        cancel: Arc<AtomicU64>,
    ) -> Self {
        Self {
            id,
            events,
            waker,
            cancel,
            last_progress: Cell::new(None),
        }
    }

    /// True when the user asked this job (or every job) to stop.
    pub fn cancelled(&self) -> bool {
        let c = self.cancel.load(Ordering::SeqCst);
        c == self.id || c == CANCEL_ALL
    }

    /// `Err(Cancelled)` when the job should stop: for `?` between steps.
    pub fn check(&self) -> Result<()> {
        if self.cancelled() {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Sends progress, at most every [`PROGRESS_EVERY`] (a fraction of 1 always goes through).
    pub fn progress(&self, stage: impl Into<String>, fraction: Option<f32>) {
        let now = Instant::now();
        let due = self
            .last_progress
            .get()
            .is_none_or(|t| now.duration_since(t) >= PROGRESS_EVERY);
        if due || fraction.is_some_and(|f| f >= 1.0) {
            self.last_progress.set(Some(now));
            self.emit(Event::Progress {
                id: self.id,
                stage: stage.into(),
                fraction,
            });
        }
    }

    /// Sends an event now (streamed tokens, training steps, epochs).
    pub fn emit(&self, ev: Event) {
        // A closed channel means the front end is gone; the job then ends at its next cancel
        // check (the handle cancels everything when dropped).
        let _ = self.events.send(ev);
        (self.waker)();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_throttled_and_cancel_means_stop() {
        let (tx, rx) = std::sync::mpsc::channel();
        let cancel = Arc::new(AtomicU64::new(0));
        let job = Job::new(3, tx, Arc::new(|| {}), Arc::clone(&cancel));
        for i in 0..1000 {
            job.progress("x", Some(i as f32 / 1000.0));
        }
        job.progress("done", Some(1.0));
        let n = rx.try_iter().count();
        assert!((2..=5).contains(&n), "{n} progress events for a fast loop");
        assert!(!job.cancelled());
        cancel.store(4, Ordering::SeqCst);
        assert!(!job.cancelled(), "another job's cancel");
        cancel.store(3, Ordering::SeqCst);
        assert!(job.cancelled());
        assert!(matches!(job.check(), Err(EngineError::Cancelled)));
    }
}

//! A job's circuit breaker (`[job.breaker]`): the window of deliveries it judges, shared by
//! the committer (which judges each batch before committing it, so a batch that trips it is
//! not committed: its events stay pending rather than go to the dead letters) and the host's
//! fleet-wide watcher (`host::breaker`, which judges the job's counters every second).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::{BreakerOptions, Disposition, FailureKind, Outcome};

/// Counts of deliveries over a window: (when, deliveries so far, those that did not succeed
/// so far), oldest first.
#[derive(Debug, Default)]
pub struct Window {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Window {
    /// Record the running totals at `at`, forgetting samples older than `span` before it.
    pub fn record(&mut self, at: Instant, delivered: u64, bad: u64, span: Duration) {
        self.samples.push_back((at, delivered, bad));
        while self
            .samples
            .front()
            .is_some_and(|s| at.duration_since(s.0) > span)
        {
            self.samples.pop_front();
        }
    }

    /// Why the breaker trips over the window, if it does: the newest totals against the
    /// oldest (the window's start).
    pub fn verdict(&self, b: &BreakerOptions) -> Option<String> {
        let pct = u64::from(b.failure_pct?);
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let delivered = last.1.saturating_sub(first.1);
        let bad = last.2.saturating_sub(first.2);
        (delivered >= b.min_events() && bad * 100 > pct * delivered).then(|| {
            format!(
                "breaker: {bad} of {delivered} deliveries failed or were dead-lettered in {} s \
                 (over {pct}%)",
                last.0.duration_since(first.0).as_secs().max(1)
            )
        })
    }
}

/// The committer's breaker: this runner's deliveries, batch by batch.
#[derive(Debug)]
pub struct LocalBreaker {
    options: BreakerOptions,
    window: Window,
    delivered: u64,
    bad: u64,
}

impl LocalBreaker {
    pub fn new(options: BreakerOptions) -> Self {
        let mut window = Window::default();
        window.record(
            Instant::now(),
            0,
            0,
            Duration::from_secs(options.window_s()),
        );
        LocalBreaker {
            options,
            window,
            delivered: 0,
            bad: 0,
        }
    }

    /// Count a batch about to be committed: why the breaker trips, if it does with it.
    /// Deliveries that met Redis trouble are not counted (they are not the events' fault).
    pub fn judge(&mut self, outcomes: &[Outcome]) -> Option<String> {
        for o in outcomes {
            let bad = match o {
                Outcome::Failed(f) if f.kind == FailureKind::Unavailable => continue,
                Outcome::Failed(_) => true,
                Outcome::Handled { disposition, .. } => matches!(
                    disposition,
                    Disposition::Retry(_) | Disposition::DeadLetter(_)
                ),
            };
            self.delivered += 1;
            self.bad += u64::from(bad);
        }
        let span = Duration::from_secs(self.options.window_s());
        self.window
            .record(Instant::now(), self.delivered, self.bad, span);
        self.window.verdict(&self.options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_over_the_share_and_only_with_enough_deliveries() {
        let b = BreakerOptions {
            failure_pct: Some(50),
            window_s: Some(10),
            min_events: Some(20),
        };
        let t = Instant::now();
        let span = Duration::from_secs(10);
        let window = |samples: &[(u64, u64, u64)]| {
            let mut w = Window::default();
            for (s, delivered, bad) in samples {
                w.record(t + Duration::from_secs(*s), *delivered, *bad, span);
            }
            w
        };
        assert!(
            window(&[(0, 100, 10), (5, 130, 30)]).verdict(&b).is_some(),
            "20 of 30"
        );
        assert!(
            window(&[(0, 100, 10), (5, 115, 20)]).verdict(&b).is_none(),
            "15: too few"
        );
        assert!(
            window(&[(0, 100, 10), (5, 140, 30)]).verdict(&b).is_none(),
            "20 of 40"
        );
        // Older than the window: forgotten.
        assert!(
            window(&[(0, 0, 0), (20, 100, 100), (25, 100, 100)])
                .verdict(&b)
                .is_none()
        );
        let off = BreakerOptions::default();
        assert!(window(&[(0, 0, 0), (1, 100, 100)]).verdict(&off).is_none());
        // The committer's: a batch of 30 dead letters trips it before it is committed.
        let mut local = LocalBreaker::new(b);
        let ok = Outcome::Handled {
            disposition: Disposition::Ack,
            effects: Vec::new(),
        };
        assert!(local.judge(&vec![ok; 10]).is_none());
        let dead = Outcome::Handled {
            disposition: Disposition::DeadLetter("x".into()),
            effects: Vec::new(),
        };
        assert!(local.judge(&vec![dead; 30]).is_some());
    }
}

//! `sluice:plugin/batch`: `finish`, through which a plugin's `handle-batch` reports each
//! event's result. It closes the event under way exactly as the end of a `handle` call does
//! (its effects, violations and state errors make its outcome; an acked event's state writes
//! go into the batch overlay for the next events' reads), then opens the next one: a fresh
//! call state and a fresh deadline. It says stop once the batch's effect budget is spent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::super::bindings::sluice::plugin::batch::Host;
use super::super::bindings::sluice::plugin::types as wit;
use super::{CallState, HostState};
use crate::model::Outcome;

/// What a batch's events may cost together ([`Outcome::cost`]), shared by the calls (and
/// the lanes) that handle its parts.
#[derive(Debug, Clone)]
pub struct Budget {
    spent: Arc<AtomicUsize>,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Self {
        Budget {
            spent: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Count an outcome's cost; true while the budget is not spent.
    pub fn spend(&self, cost: usize) -> bool {
        self.spent.fetch_add(cost, Ordering::AcqRel) + cost < self.max
    }

    pub fn is_spent(&self) -> bool {
        self.spent.load(Ordering::Acquire) >= self.max
    }
}

/// One event of a `handle-batch` call, as `finish` needs it.
#[derive(Debug)]
pub struct BatchEvent {
    pub id: String,
    pub attempt: u32,
    /// Its payload's bytes and fields (for the cost of its outcome).
    pub size: usize,
    pub fields: usize,
}

/// A `handle-batch` call under way.
#[derive(Debug)]
pub struct BatchCall {
    pub events: Vec<BatchEvent>,
    /// The results `finish` was given so far, in order.
    pub outcomes: Vec<Outcome>,
    pub budget: Budget,
    /// `finish` said stop: the plugin was to return, and nothing more is taken.
    pub stopped: bool,
    /// The log lines of the last event finished (for `plugin test`, one event at a time).
    pub last_logs: Vec<String>,
}

impl Host for HostState {
    fn finish(&mut self, outcome: Result<wit::Disposition, wit::HandlerError>) -> bool {
        let Some(batch) = self.batch.as_mut() else {
            self.violate("batch.finish: called outside handle-batch".into());
            return false;
        };
        let index = batch.outcomes.len();
        // A plugin finishing more events than it was given, or going on after a stop:
        // nothing is taken (the events it was given all have their results).
        if batch.stopped || index >= batch.events.len() {
            batch.stopped = true;
            return false;
        }
        // What it printed belongs to the event under way: logged in its span.
        if let Some(text) = self.output.take() {
            let _span = self.event_span().entered();
            tracing::info!(
                job = &*self.guest.job,
                plugin = &*self.guest.plugin,
                event = self.call.event_id.as_deref().unwrap_or_default(),
                "the plugin printed: {text}"
            );
            if self.call.logs.len() < super::MAX_LOGS_KEPT {
                self.call.logs.push(format!("printed: {text}"));
            }
        }
        let mut call = std::mem::take(&mut self.call);
        let outcome = self.close(&mut call, outcome);
        let Some(batch) = self.batch.as_mut() else {
            return false;
        };
        batch.last_logs = std::mem::take(&mut call.logs);
        let event = &batch.events[index];
        let within = batch
            .budget
            .spend(outcome.cost_for(event.size, event.fields));
        batch.outcomes.push(outcome);
        let Some(next) = batch.events.get(index + 1).filter(|_| within) else {
            batch.stopped = true;
            return false;
        };
        self.call = CallState {
            event_id: Some(next.id.clone()),
            attempt: next.attempt,
            ..CallState::default()
        };
        self.deadline
            .set(Instant::now() + self.guest.limits.deadline);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::super::test_support::state;
    use super::*;
    use crate::model::{Disposition, Effect, FailureKind};
    use bindings_effects::Host as _;

    use super::super::super::bindings::sluice::plugin::effects as bindings_effects;

    fn batch_of(n: usize, max: usize) -> BatchCall {
        BatchCall {
            events: (0..n)
                .map(|i| BatchEvent {
                    id: format!("{i}-0"),
                    attempt: 1,
                    size: 10,
                    fields: 1,
                })
                .collect(),
            outcomes: Vec::new(),
            budget: Budget::new(max),
            stopped: false,
            last_logs: Vec::new(),
        }
    }

    #[test]
    fn finish_closes_each_event_with_its_own_effects_and_opens_the_next() {
        let mut s = state(&[], Limits::default());
        s.batch = Some(batch_of(3, usize::MAX));
        s.emit("out".into(), vec![("a".into(), b"1".to_vec())])
            .unwrap();
        assert!(s.finish(Ok(wit::Disposition::Ack)));
        assert_eq!(s.call.event_id.as_deref(), Some("1-0"));
        assert!(s.finish(Err(wit::HandlerError {
            message: "no".into()
        })));
        s.emit("out".into(), vec![("c".into(), b"3".to_vec())])
            .unwrap();
        // The last event: nothing comes after it.
        assert!(!s.finish(Ok(wit::Disposition::Ack)));
        // Finishing past the batch is ignored.
        assert!(!s.finish(Ok(wit::Disposition::Skip)));
        let outcomes = s.batch.take().unwrap().outcomes;
        let emitted = |o: &Outcome| match o {
            Outcome::Handled { effects, .. } => effects.len(),
            Outcome::Failed(_) => 0,
        };
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes.iter().map(emitted).collect::<Vec<_>>(), [1, 0, 1]);
        assert!(matches!(&outcomes[1], Outcome::Failed(f) if f.kind == FailureKind::Error));
        match &outcomes[2] {
            Outcome::Handled {
                disposition: Disposition::Ack,
                effects,
            } => assert!(matches!(&effects[0], Effect::Emit { fields, .. } if fields[0].0 == "c")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_broken_limit_fails_its_event_only() {
        let mut s = state(&[], Limits::default());
        s.batch = Some(batch_of(2, usize::MAX));
        assert!(s.emit(String::new(), vec![]).is_err());
        assert!(s.finish(Ok(wit::Disposition::Ack)));
        assert!(!s.finish(Ok(wit::Disposition::Ack)));
        let outcomes = s.batch.take().unwrap().outcomes;
        assert!(matches!(&outcomes[0], Outcome::Failed(f) if f.kind == FailureKind::Limit));
        assert!(matches!(&outcomes[1], Outcome::Handled { .. }));
    }

    #[test]
    fn finish_says_stop_once_the_budget_is_spent() {
        let mut s = state(&[], Limits::default());
        // A handled event's record alone costs more than this.
        s.batch = Some(batch_of(5, 1));
        assert!(!s.finish(Ok(wit::Disposition::Ack)));
        assert!(!s.finish(Ok(wit::Disposition::Ack)));
        assert_eq!(s.batch.take().unwrap().outcomes.len(), 1);
    }

    #[test]
    fn finish_outside_a_batch_is_a_broken_rule() {
        let mut s = state(&[], Limits::default());
        assert!(!s.finish(Ok(wit::Disposition::Ack)));
        assert!(s.call.violation.as_deref().unwrap().contains("outside"));
    }
}

//! The delivery policy of a job: what becomes of an event after a delivery, given what the
//! plugin answered and how many times the event has been delivered.
//!
//! - `ack` → [`Decision::Ack`], `skip` → [`Decision::Skip`];
//! - `dead-letter(reason)` → [`Decision::Dead`] at once;
//! - `retry(after)` or a failure → [`Decision::Retry`] after `after` ms or the job's backoff
//!   (exponential from `base`, capped at `max`, with jitter), unless this was delivery
//!   `max_deliveries` or later: then [`Decision::Dead`] with the last error.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::event::{Disposition, Outcome};
use super::spec::defaults;

/// Delays for a retry loop: exponential from `min` doubling to `max`, with jitter, without
/// end. Every loop that waits and tries again (event retries, Redis reconnects, commits) takes
/// its delays from here.
pub fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A job's retry and dead-letter settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Deliveries after which a failing event goes to the dead-letter stream (≥ 1).
    pub max_deliveries: u32,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Largest input entry handed to the plugin (its field names and values); a bigger one
    /// is dead-lettered unhandled, with the reason.
    pub max_entry_bytes: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            max_deliveries: defaults::MAX_DELIVERIES,
            backoff_base: Duration::from_millis(defaults::BACKOFF_BASE_MS),
            backoff_max: Duration::from_millis(defaults::BACKOFF_MAX_MS),
            max_entry_bytes: defaults::MAX_ENTRY_BYTES,
        }
    }
}

/// What the commit does with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write its effects and acknowledge it.
    Ack,
    /// Acknowledge it without effects.
    Skip,
    /// Leave it pending and deliver it again after `delay`; `error` is kept in its status.
    Retry { delay: Duration, error: String },
    /// Move it to the dead-letter stream with `reason`, and acknowledge it.
    Dead { reason: String },
}

impl DeliveryPolicy {
    /// The retry delay after delivery number `delivery` (1-based): exponential with jitter.
    pub fn backoff(&self, delivery: u32) -> Duration {
        backoff(self.backoff_base, self.backoff_max)
            .nth(delivery.saturating_sub(1) as usize)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }

    /// Decide the fate of an event after its delivery number `delivery`.
    pub fn decide(&self, outcome: &Outcome, delivery: u32) -> Decision {
        let last = delivery >= self.max_deliveries;
        let (after, error) = match outcome {
            Outcome::Handled {
                disposition: Disposition::Ack,
                ..
            } => return Decision::Ack,
            Outcome::Handled {
                disposition: Disposition::Skip,
                ..
            } => return Decision::Skip,
            Outcome::Handled {
                disposition: Disposition::DeadLetter(reason),
                ..
            } => {
                return Decision::Dead {
                    reason: format!("plugin: {reason}"),
                };
            }
            Outcome::Handled {
                disposition: Disposition::Retry(after),
                ..
            } => (*after, "plugin asked to retry".to_string()),
            Outcome::Failed(failure) if failure.kind.is_final() => {
                return Decision::Dead {
                    reason: failure.to_string(),
                };
            }
            Outcome::Failed(failure) => (None, failure.to_string()),
        };
        if last {
            Decision::Dead {
                reason: format!("{error} (after {delivery} deliveries)"),
            }
        } else {
            let delay = match after {
                Some(ms) => Duration::from_millis(ms.into()),
                None => self.backoff(delivery),
            };
            Decision::Retry { delay, error }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::FailureKind;

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            max_deliveries: 3,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            max_entry_bytes: 1 << 20,
        }
    }

    #[test]
    fn failures_retry_until_the_last_delivery_then_die() {
        let failed = Outcome::failed(FailureKind::Trap, "boom");
        assert!(
            matches!(policy().decide(&failed, 1), Decision::Retry { error, .. } if error == "trap: boom")
        );
        assert!(matches!(
            policy().decide(&failed, 2),
            Decision::Retry { .. }
        ));
        assert_eq!(
            policy().decide(&failed, 3),
            Decision::Dead {
                reason: "trap: boom (after 3 deliveries)".into()
            }
        );
    }

    #[test]
    fn dispositions_map_directly() {
        let handled = |d| Outcome::Handled {
            disposition: d,
            effects: vec![],
        };
        assert_eq!(
            policy().decide(&handled(Disposition::Ack), 3),
            Decision::Ack
        );
        assert_eq!(
            policy().decide(&handled(Disposition::Skip), 1),
            Decision::Skip
        );
        assert_eq!(
            policy().decide(&handled(Disposition::DeadLetter("bad".into())), 1),
            Decision::Dead {
                reason: "plugin: bad".into()
            }
        );
        assert_eq!(
            policy().decide(&handled(Disposition::Retry(Some(250))), 1),
            Decision::Retry {
                delay: Duration::from_millis(250),
                error: "plugin asked to retry".into()
            }
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy();
        for _ in 0..50 {
            let first = p.backoff(1);
            assert!(
                first >= Duration::from_millis(100) && first <= Duration::from_millis(200),
                "{first:?}"
            );
            assert!(p.backoff(10) <= Duration::from_millis(1000));
        }
    }
}

//! Priorities between jobs (`priority_group`, and the family a job with `[[job.also]]`
//! sources makes): on one host, the jobs of a group take turns handling, one at a time, in
//! the order they asked; a turn lasts up to `weight` batches in a row while the job has them
//! ready. A job with nothing to handle does not ask, so the others get every turn; when all
//! have work, each handles batches in proportion to its weight, and none starves.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// One host's turns of one priority group.
#[derive(Default)]
pub struct PriorityGate {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// A turn is taken now.
    busy: bool,
    /// Who waits for a turn, first come first served.
    waiting: VecDeque<oneshot::Sender<()>>,
}

/// A turn; the next waiting job's comes when it is dropped.
pub struct Turn {
    gate: Arc<PriorityGate>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.gate.pass();
    }
}

impl PriorityGate {
    /// Wait for a turn.
    pub async fn turn(self: &Arc<Self>) -> Turn {
        let wait = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if !inner.busy {
                inner.busy = true;
                None
            } else {
                let (wake, woken) = oneshot::channel();
                inner.waiting.push_back(wake);
                Some(woken)
            }
        };
        if let Some(woken) = wait {
            // The sender goes only once the turn is handed over (or with the gate).
            let _ = woken.await;
        }
        Turn { gate: self.clone() }
    }

    /// Hand the turn to the first waiting job whose runner is still there, or free it.
    fn pass(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(next) = inner.waiting.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        inner.busy = false;
    }
}

/// The gates of one host, by priority group.
#[derive(Clone, Default)]
pub struct Gates(Arc<Mutex<HashMap<String, Arc<PriorityGate>>>>);

impl Gates {
    pub fn of(&self, group: &str) -> Arc<PriorityGate> {
        let mut gates = self.0.lock().unwrap_or_else(|e| e.into_inner());
        gates.entry(group.to_string()).or_default().clone()
    }
}

/// Where a runner takes its turns: its group's gate, and how many batches a turn lasts.
#[derive(Clone)]
pub struct Priority {
    pub gate: Arc<PriorityGate>,
    pub weight: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_take_turns_of_their_weight_and_none_starves() {
        let gate = Arc::new(PriorityGate::default());
        let first = gate.turn().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Two jobs with work always ready: high (4 batches a turn) and low (1).
        for (job, weight) in [("high", 4usize), ("low", 1)] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..(20 / weight) {
                    let _turn = gate.turn().await;
                    for _ in 0..weight {
                        order.lock().unwrap().push(job);
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let high = order[..10].iter().filter(|j| **j == "high").count();
        assert_eq!(high, 8, "4:1 while both have work: {order:?}");
        // Once high is done, low has every turn.
        assert_eq!(order.len(), 40);
        assert_eq!(order[30..], ["low"; 10]);
    }
}

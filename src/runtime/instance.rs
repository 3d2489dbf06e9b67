//! One live plugin instance: a `Store` with its limits, the instantiated component, and the
//! calls into it with a deadline, a memory cap and classified failures.
//!
//! The deadline is wall-clock and holds whatever the guest does. Every call is async: while
//! wasm runs, each epoch tick checks the deadline (a trap past it, else a yield to the
//! executor); while the guest waits in a host call (a WASI sleep or poll, a state read) the
//! call is a pending future, dropped at the deadline by a timer armed once it waits. Either
//! way the instance is poisoned and dropped.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::Plugin;
use super::bindings::sluice::plugin::types as wit;
use super::engine::EPOCH_TICK;
use super::host::{CallState, GuestContext, HostState, Overlay, clamp};
use super::plugin::LoadedPlugin;
use crate::model::{Disposition, Event, Failure, FailureKind, Outcome};

pub struct PluginInstance {
    /// The instance's memory, tables, WASI state and our per-call state.
    store: Store<HostState>,
    /// Typed handles to the component's exports.
    bindings: Plugin,
    /// Set after a trap, a timeout or a memory overrun: the instance must not be entered again.
    poisoned: bool,
    /// `handle` calls so far, for recycling.
    calls: u64,
    /// Log lines of the last `handle` call.
    last_logs: Vec<String>,
}

/// Why a call did not return a value.
enum CallError {
    /// It trapped (or hit the deadline or memory cap while wasm ran).
    Trap(wasmtime::Error),
    /// It was still waiting in a host call at the deadline.
    Blocked,
}

/// Run `call` (a call into the guest) until `deadline`: past it, the future is dropped.
async fn bounded<T>(
    deadline: Instant,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, CallError> {
    let mut call = std::pin::pin!(call);
    // The epoch check traps a running guest at the deadline; the timer is for a guest
    // waiting in a host call, and fires a tick later so a running guest's trap comes first.
    // Most calls return at their first poll: the timer is made only for one that waits.
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = call.as_mut().poll(cx) {
            return Poll::Ready(result.map_err(CallError::Trap));
        }
        // Checked here too: the timer's poll spends the task's cooperative budget, and a
        // task out of budget would see it pending past the deadline.
        if Instant::now() >= deadline + EPOCH_TICK {
            return Poll::Ready(Err(CallError::Blocked));
        }
        timer
            .get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until((deadline + EPOCH_TICK).into()))
            })
            .as_mut()
            .poll(cx)
            .map(|()| Err(CallError::Blocked))
    })
    .await
}

impl PluginInstance {
    /// Instantiate the plugin and run its `init` with the job's config, under the job's limits
    /// (`init_timeout` for both together).
    pub async fn new(
        plugin: &LoadedPlugin,
        guest: Arc<GuestContext>,
        overlay: Overlay,
    ) -> Result<Self, Failure> {
        let context = guest.clone();
        let config: Vec<(&str, &str)> = context
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let timeout = guest.limits.init_timeout;
        let max = guest.limits.max_guest_string_bytes;
        let mut store = Store::new(
            plugin.pre.engine(),
            HostState::new(guest, overlay, plugin.sha256.as_str().into()),
        );
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().call_deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let deadline = Instant::now() + timeout;
        store.data_mut().call_deadline = deadline;
        store.set_epoch_deadline(1);
        // An `init` that failed after a state read failed met Redis trouble, not a refusal.
        let kind = |store: &Store<HostState>| match store.data().call.state_error {
            Some(_) => FailureKind::Error,
            None => FailureKind::Init,
        };
        let init_failed = |store: &Store<HostState>, e: CallError| {
            let mut failure = classify(store, &e, "init", timeout);
            if let Some(printed) = store.data().output.take() {
                failure.message.push_str(&printed_suffix(&printed));
            }
            Failure {
                kind: kind(store),
                message: clamp(
                    format!(
                        "plugin `{}`: instantiating and initialising failed: {}",
                        plugin.name, failure
                    ),
                    max,
                ),
            }
        };
        let bindings = match bounded(deadline, plugin.pre.instantiate_async(&mut store)).await {
            Ok(b) => b,
            Err(e) => return Err(init_failed(&store, e)),
        };
        let init = bindings
            .sluice_plugin_handler()
            .call_init(&mut store, &config);
        match bounded(deadline, init).await {
            Ok(Ok(())) => Ok(PluginInstance {
                store,
                bindings,
                poisoned: false,
                calls: 0,
                last_logs: Vec::new(),
            }),
            Ok(Err(message)) => Err(Failure {
                kind: kind(&store),
                message: format!(
                    "plugin `{}`: init refused the config: {}",
                    plugin.name,
                    clamp(message, max)
                ),
            }),
            Err(e) => Err(init_failed(&store, e)),
        }
    }

    /// False once the instance trapped; it is then dropped and replaced.
    pub fn is_usable(&self) -> bool {
        !self.poisoned
    }

    /// `handle` calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The log lines of the last `handle` call.
    pub fn last_logs(&self) -> &[String] {
        &self.last_logs
    }

    /// Largest linear memory the instance has grown to, in bytes.
    pub fn peak_memory(&self) -> usize {
        self.store.data().limiter.peak
    }

    /// Hand one event to the plugin. Never panics and never returns a trap: every failure is
    /// an [`Outcome::Failed`], and a trapped instance marks itself unusable.
    pub async fn handle(&mut self, event: &Event) -> Outcome {
        debug_assert!(!self.poisoned, "a trapped instance was entered again");
        self.calls += 1;
        let budget = self.store.data().guest.limits.deadline;
        let deadline = Instant::now() + budget;
        self.store.data_mut().call_deadline = deadline;
        self.store.set_epoch_deadline(1);
        let state = self.store.data_mut();
        state.call = CallState {
            event_id: Some(event.id.clone()),
            attempt: event.delivery_count,
            ..CallState::default()
        };
        if state.stream != event.source {
            state.stream.clone_from(&event.source);
        }
        let fields: Vec<(&str, &[u8])> = event
            .fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect();
        let wit_event = wit::Event {
            kind: event.kind,
            id: &event.id,
            source: &event.source,
            fields: &fields,
            delivery_count: event.delivery_count,
            job: &event.job,
        };
        let call = self
            .bindings
            .sluice_plugin_handler()
            .call_handle(&mut self.store, wit_event);
        let result = bounded(deadline, call).await;
        let mut call = std::mem::take(&mut self.store.data_mut().call);
        let printed = self.store.data().output.take();
        if let Some(text) = &printed {
            let state = self.store.data();
            let _span = state.event_span().entered();
            tracing::info!(job = &*state.guest.job, plugin = &*state.guest.plugin, event = %event.id, "the plugin printed: {text}");
            call.logs.push(format!("printed: {text}"));
        }
        self.last_logs = std::mem::take(&mut call.logs);
        let max_string = self.store.data().guest.limits.max_guest_string_bytes;
        match result {
            // Stopped at the deadline while a state read waited on Redis: Redis trouble.
            Err(CallError::Blocked) if call.reading => {
                self.poisoned = true;
                Outcome::failed(
                    FailureKind::Unavailable,
                    format!(
                        "reading job state took past the deadline of {} ms",
                        budget.as_millis()
                    ),
                )
            }
            Err(e) => {
                self.poisoned = true;
                let mut failure = classify(&self.store, &e, "the event", budget);
                if let Some(text) = &printed {
                    failure.message.push_str(&printed_suffix(text));
                }
                failure.message = clamp(failure.message, max_string);
                Outcome::Failed(failure)
            }
            Ok(_) if call.violation.is_some() => Outcome::failed(
                FailureKind::Limit,
                clamp(call.violation.unwrap_or_default(), max_string),
            ),
            Ok(_) if call.state_error.is_some() => Outcome::failed(
                FailureKind::Unavailable,
                clamp(call.state_error.unwrap_or_default(), max_string),
            ),
            Ok(Err(wit::HandlerError { message })) => {
                Outcome::failed(FailureKind::Error, clamp(message, max_string))
            }
            Ok(Ok(disposition)) => Outcome::Handled {
                disposition: match disposition {
                    wit::Disposition::Ack => Disposition::Ack,
                    wit::Disposition::Retry(after) => Disposition::Retry(after),
                    wit::Disposition::DeadLetter(reason) => {
                        Disposition::DeadLetter(clamp(reason, max_string))
                    }
                    wit::Disposition::Skip => Disposition::Skip,
                },
                effects: call.effects,
            },
        }
    }
}

/// What a trapped call printed, for its failure message: the last 1000 bytes (a panic
/// message comes last).
fn printed_suffix(text: &str) -> String {
    let mut start = text.len().saturating_sub(1000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let ellipsis = if start > 0 { "…" } else { "" };
    format!("; the plugin printed: {ellipsis}{}", &text[start..])
}

/// Name what went wrong in a call that did not return: the memory cap, the deadline (wasm
/// running, or the guest waiting in a host call), or a trap. `what` names the call and
/// `budget` its deadline, for the message.
fn classify(store: &Store<HostState>, e: &CallError, what: &str, budget: Duration) -> Failure {
    let state = store.data();
    let ms = budget.as_millis();
    let e = match e {
        CallError::Blocked => {
            return Failure {
                kind: FailureKind::Timeout,
                message: format!(
                    "exceeded the deadline of {ms} ms for {what} while waiting in a host call \
                     (a sleep, a poll or a state read)"
                ),
            };
        }
        CallError::Trap(e) => e,
    };
    if state.limiter.exceeded {
        Failure {
            kind: FailureKind::Memory,
            message: format!("exceeded the memory cap of {} MiB", state.limiter.cap >> 20),
        }
    } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        Failure {
            kind: FailureKind::Timeout,
            message: format!("exceeded the deadline of {ms} ms for {what}"),
        }
    } else {
        // The trap's reason ("wasm `unreachable` instruction executed" for a Rust panic)
        // for operators; the wasm backtrace only at debug level.
        tracing::debug!(job = &*state.guest.job, "plugin trapped: {e:?}");
        let message = match e.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => e.to_string(),
        };
        Failure {
            kind: FailureKind::Trap,
            message,
        }
    }
}

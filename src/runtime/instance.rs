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
use super::host::{
    BatchCall, BatchEvent, Budget, CallState, Deadline, GuestContext, HostState, Overlay, clamp,
};
use super::plugin::LoadedPlugin;
use crate::model::{Event, Failure, FailureKind, Outcome};

pub struct PluginInstance {
    /// The instance's memory, tables, WASI state and our per-call state.
    store: Store<HostState>,
    /// Typed handles to the component's exports.
    bindings: Plugin,
    /// Its `handle-batch`, when it exports one (type-checked when the instance was made).
    batch: Option<wasmtime::component::Func>,
    /// Set after a trap, a timeout or a memory overrun: the instance must not be entered again.
    poisoned: bool,
    /// Events handled so far (one per `handle` call, those finished in `handle-batch`
    /// calls), for recycling.
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

/// Run `call` (a call into the guest) until `deadline`, which may move on while it runs (a
/// batch's next event): past it, the future is dropped.
async fn bounded<T>(
    deadline: &Deadline,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, CallError> {
    let mut call = std::pin::pin!(call);
    // The epoch check traps a running guest at the deadline; the timer is for a guest
    // waiting in a host call, and fires a tick later so a running guest's trap comes first.
    // Most calls return at their first poll: the timer is made only for one that waits.
    let mut timer: Option<(Instant, std::pin::Pin<Box<tokio::time::Sleep>>)> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = call.as_mut().poll(cx) {
            return Poll::Ready(result.map_err(CallError::Trap));
        }
        loop {
            // Checked here too: the timer's poll spends the task's cooperative budget, and a
            // task out of budget would see it pending past the deadline.
            let due = deadline.get() + EPOCH_TICK;
            if Instant::now() >= due {
                return Poll::Ready(Err(CallError::Blocked));
            }
            let sleep = match &mut timer {
                Some((at, sleep)) if *at == due => sleep,
                slot => {
                    &mut slot
                        .insert((due, Box::pin(tokio::time::sleep_until(due.into()))))
                        .1
                }
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: the deadline has passed, or moved on meanwhile (look again).
        }
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
            if Instant::now() >= ctx.data().deadline.get() {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let deadline = store.data().deadline.clone();
        deadline.set(Instant::now() + timeout);
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
        let instance = match bounded(
            &deadline,
            plugin.pre.instance_pre().instantiate_async(&mut store),
        )
        .await
        {
            Ok(i) => i,
            Err(e) => return Err(init_failed(&store, e)),
        };
        let refused = |message: String| Failure {
            kind: FailureKind::Init,
            message: format!("plugin `{}`: {message}", plugin.name),
        };
        let bindings = plugin
            .indices
            .load(&mut store, &instance)
            .map_err(|e| refused(format!("{e:#}")))?;
        let batch = match &plugin.batch {
            None => None,
            Some(index) => {
                let func = instance
                    .get_func(&mut store, index)
                    .ok_or_else(|| refused("its `handle-batch` export is not a function".into()))?;
                func.typed::<(&[wit::Event<'_>],), ()>(&store)
                    .map_err(|e| {
                        refused(format!(
                            "its `handle-batch` export is not the one of the world \
                             sluice:plugin/batch-plugin@0.1.0: {e:#}"
                        ))
                    })?;
                Some(func)
            }
        };
        let init = bindings
            .sluice_plugin_handler()
            .call_init(&mut store, &config);
        match bounded(&deadline, init).await {
            Ok(Ok(())) => Ok(PluginInstance {
                store,
                bindings,
                batch,
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

    /// Events handled so far.
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
    /// an [`Outcome::Failed`], and a trapped instance marks itself unusable. An acked event's
    /// state writes go into the batch overlay (for the next events' reads).
    pub async fn handle(&mut self, event: &Event) -> Outcome {
        debug_assert!(!self.poisoned, "a trapped instance was entered again");
        self.calls += 1;
        self.begin(event);
        let fields = wit_fields(event);
        let wit_event = wit_event(event, &fields);
        let deadline = self.store.data().deadline.clone();
        let call = self
            .bindings
            .sluice_plugin_handler()
            .call_handle(&mut self.store, wit_event);
        let result = bounded(&deadline, call).await;
        let mut call = std::mem::take(&mut self.store.data_mut().call);
        let printed = self.printed(event, &mut call);
        self.last_logs = std::mem::take(&mut call.logs);
        match result {
            Err(e) => self.failed(e, &call, printed.as_deref()),
            Ok(answer) => self.store.data_mut().close(&mut call, answer),
        }
    }

    /// True when the plugin takes whole batches in one call ([`PluginInstance::handle_batch`]).
    pub fn handles_batches(&self) -> bool {
        self.batch.is_some()
    }

    /// Hand `events` to the plugin's `handle-batch` in one call; their outcomes come back in
    /// order, as far as the plugin went: it stops once `budget` is spent (the rest go to a
    /// later call), and a trap or a timeout fails the event under way (the instance is then
    /// unusable; the events after it are not handled). Each outcome is what [`handle`] would
    /// give for the event; with no `handle-batch`, the events are handled one by one.
    ///
    /// [`handle`]: PluginInstance::handle
    pub async fn handle_batch(&mut self, events: &[Event], budget: &Budget) -> Vec<Outcome> {
        debug_assert!(!self.poisoned, "a trapped instance was entered again");
        let (Some(func), Some(first)) = (self.batch, events.first()) else {
            let mut outcomes = Vec::with_capacity(events.len());
            for event in events {
                let outcome = self.handle(event).await;
                let within = budget.spend(outcome.cost(event));
                outcomes.push(outcome);
                if !within || self.poisoned {
                    break;
                }
            }
            return outcomes;
        };
        self.begin(first);
        self.store.data_mut().batch = Some(BatchCall {
            events: events
                .iter()
                .map(|e| BatchEvent {
                    id: e.id.clone(),
                    attempt: e.delivery_count,
                    size: e.size(),
                    fields: e.fields.len(),
                })
                .collect(),
            outcomes: Vec::with_capacity(events.len()),
            budget: budget.clone(),
            stopped: false,
            last_logs: Vec::new(),
        });
        let fields: Vec<Vec<(&str, &[u8])>> = events.iter().map(wit_fields).collect();
        let wit_events: Vec<wit::Event<'_>> = events
            .iter()
            .zip(&fields)
            .map(|(e, f)| wit_event(e, f))
            .collect();
        let deadline = self.store.data().deadline.clone();
        // Type-checked when the instance was made; checked again here (it is cheap next to a
        // batch) rather than trusted without a check.
        let result = match func.typed::<(&[wit::Event<'_>],), ()>(&self.store) {
            Ok(typed) => {
                bounded(
                    &deadline,
                    typed.call_async(&mut self.store, (wit_events.as_slice(),)),
                )
                .await
            }
            Err(e) => Err(CallError::Trap(e)),
        };
        let state = self.store.data_mut();
        let batch = state.batch.take();
        let mut call = std::mem::take(&mut state.call);
        let (mut outcomes, stopped) = match batch {
            Some(b) => {
                self.last_logs = b.last_logs;
                (b.outcomes, b.stopped)
            }
            None => (Vec::new(), false),
        };
        self.calls += outcomes.len() as u64;
        // The event under way when the call ended: the first without a result, unless the
        // plugin was told to stop (then no event was under way: what it did after the stop
        // is nobody's, and a trap then costs only the instance).
        let under_way = events.get(outcomes.len()).filter(|_| !stopped);
        let Some(event) = under_way else {
            if result.is_err() {
                self.poisoned = true;
            }
            if let Some(text) = self.store.data().output.take() {
                let state = self.store.data();
                tracing::info!(
                    job = &*state.guest.job,
                    plugin = &*state.guest.plugin,
                    "the plugin printed after its batch: {text}"
                );
            }
            return outcomes;
        };
        // Failing before its first `finish`, a call of many events cannot say which was at
        // fault (lowering the batch into the guest, and the guest's own conversion of it, come
        // before the first event): nothing is returned, the instance is dropped, and the
        // caller hands the events over again in smaller calls, down to one.
        if result.is_err() && outcomes.is_empty() && events.len() > 1 {
            self.poisoned = true;
            let _ = self.store.data().output.take();
            return outcomes;
        }
        let printed = self.printed(event, &mut call);
        self.last_logs = std::mem::take(&mut call.logs);
        let outcome = match result {
            Err(e) => self.failed(e, &call, printed.as_deref()),
            Ok(()) => {
                let answer = Err(wit::HandlerError {
                    message: "handle-batch returned without finishing this event \
                              (batch.finish was not called for it)"
                        .into(),
                });
                self.store.data_mut().close(&mut call, answer)
            }
        };
        budget.spend(outcome.cost(event));
        self.calls += 1;
        outcomes.push(outcome);
        outcomes
    }

    /// Ready the store for a call about `event`: its call state, deadline and stream.
    fn begin(&mut self, event: &Event) {
        let state = self.store.data_mut();
        state
            .deadline
            .set(Instant::now() + state.guest.limits.deadline);
        state.call = CallState {
            event_id: Some(event.id.clone()),
            attempt: event.delivery_count,
            ..CallState::default()
        };
        if state.stream != event.source {
            state.stream.clone_from(&event.source);
        }
        self.store.set_epoch_deadline(1);
    }

    /// What the guest printed during the call about `event`, logged (and kept in its logs).
    fn printed(&mut self, event: &Event, call: &mut CallState) -> Option<String> {
        let printed = self.store.data().output.take();
        if let Some(text) = &printed {
            let state = self.store.data();
            let _span = state.event_span().entered();
            tracing::info!(job = &*state.guest.job, plugin = &*state.guest.plugin, event = %event.id, "the plugin printed: {text}");
            call.logs.push(format!("printed: {text}"));
        }
        printed
    }

    /// The outcome of an event whose call did not return: the instance is poisoned.
    fn failed(&mut self, e: CallError, call: &CallState, printed: Option<&str>) -> Outcome {
        self.poisoned = true;
        let budget = self.store.data().guest.limits.deadline;
        match e {
            // Stopped at the deadline while a state read waited on Redis: Redis trouble.
            CallError::Blocked if call.reading => Outcome::failed(
                FailureKind::Unavailable,
                format!(
                    "reading job state took past the deadline of {} ms",
                    budget.as_millis()
                ),
            ),
            e => {
                let mut failure = classify(&self.store, &e, "the event", budget);
                if let Some(text) = printed {
                    failure.message.push_str(&printed_suffix(text));
                }
                let max_string = self.store.data().guest.limits.max_guest_string_bytes;
                failure.message = clamp(failure.message, max_string);
                Outcome::Failed(failure)
            }
        }
    }
}

/// An event's fields as the guest's list borrows them.
fn wit_fields(event: &Event) -> Vec<(&str, &[u8])> {
    event
        .fields
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()))
        .collect()
}

/// An event as it is lowered into the guest, borrowed from the host's own.
fn wit_event<'a>(event: &'a Event, fields: &'a [(&'a str, &'a [u8])]) -> wit::Event<'a> {
    wit::Event {
        kind: event.kind,
        id: &event.id,
        source: &event.source,
        fields,
        delivery_count: event.delivery_count,
        job: &event.job,
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

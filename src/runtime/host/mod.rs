//! The host side of the WIT imports: one file per interface, all sharing [`HostState`],
//! the data of one plugin instance's `Store`.
//!
//! Guest input is hostile: every value a guest hands us is checked against [`Limits`]
//! before it is buffered, and a violation fails the event (it never reaches Redis), even if
//! the guest ignores the error it was given.

mod batch;
mod clock;
mod config;
mod counters;
mod effects;
mod kv;
mod limits;
mod log;
mod output;
mod overlay;
mod reads;

pub use batch::{BatchCall, BatchEvent, Budget};
pub use limits::{Limits, MemoryLimiter, clamp};
pub use output::GuestOutput;
pub use overlay::{BatchState, Overlay, Writes};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::model::{
    ARG_COST, COMMAND_COST, Disposition, Effect, FailureKind, Outcome, StateReader,
};

use super::bindings;

/// Who an instance works for: fixed for the instance's life.
#[derive(Debug, Clone)]
pub struct GuestContext {
    /// The job's name, attached to logs.
    pub job: Arc<str>,
    /// The plugin's name, attached to logs.
    pub plugin: Arc<str>,
    /// The job's `[job.config]`, handed to `init` and read by `config-get`.
    pub config: BTreeMap<String, String>,
    /// The job's limits.
    pub limits: Limits,
    /// Where reads of job state go (None: no job state here, reads fail).
    pub state: Option<Arc<dyn StateReader>>,
    /// A directory the plugin may read, preopened read-only in its WASI filesystem at the
    /// same path (a scan job's root with `scan.read`); None: no filesystem at all.
    pub read_dir: Option<String>,
}

impl std::fmt::Debug for dyn StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateReader")
    }
}

/// Per-event scratch space: reset before each `handle`, drained after it.
#[derive(Debug, Default)]
pub struct CallState {
    /// The event being handled, attached to logs (None during `init`).
    pub event_id: Option<String>,
    /// Its delivery count, for the lines logged about it.
    pub attempt: u32,
    /// Effects buffered so far, committed only if the event is acked.
    pub effects: Vec<Effect>,
    /// The first limit the guest broke during this call; fails the event.
    pub violation: Option<String>,
    /// The first failed read of job state during this call; fails the event (retried).
    pub state_error: Option<String>,
    /// The call's log lines (`level: message`), at most [`MAX_LOGS_KEPT`], for `plugin test`.
    pub logs: Vec<String>,
    /// Cost of the effects buffered so far ([`Effect::cost`]).
    pub effect_bytes: usize,
    /// The state writes among `effects`, indexed for this event's own reads.
    pub writes: Writes,
    /// A read of job state from Redis is under way (a call stopped now met Redis trouble).
    pub reading: bool,
}

/// When the call under way must end; shared by the store's epoch check and the call's
/// timer, and moved on by `batch.finish` for each event of a batch.
#[derive(Debug, Clone)]
pub struct Deadline(Arc<Mutex<Instant>>);

impl Default for Deadline {
    fn default() -> Self {
        Deadline(Arc::new(Mutex::new(Instant::now())))
    }
}

impl Deadline {
    pub fn get(&self) -> Instant {
        self.0
            .lock()
            .map(|d| *d)
            .unwrap_or_else(|p| *p.into_inner())
    }

    pub fn set(&self, at: Instant) {
        match self.0.lock() {
            Ok(mut d) => *d = at,
            Err(p) => *p.into_inner() = at,
        }
    }
}

/// Log lines kept per call (all go to the host's tracing regardless).
pub const MAX_LOGS_KEPT: usize = 100;

/// The data of one plugin instance's `Store`.
pub struct HostState {
    /// WASI p2: no network, no environment, no files but a read-only directory if the job
    /// grants one (`GuestContext::read_dir`).
    wasi: WasiCtx,
    /// WASI's resources (streams, pollables) of this instance.
    table: ResourceTable,
    /// Enforces the memory cap and remembers that it was hit.
    pub(crate) limiter: MemoryLimiter,
    /// Who this instance works for.
    pub(crate) guest: Arc<GuestContext>,
    /// The current call's effects, logs context and violations.
    pub(crate) call: CallState,
    /// State writes of the batch's earlier acked events: reads see them before Redis does.
    pub(crate) overlay: Overlay,
    /// What the guest printed (stdout and stderr) since the last look.
    pub(crate) output: GuestOutput,
    /// When the current call (`init`, `handle`, or the event under way in `handle-batch`)
    /// must have returned: checked at every epoch tick while wasm runs, and by the timer of a
    /// call waiting in a host call.
    pub(crate) deadline: Deadline,
    /// The `handle-batch` call under way, if any.
    pub(crate) batch: Option<BatchCall>,
    /// The plugin version (sha256), for the lines logged about an event.
    pub(crate) version: Arc<str>,
    /// The stream of the event being handled (kept across calls: a job's events share it,
    /// so it is copied only when it changes, not per event).
    pub(crate) stream: String,
}

impl HostState {
    /// The span of lines about the event being handled (see [`crate::logging`]); during
    /// `init`, none.
    pub(crate) fn event_span(&self) -> tracing::Span {
        match &self.call.event_id {
            Some(id) => crate::logging::event_span(
                &self.guest.job,
                &self.stream,
                id,
                &self.version,
                self.call.attempt,
            ),
            None => tracing::Span::none(),
        }
    }
}

impl HostState {
    /// A fresh state for an instance of plugin `version` (its sha256) working for `guest`.
    pub fn new(guest: Arc<GuestContext>, overlay: Overlay, version: Arc<str>) -> Self {
        let limiter = MemoryLimiter::new(guest.limits.memory_bytes);
        let output = GuestOutput::default();
        let mut wasi = WasiCtx::builder();
        wasi.stdout(output.clone()).stderr(output.clone());
        if let Some(dir) = &guest.read_dir {
            // A root that is gone leaves the plugin without it: its reads fail (and say so),
            // the instance still serves events that need no file.
            if let Err(e) = wasi.preopened_dir(dir, dir, wasmtime_wasi::FsPerms::ReadOnly) {
                tracing::warn!(job = %guest.job, dir, "the scan root cannot be opened for the plugin: {e}");
            }
        }
        HostState {
            wasi: wasi.build(),
            output,
            table: ResourceTable::new(),
            limiter,
            guest,
            call: CallState::default(),
            overlay,
            deadline: Deadline::default(),
            batch: None,
            version,
            stream: String::new(),
        }
    }

    /// The job state reader, or an error the guest sees (and that fails the event).
    fn reader(&mut self) -> Result<Arc<dyn StateReader>, String> {
        match self.guest.state.clone() {
            Some(reader) => Ok(reader),
            None => Err(self.state_failed("no job state is available here".into())),
        }
    }

    /// Record a failed state read: the event fails (and is retried) whatever the guest does.
    fn state_failed(&mut self, message: String) -> String {
        let message = format!("reading job state failed: {message}");
        if self.call.state_error.is_none() {
            self.call.state_error = Some(message.clone());
        }
        message
    }

    /// Check a name the guest gave for a key, counter or window.
    fn check_name(&mut self, what: &str, name: &str) -> Result<(), String> {
        let max = self.guest.limits.max_name_bytes;
        if name.is_empty() {
            return Err(self.violate(format!("{what}: the name is empty")));
        }
        if name.len() > max {
            return Err(self.violate(format!(
                "{what}: a name of {} bytes exceeds the limit of {max}",
                name.len()
            )));
        }
        Ok(())
    }

    /// Buffer an effect, within the per-event limits on effects and bytes.
    fn buffer(&mut self, what: &str, effect: Effect) -> Result<(), String> {
        let limits = &self.guest.limits;
        if self.call.effects.len() >= limits.max_effects {
            return Err(self.violate(format!(
                "{what}: more than {} effects for one event",
                limits.max_effects
            )));
        }
        let bytes = self.call.effect_bytes + effect.cost();
        if bytes > limits.max_event_bytes {
            return Err(self.violate(format!(
                "{what}: the event's effects would cost {bytes} bytes (their bytes, plus \
                 {ARG_COST} per argument and {COMMAND_COST} per command of the commit), over \
                 the limit of {}",
                limits.max_event_bytes
            )));
        }
        self.call.effect_bytes = bytes;
        self.call.writes.apply(&effect);
        self.call.effects.push(effect);
        Ok(())
    }

    /// The outcome of the event `call` was about, from what the guest answered: a broken
    /// limit or a failed state read fails it whatever the answer; an acked event's state
    /// writes go into the batch overlay, for the reads of the events after it. Takes the
    /// effects out of `call` (its logs stay).
    pub(crate) fn close(
        &mut self,
        call: &mut CallState,
        answer: Result<
            bindings::sluice::plugin::types::Disposition,
            bindings::sluice::plugin::types::HandlerError,
        >,
    ) -> Outcome {
        use bindings::sluice::plugin::types as wit;
        let max = self.guest.limits.max_guest_string_bytes;
        let outcome = if let Some(violation) = call.violation.take() {
            Outcome::failed(FailureKind::Limit, clamp(violation, max))
        } else if let Some(error) = call.state_error.take() {
            Outcome::failed(FailureKind::Unavailable, clamp(error, max))
        } else {
            match answer {
                Err(wit::HandlerError { message }) => {
                    Outcome::failed(FailureKind::Error, clamp(message, max))
                }
                Ok(disposition) => Outcome::Handled {
                    disposition: match disposition {
                        wit::Disposition::Ack => Disposition::Ack,
                        wit::Disposition::Retry(after) => Disposition::Retry(after),
                        wit::Disposition::DeadLetter(reason) => {
                            Disposition::DeadLetter(clamp(reason, max))
                        }
                        wit::Disposition::Skip => Disposition::Skip,
                    },
                    effects: std::mem::take(&mut call.effects),
                },
            }
        };
        // An acked event's state writes will be committed: later events must see them.
        if let Outcome::Handled {
            disposition: Disposition::Ack,
            effects,
        } = &outcome
            && let Ok(mut batch) = self.overlay.lock()
        {
            batch.acked(effects);
        }
        outcome
    }

    /// Record a broken limit: the event fails whatever the guest does next.
    fn violate(&mut self, message: String) -> String {
        if self.call.violation.is_none() {
            self.call.violation = Some(message.clone());
        }
        message
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::sluice::plugin::types::Host for HostState {}

/// Add WASI p2 and every interface of our world to the linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

/// Cut a string to at most `max` bytes on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
        s.shrink_to_fit();
    }
    s
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A host state for unit tests of host functions, with no guest at all.
    pub fn state(config: &[(&str, &str)], limits: Limits) -> HostState {
        with_reader(config, limits, None)
    }

    /// A host state whose job-state reads go to `reader`.
    pub fn with_reader(
        config: &[(&str, &str)],
        limits: Limits,
        reader: Option<Arc<dyn StateReader>>,
    ) -> HostState {
        HostState::new(
            Arc::new(GuestContext {
                job: "job".into(),
                plugin: "plugin".into(),
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                limits,
                state: reader,
                read_dir: None,
            }),
            Overlay::default(),
            "test".into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo".into(), 2), "h…");
        assert_eq!(truncate("abc".into(), 3), "abc");
    }
}

//! `sluice plugin test`: run a plugin on recorded events with the host's runtime and limits,
//! job state kept in memory, and report each event's result, effects and logs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::model::{
    Disposition, Effect, Event, KIND_JOB_FINISHED, KIND_JOB_STARTED, KIND_STREAM_ENTRY, Outcome,
    StateReader, fed_kind,
};
use crate::runtime::memory::MemoryState;
use crate::runtime::{GuestContext, Limits, LoadedPlugin, Overlay, PluginInstance};

/// One line of an events file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    kind: Option<String>,
    id: Option<String>,
    source: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    delivery_count: Option<u32>,
}

/// Read a JSON-lines events file: one `{"fields": {"name": "value", …}}` per line, with
/// optional `kind` (default `stream-entry`; any kind a source makes, `file-created` say),
/// `id`, `source` (default `test`) and `delivery_count` (default 1). Blank lines and
/// lines starting with `#` are skipped. Field order is the order of the names.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<Event>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let job: Arc<str> = "test".into();
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let e: EventLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not an event line", path.display(), n + 1))?;
        let kind = match e.kind.as_deref() {
            None | Some(KIND_STREAM_ENTRY) => KIND_STREAM_ENTRY,
            Some(KIND_JOB_STARTED) => KIND_JOB_STARTED,
            Some(KIND_JOB_FINISHED) => KIND_JOB_FINISHED,
            Some(other) => fed_kind(other.as_bytes()).with_context(|| {
                format!(
                    "{}:{}: no event is of kind {other:?} (stream-entry, list-item, \
                     channel-message, file-created, file-modified, file-deleted, dir-created, \
                     dir-deleted, job-started, job-finished)",
                    path.display(),
                    n + 1
                )
            })?,
        };
        events.push(Event {
            kind,
            id: e.id.unwrap_or_else(|| format!("{}-0", n + 1)),
            source: e.source.unwrap_or_else(|| "test".into()),
            fields: e
                .fields
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect(),
            delivery_count: e.delivery_count.unwrap_or(1),
            job: job.clone(),
            settle: None,
            duplicate: false,
        });
    }
    Ok(events)
}

/// What happened to one event in `plugin test`.
#[derive(Debug, Serialize)]
pub struct EventReport {
    pub id: String,
    /// `ack`, `skip`, `retry`, `retry after N ms`, `dead-letter: reason`, or the failure.
    pub result: String,
    pub failed: bool,
    /// The effects it would commit (only an ack commits them).
    pub effects: Vec<String>,
    pub logs: Vec<String>,
    pub micros: u64,
    /// Largest linear memory of the instance so far, in bytes.
    pub memory_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct TestReport {
    pub plugin: String,
    pub sha256: String,
    pub events: Vec<EventReport>,
    pub failed: usize,
    /// Job state after the run (kv values shown as UTF-8, lossily).
    pub kv: BTreeMap<String, String>,
    pub counters: BTreeMap<String, i64>,
}

/// Run `plugin` over `events` with the host's runtime and limits; an acked event's state
/// writes are applied before the next event, as the commit would.
pub fn run_test(
    plugin: Arc<LoadedPlugin>,
    events: &[Event],
    config: BTreeMap<String, String>,
    limits: Limits,
) -> anyhow::Result<TestReport> {
    let state = Arc::new(MemoryState::default());
    let guest = Arc::new(GuestContext {
        job: "test".into(),
        plugin: plugin.name.as_str().into(),
        config,
        limits,
        state: Some(state.clone() as Arc<dyn StateReader>),
        read_dir: None,
    });
    // Each event is "committed" to `state` before the next: the batch holds just one.
    let batch = Overlay::default();
    let mut instance: Option<PluginInstance> = None;
    let mut reports = Vec::new();
    for event in events {
        let started = Instant::now();
        if let Ok(mut b) = batch.lock() {
            b.clear();
        }
        if instance.as_ref().is_none_or(|i| !i.is_usable()) {
            match crate::runtime::block_on(PluginInstance::new(
                &plugin,
                guest.clone(),
                batch.clone(),
            )) {
                Ok(i) => instance = Some(i),
                Err(f) => bail!("the plugin cannot start: {}", f.message),
            }
        }
        let Some(inst) = instance.as_mut() else {
            bail!("no instance")
        };
        // A plugin taking batch calls is tested through them (one event each), as hosts
        // call it.
        let outcome = if inst.handles_batches() {
            let budget = crate::runtime::host::Budget::new(usize::MAX);
            let mut outcomes =
                crate::runtime::block_on(inst.handle_batch(std::slice::from_ref(event), &budget));
            outcomes.pop().unwrap_or_else(|| {
                Outcome::failed(
                    crate::model::FailureKind::Error,
                    "the plugin's handle-batch gave no result for the event",
                )
            })
        } else {
            crate::runtime::block_on(inst.handle(event))
        };
        let micros = started.elapsed().as_micros() as u64;
        let (result, failed, effects) = match &outcome {
            Outcome::Handled {
                disposition,
                effects,
            } => {
                if *disposition == Disposition::Ack {
                    state.apply(effects);
                }
                let result = match disposition {
                    Disposition::Ack => "ack".to_string(),
                    Disposition::Skip => "skip".to_string(),
                    Disposition::Retry(None) => "retry".to_string(),
                    Disposition::Retry(Some(ms)) => format!("retry after {ms} ms"),
                    Disposition::DeadLetter(reason) => format!("dead-letter: {reason}"),
                };
                (result, false, effects.iter().map(describe).collect())
            }
            Outcome::Failed(f) => (format!("failed: {f}"), true, Vec::new()),
        };
        reports.push(EventReport {
            id: event.id.clone(),
            result,
            failed,
            effects,
            logs: inst.last_logs().to_vec(),
            micros,
            memory_bytes: inst.peak_memory(),
        });
    }
    let snapshot = state.snapshot();
    Ok(TestReport {
        plugin: plugin.origin.clone(),
        sha256: plugin.sha256.clone(),
        failed: reports.iter().filter(|r| r.failed).count(),
        events: reports,
        kv: snapshot
            .kv
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect(),
        counters: snapshot.counters.into_iter().collect(),
    })
}

fn describe(effect: &Effect) -> String {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    match effect {
        Effect::Emit {
            stream,
            fields,
            max_len,
        } => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            let cap = max_len
                .map(|m| format!(" (max len ~{m})"))
                .unwrap_or_default();
            format!("emit {stream}{cap}: {}", fields.join(" "))
        }
        Effect::KvSet { key, value, ttl_s } => {
            let ttl = ttl_s.map(|t| format!(" (ttl {t} s)")).unwrap_or_default();
            format!("kv set {key} = {}{ttl}", text(value))
        }
        Effect::KvDelete { key } => format!("kv delete {key}"),
        Effect::CounterAdd { name, delta, .. } => format!("counter {name} += {delta}"),
        Effect::WindowAdd { name, id, .. } => format!("window {name} += {id}"),
        Effect::Enqueue {
            queue,
            payload,
            delay_ms,
        } => {
            let delay = if *delay_ms > 0 {
                format!(" after {delay_ms} ms")
            } else {
                String::new()
            };
            format!("enqueue {queue}{delay}: {}", text(payload))
        }
    }
}

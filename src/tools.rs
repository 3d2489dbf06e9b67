//! Plugin authors' tools, with no Redis: `sluice plugin inspect` (what a component is and
//! whether it fits our world) and `sluice plugin test` (run it on recorded events, with the
//! host's runtime and limits, and job state kept in memory).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Serialize;
use wasmtime::component::types::ComponentItem;

use crate::event::{Disposition, Effect, Event, KIND_STREAM_ENTRY, Outcome, StateReader};
use crate::runtime::memory::MemoryState;
use crate::runtime::{GuestContext, Limits, LoadedPlugin, Overlay, PluginInstance, Runtime};

/// What `plugin inspect` tells.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub size: usize,
    pub sha256: String,
    /// "component", "core module" or "not WebAssembly".
    pub kind: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Whether it loads as a plugin of this host (world sluice:plugin/plugin@0.1.0).
    pub fits_world: bool,
    /// Why not, if it does not.
    pub problem: Option<String>,
    /// Whether it uses job state (kv, counters): its batches are not pipelined.
    pub stateful: bool,
}

pub fn inspect(path: &Path) -> anyhow::Result<Inspection> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = crate::runtime::sha256_hex(&bytes);
    let kind = if !bytes.starts_with(b"\0asm") {
        "not WebAssembly"
    } else if wasmparser::Parser::is_core_wasm(&bytes) {
        "core module"
    } else {
        "component"
    };
    let runtime = Runtime::new(None)?;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    if kind == "component"
        && let Ok(component) = wasmtime::component::Component::new(runtime.engine(), &bytes)
    {
        let ty = component.component_type();
        let label = |name: &str, item: &ComponentItem| match item {
            ComponentItem::ComponentInstance(_) => format!("instance {name}"),
            ComponentItem::ComponentFunc(_) => format!("func {name}"),
            _ => name.to_string(),
        };
        imports = ty
            .imports(runtime.engine())
            .map(|(n, i)| label(n, &i.ty))
            .collect();
        exports = ty
            .exports(runtime.engine())
            .map(|(n, i)| label(n, &i.ty))
            .collect();
    }
    let loaded = runtime.load_bytes("plugin", &path.display().to_string(), &bytes);
    Ok(Inspection {
        path: path.display().to_string(),
        size: bytes.len(),
        sha256,
        kind: kind.into(),
        imports,
        exports,
        fits_world: loaded.is_ok(),
        stateful: loaded.as_ref().is_ok_and(|p| p.stateful),
        problem: loaded.err().map(|e| e.to_string()),
    })
}

/// One line of an events file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    id: Option<String>,
    source: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    delivery_count: Option<u32>,
}

/// Read a JSON-lines events file: one `{"fields": {"name": "value", …}}` per line, with
/// optional `id`, `source` (default `test`) and `delivery_count` (default 1). Blank lines and
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
        events.push(Event {
            kind: KIND_STREAM_ENTRY,
            id: e.id.unwrap_or_else(|| format!("{}-0", n + 1)),
            source: e.source.unwrap_or_else(|| "test".into()),
            fields: e
                .fields
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect(),
            delivery_count: e.delivery_count.unwrap_or(1),
            job: job.clone(),
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
            match PluginInstance::new(&plugin, guest.clone(), batch.clone()) {
                Ok(i) => instance = Some(i),
                Err(f) => bail!("the plugin cannot start: {}", f.message),
            }
        }
        let Some(inst) = instance.as_mut() else {
            bail!("no instance")
        };
        let outcome = inst.handle(event);
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

/// Languages `plugin new` can start a project in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    Go,
    C,
}

/// The WIT package, as the host knows it: copied into every new project.
const WIT: [(&str, &str); 9] = [
    ("world.wit", include_str!("../wit/world.wit")),
    ("types.wit", include_str!("../wit/types.wit")),
    ("handler.wit", include_str!("../wit/handler.wit")),
    ("log.wit", include_str!("../wit/log.wit")),
    ("config.wit", include_str!("../wit/config.wit")),
    ("clock.wit", include_str!("../wit/clock.wit")),
    ("effects.wit", include_str!("../wit/effects.wit")),
    ("kv.wit", include_str!("../wit/kv.wit")),
    ("counters.wit", include_str!("../wit/counters.wit")),
];

/// Helpers of `plugins/tools/build-{c,go}.sh`, copied into C and Go projects.
const BUILD_TOOLS: [(&str, &str); 2] = [
    (
        "tools/common.sh",
        include_str!("../plugins/tools/common.sh"),
    ),
    (
        "tools/crate-src.sh",
        include_str!("../plugins/tools/crate-src.sh"),
    ),
];

/// Write a ready-to-build plugin project `name` in `lang` into `dir` (which must not exist):
/// the WIT, a small plugin, `build.sh`, `events.jsonl` that `plugin test` passes, a README.
pub fn new_plugin(name: &str, lang: Lang, dir: &Path) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "a plugin name is 1-64 lower-case letters, digits, `-` or `_`, starting with a letter; got {name:?}"
        );
    }
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let mut files: Vec<(&str, &str)> = vec![
        ("events.jsonl", include_str!("templates/events.jsonl")),
        ("README.md", include_str!("templates/README.md")),
    ];
    files.extend(match lang {
        Lang::Rust => vec![
            ("Cargo.toml", include_str!("templates/rust.Cargo.toml")),
            ("src/lib.rs", include_str!("templates/rust.lib.rs")),
            ("build.sh", include_str!("templates/rust.build.sh")),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("templates/python.app.py")),
            ("build.sh", include_str!("templates/python.build.sh")),
        ],
        Lang::Js => vec![
            ("app.js", include_str!("templates/js.app.js")),
            ("package.json", include_str!("templates/js.package.json")),
            ("build.mjs", include_str!("templates/js.build.mjs")),
            ("build.sh", include_str!("templates/js.build.sh")),
        ],
        Lang::Go => vec![
            ("app.go", include_str!("templates/go.app.go")),
            ("build.sh", include_str!("templates/go.build.sh")),
            (
                "tools/build-go.sh",
                include_str!("../plugins/tools/build-go.sh"),
            ),
        ],
        Lang::C => vec![
            ("app.c", include_str!("templates/c.app.c")),
            ("build.sh", include_str!("templates/c.build.sh")),
            (
                "tools/build-c.sh",
                include_str!("../plugins/tools/build-c.sh"),
            ),
        ],
    });
    // The C and Go builds share the scripts `make plugins` uses.
    if matches!(lang, Lang::Go | Lang::C) {
        files.extend(BUILD_TOOLS);
    }
    let lang_name = match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
        Lang::Go => "Go",
        Lang::C => "C",
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{lang}}", lang_name)
    };
    for (file, text) in files {
        let path = dir.join(file);
        write_file(&path, &fill(text))?;
        if file.ends_with(".sh") {
            make_executable(&path)?;
        }
    }
    for (file, text) in WIT {
        write_file(&dir.join("wit").join(file), text)?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = std::fs::metadata(path)?.permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(path, perms)?;
    Ok(())
}

//! Logs: to stderr, as text or JSON lines (`[host] log_format`), filtered by `SLUICE_LOG` (or
//! `RUST_LOG`), else `[host] log`, else `info`. The filter can be changed while running
//! (`sluice run` reloads `[host] log` on SIGHUP); the format is fixed at start.
//!
//! Lines about one event — the plugin's own `log` calls and what it prints, a trap, the
//! host's "event failed" — are logged in a span `event` ([`event_span`]) with `job`,
//! `stream`, `id`, `version` and `attempt`: in text after the span name, in JSON under
//! `span`. The span is made when such a line is logged, not for every event: one per event
//! cost 7–14% of the throughput of a trivial plugin (`sluice bench`, 2026-12-01).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// The span of the lines about one event (see the module's doc).
pub fn event_span(job: &str, stream: &str, id: &str, version: &str, attempt: u32) -> tracing::Span {
    let version = version.get(..12).unwrap_or(version);
    tracing::info_span!("event", job, stream, id, version, attempt)
}

/// The filter when neither the environment nor the config file sets one.
pub const DEFAULT_FILTER: &str = "info,wasmtime=warn,cranelift=warn";

/// Crates that log a line per compiled function at debug: kept at `warn` unless a filter
/// names them (`SLUICE_LOG=debug,cranelift=debug` shows them).
const NOISY: [&str; 3] = ["wasmtime", "cranelift", "regalloc2"];

/// `directives` with the noisy crates it does not name kept at `warn`.
fn quiet(directives: &str) -> String {
    let mut out = directives.to_string();
    for krate in NOISY {
        if !directives.contains(krate) {
            out.push_str(&format!(",{krate}=warn"));
        }
    }
    out
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (default).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, the fields, `span`.
    Json,
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter set by the environment, if any (it wins over the config file).
fn from_env() -> Option<String> {
    std::env::var("SLUICE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .filter(|f| !f.is_empty())
}

/// Check a filter such as `info,sluice=debug`.
pub fn parse_filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(directives).map_err(|e| format!("not a log filter ({e}): {directives:?}"))
}

/// Set up logging once per process: `format`, and the filter of the environment, else
/// `configured`, else [`DEFAULT_FILTER`]. A second call does nothing.
pub fn init(format: LogFormat, configured: Option<&str>) {
    if FILTER.get().is_some() {
        return;
    }
    let directives = quiet(
        &from_env()
            .or_else(|| configured.map(str::to_string))
            .unwrap_or_else(|| DEFAULT_FILTER.to_string()),
    );
    let filter = parse_filter(&directives).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Change the filter to `configured` (SIGHUP), unless the environment sets it; what applies
/// now, or why nothing changed.
pub fn reload(configured: Option<&str>) -> Result<String, String> {
    if let Some(env) = from_env() {
        return Ok(format!("{env} (SLUICE_LOG/RUST_LOG win over [host] log)"));
    }
    let directives = configured.unwrap_or(DEFAULT_FILTER);
    let filter = parse_filter(&quiet(directives))?;
    let handle = FILTER.get().ok_or("logging is not set up")?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok(directives.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn noisy_crates_stay_quiet_unless_named() {
        assert_eq!(
            super::quiet("debug"),
            "debug,wasmtime=warn,cranelift=warn,regalloc2=warn"
        );
        assert_eq!(
            super::quiet("debug,cranelift=debug"),
            "debug,cranelift=debug,wasmtime=warn,regalloc2=warn"
        );
        assert!(super::parse_filter(&super::quiet("sluice=debug")).is_ok());
    }
}

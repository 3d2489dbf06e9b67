//! The admin HTTP server of a host (`[admin] listen`, `sluice run --admin ADDR`): probes for
//! systemd or Kubernetes and metrics for Prometheus.
//!
//! - `GET /live`: 200 while the process serves HTTP at all.
//! - `GET /ready`: 200 when the last reconcile read the registry from Redis (within the last
//!   few seconds) and every job the registry wants here runs; else 503 with the reasons, as
//!   JSON. A Redis outage turns it 503, and back once Redis answers.
//! - `GET /metrics`: Prometheus text ([`crate::metrics`] lists every metric); the per-job
//!   gauges (lag, pending, scheduled retries, dead letters) are read from Redis at scrape
//!   time, a few commands per job.
//! - `/api/…`: the CLI's listings as JSON, and operator actions behind a bearer token
//!   ([`api`]).
//! - `GET /`: the dashboard ([`dashboard`]), a page over the JSON API.
//! - `POST /ingest/{stream}`: HTTP ingest, entries appended to the streams that
//!   `[[ingest]]` allows, each allow-list with a token of its own ([`ingest`]).

mod api;
mod dashboard;
mod history;
mod ingest;

pub use ingest::{Allow, allow_lists};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::Conn;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

use crate::store::{Endpoint, Keys};

/// A reconcile older than this means the host lost touch with Redis (it runs every second).
const STALE_AFTER: Duration = Duration::from_secs(5);

/// What the host tells the admin server: what the reconcile loop last saw (for `/ready`),
/// and, once Redis is up, a connection to sample each running job's state (for `/metrics`).
#[derive(Default)]
pub struct Readiness {
    state: Mutex<Seen>,
    redis: std::sync::OnceLock<Attached>,
}

/// Redis, once the host reached it: the host's connection (shared, multiplexed), the key
/// table, and where to open a connection of one's own (for `WATCH`).
#[derive(Clone)]
struct Attached {
    conn: Conn,
    keys: Keys,
    endpoint: Endpoint,
}

#[derive(Debug, Default)]
struct Seen {
    /// When the registry was last read; None: never.
    read_at: Option<Instant>,
    /// Why the last read failed, if it did.
    redis_error: Option<String>,
    /// Jobs the registry wants here that do not run, with why.
    not_running: Vec<String>,
    /// Jobs running here.
    running: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    ready: bool,
    reasons: Vec<String>,
}

impl Readiness {
    /// The registry was read; `not_running` are the wanted jobs that do not run, with why;
    /// `running` those that run here.
    pub fn read(&self, not_running: Vec<String>, running: Vec<String>) {
        if let Ok(mut s) = self.state.lock() {
            s.read_at = Some(Instant::now());
            s.redis_error = None;
            s.not_running = not_running;
            s.running = running;
        }
    }

    /// Redis is up: where `/metrics` samples each running job's lag, pending entries,
    /// scheduled retries and dead letters.
    pub fn attach(&self, conn: Conn, keys: Keys, endpoint: Endpoint) {
        let _ = self.redis.set(Attached {
            conn,
            keys,
            endpoint,
        });
    }

    /// A connection to Redis and the key table, once the host reached Redis.
    fn redis(&self) -> Option<(Conn, Keys)> {
        self.redis.get().map(|a| (a.conn.clone(), a.keys.clone()))
    }

    /// Where Redis is, for a connection of one's own.
    fn endpoint(&self) -> Option<Endpoint> {
        self.redis.get().map(|a| a.endpoint.clone())
    }

    /// Set the job gauges from Redis (each job's status, bounded in time: a scrape during an
    /// outage returns what it has).
    async fn sample(&self) {
        let Some((conn, keys)) = self.redis() else {
            return;
        };
        let running = self
            .state
            .lock()
            .map(|s| s.running.clone())
            .unwrap_or_default();
        let mut conn = conn.clone();
        for job in running {
            let status = crate::store::jobs::status(&mut conn, &keys, &job);
            if let Ok(Ok(Some(s))) = tokio::time::timeout(Duration::from_secs(1), status).await {
                crate::metrics::job_state(&job, s.lag, s.pending, s.scheduled, s.dead_letters);
                if conn.is_cluster() {
                    crate::metrics::job_outbox(&job, s.outbox, s.outbox_lag_ms);
                }
            }
        }
    }

    /// Reading the registry failed.
    pub fn failed(&self, error: String) {
        if let Ok(mut s) = self.state.lock() {
            s.redis_error = Some(error);
        }
    }

    fn report(&self) -> Report {
        let Ok(s) = self.state.lock() else {
            return Report {
                ready: false,
                reasons: vec!["readiness state poisoned".into()],
            };
        };
        let mut reasons = Vec::new();
        if let Some(e) = &s.redis_error {
            reasons.push(format!("redis: reading the registry failed: {e}"));
        }
        match s.read_at {
            None => reasons.push("the registry has not been read yet".into()),
            Some(at) if at.elapsed() > STALE_AFTER => reasons.push(format!(
                "the registry was last read {} s ago",
                at.elapsed().as_secs()
            )),
            Some(_) => {}
        }
        reasons.extend(s.not_running.iter().cloned());
        Report {
            ready: reasons.is_empty(),
            reasons,
        }
    }
}

#[derive(Clone)]
struct Admin {
    readiness: Arc<Readiness>,
    metrics: PrometheusHandle,
    /// The bearer token actions need (None: the API is read-only).
    token: Option<Arc<str>>,
    /// HTTP ingest's allow-lists (empty: off).
    ingest: Arc<[Allow]>,
    /// The prefix of sluice's own keys, which HTTP ingest never writes.
    prefix: Arc<str>,
    /// Counters over time, for the dashboard.
    history: Arc<history::History>,
    /// `[admin] allowed_hosts`.
    allowed_hosts: Arc<[String]>,
}

/// What the admin server serves beyond probes and metrics.
pub struct Options {
    /// The bearer token API actions need (None: the API is read-only).
    pub token: Option<String>,
    /// HTTP ingest's allow-lists (empty: off).
    pub ingest: Arc<[Allow]>,
    /// `[host] prefix`.
    pub prefix: String,
    /// `[admin] allowed_hosts`: names (besides IP addresses and localhost) the dashboard and
    /// API answer to.
    pub allowed_hosts: Vec<String>,
}

/// Install the Prometheus recorder (once per process) and serve the admin endpoints on
/// `addr` until the returned task is aborted. Fails if the address cannot be bound.
pub async fn start(
    addr: SocketAddr,
    readiness: Arc<Readiness>,
    options: Options,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let metrics = recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin server: cannot listen on {addr}: {e}"))?;
    let upkeep = metrics.clone();
    let history = Arc::new(history::History::default());
    let sampler = tokio::spawn(history.clone().sample(readiness.clone()));
    let state = Admin {
        readiness,
        metrics,
        token: options.token.map(Arc::from),
        ingest: options.ingest,
        prefix: options.prefix.into(),
        history,
        allowed_hosts: options.allowed_hosts.into(),
    };
    // What a browser reads (the dashboard, the API) answers only to names it may be reached
    // by; probes, metrics and ingest answer to any.
    let browsed =
        dashboard::routes()
            .merge(api::routes())
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                dashboard::check_host,
            ));
    let app = Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(render))
        .merge(browsed)
        .route("/ingest/{stream}", post(ingest::ingest))
        .with_state(state);
    tracing::info!(%addr, "admin server listening (/ the dashboard, /live, /ready, /metrics, /api, /ingest)");
    Ok(tokio::spawn(async move {
        // Histograms are kept in windows the recorder compacts now and then.
        let upkeep = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin server stopped: {e}");
        }
        upkeep.abort();
        sampler.abort();
    }))
}

/// The Prometheus exporter as sluice configures it (histogram buckets).
pub fn prometheus() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .set_buckets_for_metric(
            Matcher::Full("sluice_batch_events".into()),
            &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 10_000.0],
        )?)
}

/// The process's Prometheus recorder, installed on first use.
fn recorder() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = prometheus()?.install_recorder()?;
    crate::metrics::describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

async fn ready(State(admin): State<Admin>) -> Response {
    let report = admin.readiness.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn render(State(admin): State<Admin>) -> Response {
    admin.readiness.sample().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.metrics.render(),
    )
        .into_response()
}

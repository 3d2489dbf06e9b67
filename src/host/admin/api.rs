//! The admin server's JSON API: the CLI's listings ([`crate::store::listing`], the same code)
//! and its operator actions.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `/api/jobs` | every job: state, plugin version, counters (`job list --json`) |
//! | GET | `/api/jobs/{name}` | one job (404 if the registry has none) |
//! | GET | `/api/plugins` | every plugin: version, versions, refusals, jobs (`plugin list --json`) |
//! | GET | `/api/hosts?all=true` | the live hosts (with `all`, those gone in the last hour too; `sluice hosts --json`) |
//! | GET | `/api/jobs/{name}/dlq?after=ID&limit=N&preview=B` | a page of dead letters, oldest first (N ≤ 1000, default 100; with `preview`, field values cut to B bytes) |
//! | GET | `/api/jobs/{name}/dlq/{id}` | one dead letter, whole |
//! | GET | `/api/info` | `{"sluice": version, "read_only": bool}` (no token file: no actions) |
//! | GET | `/api/jobs/{name}/events/{id}` | where one source entry stands (`event get --json`) |
//! | POST | `/api/jobs/{name}/stop`, `/resume` | stop or resume the job on every host |
//! | GET | `/api/jobs/{name}/aggregates` | the job's aggregates: threshold, open windows, fired (`agg list --json`) |
//! | GET | `/api/jobs/{name}/aggregates/{agg}?limit=N` | one aggregate with up to N open windows (default 20, at most 1000; `agg status --json`) |
//! | POST | `/api/jobs/{name}/aggregates/{agg}/reset` | body `{}` or `{"key": "…"}`: drop its windows (or one) without firing |
//! | POST | `/api/jobs/{name}/dlq/replay` | body `{"ids": [...]}` (dead-letter or source ids) or `{"all": true}`: replay dead letters |
//! | POST | `/api/jobs/{name}/dlq/purge` | body `{"ids": [...]}` or `{"all": true}`: delete dead letters |
//! | GET | `/api/jobs/{name}/pending?limit=N` | the oldest entries pending in its group, and the retries due first (N ≤ 1000, default 50) |
//! | GET | `/api/jobs/{name}/lifecycle?limit=N` | its latest lifecycle events (`job-started`, `job-finished` of each run), newest first |
//! | GET | `/api/plugins/{name}/versions` | every version of a plugin, newest first (`plugin versions --json`) |
//! | POST | `/api/plugins/{name}/rollback` | body `{}` or `{"to": "<sha256 prefix>"}`: make an earlier version current |
//! | GET | `/api/series?job=NAME&points=N` | counters of every job (or one) sampled each second, the last ten minutes or N points (the dashboard's charts) |
//!
//! Actions need `Authorization: Bearer <token>`, the token in `[admin] token_file`; with no
//! token file the API is read-only (actions answer 403). Errors are `{"error": "…"}`.

use crate::store::Conn;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Admin;
use crate::store::control::{JobState, Registry};
use crate::store::{Keys, dlq, events, listing};

/// The API's routes, for the admin router.
pub fn routes() -> axum::Router<Admin> {
    axum::Router::new()
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{name}", get(job))
        .route("/api/plugins", get(plugins))
        .route("/api/hosts", get(hosts))
        .route("/api/jobs/{name}/dlq", get(dead_letters))
        .route("/api/jobs/{name}/events/{id}", get(event))
        .route("/api/jobs/{name}/stop", post(stop))
        .route("/api/jobs/{name}/resume", post(resume))
        .route("/api/jobs/{name}/dlq/replay", post(replay))
        .route("/api/jobs/{name}/dlq/purge", post(purge))
        .route("/api/jobs/{name}/dlq/{id}", get(dead_letter))
        .route("/api/info", get(info))
        .route("/api/jobs/{name}/pending", get(pending))
        .route("/api/jobs/{name}/lifecycle", get(lifecycle))
        .route("/api/plugins/{name}/versions", get(versions))
        .route("/api/plugins/{name}/rollback", post(rollback))
        .route("/api/series", get(series))
        .route("/api/jobs/{name}/aggregates", get(aggregates))
        .route("/api/jobs/{name}/aggregates/{agg}", get(aggregate))
        .route(
            "/api/jobs/{name}/aggregates/{agg}/reset",
            post(aggregate_reset),
        )
}

impl From<listing::AggError> for ApiError {
    fn from(e: listing::AggError) -> Self {
        match e {
            listing::AggError::NoJob(_) | listing::AggError::NoAggregate { .. } => {
                not_found(e.to_string())
            }
            e => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}

async fn aggregates(
    State(a): State<Admin>,
    Path(name): Path<String>,
) -> Answer<Vec<crate::store::aggregate::AggStatus>> {
    let (mut conn, keys) = a.redis()?;
    let mut reg = Registry::new(conn.clone(), keys.clone());
    Ok(Json(
        listing::aggregates(&mut reg, &mut conn, &keys, &name, None, 0).await?,
    ))
}

async fn aggregate(
    State(a): State<Admin>,
    Path((name, agg)): Path<(String, String)>,
    Query(page): Query<Page>,
) -> Answer<crate::store::aggregate::AggStatus> {
    let (mut conn, keys) = a.redis()?;
    let mut reg = Registry::new(conn.clone(), keys.clone());
    let limit = page_size(page.limit, 20);
    let mut found =
        listing::aggregates(&mut reg, &mut conn, &keys, &name, Some(&agg), limit).await?;
    Ok(Json(found.remove(0)))
}

#[derive(Deserialize, Default)]
struct WindowKey {
    key: Option<String>,
}

async fn aggregate_reset(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path((name, agg)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Answer<serde_json::Value> {
    a.authorize(&headers)?;
    let which: WindowKey = optional_body(&body)?;
    let (mut conn, keys) = a.redis()?;
    let mut reg = Registry::new(conn.clone(), keys.clone());
    let dropped = listing::reset_aggregate(
        &mut reg,
        &mut conn,
        &keys,
        &name,
        &agg,
        which.key.as_deref().map(str::as_bytes),
    )
    .await?;
    tracing::info!(job = %name, aggregate = %agg, dropped, "aggregate reset through the admin API");
    Ok(Json(
        serde_json::json!({ "job": name, "aggregate": agg, "dropped": dropped }),
    ))
}

/// An API error: its status and what went wrong.
#[derive(Debug)]
pub(super) struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    /// A Redis failure: the service is unavailable for now.
    fn from(e: anyhow::Error) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"))
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

type Answer<T> = Result<Json<T>, ApiError>;

fn not_found(what: String) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, what)
}

impl Admin {
    /// A connection to Redis and the key table, once the host reached Redis.
    pub(super) fn redis(&self) -> Result<(Conn, Keys), ApiError> {
        self.readiness.redis().ok_or_else(|| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the host has not reached Redis yet".into(),
            )
        })
    }

    /// Let an action through only with the configured bearer token.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "the API is read-only: no [admin] token_file is configured".into(),
            ));
        };
        if bearer_matches(headers, token) {
            Ok(())
        } else {
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "a valid `Authorization: Bearer <token>` header is needed".into(),
            ))
        }
    }
}

/// Does the request's `Authorization: Bearer <token>` carry `token`?
pub(super) fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    // The scheme is case-insensitive (RFC 9110); the token is not.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or_default();
    // Digests compared, not the tokens: the time taken says nothing about the token.
    Sha256::digest(given.as_bytes()) == Sha256::digest(token.as_bytes())
}

/// A stream entry id (`ms-seq`, or `ms`) from a request, else 400.
fn entry_id(id: &str) -> Result<&str, ApiError> {
    crate::model::check_entry_id(id)
        .map(|()| id)
        .map_err(|m| ApiError(StatusCode::BAD_REQUEST, m))
}

/// The source stream of job `name`, as Redis knows it (404 if no host ran it).
async fn source(conn: &mut Conn, keys: &Keys, name: &str) -> Result<String, ApiError> {
    dlq::source_of(conn, keys, name).await?.ok_or_else(|| {
        not_found(format!(
            "no job named `{name}` in Redis: no host has run it"
        ))
    })
}

/// Redis, the key table and the source stream of job `name` (404 if no host ran it).
async fn job_redis(a: &Admin, name: &str) -> Result<(Conn, Keys, String), ApiError> {
    let (mut conn, keys) = a.redis()?;
    let source = source(&mut conn, &keys, name).await?;
    Ok((conn, keys, source))
}

/// Run an action to its end even if the client goes away meanwhile (a browser that gave up
/// waiting, a closed tab): replaying or purging thousands of dead letters takes a while, and
/// stopping halfway leaves an operator guessing what was done.
async fn to_the_end<T: Send + 'static>(
    action: impl std::future::Future<Output = Result<T, crate::store::StoreError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(action).await {
        Ok(done) => Ok(done?),
        Err(e) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the action failed: {e}"),
        )),
    }
}

/// A page size from a request: `default` if none, within 1..=1000.
fn page_size(asked: Option<usize>, default: usize) -> usize {
    asked.unwrap_or(default).clamp(1, 1000)
}

async fn jobs(State(a): State<Admin>) -> Answer<Vec<listing::JobRow>> {
    let (mut conn, keys) = a.redis()?;
    let mut reg = Registry::new(conn.clone(), keys.clone());
    Ok(Json(listing::jobs(&mut reg, &mut conn, &keys, None).await?))
}

async fn job(State(a): State<Admin>, Path(name): Path<String>) -> Answer<listing::JobRow> {
    let (mut conn, keys) = a.redis()?;
    let mut reg = Registry::new(conn.clone(), keys.clone());
    listing::job(&mut reg, &mut conn, &keys, &name)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(format!("no job named `{name}`")))
}

async fn plugins(State(a): State<Admin>) -> Answer<Vec<listing::PluginRow>> {
    let (conn, keys) = a.redis()?;
    Ok(Json(
        listing::plugins(&mut Registry::new(conn, keys)).await?,
    ))
}

#[derive(Deserialize)]
struct HostsQuery {
    #[serde(default)]
    all: bool,
}

async fn hosts(
    State(a): State<Admin>,
    Query(q): Query<HostsQuery>,
) -> Answer<Vec<crate::store::hosts::HostRow>> {
    let (mut conn, keys) = a.redis()?;
    Ok(Json(
        crate::store::hosts::list(&mut conn, &keys, q.all).await?,
    ))
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
    /// Cut each field value to this many bytes (the dashboard's list; `cut` says so).
    preview: Option<usize>,
}

/// A dead letter as a listing shows it.
#[derive(serde::Serialize)]
struct Shown {
    #[serde(flatten)]
    letter: dlq::DeadLetter,
    /// Some field values were cut (`preview`): `GET …/dlq/{id}` has them whole.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cut: bool,
}

async fn dead_letters(
    State(a): State<Admin>,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Answer<serde_json::Value> {
    let (mut conn, keys, source) = job_redis(&a, &name).await?;
    let limit = page_size(page.limit, 100);
    let after = page.after.as_deref().map(entry_id).transpose()?;
    let letters: Vec<Shown> = match page.preview {
        // Cut in Redis: only what is shown leaves it.
        Some(keep) => dlq::list_cut(&mut conn, &keys, &name, &source, after, limit, keep)
            .await?
            .into_iter()
            .map(|(letter, cut)| Shown { letter, cut })
            .collect(),
        None => dlq::list(&mut conn, &keys, &name, &source, after, limit)
            .await?
            .into_iter()
            .map(|letter| Shown { letter, cut: false })
            .collect(),
    };
    // The cursor of the next page, when this one is full.
    let next = (letters.len() == limit)
        .then(|| letters.last().map(|d| d.letter.id.clone()))
        .flatten();
    Ok(Json(
        serde_json::json!({ "dead_letters": letters, "next": next }),
    ))
}

async fn dead_letter(
    State(a): State<Admin>,
    Path((name, id)): Path<(String, String)>,
) -> Answer<dlq::DeadLetter> {
    entry_id(&id)?;
    let (mut conn, keys, source) = job_redis(&a, &name).await?;
    dlq::get(&mut conn, &keys, &name, &source, &id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(format!("job `{name}` has no dead letter `{id}`")))
}

/// What the dashboard needs to know of this server.
async fn info(State(a): State<Admin>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "sluice": env!("CARGO_PKG_VERSION"),
        // No token file: actions answer 403, so the dashboard offers none.
        "read_only": a.token.is_none(),
    }))
}

async fn event(
    State(a): State<Admin>,
    Path((name, id)): Path<(String, String)>,
) -> Answer<events::EventStatus> {
    entry_id(&id)?;
    let (mut conn, keys, source) = job_redis(&a, &name).await?;
    events::get(&mut conn, &keys, &name, &source, &id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(format!("job `{name}` knows no event `{id}`")))
}

async fn set_state(
    a: &Admin,
    headers: &HeaderMap,
    name: &str,
    state: JobState,
) -> Answer<serde_json::Value> {
    a.authorize(headers)?;
    let (conn, keys) = a.redis()?;
    let mut reg = Registry::new(conn, keys);
    if reg.job(name).await.map_err(anyhow::Error::from)?.is_none() {
        return Err(not_found(format!("no job named `{name}`")));
    }
    reg.set_job_state(name, state)
        .await
        .map_err(refused_is_conflict)?;
    tracing::info!(job = %name, ?state, "job state set through the admin API");
    Ok(Json(serde_json::json!({ "job": name, "state": state })))
}

async fn stop(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer<serde_json::Value> {
    set_state(&a, &headers, &name, JobState::Stopped).await
}

async fn resume(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Answer<serde_json::Value> {
    set_state(&a, &headers, &name, JobState::Running).await
}

#[derive(Deserialize)]
struct Selection {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

impl Selection {
    /// The dead letters a request body names: Some(ids), or None for all of them.
    fn parse(body: &[u8]) -> Result<Option<Vec<String>>, ApiError> {
        let selection: Selection = serde_json::from_slice(body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"ids\": [...]}} or {{\"all\": true}}: {e}"),
            )
        })?;
        for id in &selection.ids {
            entry_id(id)?;
        }
        match (selection.all, selection.ids.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Ok(Some(selection.ids)),
            _ => Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give either `ids` (dead-letter ids, or the source ids they hold) or `all: true`"
                    .into(),
            )),
        }
    }
}

async fn replay(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Answer<Vec<listing::Replayed>> {
    // Who asks first, what they ask second.
    a.authorize(&headers)?;
    let ids = Selection::parse(&body)?;
    let (_, keys, source) = job_redis(&a, &name).await?;
    // A connection of its own: replay guards each dead letter with WATCH, which holds per
    // connection (on the shared one, another request's EXEC would clear it).
    let endpoint = a.readiness.endpoint().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the host has not reached Redis yet".into(),
        )
    })?;
    let mut own = endpoint.connect_once().await?;
    let job = name.clone();
    let replayed = to_the_end(async move {
        let replayed = listing::replay(&mut own, &keys, &job, &source, ids).await;
        if let Ok(r) = &replayed {
            tracing::info!(job = %job, replayed = r.iter().filter(|r| r.new_id.is_some()).count(), "dead letters replayed through the admin API");
        }
        replayed
    })
    .await?;
    Ok(Json(replayed))
}

async fn purge(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Answer<serde_json::Value> {
    a.authorize(&headers)?;
    let ids = Selection::parse(&body)?;
    let (mut conn, keys, source) = job_redis(&a, &name).await?;
    let job = name.clone();
    let (named, purged) =
        to_the_end(async move { listing::purge(&mut conn, &keys, &job, &source, ids).await })
            .await?;
    let missing: Vec<&String> = named
        .iter()
        .filter(|(_, id)| id.is_none())
        .map(|(asked, _)| asked)
        .collect();
    tracing::info!(job = %name, purged, "dead letters purged through the admin API");
    Ok(Json(
        serde_json::json!({ "job": name, "purged": purged, "not_found": missing }),
    ))
}

async fn pending(
    State(a): State<Admin>,
    Path(name): Path<String>,
    Query(q): Query<Page>,
) -> Answer<serde_json::Value> {
    let (mut conn, keys, source) = job_redis(&a, &name).await?;
    let limit = page_size(q.limit, 50);
    let pending = events::pending(&mut conn, &keys, &name, &source, limit).await?;
    let retries = events::scheduled(&mut conn, &keys, &name, &source, limit).await?;
    Ok(Json(
        serde_json::json!({ "pending": pending, "retries": retries }),
    ))
}

async fn lifecycle(
    State(a): State<Admin>,
    Path(name): Path<String>,
    Query(q): Query<Page>,
) -> Answer<Vec<crate::store::lifecycle::Happened>> {
    let (mut conn, keys, source) = job_redis(&a, &name).await?;
    let limit = page_size(q.limit, 50);
    Ok(Json(
        crate::store::lifecycle::history(&mut conn, &keys, &name, &source, limit).await?,
    ))
}

/// The registry, once it is known to have plugin `name` (else 404).
async fn plugin_registry(a: &Admin, name: &str) -> Result<Registry, ApiError> {
    let (conn, keys) = a.redis()?;
    let mut reg = Registry::new(conn, keys);
    match reg.plugin(name).await.map_err(anyhow::Error::from)? {
        Some(_) => Ok(reg),
        None => Err(not_found(format!("no plugin named `{name}`"))),
    }
}

/// A JSON body that may be empty (then `T::default()`), else 400.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn versions(
    State(a): State<Admin>,
    Path(name): Path<String>,
) -> Answer<Vec<crate::store::control::PluginVersion>> {
    let mut reg = plugin_registry(&a, &name).await?;
    Ok(Json(
        reg.versions(&name).await.map_err(anyhow::Error::from)?,
    ))
}

#[derive(Deserialize, Default)]
struct RollbackTo {
    to: Option<String>,
}

async fn rollback(
    State(a): State<Admin>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Answer<crate::store::control::PluginVersion> {
    a.authorize(&headers)?;
    let to: RollbackTo = optional_body(&body)?;
    if let Some(prefix) = &to.to
        && (prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "`to` must be a version's sha256 or a prefix of it (hex digits), got {prefix:?}"
            ),
        ));
    }
    let mut reg = plugin_registry(&a, &name).await?;
    let version = reg
        .rollback(&name, to.to.as_deref())
        .await
        .map_err(refused_is_conflict)?;
    tracing::info!(plugin = %name, version = %version.sha256, "plugin rolled back through the admin API");
    Ok(Json(version))
}

/// A registry change the registry refused is a conflict (409) with its reason.
fn refused_is_conflict(e: crate::store::control::ControlError) -> ApiError {
    match e {
        crate::store::control::ControlError::Refused(why) => ApiError(StatusCode::CONFLICT, why),
        e => anyhow::Error::from(e).into(),
    }
}

#[derive(Deserialize)]
struct SeriesQuery {
    job: Option<String>,
    /// The last this many points of each job (default all: ten minutes' worth).
    points: Option<usize>,
}

async fn series(
    State(a): State<Admin>,
    Query(q): Query<SeriesQuery>,
) -> Json<super::history::Series> {
    Json(
        a.history
            .series(q.job.as_deref(), q.points.unwrap_or(usize::MAX)),
    )
}

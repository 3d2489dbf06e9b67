//! The dashboard: one page (`GET /`) whose script draws the overview, a job and the plugins
//! from the JSON API ([`super::api`]), polling it every second. Its three files are compiled
//! into the binary: nothing to build or download, and no framework.
//!
//! Reading needs nothing; actions (stop, resume, replay, purge, rollback) send the admin token
//! the page asks for once, kept in the tab's `sessionStorage`.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::Admin;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The dashboard's routes, for the admin router.
pub fn routes() -> axum::Router<Admin> {
    axum::Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
}

fn page(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            // The page and its script are one release: revalidate, so an upgraded host serves
            // its own script to an open tab's next load.
            (header::CACHE_CONTROL, "no-cache"),
            // Only our own script, style and API; no framing by other sites.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

//! The dashboard: one page (`GET /`) whose script draws the overview, a job and the plugins
//! from the JSON API ([`super::api`]), polling it every second. Its three files are compiled
//! into the binary: nothing to build or download, and no framework.
//!
//! Reading needs nothing; actions (stop, resume, replay, purge, rollback) send the admin token
//! the page asks for once, kept in the tab's `sessionStorage`.
//!
//! DNS rebinding (a page elsewhere whose name comes to resolve to this server) is refused:
//! the dashboard and the API answer only requests whose `Host` is an IP address, `localhost`
//! or one of `[admin] allowed_hosts` ([`check_host`]).

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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

/// Let a request through to the dashboard or the API only if its `Host` names this server
/// as the operator set it up: an IP address, `localhost`, or one of `[admin] allowed_hosts`
/// (`"*"`: any). Else 403, saying which setting lets the name in.
pub async fn check_host(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    match host {
        Some(host) if !host_allowed(&host, &admin.allowed_hosts) => (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "error": format!(
                    "this server's dashboard and API answer to IP addresses, localhost and \
                     [admin] allowed_hosts; add {:?} there to reach it by that name",
                    name_of(&host)
                )
            })),
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

/// The name part of a `Host` header (no port, no IPv6 brackets).
fn name_of(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = name_of(host);
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn hosts_are_ip_addresses_localhost_or_allowed_names() {
        let none: Vec<String> = Vec::new();
        for fine in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:9090",
            "localhost:9090",
            "LOCALHOST",
            "app.localhost:9090",
        ] {
            assert!(host_allowed(fine, &none), "{fine}");
        }
        for refused in [
            "evil.example:9090",
            "evil.example",
            "127.0.0.1.evil.example:9090",
        ] {
            assert!(!host_allowed(refused, &none), "{refused}");
        }
        let some = vec!["sluice.internal".to_string()];
        assert!(host_allowed("Sluice.Internal:443", &some));
        assert!(!host_allowed("other.internal", &some));
        assert!(host_allowed("anything.example", &["*".to_string()]));
    }
}
